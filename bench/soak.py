"""Long soak: the agent under a steady exit rate for a long time; RSS and CPU sampled, trend fitted.

    .venv/bin/python bench/soak.py                 # 30 minutes at 500 exits/s -> bench/soak.md
    .venv/bin/python bench/soak.py --minutes 2 --out /tmp/soak.md   # a smoke run

A local mosquitto (tests/helpers/mosquitto.py), the agent as pid 1 of its own pid namespace with
probe.pidns_scope=true, and bench/forkstorm paced to RATE in that namespace, so the agent sees
exactly the load's exits. A subscriber counts distinct event ids. Every 10 s the agent's VmRSS
and CPU time (/proc/PID/stat utime+stime) are sampled; a least-squares line through the samples
after a warm-up gives the trend. Needs root, BTF, the built BPF object, mosquitto and a C
compiler. Not part of CI (`make soak`).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from helpers.mosquitto import Mosquitto  # noqa: E402 - the tests' broker helper

SAMPLE_S = 10.0
WARMUP_S = 120.0
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    t: float  # seconds since the load started
    rss_mb: float
    cpu_pct: float  # of one core, over the last interval
    received: int


class Counter:
    """Counts distinct event ids on procmon/<host>/exits (8-byte hashes keep memory small)."""

    def __init__(self, port: int, host: str) -> None:
        self.ids: set[int] = set()
        self.messages = 0
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(f"procmon/{host}/exits", qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(60):
            raise RuntimeError("subscriber did not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        start = payload.find(b'"event_id":"') + 12
        event_id = payload[start : payload.find(b'"', start)]
        with self._lock:
            self.messages += 1
            self.ids.add(hash(event_id))

    @property
    def distinct(self) -> int:
        with self._lock:
            return len(self.ids)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def agent_pid(unshare: subprocess.Popen[bytes]) -> int:
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children")
    for _ in range(600):
        text = children.read_text().strip()
        if text:
            return int(text.split()[0])
        time.sleep(0.1)
    raise RuntimeError("the agent did not start")


def run(minutes: float, rate: int, out: Path) -> int:
    work = Path(tempfile.mkdtemp(prefix="procmon-soak-"))
    forkstorm = work / f"sk{uuid.uuid4().hex[:8]}"
    subprocess.run(["cc", "-O2", "-o", str(forkstorm), str(REPO / "bench/forkstorm.c")], check=True)
    broker = Mosquitto(work / "broker")
    broker.start()
    host = f"soak-{uuid.uuid4().hex[:8]}"
    counter = Counter(broker.port, host)
    (work / "agent.toml").write_text("")
    env = {
        **os.environ,
        "PROCMON_SPOOL__PATH": str(work / "spool" / "spool.db"),
        "PROCMON_PROBE__PIDNS_SCOPE": "true",
        "PROCMON_STATS_INTERVAL_S": "10",
    }
    stderr = open(work / "agent.stderr", "wb")  # noqa: SIM115 - lives as long as the agent
    unshare = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child=SIGKILL", str(REPO / ".venv/bin/procmon"),
         "agent", "--config", str(work / "agent.toml"), "--broker", broker.url, "--host-id", host],
        env=env, stdout=subprocess.DEVNULL, stderr=stderr,
    )  # fmt: skip
    storm: subprocess.Popen[bytes] | None = None
    samples: list[Sample] = []
    total = int(rate * minutes * 60)
    try:
        pid = agent_pid(unshare)
        time.sleep(3)  # attach
        storm = subprocess.Popen(
            ["nsenter", "--target", str(pid), "--pid", "--", str(forkstorm), str(total), "1",
             str(rate)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        start = time.monotonic()
        ticks, last = cpu_ticks(pid), start
        while storm.poll() is None:
            time.sleep(SAMPLE_S - (time.monotonic() - start) % SAMPLE_S)
            if storm.poll() is not None:
                break  # a sample that ends after the load would read as a CPU trend
            now, now_ticks = time.monotonic(), cpu_ticks(pid)
            cpu = 100.0 * (now_ticks - ticks) / TICK / (now - last)
            ticks, last = now_ticks, now
            samples.append(Sample(now - start, rss_mb(pid), cpu, counter.distinct))
            print(f"{samples[-1].t:7.0f} s  rss {samples[-1].rss_mb:6.1f} MB  cpu {cpu:5.1f} %"
                  f"  received {samples[-1].received}", flush=True)  # fmt: skip
        load_s = time.monotonic() - start
        expected = total + 2  # the children, the worker and the main process
        deadline = time.monotonic() + 300
        while counter.distinct < expected and time.monotonic() < deadline:
            time.sleep(1)
        os.kill(pid, signal.SIGTERM)
        unshare.wait(timeout=120)
    finally:
        if storm is not None and storm.poll() is None:
            storm.kill()
        if unshare.poll() is None:
            unshare.kill()
        counter.close()
        broker.kill()
        stderr.close()
    report(out, minutes, rate, load_s, expected, counter, samples)
    return 0 if counter.distinct == expected else 1


def report(
    out: Path,
    minutes: float,
    rate: int,
    load_s: float,
    expected: int,
    counter: Counter,
    samples: list[Sample],
) -> None:
    steady = [s for s in samples if s.t >= WARMUP_S] or samples
    xs_h = [s.t / 3600 for s in steady]
    rss_slope = slope(xs_h, [s.rss_mb for s in steady])
    cpu_slope = slope(xs_h, [s.cpu_pct for s in steady])
    span_h = (steady[-1].t - steady[0].t) / 3600 if len(steady) > 1 else 0.0
    growth = rss_slope * span_h
    verdict = "no growth trend" if abs(growth) < 5 else f"RSS grows {growth:.1f} MB over the run"
    lines = [
        "# Soak: procmon agent under a steady exit rate",
        "",
        f"Generated by `bench/soak.py` on {socket.gethostname()} at "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {minutes:g} minutes at "
        f"{rate} exits/s (the load took {load_s:.0f} s), samples every {SAMPLE_S:.0f} s, trend "
        f"fitted after a {WARMUP_S:.0f} s warm-up.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| exits generated | {expected} |",
        f"| distinct events delivered | {counter.distinct} |",
        f"| lost | {expected - counter.distinct} |",
        f"| duplicates | {counter.messages - counter.distinct} |",
        f"| RSS first / last / max (MB) | {samples[0].rss_mb:.1f} / {samples[-1].rss_mb:.1f} / "
        f"{max(s.rss_mb for s in samples):.1f} |",
        f"| RSS trend (MB/hour) | {rss_slope:+.2f} |",
        f"| CPU mean / max (% of a core) | {sum(s.cpu_pct for s in steady) / len(steady):.1f} / "
        f"{max(s.cpu_pct for s in steady):.1f} |",
        f"| CPU trend (points/hour) | {cpu_slope:+.2f} |",
        f"| verdict | {verdict} |",
        "",
        "| t (s) | RSS (MB) | CPU (%) | delivered |",
        "|---|---|---|---|",
    ]
    step = max(1, len(samples) // 60)
    lines += [
        f"| {s.t:.0f} | {s.rss_mb:.1f} | {s.cpu_pct:.1f} | {s.received} |" for s in samples[::step]
    ]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}: {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=500, help="exits per second")
    parser.add_argument("--out", type=Path, default=REPO / "bench/soak.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("soak: needs root (eBPF, pid namespaces)", file=sys.stderr)
        return 2
    return run(args.minutes, args.rate, args.out)


if __name__ == "__main__":
    sys.exit(main())

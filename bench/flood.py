#!/usr/bin/env python3
"""procmon under hostile local load: what an unprivileged user's floods cost the monitor.

The full pipeline (agent -> mosquitto -> mosquitto_sub) runs while a user made for the run
floods the machine for --seconds each: (a) a fork storm, (b) an exec storm with short argv,
(c) an exec storm with 511 one-byte arguments, (d) an exec storm with about 1 MB of argv.
Every command line differs (bench/execflood.c), so no cache keyed by it helps. Root markers
with known exit codes run during each load. Then steady fork loads find the highest rate held
for --seconds with no exit lost.

Usage (root): .venv/bin/python bench/flood.py [--seconds 60]. Writes its section of
bench/results.md and bench/out/flood.json. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests"))

from helpers.mosquitto import Mosquitto  # noqa: E402
from monitors import cpu_seconds  # noqa: E402
from results_section import write_section  # noqa: E402

MARKERS = 10
QUIET_S = 3.0  # nothing new published or received for this long: the drain is over
STATS_TAIL = 256 << 10  # the last stats message is within this many bytes of the end
MAX_ARG = 131071  # MAX_ARG_STRLEN - 1: the longest single argument the kernel takes


@dataclass(frozen=True)
class FloodLoad:
    key: str
    label: str
    workers: int
    nargs: int  # 0: fork without exec
    arglen: int


LOADS = [
    FloodLoad("fork", "(a) fork storm", 4, 0, 1),
    FloodLoad("exec-short", "(b) exec storm, short argv", 8, 2, 8),
    FloodLoad("exec-511", "(c) exec storm, 511 one-byte arguments", 8, 511, 1),
    FloodLoad("exec-1mb", "(d) exec storm, ~1 MB of argv (8 x 128 KB)", 8, 8, MAX_ARG),
]


@dataclass
class FloodResult:
    key: str
    label: str
    children: int
    seconds: float
    rate: float
    exits_received: int
    exits_lost: int
    markers_lost: int
    context_lost: int
    exec_cache_evicted: int
    agent_cpu_pct: float


@dataclass
class SteadyResult:
    target_rate: int
    rate: float
    children: int
    exits_lost: int
    agent_cpu_pct: float


class Pipeline:
    """agent -> mosquitto -> mosquitto_sub writing one payload a line."""

    def __init__(self, workdir: Path, procmon: str) -> None:
        self.workdir = workdir
        self.host = f"flood-{uuid.uuid4().hex[:6]}"
        self.broker = Mosquitto(workdir / "broker")
        self.broker.start()
        self.out = workdir / "sub.out"
        base = f"procmon/{self.host}"
        self.sub = subprocess.Popen(
            [
                *("mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.broker.port)),
                *("-q", "1", "-V", "5", "-t", f"{base}/exits", "-t", f"{base}/stats"),
                *("-F", "%t %p"),
            ],
            stdout=open(self.out, "wb"),  # noqa: SIM115 - owned by the Popen for its life
        )
        time.sleep(1)
        env = {
            **os.environ,
            "PROCMON_SPOOL__PATH": str(workdir / "spool.db"),
            "PROCMON_STATS_INTERVAL_S": "1",
            "PROCMON_LOG_LEVEL": "warning",
        }
        self.agent = subprocess.Popen(
            [procmon, "agent", "--broker", self.broker.url, "--host-id", self.host],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "agent.err", "wb"),  # noqa: SIM115
        )
        self._wait_online()

    def _wait_online(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.stats():
                return
            time.sleep(0.5)
        raise RuntimeError(f"the agent published no stats: {self.workdir / 'agent.err'}")

    def lines(self) -> list[bytes]:
        return self.out.read_bytes().splitlines()

    def stats(self) -> dict[str, Any]:
        """The last stats message (from the end of the output: it is published every second)."""
        token = f"procmon/{self.host}/stats ".encode()
        with open(self.out, "rb") as f:
            f.seek(max(0, self.out.stat().st_size - STATS_TAIL))
            tail = f.read()
        last = [line for line in tail.splitlines() if line.startswith(token)]
        return json.loads(last[-1][len(token) :]) if last else {}

    def wait_quiet(self) -> None:
        """Until the agent has published all it saw, and the subscriber's output grows only by
        the stats (about 500 bytes a second)."""
        last: tuple[Any, ...] = ()
        since = time.monotonic()
        size = self.out.stat().st_size
        while True:
            time.sleep(0.5)
            stats = self.stats()
            now = (stats.get("events_seen"), stats.get("published"), stats.get("spool_depth"))
            grown, size = self.out.stat().st_size - size, self.out.stat().st_size
            if now != last or grown > 4096 or now[0] != now[1]:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= QUIET_S:
                return

    def exits_of(self, uid: int) -> set[bytes]:
        """event_ids of the exits of this uid received so far (duplicates folded)."""
        token = f"procmon/{self.host}/exits ".encode()
        needle = f'"uid":{uid},'.encode()
        ids = set()
        for line in self.lines():
            if line.startswith(token) and needle in line:
                start = line.index(b'"event_id":"') + 12
                ids.add(line[start : line.index(b'"', start)])
        return ids

    def pids_received(self) -> set[int]:
        token = f"procmon/{self.host}/exits ".encode()
        return {
            json.loads(line[len(token) :])["pid"]
            for line in self.lines()
            if line.startswith(token) and b'"uid":0,' in line
        }

    def close(self) -> None:
        for proc in (self.agent, self.sub):
            proc.terminate()
            proc.wait(timeout=60)
        self.broker.kill()


def build(workdir: Path) -> tuple[Path, Path]:
    execflood, forkstorm = workdir / "execflood", workdir / "forkstorm"
    for src, out in (("execflood.c", execflood), ("forkstorm.c", forkstorm)):
        subprocess.run(["cc", "-O2", "-o", str(out), str(BENCH / src)], check=True)
    return execflood, forkstorm


def agent_cpu(pipe: Pipeline) -> float:
    return cpu_seconds(pipe.agent.pid) or 0.0


def run_flood(pipe: Pipeline, execflood: Path, user: str, load: FloodLoad, secs: float) -> Any:
    uid = pwd.getpwnam(user).pw_uid
    before = pipe.stats()
    received_before = len(pipe.exits_of(uid))
    cpu0, t0 = agent_cpu(pipe), time.monotonic()
    cmd = [str(execflood), str(secs), str(load.workers), str(load.nargs), str(load.arglen)]
    flood = subprocess.Popen(["runuser", "-u", user, "--", *cmd], stdout=subprocess.PIPE, cwd="/")
    markers = []
    for i in range(MARKERS):
        time.sleep(secs / (MARKERS + 1))
        marker = subprocess.Popen(["/bin/sh", "-c", f"exit {100 + i}"])
        marker.wait()
        markers.append(marker.pid)
    out, _ = flood.communicate()
    children, seconds = out.split()
    pipe.wait_quiet()
    cpu, wall = agent_cpu(pipe) - cpu0, time.monotonic() - t0
    time.sleep(1.5)  # one more stats message
    after = pipe.stats()
    received = len(pipe.exits_of(uid)) - received_before
    # the user's exits: the children, and the generator's workers and main process
    expected = int(children) + load.workers + 1
    got = pipe.pids_received()
    return FloodResult(
        key=load.key,
        label=load.label,
        children=int(children),
        seconds=float(seconds),
        rate=int(children) / float(seconds),
        exits_received=received,
        exits_lost=max(0, expected - received),
        markers_lost=sum(pid not in got for pid in markers),
        context_lost=after["dropped_context_kernel"] - before["dropped_context_kernel"],
        exec_cache_evicted=after["exec_cache_evicted"] - before["exec_cache_evicted"],
        agent_cpu_pct=100 * cpu / wall,
    )


def run_steady(pipe: Pipeline, forkstorm: Path, user: str, rate: int, secs: float) -> Any:
    uid = pwd.getpwnam(user).pw_uid
    before = len(pipe.exits_of(uid))
    cpu0, t0 = agent_cpu(pipe), time.monotonic()
    workers = 2
    cmd = [str(forkstorm), str(int(rate * secs)), str(workers), str(rate)]
    out = subprocess.run(
        ["runuser", "-u", user, "--", *cmd], capture_output=True, check=True, cwd="/"
    ).stdout
    children, seconds = out.split()
    pipe.wait_quiet()
    cpu, wall = agent_cpu(pipe) - cpu0, time.monotonic() - t0
    received = len(pipe.exits_of(uid)) - before
    return SteadyResult(
        target_rate=rate,
        rate=int(children) / float(seconds),
        children=int(children),
        exits_lost=max(0, int(children) + workers + 1 - received),
        agent_cpu_pct=100 * cpu / wall,
    )


def report(floods: list[FloodResult], steady: list[SteadyResult], secs: float) -> str:
    held = [s for s in steady if s.exits_lost == 0]
    best = max(held, key=lambda s: s.rate) if held else None
    lines = [
        "## Hostile local load: floods by an unprivileged user",
        "",
        f"`make bench-flood` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores): the full"
        " pipeline (agent -> mosquitto -> mosquitto_sub) while a user made for the run floods"
        f" the machine for {secs:.0f} s per load, as fast as it can. Every command line differs"
        f" (bench/execflood.c). {MARKERS} root markers with known exit codes run during each"
        " load. Exits lost: the flood's exits (its children, counted by the generator, and"
        " its own workers and main process) minus the user's exits received at the"
        " subscriber, each event_id once. Context lost: the agent's `dropped_context_kernel`"
        " (shed past the ring's context share, or not reserved); those exits arrive with null"
        " `exe`/`args`. Agent CPU: % of one core over the load and its drain.",
        "",
        "| load | rate reached (exits/s) | exits | exits lost | root markers lost |"
        " context lost | exec-cache evictions | agent CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in floods:
        lines.append(
            f"| {f.label} | {f.rate:,.0f} | {f.children:,} | {f.exits_lost:,} |"
            f" {f.markers_lost}/{MARKERS} | {f.context_lost:,} | {f.exec_cache_evicted:,} |"
            f" {f.agent_cpu_pct:.1f} % |"
        )
    lines += [
        "",
        f"Steady fork loads by the same user, {secs:.0f} s each (full pipeline):",
        "",
        "| target (exits/s) | reached | exits | exits lost | agent CPU |",
        "|---:|---:|---:|---:|---:|",
    ]
    for s in steady:
        lines.append(
            f"| {s.target_rate:,} | {s.rate:,.0f} | {s.children:,} | {s.exits_lost:,} |"
            f" {s.agent_cpu_pct:.1f} % |"
        )
    if best:
        lines += [
            "",
            f"Highest sustained rate held for {secs:.0f} s with 0 exits lost:"
            f" **{best.rate:,.0f} exits/s**.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--steady", default="5000,10000,15000", help="steady fork rates to try")
    ap.add_argument("--loads", default=",".join(load.key for load in LOADS))
    ap.add_argument("--procmon", default=str(Path(sys.executable).parent / "procmon"))
    ap.add_argument("--results", type=Path, default=BENCH / "results.md")
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "flood.json")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/flood.py: needs root (eBPF, a test user)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="procmon-flood-"))
    workdir.chmod(0o755)
    user = f"pmbench{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", user], check=True)
    pipe = None
    try:
        execflood, forkstorm = build(workdir)
        pipe = Pipeline(workdir, args.procmon)
        floods = []
        for load in LOADS:
            if load.key in args.loads.split(","):
                floods.append(run_flood(pipe, execflood, user, load, args.seconds))
                print(floods[-1], flush=True)
        steady = []
        for rate in (int(r) for r in args.steady.split(",") if r):
            steady.append(run_steady(pipe, forkstorm, user, rate, args.seconds))
            print(steady[-1], flush=True)
    finally:
        if pipe is not None:
            pipe.close()
        subprocess.run(["pkill", "-KILL", "-u", user], check=False)
        subprocess.run(["userdel", user], check=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"floods": [asdict(f) for f in floods], "steady": [asdict(s) for s in steady]})
    )
    text = report(floods, steady, args.seconds)
    write_section(args.results, "flood", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

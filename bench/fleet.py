"""`make bench-fleet`: how many hosts one mosquitto and `procmon subscribe` carry on this machine.

Capacity: H simulated hosts, each a real publisher connection (the agent's
`procmon.sinks.mqtt.MqttSink`, with its own SQLite spool, fed synthetic valid ExitEvents at R
exits/s), through one local mosquitto, to K `procmon subscribe` consumers in one `$share`
group. Each configuration runs for --duration seconds (60); it is *held* when every event
reached a consumer (0 lost, counted by event_id) and the consumers caught up within HELD_S of
the publishers' end (no backlog growing through the run). CPU of the broker, the consumers
and the publishers is read from /proc over the run.

Scale-out: N events queued for K persistent consumers in one `$share` group (mosquitto deals
them out round-robin, to offline members too), then all K start at once: throughput against K.

    .venv/bin/python bench/fleet.py                    # both, 60 s per configuration
    .venv/bin/python bench/fleet.py --duration 15 --configs 10x100,50x100
    .venv/bin/python bench/fleet.py --publisher ...    # (internal) one simulator process
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from helpers.mosquitto import Mosquitto  # noqa: E402 - the tests' broker helper
from procmon.event import ExitEvent  # noqa: E402

PY = str(REPO / ".venv/bin/python")
HELD_S = 5.0  # consumers done this soon after the publishers: no backlog built up
TICK_S = 0.05
PUBLISHER_PROCESSES = 2  # simulated hosts are spread over this many processes
CLK_TCK = os.sysconf("SC_CLK_TCK")
BOOT_ID = "0123abcd-0000-4000-8000-00000000f1ee"
DEFAULT_CONFIGS = "10x100,50x40,100x50,100x100,200x60,200x100"


# --- one simulator process: several hosts, each an MqttSink --------------------------------


def publisher_main(first: int, count: int, rate: float, duration: float, broker: str) -> int:
    """Hosts first..first+count-1, each emitting `rate` events/s for `duration` seconds."""
    from procmon.config import MqttConfig
    from procmon.sinks.mqtt import AgentIdentity, MqttSink
    from procmon.spool import Spool

    spool_dir = Path(tempfile.mkdtemp(prefix="fleet-spool-", dir="/dev/shm"))
    cfg = MqttConfig(broker=broker)
    sinks: list[MqttSink] = []
    templates: list[ExitEvent] = []
    for index in range(first, first + count):
        host = f"sim-{index:04d}"
        identity = AgentIdentity(host, "bench", "core", time.strftime("%Y-%m-%dT%H:%M:%SZ"))
        sinks.append(MqttSink(cfg, identity, Spool(spool_dir / f"{host}.db", 1_000_000)))
        templates.append(template_event(host))
    started = time.monotonic()
    emitted = [0] * count
    while (now := time.monotonic()) - started < duration:
        due = int(rate * (now - started))
        for i, sink in enumerate(sinks):
            if due > emitted[i]:
                base = templates[i]
                sink.emit(
                    [
                        base.model_copy(
                            update={
                                "event_id": f"{BOOT_ID}:{first + i}:{seq}",
                                "pid": seq % 4_000_000 + 2,
                                "tid": seq % 4_000_000 + 2,
                                "exit_code": seq % 4,
                            }
                        )
                        for seq in range(emitted[i], due)
                    ]
                )
                emitted[i] = due
        time.sleep(max(0.0, TICK_S - (time.monotonic() - now)))
    flushed = all(sink.flush(60) for sink in sinks)
    published = sum(sink.counters()["published"] for sink in sinks)
    for sink in sinks:
        sink.close()
    print(json.dumps({"emitted": sum(emitted), "published": published, "flushed": flushed}))
    return 0


def template_event(host: str) -> ExitEvent:
    from helpers.mqtt import sample_event

    return sample_event(1, host).model_copy(
        update={
            "exe": "/usr/bin/python3.11",
            "args": ("python3", "-m", "worker.job", "--queue=default") * 4,
            "cgroup": "/system.slice/worker.service",
            "unit": "worker.service",
            "parent_comm": "bash",
        }
    )


# --- measuring ------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def count_lines(paths: list[Path]) -> int:
    return sum(p.read_bytes().count(b"\n") for p in paths if p.exists())


def unique_ids(paths: list[Path]) -> int:
    ids: set[str] = set()
    for p in paths:
        for line in p.read_bytes().splitlines():
            ids.add(json.loads(line)["event_id"])
    return len(ids)


def start_consumers(url: str, k: int, workdir: Path, client_prefix: str | None) -> tuple[
    list[subprocess.Popen[bytes]], list[Path]
]:  # fmt: skip
    topic = "$share/fleet/procmon/+/exits" if k > 1 else "procmon/+/exits"
    procs, outs = [], []
    for i in range(k):
        out = workdir / f"consumer{i}.jsonl"
        cmd = [PY, "-m", "procmon.cli", "subscribe", topic, "--broker", url, "--output", str(out)]
        if client_prefix:
            cmd += ["--client-id", f"{client_prefix}-{i}"]
        procs.append(
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(f"{out}.err", "wb"))  # noqa: SIM115
        )
        outs.append(out)
    return procs, outs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


@dataclass
class Capacity:
    hosts: int
    rate_per_host: float
    consumers: int
    duration_s: float
    offered: int
    published: int
    received: int
    lost: int
    catch_up_s: float
    held: bool
    broker_cpu_pct: float
    consumer_cpu_pct: float
    publisher_cpu_pct: float


def run_capacity(hosts: int, rate: float, k: int, duration: float, workdir: Path) -> Capacity:
    workdir.mkdir(parents=True)
    broker = Mosquitto(workdir / "broker")
    broker.start()
    assert broker.proc is not None
    consumers, outs = start_consumers(broker.url, k, workdir, None)
    time.sleep(2.0)  # subscribed
    groups = min(PUBLISHER_PROCESSES, hosts)
    per = [hosts // groups + (1 if g < hosts % groups else 0) for g in range(groups)]
    firsts = [sum(per[:g]) for g in range(groups)]
    before = {p: cpu_s(p.pid) for p in [broker.proc, *consumers]}
    publishers = [
        subprocess.Popen(
            [PY, __file__, "--publisher", str(f), str(n), str(rate), str(duration), broker.url],
            stdout=subprocess.PIPE,
        )
        for f, n in zip(firsts, per, strict=True)
    ]
    started = time.monotonic()
    time.sleep(duration)
    broker_cpu = cpu_s(broker.proc.pid) - before[broker.proc]
    consumer_cpu = sum(cpu_s(p.pid) - before[p] for p in consumers)
    publisher_cpu = sum(cpu_s(p.pid) for p in publishers)
    ends = time.monotonic()
    reports = []
    for p in publishers:  # they stop emitting at `duration`, then flush their spools
        out, _ = p.communicate(timeout=180)
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    offered = sum(r["emitted"] for r in reports)
    deadline = time.monotonic() + 120
    while count_lines(outs) < offered and time.monotonic() < deadline:
        time.sleep(0.1)
    caught_up = time.monotonic()
    time.sleep(1.0)  # what the flush re-sent, if anything
    stop(consumers)
    broker.kill()
    emitted = offered
    received = unique_ids(outs)
    elapsed = ends - started
    catch_up = caught_up - ends
    return Capacity(
        hosts=hosts,
        rate_per_host=rate,
        consumers=k,
        duration_s=round(elapsed, 1),
        offered=emitted,
        published=sum(r["published"] for r in reports),
        received=received,
        lost=emitted - received,
        catch_up_s=round(catch_up, 2),
        held=emitted == received and catch_up <= HELD_S,
        broker_cpu_pct=round(broker_cpu / elapsed * 100, 1),
        consumer_cpu_pct=round(consumer_cpu / elapsed * 100, 1),
        publisher_cpu_pct=round(publisher_cpu / elapsed * 100, 1),
    )


@dataclass
class ShareRun:
    consumers: int
    events: int
    seconds: float
    rate: float
    consumer_cpu_s: float


def run_share(k: int, n: int, workdir: Path) -> ShareRun:
    """N events queued for K offline members of one $share group, then all K drain them."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from subscribe_throughput import publish, realistic_payloads

    workdir.mkdir(parents=True)
    broker = Mosquitto(workdir / "broker")
    broker.start()
    try:
        for i in range(k):  # persistent members, left offline
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"share-{i}", protocol=mqtt.MQTTv5
            )
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
            client.loop_start()
            client.subscribe("$share/fleet/procmon/+/exits" if k > 1 else "procmon/+/exits", 1)
            time.sleep(0.3)
            client.disconnect()
            client.loop_stop()
        publish(broker.port, realistic_payloads(n))
        started = time.monotonic()
        consumers, outs = start_consumers(broker.url, k, workdir, "share")
        first: float | None = None  # the first byte written: start-up left out
        while count_lines(outs) < n and time.monotonic() - started < 300:
            if first is None and any(p.exists() and p.stat().st_size for p in outs):
                first = time.monotonic()
            time.sleep(0.02)
        seconds = time.monotonic() - (first or started)
        cpu = sum(cpu_s(p.pid) for p in consumers)
        stop(consumers)
        return ShareRun(k, n, round(seconds, 2), round(n / seconds), round(cpu, 2))
    finally:
        broker.kill()


@dataclass
class Ceiling:
    consumer: str
    publishers: int
    events: int
    seconds: float
    rate: float
    broker_cpu_pct: float


def run_ceiling(consumer: str, publishers: int, per_publisher: int, workdir: Path) -> Ceiling:
    """mosquitto's own limit: C publishers (mosquitto_pub -l, QoS 1, 1,000 in flight) send
    as fast as they can; one mosquitto_sub, or two `procmon subscribe` in a $share group,
    take everything. Rate = events / time until the consumers have all of them."""
    workdir.mkdir(parents=True)
    broker = Mosquitto(workdir / "broker")
    broker.start()
    assert broker.proc is not None
    total = publishers * per_publisher
    try:
        if consumer == "mosquitto_sub":
            out = workdir / "sub.out"
            sink = open(out, "wb")  # noqa: SIM115 - the child's stdout
            consumers = [
                subprocess.Popen(
                    [
                        "mosquitto_sub", "-p", str(broker.port), "-q", "1", "-V", "mqttv5",
                        "-t", "procmon/+/exits", "-C", str(total),
                    ],
                    stdout=sink,
                )
            ]  # fmt: skip
            sink.close()
            outs = [out]
        else:
            consumers, outs = start_consumers(broker.url, 2, workdir, None)
        time.sleep(2.0)
        feeds = []
        for i in range(publishers):
            feed = workdir / f"feed{i}"
            host = f"sim-{i:04d}"
            base = template_event(host)
            lines = [
                base.model_copy(update={"event_id": f"{BOOT_ID}:{i}:{seq}", "pid": seq + 2})
                .model_dump_json()
                .encode()
                for seq in range(per_publisher)
            ]
            feed.write_bytes(b"\n".join(lines) + b"\n")
            feeds.append((feed, host))
        before = cpu_s(broker.proc.pid)
        started = time.monotonic()
        pubs = [
            subprocess.Popen(
                [
                    "mosquitto_pub", "-p", str(broker.port), "-q", "1", "-V", "mqttv5",
                    "-M", "1000", "-l", "-t", f"procmon/{host}/exits",
                ],
                stdin=open(feed, "rb"),  # noqa: SIM115
            )
            for feed, host in feeds
        ]  # fmt: skip
        while count_lines(outs) < total and time.monotonic() - started < 300:
            time.sleep(0.05)
        seconds = time.monotonic() - started
        broker_cpu = cpu_s(broker.proc.pid) - before
        for p in pubs:
            p.wait(30)
        stop(consumers)
        return Ceiling(
            consumer, publishers, total, round(seconds, 2), round(total / seconds),
            round(broker_cpu / seconds * 100, 1),
        )  # fmt: skip
    finally:
        broker.kill()


# --- report ---------------------------------------------------------------------------------


SHARE_HEADER = (
    "| consumers | events | runs | events/s (median) | range | consumers' CPU µs/event "
    "(with start-up) |\n|---|---|---|---|---|---|"
)
CEILING_HEADER = (
    "| consumers | publishers | events | seconds | events/s | broker CPU % "
    "| broker CPU µs/event | one core at 100 %: events/s |\n|---|---|---|---|---|---|---|---|"
)
CAPACITY_HEADER = (
    "| hosts | exits/s per host | exits/s total | consumers | events | lost | caught up after s "
    "| held | broker CPU % | consumers CPU % | publishers CPU % |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def report(
    capacity: list[Capacity],
    share: list[ShareRun],
    ceiling: list[Ceiling],
    args: argparse.Namespace,
) -> None:
    cap_rows = "\n".join(
        f"| {c.hosts} | {c.rate_per_host:g} | {c.hosts * c.rate_per_host:,.0f} | {c.consumers} | "
        f"{c.offered:,} | {c.lost:,} | {c.catch_up_s:.1f} | {'yes' if c.held else '**no**'} | "
        f"{c.broker_cpu_pct:.0f} | {c.consumer_cpu_pct:.0f} | {c.publisher_cpu_pct:.0f} |"
        for c in capacity
    )
    share_rows = "\n".join(
        f"| {k} | {mine[0].events:,} | {len(mine)} | "
        f"{statistics.median(x.rate for x in mine):,.0f} | "
        f"{min(x.rate for x in mine):,.0f}-{max(x.rate for x in mine):,.0f} | "
        f"{statistics.median(x.consumer_cpu_s for x in mine) / mine[0].events * 1e6:.1f} |"
        for k in sorted({x.consumers for x in share})
        for mine in [[x for x in share if x.consumers == k]]
    )
    ceiling_rows = "\n".join(
        f"| {c.consumer} | {c.publishers} | {c.events:,} | {c.seconds:.2f} | {c.rate:,.0f} | "
        f"{c.broker_cpu_pct:.0f} | {broker_us(c.broker_cpu_pct, c.rate):.1f} | "
        f"{1e6 / broker_us(c.broker_cpu_pct, c.rate):,.0f} |"
        for c in ceiling
    )
    per_event = [broker_us(c.broker_cpu_pct, c.hosts * c.rate_per_host) for c in capacity]
    per_event += [broker_us(c.broker_cpu_pct, c.rate) for c in ceiling]
    saturation = 1e6 / statistics.median(per_event) if per_event else 0.0
    held = [c for c in capacity if c.held]
    best = max(held, key=lambda c: c.hosts * c.rate_per_host) if held else None
    first_fail = next((c for c in capacity if not c.held), None)
    headline = (
        f"Held: up to **{best.hosts} hosts x {best.rate_per_host:g} exits/s = "
        f"{best.hosts * best.rate_per_host:,.0f} exits/s** with 0 lost"
        if best
        else "No configuration was held"
    )
    if first_fail:
        headline += (
            f"; not held from {first_fail.hosts} x {first_fail.rate_per_host:g} = "
            f"{first_fail.hosts * first_fail.rate_per_host:,.0f}/s (lost "
            f"{first_fail.lost:,}, caught up after {first_fail.catch_up_s:.1f} s)"
        )
        total_cpu = (
            first_fail.broker_cpu_pct + first_fail.consumer_cpu_pct + first_fail.publisher_cpu_pct
        )
        headline += (
            f". There the three parts used {total_cpu:.0f} % of a core between them (broker "
            f"{first_fail.broker_cpu_pct:.0f} %), beside the other work on the machine: the 2 "
            f"CPUs ran out, not mosquitto's thread; the backlog waited in the agents' spools "
            f"and the broker's queue and was delivered after the end"
        )
    text = f"""# Fleet capacity: simulated hosts -> one mosquitto -> `procmon subscribe`

`make bench-fleet` (bench/fleet.py), {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
{os.cpu_count()} CPUs shared with other engineers' work (load average {os.getloadavg()[0]:.1f}
at the end). Every part runs on these 2 CPUs: the simulated hosts, the broker and the
consumers compete for them, so "where it saturates" is where *this machine* saturates; the CPU
columns say which part needs what. CPU is % of one core over the run.

## Capacity

H hosts, each a real MQTT connection made by the agent's `MqttSink` (its SQLite spool on
tmpfs, QoS 1, MQTT 5), in {PUBLISHER_PROCESSES} simulator processes, emitting R synthetic valid
events/s (about 1.1 kB each) for {args.duration:g} s, through one mosquitto 2.0
(`max_queued_messages 0`, `max_inflight_messages 0`) to {args.consumers} `procmon subscribe`
consumers in one `$share` group. Held = every event reached a consumer (by event_id) and the
consumers caught up within {HELD_S:g} s of the publishers' end.

{headline}.

{CAPACITY_HEADER}
{cap_rows}

## Scale-out: consumers in one `$share` group

{share[0].events if share else 0:,} events queued for K persistent members of
`$share/fleet/procmon/+/exits` (K = 1: a plain subscription), then all K started at once;
time from the first byte any of them wrote (start-up left out) until every event was written;
runs interleaved.

{SHARE_HEADER}
{share_rows}

On this machine the consumers, the broker and five other engineers' jobs share 2 CPUs, and
the runs of one K vary by 2-4x: no gain from more consumers shows above that noise, because
there is no idle CPU for them to use. The consumers' CPU per event (all K together, each
with its own start-up of about 0.25 s of CPU) grows with K by those start-ups only: the
work is split, not repeated, and each consumer validates about 60,000 events per
CPU-second (bench/subscribe.md). So a `$share` group scales with the CPUs given to its
members: K consumers on K free CPUs (or hosts) carry about K x 60,000/s, up to the broker's
limit below.

## Where one mosquitto saturates

The simulated hosts above cost more CPU than the broker, so on 2 CPUs they run out before
mosquitto does. To find the broker's own limit, cheap C clients replace them: C
`mosquitto_pub -l -q 1 -M 1000` processes (one host topic each) send pre-built valid events
as fast as they can, to one `mosquitto_sub` (unvalidated) or to two `procmon subscribe` in a
`$share` group; rate = events / time until the consumers have them all.

{CEILING_HEADER}
{ceiling_rows}

mosquitto never reached 100 % of a core here: with five other engineers' work on the same 2
CPUs (load average 5-10), every process got a share of a core, the broker included. What is
stable across every run above (capacity and ceiling) is the broker's CPU per event, in and
out at QoS 1 with one consumer group: a median of
**{statistics.median(per_event) if per_event else 0:.1f} µs**, so one mosquitto (one thread)
saturates at about **{saturation:,.0f} events/s** on this machine's cores, whatever the
number of hosts behind it. Each more consumer group (a second `$share` group, a plain
subscriber) adds an outbound copy of every event.
"""
    args.results.write_text(text)
    print(text)
    plot(capacity, share, args.plot)


def broker_us(cpu_pct: float, rate: float) -> float:
    """The broker's CPU per event, in microseconds, from its CPU share at a rate."""
    return cpu_pct / 100 / rate * 1e6 if rate else 0.0


def load_previous() -> dict[str, list[dict[str, object]]]:
    path = REPO / "bench/out/fleet.json"
    return json.loads(path.read_text()) if path.exists() else {}


def plot(capacity: list[Capacity], share: list[ShareRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    totals = [c.hosts * c.rate_per_host for c in capacity]
    for key, label in (
        ("broker_cpu_pct", "broker"),
        ("consumer_cpu_pct", "consumers"),
        ("publisher_cpu_pct", "simulated hosts"),
    ):
        left.plot(totals, [getattr(c, key) for c in capacity], marker="o", label=label)
    for c, total in zip(capacity, totals, strict=True):
        if not c.held:
            left.axvline(total, color="red", linestyle=":", linewidth=1)
    left.set_xlabel("offered exits/s (all hosts)")
    left.set_ylabel("CPU, % of one core")
    left.set_title("capacity (red: not held)")
    left.legend(fontsize=8)
    if share:
        ks = sorted({x.consumers for x in share})
        rates = [statistics.median(x.rate for x in share if x.consumers == k) for k in ks]
        right.scatter([x.consumers for x in share], [x.rate for x in share], s=8, color="#999")
        right.plot(ks, rates, marker="o")
        right.set_xlabel("consumers in the $share group")
        right.set_ylabel("validated events/s (median, runs in grey)")
        right.set_xticks(ks)
        right.set_title("scale-out (2 CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="HOSTSxRATE,...")
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--share-events", type=int, default=40_000)
    parser.add_argument("--share-max", type=int, default=4)
    parser.add_argument("--share-reps", type=int, default=3)
    parser.add_argument("--skip-capacity", action="store_true")
    parser.add_argument("--skip-share", action="store_true")
    parser.add_argument("--skip-ceiling", action="store_true")
    parser.add_argument(
        "--keep-skipped", action="store_true", help="reuse bench/out/fleet.json for skipped parts"
    )
    parser.add_argument("--results", type=Path, default=REPO / "bench/fleet.md")
    parser.add_argument("--plot", type=Path, default=REPO / "bench/fleet.png")
    parser.add_argument("--publisher", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publisher:
        first, count, rate, duration, broker = args.publisher
        return publisher_main(int(first), int(count), float(rate), float(duration), broker)
    sys.path.insert(0, str(REPO / "bench"))
    out = REPO / "bench/out"
    out.mkdir(exist_ok=True)
    previous = load_previous() if args.keep_skipped else {}
    capacity = [Capacity(**c) for c in previous.get("capacity", [])]  # type: ignore[arg-type]
    share = [ShareRun(**s) for s in previous.get("share", [])]  # type: ignore[arg-type]
    ceiling = [Ceiling(**c) for c in previous.get("ceiling", [])]  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="procmon-fleet-") as tmp:
        if not args.skip_ceiling:
            ceiling = []
            for consumer, pubs in (("mosquitto_sub", 2), ("mosquitto_sub", 4), ("procmon", 4)):
                ceiling.append(
                    run_ceiling(consumer, pubs, 25_000, Path(tmp) / f"c{consumer}{pubs}")
                )
                print(ceiling[-1], flush=True)
        if not args.skip_share:
            share = []
            for rep in range(args.share_reps):  # interleaved: K = 1..max, then again
                for k in range(1, args.share_max + 1):
                    workdir = Path(tmp) / f"share{k}-{rep}"
                    share.append(run_share(k, args.share_events, workdir))
                    print(share[-1], flush=True)
        if not args.skip_capacity:
            capacity = []
            for spec in args.configs.split(","):
                hosts, rate = spec.split("x")
                result = run_capacity(
                    int(hosts), float(rate), args.consumers, args.duration, Path(tmp) / spec
                )
                capacity.append(result)
                print(result, flush=True)
    (out / "fleet.json").write_text(
        json.dumps(
            {
                "capacity": [asdict(c) for c in capacity],
                "share": [asdict(s) for s in share],
                "ceiling": [asdict(c) for c in ceiling],
            }
        )
    )
    report(capacity, share, ceiling, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

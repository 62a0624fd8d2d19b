#!/usr/bin/env python3
"""CPU per message of the agent's MQTT client, before and after a change, in the same run.

Two measures, each in a fresh child process against one local mosquitto (QoS 1, no in-flight
cap, TCP_NODELAY): "wire", the bare client (open_link, PublishEncoder, Link reads and writes,
a window of 256) sending N messages of 724 bytes as fast as acks allow; "sink", MqttSink with
its SQLite spool, fed batches of 100 ExitEvents, until the spool is empty. CPU is the child's
process time (every thread) over N. "before" is the code at a git revision (default the
branch's merge base with main), extracted to a temporary directory; runs alternate.

Usage: .venv/bin/python bench/mqtt_cost.py [--rev REV] [--messages N] [--reps R]
No root needed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

# Run in the child with PYTHONPATH at one source tree; imports work with both layouts.
CHILD = r"""
import json, os, sys, time, tempfile
from pathlib import Path
kind, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    from procmon.mqtt import wire
    from procmon.mqtt.broker_url import parse_broker_url
    from procmon.mqtt.conn import open_link
except ImportError:
    from procmon.sinks import mqtt_wire as wire
    from procmon.broker_url import parse_broker_url
    from procmon.sinks.mqtt_conn import open_link
import select

payload = b"x" * 724
if kind == "wire":
    stop = os.eventfd(0)
    packet = wire.encode_connect(protocol=5, client_id=f"bench-{os.getpid()}", keepalive=60)
    link, _ = open_link(parse_broker_url(url), None, packet, 5, stop)
    encoder = wire.PublishEncoder("bench/wire", protocol=5, properties=[(0x01, 1)])
    start = time.process_time()
    sent = acked = 0
    next_id = 0
    poller = select.poll()
    poller.register(link.fileno(), select.POLLIN)
    while acked < n:
        while sent < n and sent - acked < 256:
            next_id = next_id + 1 if next_id < 0xFFFF else 1
            encoder.encode_into(link.out, next_id, payload)
            sent += 1
        while not link.flush():
            pass
        poller.poll(1000)
        for p in link.read() or []:
            acked += len(p.packet_ids) if hasattr(p, "packet_ids") else 1
    cpu = time.process_time() - start
    link.close()
else:
    sys.path.insert(0, os.environ["BENCH_TESTS"])
    from helpers.mqtt import sample_event
    from procmon.config import MqttConfig
    from procmon.sinks.mqtt import AgentIdentity, MqttSink
    from procmon.spool import Spool
    events = [sample_event(i) for i in range(100)]
    with tempfile.TemporaryDirectory() as tmp:
        sink = MqttSink(
            MqttConfig(broker=url), AgentIdentity("bench", "b", "core", "now"),
            Spool(Path(tmp) / "spool.db", 10 * n),
        )
        while not sink.connected:
            time.sleep(0.01)
        start = time.process_time()
        for _ in range(n // 100):
            sink.emit(events)
        while sink.counters()["spool_depth"]:
            time.sleep(0.005)
        cpu = time.process_time() - start
        sink.close()
print(json.dumps({"us_per_message": cpu / n * 1e6}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\n"
        "max_queued_messages 0\nset_tcp_nodelay true\nuser root\n"
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def measure(tree: Path, kind: str, url: str, n: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "BENCH_TESTS": str(REPO / "tests")}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, url, str(n)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["us_per_message"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", help="the 'before' revision (default: merge base with main)")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    rev = (
        args.rev
        or subprocess.run(
            ["git", "merge-base", "HEAD", "main"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(
            ["git", "archive", rev, "agent"], cwd=REPO, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        trees = {"before": before / "agent", "after": REPO / "agent"}
        broker, url = start_broker(Path(tmp))
        try:
            results: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.reps):
                for kind in ("wire", "sink"):
                    for name, tree in trees.items():  # alternate: same machine state for both
                        value = measure(tree, kind, url, args.messages)
                        results.setdefault((kind, name), []).append(value)
        finally:
            broker.terminate()
            broker.wait()
    print(f"before = {rev[:10]}, {args.messages} messages of 724 B, QoS 1, {args.reps} reps")
    print("| measure | before µs/msg (median) | after µs/msg (median) | after/before |")
    print("|---|---|---|---|")
    for kind in ("wire", "sink"):
        b = statistics.median(results[(kind, "before")])
        a = statistics.median(results[(kind, "after")])
        runs = ", ".join(f"{x:.2f}" for x in results[(kind, "after")])
        print(f"| {kind} | {b:.2f} | {a:.2f} ({runs}) | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

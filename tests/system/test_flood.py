"""No user can blind the monitor: an unprivileged user's exec flood may cost context, never
another user's exit.

The finding: an unprivileged user looping execv("/bin/true", 511 arguments), 8 at a time, made
the agent lose 7-17 of 40 root exits, because exec records filled the ring buffer that exits
share. Now context records enter the ring only below its context share (probe.context_fill_pct,
half the ring) and every lost context record is counted.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.common import REPO, require
from helpers.mosquitto import Mosquitto
from helpers.mqtt import SLOW, AgentProcess, Collector, wait_until

pytestmark = pytest.mark.bpf

MARKERS = 40
FLOOD_S = 20  # the end-to-end flood: long enough for the markers on a loaded machine


@pytest.fixture(scope="module")
def execflood(cc: str) -> Iterator[Path]:
    """bench/execflood.c, built where an unprivileged user can run it."""
    where = Path(tempfile.mkdtemp(prefix="procmon-flood-"))
    where.chmod(0o755)
    out = where / "execflood"
    subprocess.run([cc, "-O2", "-o", str(out), str(REPO / "bench/execflood.c")], check=True)
    yield out
    shutil.rmtree(where)


@pytest.fixture
def flood_user() -> Iterator[str]:
    """A real unprivileged user, made for the test and removed after it."""
    require(os.geteuid() == 0, "needs root to add a user")
    name = f"pmflood{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False)
        subprocess.run(["userdel", name], check=False)


def start_flood(
    execflood: Path, user: str, seconds: float, workers: int, nargs: int, arglen: int
) -> subprocess.Popen[str]:
    cmd = [str(execflood), str(seconds), str(workers), str(nargs), str(arglen)]
    return subprocess.Popen(
        ["runuser", "-u", user, "--", *cmd], stdout=subprocess.PIPE, text=True, cwd="/"
    )


def run_markers(flood: subprocess.Popen[str], spacing_s: float) -> dict[int, int]:
    """Root processes with known exit codes, up to MARKERS, each started while the flood
    lasts (a loaded machine runs them slower): pid -> code."""
    markers: dict[int, int] = {}
    time.sleep(0.5)  # the flood is under way
    for i in range(MARKERS):
        if flood.poll() is not None:
            break
        code = 100 + i
        marker = subprocess.Popen(["/bin/sh", "-c", f"exit {code}"])
        assert marker.wait() == code
        markers[marker.pid] = code
        time.sleep(spacing_s)
    assert len(markers) >= MARKERS // 2, f"only {len(markers)} markers during the flood"
    return markers


def flood_rate(flood: subprocess.Popen[str]) -> float:
    out, _ = flood.communicate(timeout=SLOW)
    children, seconds = out.split()
    return int(children) / float(seconds)


def stalled_flood(
    collect: Callable[..., Any], execflood: Path, user: str, context_fill_pct: int
) -> tuple[Any, dict[int, int], dict[int, int]]:
    """An exec flood while nobody drains the ring (an agent that is slow, stopped or busy):
    the probe, the markers (pid -> code) and the markers' exits that arrived."""
    c = collect(context_fill_pct=context_fill_pct)  # attached, not polled until the end
    flood = start_flood(execflood, user, 6, 4, 511, 1)
    markers = run_markers(flood, 0.05)
    flood_rate(flood)
    c.poll_until(lambda evs: markers.keys() <= {e.pid for e in evs}, timeout=10)
    return c.probe, markers, {e.pid: e.exit_code for e in c.events if e.pid in markers}


def test_stalled_consumer_exec_flood_costs_context_not_exits(
    bpf_ready: None, collect: Callable[..., Any], execflood: Path, flood_user: str
) -> None:
    """The probe keeps half the ring for exits: the flood fills only the context share, and
    every exit still fits. 6 s of 1.3 KB exec records is far more than the 2 MiB share, so
    context was shed, and counted."""
    probe, markers, arrived = stalled_flood(collect, execflood, flood_user, 50)
    assert arrived == markers
    assert probe.kernel_drops() == 0
    assert probe.context_drops() > 0


def test_without_the_context_share_the_same_flood_loses_exits(
    bpf_ready: None, collect: Callable[..., Any], execflood: Path, flood_user: str
) -> None:
    """The finding as it was (probe.context_fill_pct = 0): exec records take the whole ring,
    and exits are lost with them. Shows the test above can fail."""
    probe, markers, arrived = stalled_flood(collect, execflood, flood_user, 0)
    assert probe.kernel_drops() > 0
    assert len(arrived) < len(markers)


def test_unprivileged_exec_flood_loses_no_root_exit_end_to_end(
    agent_ready: None,
    broker: Mosquitto,
    agents: Callable[..., AgentProcess],
    execflood: Path,
    flood_user: str,
) -> None:
    """The finding, reproduced through the whole pipeline: agent -> mosquitto -> subscriber.
    Each flood command line differs (a cache keyed by the command line does not help), so
    the agent decodes and redacts every one of them. Every root marker arrives; every flood
    exit that lacks its context is accounted for by a counter."""
    agent = agents(broker.url).start()
    host = agent.host_id
    exits_topic = f"procmon/{host}/exits"
    collector = Collector(broker, [exits_topic, f"procmon/{host}/stats"])
    try:
        flood = start_flood(execflood, flood_user, FLOOD_S, 8, 511, 1)
        markers = run_markers(flood, 0.2)
        rate = flood_rate(flood)
        events: dict[int, dict[str, Any]] = {}
        seen = 0

        def markers_arrived() -> bool:
            nonlocal seen
            msgs = collector.on(exits_topic)
            for m in msgs[seen:]:
                e = m.json()
                events[e["pid"]] = e
            seen = len(msgs)
            return markers.keys() <= events.keys()

        wait_until(markers_arrived, SLOW, "every root marker's exit")
        got = {pid: events[pid]["exit_code"] for pid in markers}
        assert got == markers, f"at {rate:.0f} execs/s"
        assert agent.terminate() == 0
        stats_topic = f"procmon/{host}/stats"
        # the final stats follow the last event
        total = int(agent.stdout().rsplit("Total process exits monitored:", 1)[1].split()[0])
        wait_until(
            lambda: (collector.last_json(stats_topic) or {}).get("published") == total,
            SLOW,
            "the final stats",
        )
        markers_arrived()
        stats = collector.last_json(stats_topic)
        assert stats["dropped_kernel"] == 0, stats
        uid = pwd.getpwnam(flood_user).pw_uid
        flood_exits = [e for e in events.values() if e["uid"] == uid and e["comm"] == "true"]
        assert len(flood_exits) > 0.5 * rate * FLOOD_S, "the flood's own exits must arrive too"
        unexplained = sum(e["exe"] is None for e in flood_exits)
        counted = stats["dropped_context_kernel"] + stats["exec_cache_evicted"]
        assert unexplained <= counted, json.dumps(stats)
    finally:
        collector.close()

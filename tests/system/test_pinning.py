"""Pinned probes: exits during an agent's absence wait in the kernel for the next agent."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers.common import require
from helpers.mosquitto import Mosquitto
from helpers.mqtt import SLOW, AgentProcess, Collector, unique_host, wait_until
from procmon.probe import ProbeKnobs, RawExit
from procmon.probe.core import CoreProbe, unpin_all

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_ready")]


@pytest.fixture
def pin_root() -> Iterator[Path]:
    require(os.path.ismount("/sys/fs/bpf"), "bpffs is not mounted at /sys/fs/bpf")
    root = Path(f"/sys/fs/bpf/procmon-test-{os.getpid()}")
    yield root
    unpin_all(root)
    if root.exists():
        root.rmdir()


def exits_of(probe: CoreProbe, pids: set[int]) -> set[int]:
    seen: set[int] = set()
    for _ in range(40):
        seen |= {r.pid for r in probe.poll(50) if isinstance(r, RawExit) and r.pid in pids}
        if seen == pids:
            break
    return seen


def run_exits(n: int) -> set[int]:
    pids = set()
    for _ in range(n):
        proc = subprocess.Popen(["true"])
        proc.wait()
        pids.add(proc.pid)
    return pids


def test_exits_between_two_agents_are_kept(pin_root: Path) -> None:
    first = CoreProbe(ProbeKnobs(), pin_dir=pin_root)
    assert not first.reused_pins
    before = run_exits(5)
    assert exits_of(first, before) == before
    first.detach()  # what an agent does on SIGTERM; SIGKILL does not even get this far
    first.close()

    during = run_exits(20)  # no agent runs now

    second = CoreProbe(ProbeKnobs(), pin_dir=pin_root)
    assert second.reused_pins
    assert exits_of(second, during) == during
    assert second.kernel_drops() == 0
    second.close()


def test_unpinned_probe_loses_the_gap() -> None:
    first = CoreProbe(ProbeKnobs())
    first.detach()
    first.close()
    during = run_exits(5)
    second = CoreProbe(ProbeKnobs())
    assert exits_of(second, during) == set()
    second.detach()
    second.close()


def test_changed_knobs_replace_old_pins(pin_root: Path) -> None:
    old = CoreProbe(ProbeKnobs(), pin_dir=pin_root)
    old.close()
    (old_set,) = [p.name for p in pin_root.iterdir()]
    new = CoreProbe(ProbeKnobs(failed_only=True), pin_dir=pin_root)
    assert not new.reused_pins
    (new_set,) = [p.name for p in pin_root.iterdir()]
    assert new_set != old_set
    succeeded = run_exits(1)
    # The replaced probe is detached: only the failed-only probe remains, and it skips these.
    assert exits_of(new, succeeded) == set()
    new.close()


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "unpinned"])
def test_agent_sigkill_restart(
    pinned: bool,
    pin_root: Path,
    broker: Mosquitto,
    agents: Callable[..., AgentProcess],
    agent_ready: None,
    forkstorm: Path,
) -> None:
    """SIGKILL the real agent, run 3 s of exits at 1k/s while it is gone, restart it: with
    pins every exit of the gap is published; without, none is (what pinning prevents)."""
    env = {"PROCMON_PROBE__PIN_DIR": str(pin_root)} if pinned else {}
    host = unique_host()
    collector = Collector(broker, [f"procmon/{host}/exits"])
    try:
        first = agents(broker.url, host_id=host, env=env).start()
        first.kill()
        name = f"gap{secrets.token_hex(3)}"
        storm = forkstorm.with_name(name)
        shutil.copy(forkstorm, storm)
        subprocess.run([str(storm), "3000", "1", "1000"], check=True, stdout=subprocess.DEVNULL)
        gap = 3000 + 2  # children, the worker and the main process
        agents(broker.url, host_id=host, env=env).start()
        topic = f"procmon/{host}/exits"

        def delivered() -> int:
            return len({m.json()["pid"] for m in collector.on(topic) if m.json()["comm"] == name})

        if pinned:
            wait_until(lambda: delivered() == gap, SLOW, "the gap's exits")
        else:
            later = run_exits(1)  # published after the restart: the agent works
            wait_until(
                lambda: any(m.json()["pid"] in later for m in collector.on(topic)),
                SLOW,
                "a live exit",
            )
            assert delivered() == 0
    finally:
        collector.close()

"""The real agent's log lines as journald receives them: with JOURNAL_STREAM naming its stderr
(what systemd sets for a unit whose stderr is the journal), each line starts with its `<N>`
priority and carries no timestamp; the global --log-level applies; one line at stop.

PID 1 is not systemd on the test machines, so the stream is the agent's stderr file, named by
its device and inode exactly as systemd names the journal's socket. The journal's own side
(`journalctl -p warning`) runs in the nspawn fleet: tests/system/fleet/journald_check.py."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.mosquitto import Mosquitto
from helpers.mqtt import AgentProcess, wait_until

pytestmark = [pytest.mark.bpf, pytest.mark.mqtt, pytest.mark.usefixtures("agent_ready")]

# A username that is not the host id and goes over plain mqtt://: two warnings at start.
WARNING_CONFIG = "log_level = 'info'\n[mqtt]\nusername = 'someone-else'\n"
PRIORITY_LINE = re.compile(r"^<([0-7])>procmon[.\w]*: ")


def _journal_stream_of(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def _start(
    agents: Callable[..., AgentProcess],
    broker: Mosquitto,
    tmp_path: Path,
    journal: bool,
    global_args: tuple[str, ...] = (),
) -> AgentProcess:
    n = len(list(tmp_path.glob("agent*")))
    stderr = tmp_path / f"agent{n}" / "agent.stderr"  # the agents fixture's layout
    stream = _journal_stream_of(stderr) if journal else _journal_stream_of(tmp_path / "other")
    agent = agents(
        broker.url,
        config=WARNING_CONFIG,
        env={"JOURNAL_STREAM": stream},
        global_args=global_args,
    )
    assert agent.stderr_path == stderr
    return agent.start()


def test_under_the_journal_lines_carry_priorities_and_no_timestamp(
    agents: Callable[..., AgentProcess], broker: Mosquitto, tmp_path: Path
) -> None:
    agent = _start(agents, broker, tmp_path, journal=True)
    wait_until(lambda: "running:" in agent.stderr(), what="the running line")
    assert agent.terminate() == 0
    lines = agent.stderr().splitlines()
    assert lines, "no log lines"
    priorities = []
    for line in lines:
        match = PRIORITY_LINE.match(line)
        assert match, f"no <N> priority prefix: {line!r}"
        priorities.append(int(match.group(1)))
    assert not any(re.search(r"\d\d:\d\d:\d\d", line) for line in lines), lines
    assert 4 in priorities, "the username warnings are <4>"
    assert any(line.startswith("<6>procmon.agent: running: host ") for line in lines)
    (stop,) = [line for line in lines if "stopped:" in line]
    assert re.match(
        r"<6>procmon\.agent: stopped: \d+ exits seen, \d+ published; dropped: 0 in the kernel "
        r"ring, 0 unspoolable, 0 from a full spool, \d+ context records$",
        stop,
    ), stop


def test_another_stream_keeps_timestamps(
    agents: Callable[..., AgentProcess], broker: Mosquitto, tmp_path: Path
) -> None:
    """JOURNAL_STREAM inherited by a process whose stderr is elsewhere (sd-daemon(3)): plain."""
    agent = _start(agents, broker, tmp_path, journal=False)
    assert agent.terminate() == 0
    lines = agent.stderr().splitlines()
    assert lines
    assert not any(PRIORITY_LINE.match(line) for line in lines), lines
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ procmon", x) for x in lines)


def test_global_log_level_applies_to_the_agent(
    agents: Callable[..., AgentProcess], broker: Mosquitto, tmp_path: Path
) -> None:
    """`procmon --log-level warning agent` printed INFO lines: the config's level won."""
    agent = _start(agents, broker, tmp_path, journal=True, global_args=("--log-level", "warning"))
    assert agent.terminate() == 0
    lines = agent.stderr().splitlines()
    assert any(line.startswith("<4>") for line in lines), lines
    assert not any(line.startswith(("<6>", "<7>")) for line in lines), lines

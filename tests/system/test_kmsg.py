"""The kmsg sink puts the seed module's lines in the kernel log, as the seed did."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.common import require
from procmon.event import EventBuilder
from procmon.probe.record import FLAG_GROUP_DEAD, RawExit
from procmon.sinks.kmsg import KmsgSink

DEVKMSG = Path("/proc/sys/kernel/printk_devkmsg")


@pytest.fixture
def devkmsg_on() -> Iterator[None]:
    """The default (ratelimit) drops bursts; the test wants every line."""
    require(os.geteuid() == 0, "writing /dev/kmsg needs root")
    before = DEVKMSG.read_text().strip()
    DEVKMSG.write_text("on\n")
    yield
    DEVKMSG.write_text(before + "\n")


@pytest.mark.usefixtures("devkmsg_on")
def test_seed_lines_reach_dmesg() -> None:
    name = f"pm{secrets.token_hex(4)}"
    rec = RawExit(
        2, 1, 5, 3, 8, 1, 1, 4242, 4242, 1, 0, 0, 0, 1, 4242, FLAG_GROUP_DEAD, name.encode()
    )
    event = EventBuilder("h", "core").build(rec)
    sink = KmsgSink()
    sink.emit([event])
    total = secrets.randbelow(10**9)
    sink.on_stop(total)
    sink.close()
    log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    assert f"PROCESS_MONITOR: Process exiting - PID: 4242, Name: {name}, Parent PID: 1" in log
    assert "PROCESS_MONITOR:   User time: 5 ns, System time: 3 ns" in log
    assert f"PROCESS_MONITOR: Total process exits monitored: {total}" in log
    assert sink.failed == 0

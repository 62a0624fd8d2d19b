"""`make demo` (procmon.demo) end to end: a broker run as its own user, the agent, a subscriber
in the human format, and the three sample exits it starts itself; Ctrl-C stops it all."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from helpers.common import REPO
from helpers.mqtt import PY, SLOW

pytestmark = pytest.mark.usefixtures("agent_ready")


def test_demo_shows_each_kind_of_exit_and_stops_on_ctrl_c() -> None:
    env = {**os.environ, "DEMO_BROKER_PORT": "0"}
    env.pop("NO_COLOR", None)
    demo = subprocess.Popen(
        [PY, "-m", "procmon.demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    lines: list[str] = []
    assert demo.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout or ()), daemon=True)
    reader.start()
    wanted: dict[str, Callable[[str], bool]] = {
        "failing": lambda line: " sh pid=" in line and " exit code 3 " in line,
        "killed": lambda line: " sleep pid=" in line and " killed by SIGKILL from pid " in line,
        "crash": lambda line: " pid=" in line and " crashed: SIGSEGV" in line,
    }
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 90
    try:
        while len(seen) < len(wanted) and time.monotonic() < deadline and demo.poll() is None:
            for line in list(lines):
                for kind, match in wanted.items():
                    if kind not in seen and match(line):
                        seen[kind] = line
            time.sleep(0.2)
    finally:
        demo.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            status = demo.wait(timeout=SLOW)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    err = demo.stderr.read() if demo.stderr else ""
    assert set(seen) == set(wanted), f"seen {sorted(seen)} in {len(lines)} lines; stderr:\n{err}"
    assert status == 0, err
    assert "sh -c 'exit 3'" in err  # it says how to try one's own
    assert "should not be run as root" not in err
    assert "\x1b[" not in "".join(lines)  # no colour into a pipe
    # Human lines: a zone after the time, then the host.
    first = seen["failing"].split()
    assert first[1].isalpha() or first[2].isalpha(), seen["failing"]

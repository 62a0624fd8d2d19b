"""Scratch cgroup v2 directories for real-eBPF tests: processes run inside them, and they are
removed as soon as their last task has left (fixtures `cgroup_root`, `scratch_cgroups`:
tests/system/conftest.py)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from helpers.mqtt import SLOW


def remove_cgroup(path: Path) -> None:
    """rmdir as soon as the last task has left (a moment after it is reaped)."""
    for _ in range(100):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
    path.rmdir()


def run_in_cgroup(group: Path, *argv: str) -> int:
    """Run argv inside group (the shell moves itself there, then execs): returns the pid."""
    script = f'echo $$ > {group}/cgroup.procs && exec "$@"'
    proc = subprocess.Popen(["/bin/sh", "-c", script, "sh", *argv])
    proc.wait(timeout=SLOW)
    return proc.pid

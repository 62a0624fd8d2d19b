"""The agent gives up CAP_SYS_PTRACE once the /proc seed is done (in a child process, so this
one keeps what it has)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
from procmon.privilege import CAP_SYS_PTRACE, drop_capability, has_capability
before = has_capability(CAP_SYS_PTRACE)
dropped = drop_capability(CAP_SYS_PTRACE)
status = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith("Cap"))
bit = [int(status[s], 16) >> CAP_SYS_PTRACE & 1 for s in ("CapEff", "CapPrm")]
print(before, dropped, has_capability(CAP_SYS_PTRACE), drop_capability(CAP_SYS_PTRACE), *bit)
"""


def test_sys_ptrace_is_dropped_from_every_set() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    before, dropped, after, again, eff, prm = out.stdout.split()
    held = os.geteuid() == 0  # root holds every capability; another user none
    assert (before, dropped) == (str(held), str(held))
    assert (after, again, eff, prm) == ("False", "False", "0", "0")

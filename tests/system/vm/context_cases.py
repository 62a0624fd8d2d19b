"""Ground truth for the context an exit event carries: exe, args, parent comm, cgroup and unit,
and the image owner of processes that never exec'd. Run in the test VM, which has only python3:

    python3 context_cases.py CASE [ARG]   # prints the truth as one JSON line

Every process gets a unique --marker=<uuid> argument, so its event cannot be confused with
another's, and is reaped here, so its pid is known before the event arrives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _marker() -> str:
    return f"--marker={uuid.uuid4()}"


def _own_comm() -> str:
    return Path("/proc/self/comm").read_text().strip()


def _run(argv: list[str]) -> tuple[int, int]:
    """Start argv as our child and reap it: (pid, wait status)."""
    proc = subprocess.Popen(argv)
    _, status, _ = os.wait4(proc.pid, 0)
    proc.returncode = status  # keep Popen from reaping again
    return proc.pid, status


def short_lived(binary: str = "/root/quick_exit") -> dict[str, Any]:
    """A process that is gone within milliseconds: only the exec record can name it.
    posix_spawn (vfork): no Python runs in the child between fork and exec, so the age
    the event reports is the exec and exit_group alone, even on a loaded TCG guest."""
    argv = [binary, _marker(), "two words"]
    pid = os.posix_spawn(binary, argv, {})
    _, status = os.waitpid(pid, 0)
    return {"pid": pid, "status": status, "exe": binary, "args": argv, "parent_comm": _own_comm()}


def _cgroup2_root() -> Path:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            return Path(fields[4])
    raise SystemExit("no cgroup2 mount")


def _rmdir(path: Path) -> None:
    """rmdir as soon as the last task has left (a moment after it is reaped)."""
    for _ in range(200):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.01)
    path.rmdir()


def transient_cgroup() -> dict[str, Any]:
    """/bin/sh -c 'exit 7' in a cgroup made just before and removed right after: the event
    still names the cgroup and its unit (learnt from the mkdir record, kept past rmdir)."""
    tag = uuid.uuid4().hex[:12]
    rel = f"procmon-vm-{tag}.slice/ctx-{tag}.service"
    group = _cgroup2_root() / rel
    group.mkdir(parents=True)
    argv = ["/bin/sh", "-c", "exit 7", "sh", _marker()]
    # The shell moves itself into the group, then execs argv: the exit happens there.
    enter = f'echo $$ > {group}/cgroup.procs && exec "$@"'
    try:
        pid, status = _run(["/bin/sh", "-c", enter, "sh", *argv])
    finally:
        _rmdir(group)
        _rmdir(group.parent)
    return {
        "pid": pid,
        "status": status,
        "exe": "/bin/sh",
        "args": argv,
        "parent_comm": _own_comm(),
        "cgroup": f"/{rel}",
        "unit": f"ctx-{tag}.service",
        "removed": not group.exists(),
    }


_FORKS = """
import ctypes, json, os, sys
if sys.argv[1] == "1":
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
r, w = os.pipe()
child = os.fork()
if child == 0:
    grandchild = os.fork()
    if grandchild == 0:
        os._exit(11)
    os.write(w, str(grandchild).encode())
    os.waitpid(grandchild, 0)
    os._exit(12)
os.close(w)
grandchild = int(os.read(r, 32))
os.waitpid(child, 0)
print(json.dumps({"child": child, "grandchild": grandchild}))
"""


def forks_without_exec(subreaper: str = "0") -> dict[str, Any]:
    """python3 (exec'd, with a marker) forks a child that forks a grandchild; neither execs.
    Their image is python3's, unless python3 is a child subreaper (subreaper=1): a reaper may
    have adopted them, so the probe leaves the owner unknown and the events carry no exe."""
    argv = [sys.executable, "-c", _FORKS, subreaper, _marker()]
    out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout
    pids = json.loads(out)
    return {"exe": sys.executable, "args": argv, "subreaper": subreaper == "1", **pids}


CASES: dict[str, Callable[..., dict[str, Any]]] = {
    fn.__name__: fn for fn in (short_lived, transient_cgroup, forks_without_exec)
}


if __name__ == "__main__":
    print(json.dumps({"case": sys.argv[1], **CASES[sys.argv[1]](*sys.argv[2:])}))

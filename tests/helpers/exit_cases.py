"""Ground-truth exit cases shared by every backend's tests.

Each case starts a real process as a child of the running interpreter, reaps it with
os.wait4 and returns what the kernel told the parent (the truth). ``check`` compares a
backend's event (as a JSON dict) with that truth. The module has no dependency beyond the
standard library, so it also runs as a script on a test host that has only python3:

    python3 exit_cases.py CASE   # prints the truth as one JSON line
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

CPU_TOLERANCE_NS = 12_000_000  # tick granularity (4 ms at HZ=250) plus scheduler noise


@dataclass
class Truth:
    case: str
    pid: int
    ppid: int
    status: int
    utime_ns: int
    stime_ns: int
    maxrss_kb: int
    uid: int = 0
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else 0

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    @property
    def core_dumped(self) -> bool:
        return os.WIFSIGNALED(self.status) and os.WCOREDUMP(self.status)


def _reap(case: str, proc: subprocess.Popen[bytes], **kw: Any) -> Truth:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = status  # keep Popen from reaping again
    return Truth(
        case=case,
        pid=proc.pid,
        ppid=os.getpid(),
        status=status,
        utime_ns=int(usage.ru_utime * 1e9),
        stime_ns=int(usage.ru_stime * 1e9),
        maxrss_kb=usage.ru_maxrss,
        **kw,
    )


def exit_code_3() -> Truth:
    return _reap("exit_code_3", subprocess.Popen(["sh", "-c", "exit 3"]))


def sigkill_sleeper() -> Truth:
    proc = subprocess.Popen(["sleep", "30"])
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    return _reap("sigkill_sleeper", proc)


def cpu_burner() -> Truth:
    """About 200 ms of user CPU in a single thread."""
    code = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.2: pass"
    return _reap("cpu_burner", subprocess.Popen([sys.executable, "-c", code]))


def three_threads() -> Truth:
    """A main thread and two workers; the workers exit first."""
    code = (
        "import threading,time\n"
        "ts=[threading.Thread(target=time.sleep,args=(0.1,)) for _ in range(2)]\n"
        "[t.start() for t in ts]\n[t.join() for t in ts]\n"
    )
    return _reap("three_threads", subprocess.Popen([sys.executable, "-c", code]), threads=3)


def leader_exits_first() -> Truth:
    """The main thread calls pthread_exit; a worker ends the process with exit code 5."""
    code = (
        "import ctypes,os,threading,time\n"
        "def w():\n time.sleep(0.2)\n os._exit(5)\n"
        "threading.Thread(target=w).start()\n"
        "ctypes.CDLL(None).pthread_exit(None)\n"
    )
    return _reap("leader_exits_first", subprocess.Popen([sys.executable, "-c", code]), threads=2)


def segv_core() -> Truth:
    """SIGSEGV with core dumps allowed, in a scratch directory for the core file."""
    with tempfile.TemporaryDirectory() as scratch:

        def allow_core() -> None:
            resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)

        code = "import os,signal; os.kill(os.getpid(), signal.SIGSEGV)"
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=scratch, preexec_fn=allow_core)
        return _reap("segv_core", proc)


def as_nobody() -> Truth:
    def drop() -> None:
        os.setgid(65534)
        os.setuid(65534)

    return _reap("as_nobody", subprocess.Popen(["true"], preexec_fn=drop), uid=65534)


CASES: dict[str, Callable[[], Truth]] = {
    fn.__name__: fn
    for fn in (
        exit_code_3,
        sigkill_sleeper,
        cpu_burner,
        three_threads,
        leader_exits_first,
        segv_core,
        as_nobody,
    )
}


def check(
    truth: Truth, event: dict[str, Any], cpu_tolerance_ns: int = CPU_TOLERANCE_NS
) -> list[str]:
    """Differences between a process event and the truth; empty when they agree. An
    emulated machine (the bcc VM) needs a wider CPU tolerance."""
    problems: list[str] = []

    def expect(name: str, got: Any, want: Any) -> None:
        if got != want:
            problems.append(f"{truth.case}: {name} is {got!r}, wait4 says {want!r}")

    expect("pid", event["pid"], truth.pid)
    expect("ppid", event["ppid"], truth.ppid)
    expect("exit_code", event["exit_code"], truth.exit_code)
    sig = event["signal"]["number"] if event["signal"] else None
    expect("signal", sig, truth.signal)
    expect("core_dumped", event["core_dumped"], truth.core_dumped)
    expect("uid", event["uid"], truth.uid)
    expect("scope", event["scope"], "process")
    for part in ("utime_ns", "stime_ns"):
        # The tracepoint fires before the final teardown, so the event may be a little lower.
        got, want = event[part], getattr(truth, part)
        if abs(got - want) > cpu_tolerance_ns:
            problems.append(f"{truth.case}: {part} is {got}, wait4 says {want}")
    return problems


if __name__ == "__main__":
    result = CASES[sys.argv[1]]()
    print(json.dumps({**asdict(result), "exit_code": result.exit_code}))
    sys.exit(0)

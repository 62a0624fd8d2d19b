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
import threading
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
    # Why it ended, as the event must say: exit_reason, and the killer or None.
    reason: str = ""
    killer: dict[str, Any] | None = None
    oom_cgroup: str | None = None  # the cgroup v2 path an OOM kill happened in, where v2

    @property
    def exit_code(self) -> int:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else 0

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    @property
    def core_dumped(self) -> bool:
        return os.WIFSIGNALED(self.status) and os.WCOREDUMP(self.status)


def _own_comm() -> str:
    """The task name of the calling thread: the sender of a signal this thread sends."""
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
        return f.read().strip()


def _reason(status: int) -> str:
    """exit_reason for a status whose sender needs no naming (exit codes, our own kills)."""
    if os.WIFEXITED(status):
        return "exit" if os.WEXITSTATUS(status) == 0 else "error"
    return "crashed" if os.WCOREDUMP(status) else "killed"


def _reap(case: str, proc: subprocess.Popen[bytes], **kw: Any) -> Truth:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = status  # keep Popen from reaping again
    kw.setdefault("reason", _reason(status))
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
    me = {"pid": os.getpid(), "comm": _own_comm(), "uid": os.getuid()}
    return _reap("sigkill_sleeper", proc, killer=me)


def kill9_from_shell() -> Truth:
    """kill -9 from a shell whose pid is known: the event names that shell."""
    victim = subprocess.Popen(["sleep", "30"])
    time.sleep(0.05)
    shell = subprocess.Popen(["sh", "-c", f"kill -9 {victim.pid}"])
    shell.wait()
    killer = {"pid": shell.pid, "comm": "sh", "uid": os.getuid()}
    return _reap("kill9_from_shell", victim, killer=killer)


def timeout_kills_sleep() -> Truth:
    """timeout 1 sleep 5: sleep dies of timeout's SIGTERM. sleep is timeout's child, so its
    status comes from timeout's: 124 means it timed out and sent SIGTERM."""
    proc = subprocess.Popen(
        ["timeout", "1", "sh", "-c", "echo $$; exec sleep 5"], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    sleep_pid = int(proc.stdout.readline())
    assert proc.wait() == 124, "timeout did not time out"
    return Truth(
        case="timeout_kills_sleep",
        pid=sleep_pid,
        ppid=proc.pid,
        status=signal.SIGTERM,
        utime_ns=0,
        stime_ns=0,
        maxrss_kb=0,
        uid=os.getuid(),
        reason="killed",
        killer={"pid": proc.pid, "comm": "timeout", "uid": os.getuid()},
    )


def self_sigterm() -> Truth:
    """kill -TERM $$: the shell names itself."""
    proc = subprocess.Popen(["sh", "-c", "kill -TERM $$; sleep 5"])
    return _reap("self_sigterm", proc, killer={"pid": proc.pid, "comm": "sh", "uid": os.getuid()})


def segfault() -> Truth:
    """A real fault: a read of address 0. The kernel sends SIGSEGV: crashed."""
    code = "import ctypes; ctypes.string_at(0)"
    truth = _reap("segfault", subprocess.Popen([sys.executable, "-c", code]))
    truth.reason = "crashed"
    truth.killer = {"pid": 0, "comm": "kernel", "uid": 0}
    return truth


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str, optional: bool = False) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except FileNotFoundError:
        if not optional:
            raise


def _memory_cgroup(name: str) -> tuple[str, str]:
    """A fresh memory cgroup: (directory, its cgroup v2 path or "" on v1). cgroup v2 where its
    memory controller is enabled (the VM), else the v1 memory hierarchy (hybrid hosts)."""
    limit = str(32 << 20)
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] != "cgroup2":
            continue
        root = fields[4]
        if "memory" in _read(os.path.join(root, "cgroup.subtree_control")).split():
            path = os.path.join(root, name)
            os.mkdir(path)
            _write(os.path.join(path, "memory.max"), limit)
            # Without swap accounting there is no swap to limit.
            _write(os.path.join(path, "memory.swap.max"), "0", optional=True)
            return path, "/" + name
    path = os.path.join("/sys/fs/cgroup/memory", name)
    os.mkdir(path)
    _write(os.path.join(path, "memory.limit_in_bytes"), limit)
    _write(os.path.join(path, "memory.memsw.limit_in_bytes"), limit, optional=True)
    return path, ""


def oom_kill() -> Truth:
    """A process allocating past its memory cgroup's limit: the OOM killer ends it."""
    group, v2_path = _memory_cgroup(f"procmon-oom-{os.getpid()}-{time.monotonic_ns()}")

    def enter() -> None:
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    code = "b = bytearray(256 << 20)"
    try:
        proc = subprocess.Popen([sys.executable, "-c", code], preexec_fn=enter)
        truth = _reap("oom_kill", proc)
    finally:
        for _ in range(100):  # the victim leaves the group a moment after it is reaped
            try:
                os.rmdir(group)
                break
            except OSError:
                time.sleep(0.02)
    assert truth.signal == signal.SIGKILL, f"not OOM-killed: status {truth.status}"
    truth.reason = "oom"
    truth.killer = {"pid": 0, "comm": "kernel", "uid": 0}
    truth.oom_cgroup = v2_path or None
    return truth


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
        kill9_from_shell,
        timeout_kills_sleep,
        self_sigterm,
        segfault,
        oom_kill,
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
    expect("exit_reason", event.get("exit_reason"), truth.reason)
    expect("oom_killed", event.get("oom_killed"), truth.reason == "oom")
    if truth.killer is not None or truth.reason in ("exit", "error"):
        expect("killer", event.get("killer"), truth.killer)
    if truth.oom_cgroup:
        expect("cgroup", event.get("cgroup"), truth.oom_cgroup)
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

"""ExitEvent: the one event every backend produces and every consumer validates.

This model is the single source of truth; ``schemas/exit-event.v1.json`` is generated from it
(``procmon schema``). Changes within v1 are additive only.
"""

from __future__ import annotations

import os
import signal as _signal
import time
from typing import TYPE_CHECKING, Annotated, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from procmon.probe.record import (
    FLAG_THREAD,
    KILLER_KERNEL,
    KILLER_KNOWN,
    KILLER_OOM,
    RawCgroup,
    RawExec,
    RawExit,
)

if TYPE_CHECKING:
    from procmon.enrich.context import ProcessContext

SCHEMA_ID = "procmon.exit/v1"
# Additive changes within v1 bump the revision (schemas/CHANGELOG.md); consumers of any
# revision keep working, as every added field is optional.
SCHEMA_REVISION = 3

Rfc3339Ns = Annotated[
    str,
    StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$"),
    Field(description="UTC time, RFC 3339 with nanoseconds"),
]
# argv as sent: the probe reads at most 1,024 bytes; escapes (\xNN) and redaction markers can
# grow that fourfold and a little. The bound makes an event's size bounded (MAX_EVENT_BYTES).
ARGS_MAX_BYTES = 8192
# The largest an event can serialize to, every field at its bound (tests/unit/test_event.py
# builds that event): what a consumer's or broker's packet limit must allow.
MAX_EVENT_BYTES = 128 << 10
U32 = Annotated[int, Field(ge=0, le=0xFFFFFFFF)]
U64 = Annotated[int, Field(ge=0, le=0xFFFFFFFFFFFFFFFF)]


class SignalInfo(BaseModel):
    """The signal that ended the process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    number: int = Field(ge=1, le=127)
    name: str = Field(
        max_length=32, description="e.g. SIGKILL; SIG<number> when the number has no name"
    )


class Killer(BaseModel):
    """Who sent the signal the process died of; pid 0 and comm "kernel" when the kernel did
    (a CPU fault, the OOM killer, a timer, a broken pipe, the terminal)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pid: U32 = Field(description="the sender's process id (tgid); 0: the kernel")
    comm: str = Field(max_length=64, description="the sender's task name")
    uid: U32 = Field(description="the sender's real uid")


ExitReason = Literal["exit", "error", "killed", "oom", "crashed"]
# Signals the CPU raises on a fault: sent by the kernel (or by no known sender), a crash.
FAULT_SIGNALS = frozenset({_signal.SIGSEGV, _signal.SIGBUS, _signal.SIGILL, _signal.SIGFPE})


class ExitEvent(BaseModel):
    """One process exit (or one thread exit, with per-thread reporting)."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        title="procmon exit event",
        json_schema_extra={"$id": SCHEMA_ID, "x-procmon-revision": SCHEMA_REVISION},
    )

    schema_id: Literal["procmon.exit/v1"] = Field(default="procmon.exit/v1", alias="schema")
    event_id: str = Field(
        min_length=1,
        max_length=128,
        description="boot id, pid (tid for thread events) and start time: unique per exit, "
        "stable across re-delivery; consumers de-duplicate on it",
    )
    scope: Literal["process", "thread"]
    host: str = Field(min_length=1, max_length=128)
    boot_id: str = Field(pattern=r"^[0-9a-f-]{36}$")
    probe: Literal["core", "bcc"] = Field(description="the probe backend that saw the exit")
    time: Rfc3339Ns
    pid: U32
    tid: U32
    ppid: U32
    comm: str = Field(
        max_length=64,
        description="kernel task name; bytes that are not UTF-8 appear as \\xNN escapes",
    )
    uid: U32
    gid: U32
    exit_code: int = Field(ge=0, le=255, description="exit status; 0 when killed by a signal")
    signal: SignalInfo | None
    core_dumped: bool
    utime_ns: U64 = Field(description="user CPU time of the thread group (thread)")
    stime_ns: U64 = Field(description="system CPU time of the thread group (thread)")
    start_time: Rfc3339Ns
    age_ns: U64 = Field(description="time from process start to exit")
    max_rss_kb: U64
    cgroup_id: U64 = Field(description="cgroup v2 id (the inode of the cgroup's directory)")
    pidns_inode: U32
    ns_pid: U32 = Field(description="pid inside its own pid namespace")
    # Who exited and where it ran (added in v1, optional: null when unknown, never guessed).
    parent_comm: str | None = Field(
        default=None, max_length=64, description="task name of the parent at exit"
    )
    exe: str | None = Field(
        default=None,
        max_length=4096,
        description="executable at the last exec, as exec was given it (a script's own "
        "path, not its interpreter)",
    )
    args: tuple[str, ...] | None = Field(
        default=None,
        max_length=1024,
        description="argv at the last exec (the probe reads at most 1024 bytes), secrets "
        "redacted; at most 1024 items and 8192 bytes in UTF-8 with one byte per separator; "
        "null when unknown or not captured",
        json_schema_extra={"x-procmon-max-bytes": ARGS_MAX_BYTES},
    )
    args_truncated: bool | None = Field(
        default=None, description="argv was longer than what args holds"
    )
    exec_source: Literal["exec", "fork", "proc"] | None = Field(
        default=None,
        description="where exe and args come from: the process's exec, its parent's (it "
        "never exec'd and shares the parent's image), or /proc when the agent started",
    )
    cgroup: str | None = Field(
        default=None, max_length=4096, description="cgroup v2 path of cgroup_id"
    )
    unit: str | None = Field(
        default=None, max_length=256, description="systemd unit, e.g. nginx.service"
    )
    container_id: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="recognized from the cgroup path"
    )
    container_runtime: Literal["docker", "containerd", "cri-o", "podman"] | None = None
    pod_uid: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        description="Kubernetes pod uid",
    )
    # Why it died (revision 3).
    exit_reason: ExitReason | None = Field(
        default=None,
        description="exit: code 0; error: a non-zero code; killed: a signal from a process "
        "(or from the kernel, not a fault); oom: the OOM killer; crashed: a fault signal "
        "(SIGSEGV, SIGBUS, SIGILL, SIGFPE) from the kernel, abort(3), or a core dump",
    )
    killer: Killer | None = Field(
        default=None,
        description="who sent the fatal signal, for a process killed by one; null when "
        "unknown or not killed",
    )
    oom_killed: bool = Field(default=False, description="the OOM killer chose this process")

    @field_validator("args")
    @classmethod
    def _args_bytes(cls, args: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """Items bound the count, not the size: a few huge items must not pass."""
        if args is None:
            return None
        chars = sum(map(len, args)) + len(args)
        if chars * 4 > ARGS_MAX_BYTES:  # a character is at most 4 bytes: only then count them
            size = sum(len(a.encode("utf-8", "surrogatepass")) for a in args) + len(args)
            if size > ARGS_MAX_BYTES:
                raise ValueError(f"args are {size} bytes in UTF-8, over {ARGS_MAX_BYTES}")
        return args


KERNEL = Killer(pid=0, comm="kernel", uid=0)  # frozen: one instance serves every event


def _killer(raw: RawExit) -> Killer | None:
    if not raw.killer_flags & KILLER_KNOWN:
        return None
    if raw.killer_flags & KILLER_KERNEL:
        return KERNEL
    comm = raw.killer_comm.decode("utf-8", "backslashreplace")
    return Killer(pid=raw.killer_pid, comm=comm, uid=raw.killer_uid)


def exit_reason(status: int, raw: RawExit, oom: bool) -> ExitReason:
    """The exit_reason of a wait(2) status and the probe's killer record."""
    signo = status & 0x7F
    if oom:
        return "oom"
    if not signo:
        return "exit" if not status >> 8 & 0xFF else "error"
    known, kernel = raw.killer_flags & KILLER_KNOWN, raw.killer_flags & KILLER_KERNEL
    if status & 0x80 or (signo in FAULT_SIGNALS and (kernel or not known)):
        return "crashed"
    if signo == _signal.SIGABRT and known and not kernel and raw.killer_pid == raw.pid:
        return "crashed"  # abort(3)
    return "killed"


def signal_name(number: int) -> str:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def read_boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def _rfc3339_ns(epoch_ns: int) -> str:
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


# Distinct seconds whose formatted prefix EventBuilder keeps: exits and their start times
# fall in few seconds at a time, and strftime costs more than the rest of a time stamp.
_SECONDS_CACHE = 256


def _split_cputime(utime: int, stime: int, runtime: int) -> tuple[int, int]:
    """Scale tick-sampled utime/stime to the precise runtime, as the kernel does for wait4
    (cputime_adjust): the split follows the samples, the sum is exact."""
    if utime + stime == 0:
        return runtime, 0
    if runtime <= 0:
        return utime, stime
    scaled_stime = stime * runtime // (utime + stime)
    return runtime - scaled_stime, scaled_stime


class EventBuilder:
    """Turns RawExit records into ExitEvents for one host and backend, joined with the
    context records seen before them.

    Validation happens once, here; sinks serialize the model without re-validating.
    """

    def __init__(
        self,
        host: str,
        probe: Literal["core", "bcc"],
        boot_id: str | None = None,
        context: ProcessContext | None = None,
    ):
        self.host = host
        self.probe: Literal["core", "bcc"] = probe
        self.boot_id = boot_id or read_boot_id()
        self.context = context
        self._page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        self._seconds: dict[int, str] = {}  # epoch second -> "YYYY-MM-DDTHH:MM:SS."
        self.resync_clock()

    def observe(self, raw: RawExec | RawCgroup) -> None:
        """Learn from a context record (exec, cgroup): the exits after it are joined with it."""
        if self.context is not None:
            self.context.observe(raw)

    def resync_clock(self) -> None:
        """Offset from CLOCK_BOOTTIME (what the probe stamps) to wall-clock time."""
        self._boot_to_epoch_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def _time(self, boot_ns: int) -> str:
        """A CLOCK_BOOTTIME stamp as RFC 3339 UTC with nanoseconds (_rfc3339_ns, cached)."""
        seconds, nanos = divmod(boot_ns + self._boot_to_epoch_ns, 1_000_000_000)
        prefix = self._seconds.get(seconds)
        if prefix is None:
            if len(self._seconds) >= _SECONDS_CACHE:
                self._seconds.clear()
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))
            self._seconds[seconds] = prefix
        return f"{prefix}{nanos:09d}Z"

    def build(self, raw: RawExit) -> ExitEvent:
        status = raw.exit_code
        signo = status & 0x7F
        is_thread = bool(raw.flags & FLAG_THREAD)
        # A thread record and its process record can share tid and start time (the leader).
        ident = (
            f"{raw.tid}:{raw.start_boot_ns}:t" if is_thread else f"{raw.pid}:{raw.start_boot_ns}"
        )
        utime, stime = _split_cputime(raw.utime_ns, raw.stime_ns, raw.runtime_ns)
        killer = _killer(raw) if signo else None
        oom = killer is not None and bool(raw.killer_flags & KILLER_OOM)
        # One dict, validated straight by the model's validator: ExitEvent(**fields) would
        # spread it into keyword arguments and gather them again (a quarter of the cost).
        fields = self.context.for_exit(raw) if self.context is not None else {}
        fields.update(
            event_id=f"{self.boot_id}:{ident}",
            scope="thread" if is_thread else "process",
            host=self.host,
            boot_id=self.boot_id,
            probe=self.probe,
            time=self._time(raw.ts_boot_ns),
            pid=raw.pid,
            tid=raw.tid,
            ppid=raw.ppid,
            comm=raw.comm.decode("utf-8", "backslashreplace"),
            uid=raw.uid,
            gid=raw.gid,
            exit_code=0 if signo else (status >> 8) & 0xFF,
            signal=SignalInfo(number=signo, name=signal_name(signo)) if signo else None,
            core_dumped=bool(status & 0x80),
            exit_reason=exit_reason(status, raw, oom),
            killer=killer,
            oom_killed=oom,
            utime_ns=utime,
            stime_ns=stime,
            start_time=self._time(raw.start_boot_ns),
            age_ns=max(0, raw.ts_boot_ns - raw.start_boot_ns),
            max_rss_kb=raw.max_rss_pages * self._page_kb,
            cgroup_id=raw.cgroup_id,
            pidns_inode=raw.pidns_inode,
            ns_pid=raw.ns_pid,
            parent_comm=raw.parent_comm.decode("utf-8", "backslashreplace")
            if raw.parent_comm
            else None,
        )
        return cast(ExitEvent, _validate(fields))


# ExitEvent's own validator (what ExitEvent(**fields) runs): every field checked as ever.
_validate = ExitEvent.__pydantic_validator__.validate_python

"""Text sinks: JSON lines, a human format, and the seed module's PROCESS_MONITOR lines."""

from __future__ import annotations

import calendar
import os
import shlex
import time
from collections.abc import Sequence
from typing import IO, Any, BinaryIO, Literal

from procmon.event import ExitEvent

TextFormat = Literal["json", "human", "seed"]
ColorChoice = Literal["auto", "always", "never"]
SEED_PREFIX = "PROCESS_MONITOR:"


def _printable_comm(event: ExitEvent) -> str:
    """comm as-is, or its repr() when it holds control characters: a task name (any bytes but
    NUL, set by the process itself) must not reach a terminal raw or forge a log line."""
    return event.comm if event.comm.isprintable() else repr(event.comm)


def seed_lines(event: ExitEvent) -> tuple[str, ...]:
    """The two lines the original kernel module printed for each exit, then why it ended."""
    return (
        f"{SEED_PREFIX} Process exiting - PID: {event.pid}, Name: {_printable_comm(event)}, "
        f"Parent PID: {event.ppid}",
        f"{SEED_PREFIX}   User time: {event.utime_ns} ns, System time: {event.stime_ns} ns",
        f"{SEED_PREFIX}   Exit reason: {reason_text(event)}",
    )


def reason_text(event: ExitEvent) -> str:
    """Why it ended, for a person: "exit code 3", "killed by SIGKILL from pid 4242 (kubelet,
    uid 0)", "crashed: SIGSEGV (core dumped)", "OOM-killed in /system.slice/x.service"."""
    if event.signal is None:
        return f"exit code {event.exit_code}"
    name = event.signal.name
    if event.exit_reason == "oom":
        where = event.cgroup if event.cgroup not in (None, "/") else None
        if where and not where.isprintable():  # a cgroup's name is anyone's with a subtree
            where = repr(where)
        return f"OOM-killed in {where}" if where else "OOM-killed"
    if event.exit_reason == "crashed":
        return f"crashed: {name}{' (core dumped)' if event.core_dumped else ''}"
    killer = event.killer
    if killer is None:
        return f"killed by {name}"
    if killer.pid == 0:
        return f"killed by {name} from the kernel"
    if killer.pid == event.pid:
        return f"killed by {name} from itself"
    comm = killer.comm if killer.comm.isprintable() else repr(killer.comm)
    return f"killed by {name} from pid {killer.pid} ({comm}, uid {killer.uid})"


def seed_total_line(total: int) -> str:
    return f"{SEED_PREFIX} Total process exits monitored: {total}"


def human_line(event: ExitEvent, color: bool = False) -> str:
    """One line a person reads: when (local time and its zone), where (host, then the systemd
    unit, the container or "-"), what (comm, pid; tid for a per-thread record), how it ended,
    its age, and the executable with its arguments when known. Failures in red with
    ``color``."""
    how = reason_text(event)
    if color and failed(event):
        how = f"{_RED}{how}{_RESET}"
    if event.unit:
        where = _printable(event.unit)
    elif event.container_id:
        where = f"container:{event.container_id[:12]}"
    else:
        where = "-"
    thread = f" tid={event.tid}" if event.scope == "thread" else ""
    stamp = local_time(event.time)
    if color:
        stamp = f"{_DIM}{stamp}{_RESET}"
    line = (
        f"{stamp} {event.host} {where} {_printable_comm(event)} pid={event.pid}{thread} "
        f"{how} age={age_text(event.age_ns)}"
    )
    command = _command(event)
    if command:
        line += " : " + _printable(command)
    return line


_RED = "\x1b[31m"
_DIM = "\x1b[2m"
_RESET = "\x1b[0m"


def failed(event: ExitEvent) -> bool:
    """A non-zero exit code or a signal: what ``--failed`` keeps."""
    return event.exit_code != 0 or event.signal is not None


def _printable(text: str) -> str:
    return text if text.isprintable() else repr(text)


def _command(event: ExitEvent) -> str | None:
    """exe, then the arguments after argv[0]; argv alone when exe is unknown."""
    if event.exe and event.args:
        return shlex.join([event.exe, *event.args[1:]])
    if event.args:
        return shlex.join(event.args)
    return event.exe


def local_time(rfc3339: str) -> str:
    """``2026-01-01T00:00:00.123456789Z`` as local time with its zone, to the millisecond:
    ``00:00:00.123 UTC`` today, ``2026-01-01 00:00:00.123 UTC`` on another day."""
    try:
        whole = calendar.timegm(time.strptime(rfc3339[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return rfc3339
    local = time.localtime(whole)
    today = time.localtime()
    fmt = "%H:%M:%S" if local[:3] == today[:3] else "%Y-%m-%d %H:%M:%S"
    return f"{time.strftime(fmt, local)}.{rfc3339[20:23] or '000'} {local.tm_zone}"


def age_text(age_ns: int) -> str:
    """How long the process lived: 0.004s, 12.3s, 5m02s, 3h07m, 2d04h."""
    seconds = age_ns / 1e9
    if seconds < 10:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def use_color(choice: ColorChoice, stream: IO[Any]) -> bool:
    """--color: ``always``, ``never``, or ``auto``: on a terminal unless NO_COLOR is set
    (no-color.org: any non-empty value)."""
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def render(event: ExitEvent, fmt: TextFormat, color: bool = False) -> bytes:
    if fmt == "json":
        return event.__pydantic_serializer__.to_json(event) + b"\n"
    if fmt == "seed":
        return ("\n".join(seed_lines(event)) + "\n").encode("utf-8", "backslashreplace")
    return (human_line(event, color) + "\n").encode("utf-8", "backslashreplace")


class StdoutSink:
    """Writes each event to a binary stream (stdout by default), flushed per batch."""

    def __init__(self, fmt: TextFormat, stream: BinaryIO, color: bool = False) -> None:
        self.fmt: TextFormat = fmt
        self.stream = stream
        self.color = color

    def emit(self, events: Sequence[ExitEvent]) -> None:
        fmt, color = self.fmt, self.color
        self.stream.write(b"".join(render(ev, fmt, color) for ev in events))
        self.stream.flush()

    def on_stop(self, total: int) -> None:
        if self.fmt == "seed":  # the seed module's total at unload
            self.stream.write((seed_total_line(total) + "\n").encode())
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()

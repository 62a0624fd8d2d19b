"""Text sinks: JSON lines, a human format, and the seed module's PROCESS_MONITOR lines."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import BinaryIO, Literal

from procmon.event import ExitEvent

TextFormat = Literal["json", "human", "seed"]
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


def human_line(event: ExitEvent) -> str:
    how = reason_text(event)
    comm = _printable_comm(event)
    line = (
        f"{event.time[11:23]} {event.scope[0]} pid={event.pid} ppid={event.ppid} "
        f"uid={event.uid} {comm} {how} user={event.utime_ns / 1e6:.1f}ms "
        f"sys={event.stime_ns / 1e6:.1f}ms rss={event.max_rss_kb}kB age={event.age_ns / 1e9:.3f}s"
    )
    if event.unit:
        line += f" unit={event.unit}"
    if event.container_id:
        line += f" container={event.container_id[:12]}"
    command = shlex.join(event.args) if event.args else event.exe
    if command:
        line += " : " + (command if command.isprintable() else repr(command))
    return line


def render(event: ExitEvent, fmt: TextFormat) -> bytes:
    if fmt == "json":
        return event.__pydantic_serializer__.to_json(event) + b"\n"
    if fmt == "seed":
        return ("\n".join(seed_lines(event)) + "\n").encode("utf-8", "backslashreplace")
    return (human_line(event) + "\n").encode("utf-8", "backslashreplace")


class StdoutSink:
    """Writes each event to a binary stream (stdout by default), flushed per batch."""

    def __init__(self, fmt: TextFormat, stream: BinaryIO) -> None:
        self.fmt: TextFormat = fmt
        self.stream = stream

    def emit(self, events: Sequence[ExitEvent]) -> None:
        fmt = self.fmt
        self.stream.write(b"".join(render(ev, fmt) for ev in events))
        self.stream.flush()

    def on_stop(self, total: int) -> None:
        if self.fmt == "seed":  # the seed module's total at unload
            self.stream.write((seed_total_line(total) + "\n").encode())
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()

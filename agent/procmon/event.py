"""ExitEvent: the one event every backend produces and every consumer validates.

This model is the single source of truth; ``schemas/exit-event.v1.json`` is generated from it
(``procmon schema``). Changes within v1 are additive only.
"""

from __future__ import annotations

import signal as _signal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_ID = "procmon.exit/v1"

Rfc3339Ns = Annotated[
    str,
    StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$"),
    Field(description="UTC time, RFC 3339 with nanoseconds"),
]
U32 = Annotated[int, Field(ge=0, le=0xFFFFFFFF)]
U64 = Annotated[int, Field(ge=0, le=0xFFFFFFFFFFFFFFFF)]


class SignalInfo(BaseModel):
    """The signal that ended the process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    number: int = Field(ge=1, le=127)
    name: str = Field(description="e.g. SIGKILL; SIG<number> when the number has no name")


class ExitEvent(BaseModel):
    """One process exit (or one thread exit, with per-thread reporting)."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        title="procmon exit event",
        json_schema_extra={"$id": SCHEMA_ID},
    )

    schema_id: Literal["procmon.exit/v1"] = Field(default=SCHEMA_ID, alias="schema")
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


def signal_name(number: int) -> str:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"

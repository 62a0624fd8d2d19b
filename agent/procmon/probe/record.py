"""The raw exit record, exactly as both probe backends write it (bpf/exit_record.h)."""

from __future__ import annotations

import ctypes
import logging
import struct
from typing import NamedTuple

log = logging.getLogger("procmon.probe")

RECORD_VERSION = 1
FLAG_THREAD = 0x1
FLAG_GROUP_DEAD = 0x2
COUNTER_DROPPED = 0
COUNTER_EMITTED = 1
COUNTER_SLOTS = 2


class RawExit(NamedTuple):
    """One record from the ring buffer; field order and types mirror struct exit_record."""

    ts_boot_ns: int
    start_boot_ns: int
    utime_ns: int
    stime_ns: int
    runtime_ns: int
    max_rss_pages: int
    cgroup_id: int
    pid: int
    tid: int
    ppid: int
    uid: int
    gid: int
    exit_code: int
    pidns_inode: int
    ns_pid: int
    flags: int
    comm: bytes


RECORD = struct.Struct("<7Q9I16s4x")
RECORD_SIZE = RECORD.size  # 112, asserted against the C struct in tests


class RecordBuffer:
    """Collects records from a ring-buffer callback until the poll loop takes them.

    ``on_sample`` runs inside libbpf's (or libbcc's) C callback, so it never raises: an
    exception there would be swallowed and could hang the poll loop.
    """

    def __init__(self) -> None:
        self._records: list[RawExit] = []

    def on_sample(self, _ctx: object, data: int, size: int) -> int:
        try:
            self._records.append(decode(ctypes.string_at(data, size)))
        except Exception:  # pragma: no cover - defensive; the layout makes it impossible
            log.exception("undecodable ring-buffer record of %d bytes", size)
        return 0

    def take(self) -> list[RawExit]:
        out, self._records = self._records, []
        return out


def decode(data: bytes) -> RawExit:
    """Decode one record; the comm keeps its raw bytes up to the first NUL."""
    fields = RECORD.unpack(data[:RECORD_SIZE])
    comm = fields[16]
    end = comm.find(b"\0")
    return RawExit._make((*fields[:16], comm if end < 0 else comm[:end]))

"""The raw records, exactly as both probe backends write them (bpf/exit_record.h).

One ring buffer carries exits and the context joined to them (execs, cgroup creations and
removals), in the order they happened. Every record starts with its kind.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import struct
from typing import NamedTuple

log = logging.getLogger("procmon.probe")

RECORD_VERSION = 4
KIND_EXIT = 1
KIND_EXEC = 2
KIND_CGROUP_MKDIR = 3
KIND_CGROUP_RMDIR = 4
FLAG_THREAD = 0x1
FLAG_GROUP_DEAD = 0x2
KILLER_KNOWN = 0x1
KILLER_KERNEL = 0x2
KILLER_OOM = 0x4
EXEC_ARGS_TRUNCATED = 0x1
EXEC_NO_ARGS = 0x2
COUNTER_DROPPED = 0
COUNTER_EMITTED = 1
COUNTER_CONTEXT_DROPPED = 2
COUNTER_SLOTS = 3


class RawExit(NamedTuple):
    """One exit; the fields of struct exit_record (kind aside), flags and comms last."""

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
    parent_comm: bytes = b""
    # The process whose exec this image comes from (itself, or the ancestor it was forked
    # from without exec); 0 when unknown.
    image_pid: int = 0
    image_start_ns: int = 0
    # Which of the owner's execs the image is (its self_exec_id); 0 when unknown.
    image_exec_id: int = 0
    # Who sent the signal the process died of (KILLER_* flags; 0: not known).
    killer_flags: int = 0
    killer_pid: int = 0
    killer_uid: int = 0
    killer_code: int = 0  # the signal's si_code
    killer_comm: bytes = b""


class RawExec(NamedTuple):
    """struct exec_record: what a process became at its last exec."""

    ts_boot_ns: int
    start_boot_ns: int
    pid: int
    filename: bytes
    # argv as read: NUL-separated, without the final NUL; None: capture_args is off. Kept as
    # one blob so that userspace decodes it in one call, whatever the argument count.
    args: bytes | None
    args_truncated: bool
    exec_id: int = 0  # the process's self_exec_id after this exec


class RawCgroup(NamedTuple):
    """struct cgroup_record: a cgroup v2 directory created (with its path) or removed."""

    removed: bool
    cgroup_id: int
    parent_id: int
    path: bytes | None  # the host's path; None on removal, or when it did not fit


RawRecord = RawExit | RawExec | RawCgroup

EXIT_RECORD = struct.Struct("<II7Q8I16s16sQIIIIIi16s")
EXIT_RECORD_SIZE = EXIT_RECORD.size  # 176, asserted against the C struct in tests
EXEC_HEADER = struct.Struct("<II2QIIQII256s")  # everything before args[]
CGROUP_HEADER = struct.Struct("<IIQQ")  # everything before path[]
CGROUP_PATH_LEN = 512
_KIND = struct.Struct("<I")


# A poll hands over at most this many records, so a full ring is not decoded into memory at
# once; a full batch means more may be queued.
MAX_BATCH = 1024
# on_sample returns this to stop libbpf's consume loop once a batch is full: the record just
# taken is kept, the rest stays queued in the ring for the next poll.
BATCH_FULL = -errno.EAGAIN


class RecordBuffer:
    """Collects records from a ring-buffer callback until the poll loop takes them.

    ``on_sample`` runs inside libbpf's (or libbcc's) C callback, so it never raises: an
    exception there would be swallowed and could hang the poll loop.
    """

    def __init__(self, max_batch: int = MAX_BATCH) -> None:
        self._records: list[RawRecord] = []
        self.max_batch = max_batch

    def on_sample(self, _ctx: object, data: int, size: int) -> int:
        try:
            self._records.append(decode(ctypes.string_at(data, size)))
        except Exception:
            log.exception("undecodable ring-buffer record of %d bytes", size)
        return BATCH_FULL if len(self._records) >= self.max_batch else 0

    @property
    def full(self) -> bool:
        return len(self._records) >= self.max_batch

    def take(self) -> list[RawRecord]:
        out, self._records = self._records, []
        return out


def _cstr(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def decode(data: bytes) -> RawRecord:
    """Decode one record of any kind; strings keep their raw bytes up to the first NUL."""
    (kind,) = _KIND.unpack_from(data)
    if kind == KIND_EXIT:
        return decode_exit(data)
    if kind == KIND_EXEC:
        return _decode_exec(data)
    if kind in (KIND_CGROUP_MKDIR, KIND_CGROUP_RMDIR):
        _, path_size, cgroup_id, parent_id = CGROUP_HEADER.unpack_from(data)
        path = data[CGROUP_HEADER.size : CGROUP_HEADER.size + path_size]
        # A path that filled the buffer may have been cut: unknown rather than wrong.
        complete = 0 < path_size < CGROUP_PATH_LEN
        removed = kind == KIND_CGROUP_RMDIR
        return RawCgroup(removed, cgroup_id, parent_id, _cstr(path) if complete else None)
    raise ValueError(f"unknown record kind {kind}")


def decode_exit(data: bytes) -> RawExit:
    f = EXIT_RECORD.unpack_from(data)
    return RawExit._make(
        (*f[2:17], f[1], _cstr(f[17]), _cstr(f[18]), f[20], f[19], f[21], *f[22:26], _cstr(f[26]))
    )


def encode_exit(raw: RawExit) -> bytes:
    """The inverse of decode_exit, for tests and tools that replay records."""
    return EXIT_RECORD.pack(
        KIND_EXIT,
        raw.flags,
        *raw[:15],
        raw.comm[:16],
        raw.parent_comm[:16],
        raw.image_start_ns,
        raw.image_pid,
        raw.image_exec_id,
        raw.killer_flags,
        raw.killer_pid,
        raw.killer_uid,
        raw.killer_code,
        raw.killer_comm[:16],
    )


def _decode_exec(data: bytes) -> RawExec:
    _, flags, ts, start, pid, args_size, _total, exec_id, _, filename = EXEC_HEADER.unpack_from(
        data
    )
    args: bytes | None = None
    if not flags & EXEC_NO_ARGS:
        # argv is NUL-separated with a final NUL; a truncated one ends mid-argument.
        args = data[EXEC_HEADER.size : EXEC_HEADER.size + args_size]
        if args.endswith(b"\0"):
            args = args[:-1]
    truncated = bool(flags & EXEC_ARGS_TRUNCATED)
    return RawExec(ts, start, pid, _cstr(filename), args, truncated, exec_id)

"""What each live process is: its executable and args from its last exec.

Filled from exec records and, at start, from /proc. A process that never exec'd takes the entry
of the ancestor (and the exec) its image comes from, as the probe names them: never an older
exec's entry for a lost one. Bounded, least recently set first out (counted).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal, NamedTuple

from procmon.probe.record import RawExec, RawExit

log = logging.getLogger("procmon.enrich")

ExecSource = Literal["exec", "fork", "proc"]
# Turns a raw argv blob (NUL-separated) into what may leave the host (decoded, redacted).
ArgsShaper = Callable[[bytes], tuple[str, ...]]
ARGS_LEN = 1024  # PROCMON_ARGS_LEN: /proc seeds are cut like the probe cuts exec records
_NS_PER_S = 1_000_000_000


class ExecInfo(NamedTuple):  # a tuple: made for every exec, cheaper than a frozen dataclass
    exe: str | None
    args: tuple[str, ...] | None
    args_truncated: bool
    source: ExecSource
    start_boot_ns: int  # exact for exec records
    start_ticks: int | None = None  # set for /proc seeds: /proc/<pid>/stat has clock ticks
    exec_id: int | None = None  # the process's self_exec_id after this exec; None: unknown

    def is_of(self, start_boot_ns: int, exec_id: int, hz: int) -> bool:
        """Whether this entry is the image of the process started then (pids are reused) as
        of its exec exec_id (0: unknown)."""
        if self.start_ticks is None:
            return self.start_boot_ns == start_boot_ns and (
                not exec_id or not self.exec_id or self.exec_id == exec_id
            )
        return start_boot_ns * hz // _NS_PER_S == self.start_ticks


class ExecCache:
    def __init__(self, max_entries: int, shape_args: ArgsShaper, capture_args: bool = True) -> None:
        self.max_entries = max_entries
        self._shape_args = shape_args
        self._capture_args = capture_args  # off: /proc seeds carry no args either
        self._by_pid: OrderedDict[int, ExecInfo] = OrderedDict()
        self._hz = os.sysconf("SC_CLK_TCK")
        self.evicted = 0  # entries pushed out by the bound: those exits lose their context

    def __len__(self) -> int:
        return len(self._by_pid)

    def put(self, pid: int, info: ExecInfo) -> None:
        by_pid = self._by_pid
        by_pid[pid] = info
        by_pid.move_to_end(pid)
        if len(by_pid) > self.max_entries:
            by_pid.popitem(last=False)
            self.evicted += 1

    def on_exec(self, raw: RawExec) -> None:
        exe = raw.filename.decode("utf-8", "backslashreplace")
        args = None if raw.args is None else self._shape_args(raw.args)
        info = ExecInfo(
            exe, args, raw.args_truncated, "exec", raw.start_boot_ns, exec_id=raw.exec_id
        )
        self.put(raw.pid, info)

    def _entry(self, pid: int, start_boot_ns: int, exec_id: int) -> ExecInfo | None:
        info = self._by_pid.get(pid)
        return info if info is not None and info.is_of(start_boot_ns, exec_id, self._hz) else None

    def for_exit(self, raw: RawExit, last: bool) -> ExecInfo | None:
        """The exiting process's own entry (removed when ``last``: the process is gone), else
        that of the ancestor its image comes from."""
        own = self._by_pid.get(raw.pid)
        if own is not None and own.is_of(raw.start_boot_ns, 0, self._hz):
            if last:  # gone: its entry goes too, even one of an earlier exec
                del self._by_pid[raw.pid]
            exec_id = raw.image_exec_id if raw.image_pid == raw.pid else 0
            if own.is_of(raw.start_boot_ns, exec_id, self._hz):
                return own
        if raw.image_pid in (0, raw.pid):
            return None
        owner = self._entry(raw.image_pid, raw.image_start_ns, raw.image_exec_id)
        if owner is None:
            return None
        return ExecInfo(owner.exe, owner.args, owner.args_truncated, "fork", raw.start_boot_ns)

    def seed_from_proc(self, proc: str = "/proc") -> int:
        """Enter every running process; returns how many. Unreadable parts stay unknown:
        /proc/<pid>/exe needs ptrace access, cmdline does not."""
        seeded = 0
        for name in os.listdir(proc):
            if not name.isdigit():
                continue
            info = self._read_proc_entry(f"{proc}/{name}")
            if info is not None and int(name) not in self._by_pid:
                self.put(int(name), info)
                seeded += 1
        return seeded

    def _read_proc_entry(self, base: str) -> ExecInfo | None:
        try:
            with open(f"{base}/stat", "rb") as f:
                stat = f.read()
            with open(f"{base}/cmdline", "rb") as f:
                cmdline = f.read(ARGS_LEN + 1)
        except OSError:
            return None  # exited meanwhile
        # comm may hold spaces and parentheses: fields resume after the last ')'.
        start_ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])
        try:
            exe: str | None = os.readlink(f"{base}/exe")
        except OSError:
            exe = None  # a kernel thread, or no ptrace access to the process
        if exe is not None and exe.endswith(" (deleted)"):
            exe = exe[: -len(" (deleted)")]  # replaced on disk since: the path it ran from
        truncated = len(cmdline) > ARGS_LEN
        cmdline = cmdline[:ARGS_LEN]
        args: tuple[str, ...] | None = None  # kernel threads and zombies have none
        # A process that rewrote its argv (setproctitle) leaves NUL padding behind.
        cmdline = cmdline.rstrip(b"\0")
        if cmdline and self._capture_args:
            args = self._shape_args(cmdline)
        return ExecInfo(exe, args, truncated, "proc", 0, start_ticks)

"""The bcc backend: compiles bpf/exit.bcc.c at start-up against this kernel's headers.

For kernels without BTF, where the CO-RE object cannot relocate. The program writes the same
records (bpf/exit_record.h) to a ring buffer as the CO-RE one, so procmon.probe.record decodes
both: exits and, with capture_exec, the exec and cgroup records the context is built from.
bcc's Python module comes from the distribution (python3-bpfcc) and imports only under the
system Python: the agent's venv needs --system-site-packages.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from procmon.probe import bcc_guard
from procmon.probe.errors import explain
from procmon.probe.knobs import ProbeKnobs
from procmon.probe.record import (
    COUNTER_CONTEXT_DROPPED,
    COUNTER_DROPPED,
    COUNTER_EMITTED,
    RawRecord,
    RecordBuffer,
)
from procmon.probe.ring_fill import RingFill

log = logging.getLogger("procmon.probe")

# Preferred first: the raw tracepoint attaches with CAP_BPF + CAP_PERFMON; the classic one
# goes through perf_event_open, which Debian kernels restrict to CAP_SYS_ADMIN.
RAW_TRACEPOINT = ("sched_process_exit", "procmon_exit_raw")
TRACEPOINT = ("sched:sched_process_exit", "procmon_exit")
# The context joined to exits (exe, args, cgroup paths): raw tracepoints only, beside the exit
# program; compiled in with PROCMON_CAPTURE_EXEC.
CONTEXT_RAW_TRACEPOINTS = (
    ("sched_process_exec", "procmon_exec_raw"),
    ("cgroup_mkdir", "procmon_cgroup_mkdir_raw"),
    ("cgroup_rmdir", "procmon_cgroup_rmdir_raw"),
)
# Who sent a fatal signal, and whom the OOM killer chose: compiled in with
# PROCMON_CAPTURE_KILLER.
KILLER_RAW_TRACEPOINTS = (
    ("signal_generate", "procmon_signal_raw"),
    ("mark_victim", "procmon_oom_raw"),
)
_GRANT = "grant CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (bcc needs it for tracefs)"
_TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def bundled_source() -> Path:
    """The bcc C text shipped inside the package (copied from bpf/ by the Makefile)."""
    path = Path(str(resources.files("procmon.probe") / "bpf" / "exit.bcc.c"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: build it with 'make bpf' and reinstall")
    return path


def import_bcc() -> Any:
    """bcc's BPF class, or ImportError saying how to make it importable."""
    try:
        from bcc import BPF
    except ImportError as exc:
        raise ImportError(
            f"bcc backend: cannot import bcc under {sys.executable} ({exc}): install "
            "python3-bpfcc (python3-bcc on RHEL) and run the agent from the system Python or "
            "a venv made with --system-site-packages"
        ) from exc
    return BPF


def _tracepoint_format(event: str) -> str | None:
    for root in _TRACEFS:
        try:
            return Path(root, "events", event, "format").read_text()
        except OSError:
            continue
    return None


def tracepoint_has_group_dead() -> bool:
    """Kernels from 6.x on pass group_dead to sched_process_exit; older ones need a fallback."""
    fmt = _tracepoint_format("sched/sched_process_exit")
    if fmt is None:
        raise FileNotFoundError(
            "bcc backend: tracefs is not mounted (no events/sched/sched_process_exit/format "
            f"under {' or '.join(_TRACEFS)}): mount -t tracefs nodev /sys/kernel/tracing"
        )
    return "group_dead;" in fmt


def mark_victim_has_task_arg() -> bool:
    """mark_victim passes (task, uid) on kernels whose event has a uid field, else (pid)."""
    return "uid_t uid;" in (_tracepoint_format("oom/mark_victim") or "")


def cflags(
    knobs: ProbeKnobs,
    include_dir: Path,
    group_dead: bool,
    ncpus: int | None = None,
    oom_task_arg: bool = False,
) -> list[str]:
    """The knobs as -D macros: constants, so clang drops the filters that are off."""
    # Wakeups are batched per CPU in exit.bcc.c (no ringbuf_query in bcc 0.26): share the
    # budget so that about wakeup_bytes in total wait for a wakeup, as with CO-RE.
    per_cpu_wakeup = knobs.wakeup_bytes // max(1, ncpus or _possible_cpus())
    flags = [
        f"-I{include_dir}",
        f"-DPROCMON_PER_THREAD={int(knobs.per_thread)}",
        f"-DPROCMON_FAILED_ONLY={int(knobs.failed_only)}",
        f"-DPROCMON_TARGET_PIDNS={knobs.target_pidns}U",
        f"-DPROCMON_TARGET_TGID={knobs.target_tgid}U",
        f"-DPROCMON_TARGET_CGROUP={knobs.target_cgroup}ULL",
        f"-DPROCMON_TARGET_CGROUP_LEVEL={knobs.target_cgroup_level}U",
        f"-DPROCMON_SELF_TGID={knobs.self_tgid}U",
        f"-DPROCMON_SELF_PIDNS={knobs.self_pidns}U",
        f"-DPROCMON_WAKEUP_NS={knobs.wakeup_ns}ULL",
        f"-DPROCMON_WAKEUP_BYTES={per_cpu_wakeup}ULL",
        f"-DPROCMON_RING_PAGES={max(1, knobs.ring_size_bytes // os.sysconf('SC_PAGE_SIZE'))}",
        f"-DPROCMON_CAPTURE_EXEC={int(knobs.capture_exec)}",
        f"-DPROCMON_CAPTURE_ARGS={int(knobs.capture_args)}",
        f"-DPROCMON_CONTEXT_FILL_MAX={knobs.context_fill_max}ULL",
        f"-DPROCMON_CAPTURE_KILLER={int(knobs.capture_killer)}",
    ]
    if group_dead:
        flags.append("-DPROCMON_TP_GROUP_DEAD")
    if oom_task_arg:
        flags.append("-DPROCMON_OOM_TASK_ARG")
    return flags


def _possible_cpus() -> int:
    """CPUs a per-CPU map has slots for (/sys/devices/system/cpu/possible, e.g. "0-3")."""
    try:
        spec = Path("/sys/devices/system/cpu/possible").read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    count = 0
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def compile_module(source: Path, flags: list[str]) -> Any:
    """Compile the probe text plus the guard's offset functions; nothing is attached yet."""
    bpf_cls = import_bcc()
    if bcc_guard.find_headers() is None:
        raise FileNotFoundError(
            f"bcc backend: no kernel headers for {os.uname().release}: install "
            "linux-headers-$(uname -r) or set BCC_KERNEL_SOURCE"
        )
    text = source.read_text() + bcc_guard.offset_functions()
    try:
        return bpf_cls(text=text.encode(), cflags=flags)
    except Exception as exc:  # bcc raises a bare Exception; clang's errors went to stderr
        raise explain(exc, f"bcc backend: compiling {source}", _GRANT) from exc


def compile_probe(
    source: Path,
    knobs: ProbeKnobs,
    group_dead: bool,
    compile_fn: Callable[[Path, list[str]], Any] | None = None,
    oom_task_arg: bool = False,
) -> tuple[Any, bool]:
    """Compile the probe; returns the module and whether the extra programs (context, killer)
    the knobs ask for are in it.

    They read more kernel structures than the exit program, so a kernel whose headers break
    them still gets exits: one warning, then a build without them (CO-RE's loader does the
    same). A failure without them is the real error.
    """
    compile_fn = compile_fn or compile_module  # looked up now: tests replace compile_module
    flags = cflags(knobs, source.parent, group_dead, oom_task_arg=oom_task_arg)
    if not (knobs.capture_exec or knobs.capture_killer):
        return compile_fn(source, flags), False
    try:
        return compile_fn(source, flags), True
    except OSError:
        raise  # no headers, or not permitted: a build without context fails the same way
    except Exception as exc:
        without = dataclasses.replace(
            knobs, capture_exec=False, capture_args=False, capture_killer=False
        )
        module = compile_fn(source, cflags(without, source.parent, group_dead))
        first = str(exc).strip().splitlines()
        log.warning(
            "exec, cgroup and killer context unavailable (their programs did not compile: %s):"
            " events carry no exe, args, cgroup path or killer",
            first[0] if first else type(exc).__name__,
        )
        return module, False


class BccProbe:
    """Compile, guard, load and attach the bcc probe; poll() returns decoded records."""

    backend = "bcc"

    def __init__(self, knobs: ProbeKnobs, source: Path | None = None) -> None:
        started = time.monotonic()
        self._knobs = knobs
        self._source = source or bundled_source()
        self._records = RecordBuffer()
        self._attached = ""  # "raw" or "tracepoint" once attached
        self._context_attached: list[str] = []  # raw tracepoints of the context programs
        self._killer_attached: list[str] = []
        self.has_context = False
        self.has_killer = False
        self.ring_fill: RingFill | None = None
        group_dead = tracepoint_has_group_dead()
        self._bpf, extras_compiled = compile_probe(
            self._source, knobs, group_dead, oom_task_arg=mark_victim_has_task_arg()
        )
        try:
            self.compile_seconds = time.monotonic() - started
            # Refuse before attaching: wrong offsets would yield plausible garbage.
            self.guard_summary = bcc_guard.guard(self._bpf.dump_func)
            log.info("bcc guard: %s", self.guard_summary)
            self._attach()
            if extras_compiled and knobs.capture_exec:
                self._attach_context()
            if extras_compiled and knobs.capture_killer:
                self._attach_killer()
            self._bpf["events"].open_ring_buffer(self._records.on_sample)
            self._counters = self._bpf["counters"]
            self._open_ring_fill()
        except BaseException:
            self.close()
            raise
        self.attach_seconds = time.monotonic() - started
        log.info(
            "attached %s in %.3f s (compile %.3f s)",
            self.program,
            self.attach_seconds,
            self.compile_seconds,
        )

    def _attach(self) -> None:
        tp, fn = RAW_TRACEPOINT
        try:
            self._bpf.attach_raw_tracepoint(tp=tp.encode(), fn_name=fn.encode())
            self._attached = "raw"
            self.program = f"bcc:{fn}"
            return
        except Exception as exc:  # bcc raises bare Exceptions
            log.info("raw tracepoint %s did not attach (%s); trying the tracepoint", tp, exc)
        tp, fn = TRACEPOINT
        try:
            self._bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
        except Exception as exc:
            raise explain(exc, f"bcc backend: attaching {fn} to {tp}", _GRANT) from exc
        self._attached = "tracepoint"
        self.program = f"bcc:{fn}"

    def _attach_context(self) -> None:
        """All three context programs or none: without them the exits still flow, with null
        context, so a kernel that refuses one costs a warning, not the events."""
        self._context_attached = self._attach_all(
            CONTEXT_RAW_TRACEPOINTS,
            "exec and cgroup context unavailable",
            "events carry no exe, args or cgroup path",
        )
        self.has_context = bool(self._context_attached)

    def _attach_killer(self) -> None:
        """Both killer programs or none: without them exits carry no killer (one warning)."""
        self._killer_attached = self._attach_all(
            KILLER_RAW_TRACEPOINTS, "killer attribution unavailable", "events carry no killer"
        )
        self.has_killer = bool(self._killer_attached)

    def _attach_all(self, programs: tuple[tuple[str, str], ...], what: str, cost: str) -> list[str]:
        """Attach every (raw tracepoint, function) or, at the first refusal, none (one
        warning); returns the tracepoints attached."""
        attached: list[str] = []
        for tp, fn in programs:
            try:
                self._bpf.attach_raw_tracepoint(tp=tp.encode(), fn_name=fn.encode())
            except Exception as exc:  # bcc raises bare Exceptions (load or attach)
                self._detach_raw(attached)
                text = str(exc).strip()
                first = text.splitlines()[0] if text else type(exc).__name__
                log.warning("%s (%s did not attach to %s: %s): %s", what, fn, tp, first, cost)
                return []
            attached.append(tp)
        return attached

    def _detach_raw(self, tracepoints: list[str]) -> None:
        for tp in tracepoints:
            self._bpf.detach_raw_tracepoint(tp=tp.encode())
        tracepoints.clear()

    def poll(self, timeout_ms: int) -> list[RawRecord]:
        """Wait up to timeout_ms for a wakeup, then drain what is queued, at most MAX_BATCH
        records (a full batch: poll again)."""
        self._bpf.ring_buffer_poll(timeout_ms)
        # Batched wakeups leave records queued without an epoll event: drain them too.
        if not self._records.full:
            self._bpf.ring_buffer_consume()
        if self._knobs.context_fill_max:
            self._report_consumed()
        return self._records.take()

    def _report_consumed(self) -> None:
        """Tell the probe how far the ring is drained (it cannot ask the ring itself): its
        context share is measured from this. Without the ring's position pages, report all
        queued bytes consumed, which turns the share off rather than shedding all context."""
        positions = self._bpf["ring_pos"]
        if self.ring_fill is not None:
            consumed = self.ring_fill.consumed()
        else:
            consumed = positions[ctypes.c_int(0)].value
        positions[ctypes.c_int(1)] = ctypes.c_uint64(consumed)

    def _counter(self, slot: int) -> int:
        try:
            return int(sum(self._counters[ctypes.c_int(slot)]))
        except KeyError:
            return 0

    def kernel_drops(self) -> int:
        """Records the probe could not reserve in the ring buffer, since attach."""
        return self._counter(COUNTER_DROPPED)

    def context_drops(self) -> int:
        """Exec and cgroup records the ring could not take: those exits carry null context."""
        return self._counter(COUNTER_CONTEXT_DROPPED)

    def kernel_emitted(self) -> int:
        return self._counter(COUNTER_EMITTED)

    def detach(self) -> None:
        """Stop new records; those already queued stay for a last poll()."""
        self._detach_raw(self._context_attached)
        self._detach_raw(self._killer_attached)
        if self._attached == "raw":
            self._bpf.detach_raw_tracepoint(tp=RAW_TRACEPOINT[0].encode())
        elif self._attached == "tracepoint":
            self._bpf.detach_tracepoint(tp=TRACEPOINT[0].encode())
        self._attached = ""

    def _open_ring_fill(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        capacity = max(1, self._knobs.ring_size_bytes // page) * page  # PROCMON_RING_PAGES
        try:
            self.ring_fill = RingFill(int(self._bpf["events"].map_fd), capacity)
        except (OSError, AttributeError) as exc:  # only burst deferral needs it
            log.info("ring fill not readable (%s): bursts are drained as they come", exc)

    def close(self) -> None:
        if self.ring_fill is not None:
            self.ring_fill.close()
            self.ring_fill = None
        if self._bpf is not None:
            self.detach()
            self._bpf.cleanup()
            self._bpf = None

"""The CO-RE backend: loads bpf/exit.bpf.c's object through libbpf and drains its ring buffer."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import socket
import struct
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

from procmon.probe import libbpf
from procmon.probe.btf import BTF_PATH
from procmon.probe.errors import ProbeError, explain
from procmon.probe.knobs import ProbeKnobs
from procmon.probe.record import (
    BATCH_FULL,
    COUNTER_CONTEXT_DROPPED,
    COUNTER_DROPPED,
    COUNTER_EMITTED,
    RECORD_VERSION,
    RawRecord,
    RecordBuffer,
)
from procmon.probe.ring_fill import RingFill

log = logging.getLogger("procmon.probe")

# Preferred first: tp_btf reads the tracepoint's arguments directly; the classic tracepoint
# is the fallback where tp_btf does not load.
PROGRAMS = (b"exit_btf", b"exit_tp")
# The context joined to exits (exe, args, cgroup paths): attached beside the exit program.
CONTEXT_PROGRAMS = (b"exec_btf", b"cgroup_mkdir_btf", b"cgroup_rmdir_btf")
# Who sent a fatal signal, and whom the OOM killer chose: the killer of an exit.
KILLER_PROGRAMS = (b"signal_raw", b"oom_raw")
# CoreProbes attached in this process. The loader child is used only while there is none
# and no other thread: an attached probe would report the child's exit (its self_id names the
# agent, not the child), and a fork beside running threads inherits whatever locks they hold.
# So a reload that replaces the probe (Pipeline.replace, the old one still attached, the MQTT
# thread running) loads in the agent itself.
_attached = 0
_GRANT = "grant CAP_BPF and CAP_PERFMON (AmbientCapabilities in the systemd unit)"
_HINT = "--log-level info shows libbpf's log"


def bundled_object() -> Path:
    """The BPF object shipped inside the package (built by `make bpf`)."""
    path = Path(str(resources.files("procmon.probe") / "bpf" / "exit.bpf.o"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: build it with 'make bpf' and reinstall")
    return path


class CoreProbe:
    """Open, configure, load and attach the probe; poll() returns decoded records.

    With ``pin_dir`` the ring buffer, the counters and the attach link are pinned in bpffs:
    the probe keeps filling the ring while the agent restarts, and the next agent with the
    same object and knobs drains what queued meanwhile. Different pins (an upgrade that
    changed the record layout or the knobs) are removed and replaced.
    """

    backend = "core"

    def __init__(
        self,
        knobs: ProbeKnobs,
        obj_path: Path | None = None,
        pin_dir: Path | None = None,
        load_in_child: bool = True,
    ) -> None:
        self._bpf = libbpf.lib()
        self._path = obj_path or bundled_object()
        self._knobs = knobs
        self._obj = 0
        self._links: list[int] = []
        self._link_fds: list[int] = []  # links handed over by the loader child
        self._counted = False  # in _attached
        self._owned_fds: list[int] = []  # fds of adopted pins (a loaded object owns its own)
        self._ring = 0
        self.ring_fill: RingFill | None = None
        self._records = RecordBuffer()
        self._started = time.monotonic()
        self._pins = pin_dir / _pin_tag(self._path, knobs) if pin_dir else None
        self.reused_pins = False
        if self._pins is not None and (self._pins / "link").exists():
            self._reuse_pins(self._pins)
        elif load_in_child and _attached == 0 and threading.active_count() == 1:
            self._load_in_child()
        else:
            self._load_fresh()
        self._set_self_id()
        self._open_ring()
        self._count(True)
        self.attach_seconds = time.monotonic() - self._started
        log.info("attached %s in %.3f s", self.program, self.attach_seconds)

    # --- set-up -------------------------------------------------------------------------

    def _load_fresh(self) -> None:
        last_error: libbpf.LibbpfError | None = None
        knobs = self._knobs
        # Without the extra programs (context, killer) the exits still flow: a kernel
        # refusing them costs the enrichment (null fields, one warning), not the events.
        extras = knobs.capture_exec or knobs.capture_killer
        attempts = [(p, e) for e in ((True, False) if extras else (False,)) for p in PROGRAMS]
        for program, with_extras in attempts:
            try:
                self._load_and_attach(program, with_extras)
                self.program = program.decode()
                self.has_context = with_extras and knobs.capture_exec
                self.has_killer = with_extras and knobs.capture_killer
                break
            except libbpf.LibbpfError as exc:
                log.info("program %s did not load or attach: %s", program.decode(), exc)
                last_error = exc
                self._close_object()
        else:
            raise explain(last_error, "loading the eBPF probe", _GRANT, _HINT)
        if extras and not (self.has_context or self.has_killer):
            log.warning(
                "exec, cgroup and killer context unavailable (%s): events carry no exe, "
                "args, cgroup path or killer",
                last_error,
            )
        self._ring_fd = self._bpf.bpf_map__fd(self._map(b"events"))
        self._counters_fd = self._bpf.bpf_map__fd(self._map(b"counters"))
        self._self_fd = self._bpf.bpf_map__fd(self._map(b"self_id"))
        if self._pins is not None:
            self._pin(self._pins)

    def _load_in_child(self) -> None:
        """_load_fresh in a short-lived child (fork) that hands over the fds of the maps and
        links. libbpf's parse of the kernel's BTF costs ~16 MB at its peak (bench/startup_rss.md):
        in the child that memory goes when the child exits, instead of staying in the agent's
        peak RSS for good. The links stay attached: the fds passed over keep them."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: load, attach, hand over, exit at once
            status = 0
            try:
                ours.close()
                self._load_fresh()
                if self._knobs.self_tgid:  # the child's own exit is not an event either
                    self._write_self_id(os.getpid())
                fds = [self._ring_fd, self._counters_fd, self._self_fd]
                fds += [self._bpf.bpf_link__fd(link) for link in self._links]
                handed = {
                    "program": self.program,
                    "has_context": self.has_context,
                    "has_killer": self.has_killer,
                }
                socket.send_fds(theirs, [json.dumps(handed).encode()], fds)
            except BaseException as exc:
                status = 1
                refused = isinstance(exc, PermissionError)
                with contextlib.suppress(BaseException):
                    theirs.send(json.dumps({"error": str(exc), "refused": refused}).encode())
            finally:
                os._exit(status)  # no cleanup: closing the object would detach the links
        theirs.close()
        try:
            message, fds, _flags, _addr = socket.recv_fds(ours, 1 << 16, 64)
        finally:
            ours.close()
            # Once reaped, its exit has passed the probe (excluded as ours): ours goes back.
            os.waitpid(pid, 0)
        info: dict[str, Any] = (
            json.loads(message) if message else {"error": "the loader process died"}
        )
        if "error" in info:
            for fd in fds:
                os.close(fd)
            if info.get("refused"):
                raise PermissionError(info["error"])
            raise ProbeError(info["error"])
        self._owned_fds = fds[:3]
        self._ring_fd, self._counters_fd, self._self_fd = fds[:3]
        self._link_fds = fds[3:]
        self.program = info["program"]
        self.has_context = info["has_context"]
        self.has_killer = info["has_killer"]

    def _load_and_attach(self, program: bytes, with_extras: bool) -> None:
        bpf = self._bpf
        # Relocate against vmlinux BTF only: without CAP_SYS_ADMIN libbpf 1.1 cannot iterate
        # kernel-module BTFs and fails the load (seen on Debian's 6.1 as the agent's user).
        opts = libbpf.ObjectOpenOpts(btf_custom_path=str(BTF_PATH).encode())
        opts.sz = ctypes.sizeof(opts)
        ctypes.set_errno(0)
        self._obj = libbpf.check_ptr(
            bpf.bpf_object__open_file(str(self._path).encode(), ctypes.byref(opts)),
            f"opening {self._path}",
        )
        wanted: tuple[bytes, ...] = (program,)
        if with_extras and self._knobs.capture_exec:
            wanted += CONTEXT_PROGRAMS
        if with_extras and self._knobs.capture_killer:
            wanted += KILLER_PROGRAMS
        for name in PROGRAMS + CONTEXT_PROGRAMS + KILLER_PROGRAMS:
            prog = libbpf.check_ptr(
                bpf.bpf_object__find_program_by_name(self._obj, name), f"finding {name.decode()}"
            )
            bpf.bpf_program__set_autoload(prog, name in wanted)
        self._set_knobs()
        libbpf.check_rc(
            bpf.bpf_map__set_max_entries(self._map(b"events"), self._knobs.ring_size_bytes),
            "sizing ring",
        )
        libbpf.check_rc(bpf.bpf_object__load(self._obj), "loading the BPF object")
        # The exit program's link first: it is the one _pin() marks a complete set with.
        for name in wanted:
            prog = bpf.bpf_object__find_program_by_name(self._obj, name)
            ctypes.set_errno(0)
            self._links.append(
                libbpf.check_ptr(bpf.bpf_program__attach(prog), f"attaching {name.decode()}")
            )

    def _pin(self, pins: Path) -> None:
        """Pin maps and link; on failure run unpinned (a restart then loses its gap)."""
        try:
            _remove_stale_pins(pins.parent, keep=pins.name)
            _remove_pins(pins)  # an incomplete set (no link) from an interrupted start
            pins.mkdir(parents=True)
            for name in (b"events", b"counters", b"self_id"):
                libbpf.check_rc(
                    self._bpf.bpf_map__pin(self._map(name), str(pins / name.decode()).encode()),
                    f"pinning map {name.decode()}",
                )
            # The exit link last: its presence marks a complete set of pins.
            for i, link in enumerate(self._links[1:]):
                libbpf.check_rc(
                    self._bpf.bpf_link__pin(link, str(pins / f"link-context{i}").encode()),
                    "pinning a context link",
                )
            libbpf.check_rc(
                self._bpf.bpf_link__pin(self._links[0], str(pins / "link").encode()),
                "pinning the link",
            )
        except (OSError, libbpf.LibbpfError) as exc:
            log.warning("cannot pin the probe under %s (%s): running unpinned", pins, exc)
            _remove_pins(pins)

    def _reuse_pins(self, pins: Path) -> None:
        """Adopt a probe a previous agent left attached: no load, nothing lost in between."""
        bpf = self._bpf
        fds = {}
        for name in ("events", "counters", "self_id"):
            ctypes.set_errno(0)
            fds[name] = libbpf.check_rc(
                bpf.bpf_obj_get(str(pins / name).encode()), f"opening pinned {pins / name}"
            )
        self._ring_fd, self._counters_fd, self._self_fd = (
            fds["events"],
            fds["counters"],
            fds["self_id"],
        )
        self._owned_fds = list(fds.values())
        self.program = f"pinned {pins.name}"
        # The pin tag covers the knobs, so the pinned set has what these knobs ask for.
        self.has_context = self._knobs.capture_exec and (pins / "link-context0").exists()
        self.has_killer = self._knobs.capture_killer and (pins / "link-context0").exists()
        self.reused_pins = True

    def _set_self_id(self) -> None:
        self._write_self_id(self._knobs.self_tgid)

    def _write_self_id(self, tgid: int) -> None:
        key = ctypes.c_uint32(0)
        value = (ctypes.c_uint32 * 2)(tgid, self._knobs.self_pidns)
        libbpf.check_rc(
            self._bpf.bpf_map_update_elem(self._self_fd, ctypes.byref(key), ctypes.byref(value), 0),
            "setting the agent's own id",
        )

    def _open_ring(self) -> None:
        # Keep the callback object referenced: libbpf calls it for the ring's whole life.
        self._sample_cb = libbpf.RING_SAMPLE_FN(self._records.on_sample)
        ctypes.set_errno(0)
        self._ring = libbpf.check_ptr(
            self._bpf.ring_buffer__new(self._ring_fd, self._sample_cb, None, None),
            "creating the ring buffer",
        )
        self._ncpus = libbpf.check_rc(self._bpf.libbpf_num_possible_cpus(), "counting CPUs")
        self._counter_buf = (ctypes.c_uint64 * self._ncpus)()
        try:
            self.ring_fill = RingFill(self._ring_fd, self._knobs.ring_size_bytes)
        except OSError as exc:  # only burst deferral needs it
            log.info("ring fill not readable (%s): bursts are drained as they come", exc)

    def _map(self, name: bytes) -> int:
        return libbpf.check_ptr(
            self._bpf.bpf_object__find_map_by_name(self._obj, name), f"finding map {name.decode()}"
        )

    def _rodata(self) -> int:
        bpf = self._bpf
        m = bpf.bpf_object__next_map(self._obj, None)
        while m:
            if bpf.bpf_map__name(m).endswith(b".rodata"):
                return int(m)
            m = bpf.bpf_object__next_map(self._obj, m)
        raise libbpf.LibbpfError(0, "BPF object has no .rodata map")

    def _set_knobs(self) -> None:
        rodata = self._rodata()
        size = ctypes.c_size_t()
        base = libbpf.check_ptr(
            self._bpf.bpf_map__initial_value(rodata, ctypes.byref(size)), "reading .rodata"
        )
        layout = libbpf.datasec_offsets(self._obj, b".rodata")
        for name, value in self._knobs.as_rodata().items():
            offset, width = layout[name]
            fmt = {1: "<B", 4: "<I", 8: "<Q"}[width]
            ctypes.memmove(base + offset, struct.pack(fmt, value), width)

    # --- running ------------------------------------------------------------------------

    def poll(self, timeout_ms: int) -> list[RawRecord]:
        """Wait up to timeout_ms for a wakeup, then drain what is queued, at most MAX_BATCH
        records (a full batch: poll again)."""
        rc = self._bpf.ring_buffer__poll(self._ring, timeout_ms)
        # -EINTR: a signal arrived, the caller checks its flags; BATCH_FULL: records remain.
        if rc < 0 and rc not in (-errno.EINTR, BATCH_FULL):
            libbpf.check_rc(rc, "ring_buffer__poll")
        # Batched wakeups leave records queued without an epoll event: drain them too.
        if not self._records.full:
            self._bpf.ring_buffer__consume(self._ring)
        return self._records.take()

    def fileno(self) -> int:
        return int(self._bpf.ring_buffer__epoll_fd(self._ring))

    def _counter(self, slot: int) -> int:
        key = ctypes.c_uint32(slot)
        rc = self._bpf.bpf_map_lookup_elem(
            self._counters_fd, ctypes.byref(key), ctypes.byref(self._counter_buf)
        )
        if rc < 0:
            return 0
        return sum(self._counter_buf)

    def kernel_drops(self) -> int:
        """Records the probe could not reserve in the ring buffer since it was loaded (for a
        pinned probe: across agent restarts, so drops while no agent ran are counted too)."""
        return self._counter(COUNTER_DROPPED)

    def context_drops(self) -> int:
        """Exec and cgroup records lost: those exits carry null context, counted here."""
        return self._counter(COUNTER_CONTEXT_DROPPED)

    def kernel_emitted(self) -> int:
        return self._counter(COUNTER_EMITTED)

    def _close_object(self) -> None:
        self.detach()
        if self.ring_fill is not None:
            self.ring_fill.close()
            self.ring_fill = None
        if self._ring:
            self._bpf.ring_buffer__free(self._ring)
            self._ring = 0
        if self._obj:
            self._bpf.bpf_object__close(self._obj)
            self._obj = 0
        for fd in self._owned_fds:
            os.close(fd)
        self._owned_fds = []

    def detach(self) -> None:
        """Stop new records; those already queued stay for a last poll(). A pinned probe
        stays attached: records keep queueing for the next agent."""
        for link in self._links:
            self._bpf.bpf_link__destroy(link)  # with a pin, the pinned link lives on
        self._links = []
        for fd in self._link_fds:  # the last fd of an unpinned link: it detaches
            os.close(fd)
        self._link_fds = []

    def close(self) -> None:
        self._close_object()
        self._count(False)

    def _count(self, attached: bool) -> None:
        global _attached
        if attached != self._counted:
            _attached += 1 if attached else -1
            self._counted = attached


_PIN_PREFIX = f"r{RECORD_VERSION}-"


def _pin_tag(obj_path: Path, knobs: ProbeKnobs) -> str:
    """Pins are reusable only by the same object, record layout, knobs and ring size."""
    digest = hashlib.sha256(obj_path.read_bytes())
    digest.update(repr(sorted(knobs.as_rodata().items())).encode())
    digest.update(f"{knobs.ring_size_bytes}:{knobs.capture_exec}:{knobs.capture_killer}".encode())
    return _PIN_PREFIX + digest.hexdigest()[:16]


def _remove_pins(pins: Path) -> None:
    """Unpinning the link detaches the program once no agent holds it any more."""
    if not pins.is_dir():
        return
    link = pins / "link"
    if link.exists():
        link.unlink()  # first: a set without its link is never adopted
    for entry in pins.iterdir():
        entry.unlink()
    pins.rmdir()


def _remove_stale_pins(pin_root: Path, keep: str) -> None:
    if not pin_root.is_dir():
        return
    for entry in pin_root.iterdir():
        if entry.name != keep and entry.is_dir() and entry.name.startswith("r"):
            log.info("replacing stale probe pins %s", entry)
            _remove_pins(entry)


def unpin_all(pin_root: Path) -> int:
    """Remove every probe procmon pinned under pin_root; returns how many sets."""
    removed = 0
    if pin_root.is_dir():
        for entry in pin_root.iterdir():
            if entry.is_dir() and entry.name.startswith("r"):
                _remove_pins(entry)
                removed += 1
    return removed

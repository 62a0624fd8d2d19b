"""`procmon check`: what this host offers the probe, one line per item."""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from procmon.probe import bcc, bcc_guard
from procmon.probe.btf import BTF_PATH

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
TRACEFS = "/sys/kernel/tracing"


@dataclass(frozen=True)
class CheckLine:
    item: str
    ok: bool
    detail: str

    def render(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.item}: {self.detail}"


def effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_btf() -> CheckLine:
    ok = BTF_PATH.exists()
    return CheckLine(
        "BTF",
        ok,
        f"{BTF_PATH} present: the CO-RE backend can run"
        if ok
        else f"{BTF_PATH} missing: only the bcc backend (with kernel headers) can run",
    )


def check_tracefs() -> CheckLine:
    ok = os.path.exists(os.path.join(TRACEFS, "events/sched/sched_process_exit"))
    return CheckLine(
        "tracefs",
        ok,
        "sched_process_exit tracepoint visible"
        if ok
        else f"not mounted: mount -t tracefs nodev {TRACEFS}",
    )


def check_caps() -> CheckLine:
    caps = effective_caps()
    has_bpf = bool(caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1)
    if has_bpf or caps >> CAP_SYS_ADMIN & 1:
        return CheckLine("privilege", True, "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) effective")
    return CheckLine(
        "privilege",
        False,
        "need CAP_BPF + CAP_PERFMON: run as root or set AmbientCapabilities in the unit",
    )


def check_libbpf() -> CheckLine:
    name = ctypes.util.find_library("bpf")
    try:
        ctypes.CDLL(name or "libbpf.so.1")
    except OSError:
        return CheckLine("libbpf", False, "libbpf.so.1 not found: apt-get install libbpf1")
    return CheckLine("libbpf", True, name or "libbpf.so.1")


def host_lines() -> list[CheckLine]:
    return [check_btf(), check_tracefs(), check_caps(), check_libbpf()]


def bcc_lines(source: Path | None = None) -> list[CheckLine]:
    """bcc's own preconditions: does it import, are headers found, does the offset guard pass.
    The guard compiles the probe's headers with bcc (a few seconds; root)."""
    lines: list[CheckLine] = []
    try:
        bpf_cls = bcc.import_bcc()
        spec = importlib.util.find_spec("bcc")
        where = Path(str(spec.origin if spec else "?")).parent
        lines.append(CheckLine("bcc python module", True, f"imported from {where}"))
    except ImportError as exc:
        bpf_cls = None
        lines.append(CheckLine("bcc python module", False, str(exc)))

    headers = bcc_guard.find_headers()
    if headers is None:
        release = os.uname().release
        detail = f"none for {release}: install linux-headers-{release} or set BCC_KERNEL_SOURCE"
        lines.append(CheckLine("kernel headers", False, detail))
    else:
        version = f" (UTS_RELEASE {headers.release})" if headers.release else ""
        lines.append(
            CheckLine("kernel headers", True, f"{headers.path} via {headers.how}{version}")
        )

    if bpf_cls is None or headers is None:
        lines.append(CheckLine("bcc offset guard", False, "not run: needs bcc and kernel headers"))
        return lines
    try:
        src = source or bcc.bundled_source()
        module = bpf_cls(
            text=(src.read_text() + bcc_guard.offset_functions()).encode(),
            cflags=[f"-I{src.parent}", "-DPROCMON_OFFSETS_ONLY"],
        )
        try:
            lines.append(CheckLine("bcc offset guard", True, bcc_guard.guard(module.dump_func)))
        finally:
            module.cleanup()
    except bcc_guard.GuardError as exc:
        lines.append(CheckLine("bcc offset guard", False, str(exc)))
    except Exception as exc:  # bcc raises bare Exceptions; clang's errors went to stderr
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        lines.append(
            CheckLine("bcc offset guard", False, f"could not compile the headers: {first}")
        )
    return lines


def probe_line(backend: str) -> CheckLine:
    """The real proof: load and attach the probe, then detach."""
    from procmon.probe import ProbeKnobs, open_probe

    try:
        probe = open_probe(backend, ProbeKnobs())
    except (OSError, ImportError, RuntimeError) as exc:
        return CheckLine(f"probe ({backend})", False, str(exc))
    detail = f"attached in {probe.attach_seconds:.3f} s; this host would use it"
    probe.detach()
    probe.close()
    return CheckLine(f"probe ({backend})", True, detail)

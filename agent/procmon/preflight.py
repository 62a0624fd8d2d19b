"""`procmon check`: what this host offers the probe, one line per item."""

from __future__ import annotations

import ctypes.util
import os
from dataclasses import dataclass

from procmon.probe import BTF_PATH

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
    ok = os.path.exists(BTF_PATH)
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

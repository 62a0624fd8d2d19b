"""Probe backends: each attaches to process exit and yields RawExit records.

Data flows one way: the kernel probe fills a ring buffer; a backend drains it into RawExit
records; procmon.event turns them into ExitEvents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from procmon.probe.btf import BTF_PATH
from procmon.probe.knobs import ProbeKnobs
from procmon.probe.record import RawCgroup, RawExec, RawExit, RawRecord
from procmon.probe.ring_fill import RingFill

__all__ = [
    "Probe",
    "ProbeKnobs",
    "RawCgroup",
    "RawExec",
    "RawExit",
    "RawRecord",
    "choose_backend",
    "open_probe",
]


class Probe(Protocol):
    backend: str
    attach_seconds: float
    has_context: bool  # exec and cgroup records flow besides exits
    ring_fill: RingFill | None  # the ring's backlog, where the backend can read it

    def poll(self, timeout_ms: int) -> list[RawRecord]: ...
    def kernel_drops(self) -> int: ...
    def context_drops(self) -> int: ...
    def detach(self) -> None: ...
    def close(self) -> None: ...


def choose_backend(requested: str) -> str:
    """auto: CO-RE where the kernel has BTF, else bcc."""
    if requested != "auto":
        return requested
    return "core" if BTF_PATH.exists() else "bcc"


def open_probe(backend: str, knobs: ProbeKnobs, pin_dir: Path | None = None) -> Probe:
    """pin_dir (CO-RE only) keeps the probe attached across agent restarts."""
    chosen = choose_backend(backend)
    if chosen == "core":
        from procmon.probe.core import CoreProbe

        return CoreProbe(knobs, pin_dir=pin_dir)
    from procmon.probe.bcc import BccProbe

    return BccProbe(knobs)

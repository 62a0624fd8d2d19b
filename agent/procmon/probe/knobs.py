"""The probe's in-kernel knobs: plain values, set once before the probe loads."""

from __future__ import annotations

import os
from dataclasses import dataclass


def own_pidns_inode() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


@dataclass(frozen=True)
class ProbeKnobs:
    per_thread: bool = False
    failed_only: bool = False
    target_pidns: int = 0  # 0: every pid namespace
    # `procmon tail --pid/--cgroup`: one process (host tgid), one cgroup v2 subtree (its id
    # and depth, see procmon.probe.cgroup_target). 0: all.
    target_tgid: int = 0
    target_cgroup: int = 0
    target_cgroup_level: int = 0
    # The agent's own pid as it sees it, and its pid namespace: inside a container getpid()
    # is not the host tgid, so the probe matches the pair. self_tgid 0 reports the agent too.
    self_tgid: int = 0
    self_pidns: int = 0
    wakeup_bytes: int = 32768
    wakeup_ns: int = 40_000_000
    ring_size_bytes: int = 4 << 20
    # Context for enrichment: exec and cgroup records (programs attached or not), and
    # whether exec records carry the args.
    capture_exec: bool = True
    capture_args: bool = True
    # Who sent the signal a process died of (signal_generate, mark_victim).
    capture_killer: bool = True
    # Context records enter the ring only while it is less than this full (percent): the
    # rest is kept for exits. 0: no limit.
    context_fill_pct: int = 50

    @property
    def context_fill_max(self) -> int:
        """context_fill_pct in bytes of the ring (0: no limit)."""
        return self.ring_size_bytes * self.context_fill_pct // 100

    def as_rodata(self) -> dict[str, int]:
        """Values for the const volatile globals, by their C names (self is set in a map)."""
        return {
            "per_thread": int(self.per_thread),
            "failed_only": int(self.failed_only),
            "target_pidns": self.target_pidns,
            "target_tgid": self.target_tgid,
            "target_cgroup": self.target_cgroup,
            "target_cgroup_level": self.target_cgroup_level,
            "wakeup_bytes": self.wakeup_bytes,
            "wakeup_ns": self.wakeup_ns,
            "capture_args": int(self.capture_args),
            "context_fill_max": self.context_fill_max,
        }


def power_of_two(n: int) -> int:
    """Ring buffers must be a power of two (and a multiple of the page size)."""
    size = 4096
    while size < n:
        size <<= 1
    return size

"""cgroup v2 id -> path (and what the path says: unit, container), surviving removal.

Seeded from the cgroup2 mount, then kept current from the probe's mkdir and rmdir records. A
removed cgroup stays resolvable for a grace period: a short-lived container's cgroup goes away
before its last exit is consumed.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from procmon.enrich.cgroup_parse import CgroupContext, parse_cgroup_path

log = logging.getLogger("procmon.enrich")

MAX_PATH = 4096  # ExitEvent.cgroup's bound


@dataclass(frozen=True, slots=True)
class CgroupInfo:
    path: str
    context: CgroupContext


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where the unified hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid
    hosts); None without cgroup v2."""
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if fields[sep + 1] == "cgroup2":
                    return fields[4]
    except (OSError, ValueError, IndexError):
        pass
    return None


class CgroupCache:
    def __init__(
        self,
        max_entries: int,
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.grace_s = grace_s
        self._clock = clock
        self._by_id: dict[int, CgroupInfo] = {}
        self._removed: OrderedDict[int, float] = OrderedDict()  # id -> when, oldest first

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, cgroup_id: int) -> CgroupInfo | None:
        return self._by_id.get(cgroup_id)

    def on_created(self, cgroup_id: int, parent_id: int, host_path: str) -> None:
        """A cgroup the probe saw created: its name under the parent as this agent sees it
        (the same as host_path outside a cgroup namespace)."""
        parent = self._by_id.get(parent_id)
        path = host_path
        if parent is not None:
            name = host_path.rpartition("/")[2]
            path = parent.path.rstrip("/") + "/" + name
        self.on_mkdir(cgroup_id, path)

    def on_mkdir(self, cgroup_id: int, path: str) -> None:
        self._removed.pop(cgroup_id, None)
        if len(path) > MAX_PATH:
            return  # deeper than an event may carry: unknown rather than cut
        if len(self._by_id) >= self.max_entries and cgroup_id not in self._by_id:
            self._forget_removed(everything=True)
            if len(self._by_id) >= self.max_entries:
                return  # full of live cgroups: this one stays unknown rather than evict one
        self._by_id[cgroup_id] = CgroupInfo(path, parse_cgroup_path(path))

    def on_rmdir(self, cgroup_id: int) -> None:
        if cgroup_id in self._by_id:
            self._removed[cgroup_id] = self._clock()
        self._forget_removed()

    def _forget_removed(self, everything: bool = False) -> None:
        horizon = self._clock() - self.grace_s
        while self._removed:
            cgroup_id, when = next(iter(self._removed.items()))
            if when > horizon and not everything:
                break
            del self._removed[cgroup_id]
            self._by_id.pop(cgroup_id, None)

    def seed(self, root: str | None) -> int:
        """Enter every cgroup under the cgroup2 mount; returns how many."""
        if root is None:
            return 0
        seeded = 0
        for dirpath, _dirs, _files in os.walk(root):
            try:
                cgroup_id = os.stat(dirpath).st_ino
            except OSError:
                continue  # removed while walking
            rel = os.path.relpath(dirpath, root)
            self.on_mkdir(cgroup_id, "/" if rel == "." else "/" + rel)
            seeded += 1
        return seeded

"""`procmon tail --cgroup PATH`: the cgroup v2 id and depth the probe filters on in the kernel.

A cgroup v2 id is its directory's inode number (kernfs), the value bpf_get_current_cgroup_id()
returns; the probe compares the exiting task's ancestor at the target's depth with it, so the
cgroup's descendants match too (as exitsnoop's -c, through bpf_current_task_under_cgroup).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePosixPath

from procmon.enrich.cgroup_cache import cgroup2_mount


class CgroupTargetError(ValueError):
    """The path names no cgroup v2 directory: one line naming it."""


@dataclass(frozen=True)
class CgroupTarget:
    path: str  # as the events' `cgroup` field says it: from the v2 root, "/" for the root
    cgroup_id: int
    level: int  # the root is 0


def cgroup_target(path: str, mount: str | None = None) -> CgroupTarget:
    """A cgroup given as a path in the v2 hierarchy (`/system.slice/nginx.service`, as events
    name it) or as its directory under the cgroup2 mount (`/sys/fs/cgroup/system.slice/...`)."""
    root = mount if mount is not None else cgroup2_mount()
    if root is None:
        raise CgroupTargetError(f"--cgroup {path}: this host has no cgroup v2 hierarchy mounted")
    root_path = PurePosixPath(root)
    given = PurePosixPath(path)
    if not given.is_absolute():
        given = PurePosixPath("/") / given
    if given == root_path or root_path in given.parents:
        relative = given.relative_to(root_path)
    else:
        relative = given.relative_to("/")
    if ".." in relative.parts:
        raise CgroupTargetError(f"--cgroup {path}: '..' is not allowed in a cgroup path")
    directory = root_path / relative
    if not os.path.isfile(directory / "cgroup.procs"):
        raise CgroupTargetError(
            f"--cgroup {path}: no cgroup v2 directory {directory} (give a path under {root}, "
            "or as events name it, e.g. /system.slice/nginx.service)"
        )
    return CgroupTarget(
        path="/" + str(relative) if relative.parts else "/",
        cgroup_id=os.stat(directory).st_ino,
        level=len(relative.parts),
    )

"""Which systemd unit, container and Kubernetes pod a cgroup v2 path belongs to.

An exit record carries the cgroup path of the process; an operator asks "which service, which
container, which pod". systemd, the container runtimes and kubelet's two cgroup drivers each
name cgroups in a fixed way, so only those names are recognised: anything else is None rather
than a guess, and no input makes the parser raise (paths come from the kernel and from users).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CgroupContext", "parse_cgroup_path"]

# kernfs names are at most NAME_MAX bytes; a longer component is not a real cgroup name, and the
# bound keeps every per-component match short whatever the input.
_NAME_MAX = 255

_HEX64 = r"[0-9a-f]{64}"


def _uid(sep: str) -> str:
    """A pod uid, 8-4-4-4-12 lower-case hex, groups joined by sep."""
    return sep.join(f"[0-9a-f]{{{n}}}" for n in (8, 4, 4, 4, 12))


# systemd unit names: ASCII letters, digits, ":-_.\" and "@" for template instances.
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@-]+\.(?:service|scope)")
_CONTAINER_ID = re.compile(_HEX64)
# Runtime scopes of the systemd cgroup driver; "crio-conmon-" and "libpod-conmon-" scopes hold
# the runtime's monitor process, not the container, and do not match (no 64 hex after the dash).
_RUNTIME_SCOPE = re.compile(
    rf"(?P<prefix>docker|cri-containerd|nerdctl|crio|libpod)-(?P<id>{_HEX64})\.scope"
)
# The same two runtimes under the cgroupfs driver: a plain directory, "<parent>/crio-<id>"
# (under kubelet's pod directory, or /crio) and "<parent>/libpod-<id>".
_RUNTIME_DIR = re.compile(rf"(?P<prefix>crio|libpod)-(?P<id>{_HEX64})")
_RUNTIME_BY_PREFIX = {
    "docker": "docker",
    "cri-containerd": "containerd",
    "nerdctl": "containerd",
    "crio": "cri-o",
    "libpod": "podman",
}
# kubelet, systemd driver: the slice name spells its ancestors joined by "-" and the uid with
# "_" for "-" (kubepods-burstable-pod<uid>.slice, or kubelet-kubepods-... under a cgroup root
# such as kind's /kubelet.slice). Guaranteed QoS pods have no QoS word.
_POD_SLICE = re.compile(
    r"(?:[A-Za-z0-9_:.]+-)*kubepods(?:-burstable|-besteffort)?-pod"
    rf"(?P<uid>{_uid('_')})\.slice"
)
# kubelet, cgroupfs driver: /kubepods[/burstable|/besteffort]/pod<uid>/<container id>.
_POD_DIR = re.compile(rf"pod(?P<uid>{_uid('-')})")
_QOS_DIRS = frozenset({"burstable", "besteffort"})


@dataclass(frozen=True)
class CgroupContext:
    """What a cgroup path says about its processes; None where it says nothing for sure."""

    unit: str | None
    container_id: str | None
    container_runtime: str | None
    pod_uid: str | None


_NOTHING = CgroupContext(unit=None, container_id=None, container_runtime=None, pod_uid=None)


def _unit(parts: list[str]) -> str | None:
    """The host's unit is reached from the root through slices only: the first component that is
    not a slice is the unit if it is a .service or .scope, else there is none (a cgroupfs driver
    directory such as /docker/<id> or /kubepods/... is not a systemd unit, and a unit below it
    belongs to a systemd inside the container, not to the host)."""
    for part in parts:
        if part.endswith(".slice"):
            continue
        if len(part) <= _NAME_MAX and _UNIT.fullmatch(part):
            return part
        return None
    return None


def _is_pod_dir(parts: list[str], i: int) -> str | None:
    """The pod uid if parts[i] is a cgroupfs-driver pod directory under kubepods[/<qos>]."""
    m = _POD_DIR.fullmatch(parts[i])
    if m is None or i == 0:
        return None
    parent = parts[i - 1]
    if parent == "kubepods" or (parent in _QOS_DIRS and i >= 2 and parts[i - 2] == "kubepods"):
        return m["uid"]
    return None


def parse_cgroup_path(path: str) -> CgroupContext:
    """Unit, container and pod of a cgroup v2 path relative to the hierarchy root ("/a/b").

    A path that does not start with "/" is not such a path and gives all None. Container and pod
    are the innermost (last) match anywhere in the path. A path with a ".." component (as
    /proc/PID/cgroup shows for a process outside the reader's cgroup namespace) has no known
    position under the root, so its unit is None; its container and pod names still count.
    """
    if not path.startswith("/"):
        return _NOTHING
    parts = [p for p in path.split("/") if p]

    unit = None if ".." in parts else _unit(parts)
    container_id: str | None = None
    runtime: str | None = None
    pod_uid: str | None = None
    pod_dir_at = -1  # index of the last cgroupfs-driver pod directory

    for i, part in enumerate(parts):
        if len(part) > _NAME_MAX:
            continue
        if m := _RUNTIME_SCOPE.fullmatch(part) or _RUNTIME_DIR.fullmatch(part):
            container_id, runtime = m["id"], _RUNTIME_BY_PREFIX[m["prefix"]]
        elif m := _POD_SLICE.fullmatch(part):
            pod_uid = m["uid"].replace("_", "-")
        elif uid := _is_pod_dir(parts, i):
            pod_uid, pod_dir_at = uid, i
        elif _CONTAINER_ID.fullmatch(part) and i > 0:
            if parts[i - 1] == "docker":
                container_id, runtime = part, "docker"
            elif pod_dir_at == i - 1:
                # kubelet's cgroupfs driver names the leaf by container id alone; which runtime
                # made it is not in the path.
                container_id, runtime = part, None

    return CgroupContext(
        unit=unit, container_id=container_id, container_runtime=runtime, pod_uid=pod_uid
    )

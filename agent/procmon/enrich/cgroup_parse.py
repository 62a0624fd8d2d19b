"""Which systemd unit, container and Kubernetes pod a cgroup v2 path belongs to.

Only the fixed naming schemes of systemd, the container runtimes and kubelet's two cgroup
drivers are recognised: anything else is None, not a guess, and no input makes it raise.
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
# kubelet, systemd driver: ancestors joined by "-" and the uid with "_" for "-", perhaps under a
# root slice (kind's kubelet-kubepods-...); Guaranteed QoS pods have no QoS word.
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
    """The first component past the slices, if it is a .service or .scope: a unit below anything
    else (/docker/<id>, /kubepods/...) belongs to a systemd inside a container, not the host."""
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

    All None unless the path starts with "/"; container and pod are the innermost match. A ".."
    component (a process outside our cgroup namespace) has no known place: no unit, the rest counts.
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

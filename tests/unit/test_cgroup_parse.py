"""cgroup path -> systemd unit, container and pod, for each runtime and both kubelet drivers;
unknown shapes give None and no input raises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from procmon.enrich.cgroup_parse import CgroupContext, parse_cgroup_path

CID = "4f9b6a2c1d8e7f3a5b0c9d2e1f4a7b6c3d8e5f0a1b2c3d4e5f6a7b8c9d0e1f2a"
CID2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
POD = "6c1c8d0e-2f3a-4b5c-9d7e-1a2b3c4d5e6f"
POD_ = POD.replace("-", "_")
NONE = CgroupContext(unit=None, container_id=None, container_runtime=None, pod_uid=None)


def ctx(
    unit: str | None = None,
    cid: str | None = None,
    runtime: str | None = None,
    pod: str | None = None,
) -> CgroupContext:
    return CgroupContext(unit=unit, container_id=cid, container_runtime=runtime, pod_uid=pod)


@pytest.mark.parametrize(
    ("path", "unit"),
    [
        ("/system.slice/nginx.service", "nginx.service"),
        ("/system.slice/nginx.service/worker", "nginx.service"),  # delegated sub-cgroup
        ("/system.slice/system-getty.slice/getty@tty1.service", "getty@tty1.service"),
        ("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.scope", "user@1000.service"),
        ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope"),
        ("/init.scope", "init.scope"),
        ("/", None),
        ("/system.slice", None),
        ("/system.slice/", None),
        ("/system.slice/nginx.service/", "nginx.service"),
        ("/system.slice/.service", None),
        ("/system.slice/nginx.socket", None),
        ("/system.slice/ñginx.service", None),  # systemd escapes non-ASCII: not a unit name
        ("/system.slice/" + "a" * 250 + ".service", None),  # longer than a kernfs name
    ],
)
def test_unit(path: str, unit: str | None) -> None:
    assert parse_cgroup_path(path) == ctx(unit=unit)


def test_escaped_unit_name() -> None:
    # systemd writes "-" inside a path component as \x2d; the backslash is a legal unit character
    path = "/system.slice/system-systemd\\x2dfsck.slice/systemd-fsck@dev-sda1.service"
    assert parse_cgroup_path(path).unit == "systemd-fsck@dev-sda1.service"


def test_unit_walk_stops_at_the_first_non_slice() -> None:
    # systemd inside a cgroupfs-driver docker container: its units are not host units
    assert parse_cgroup_path(f"/docker/{CID}/system.slice/cron.service") == ctx(
        cid=CID, runtime="docker"
    )
    assert parse_cgroup_path("/lxc.payload.web/system.slice/nginx.service").unit is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # docker, systemd cgroup driver (the default on cgroup v2)
        (f"/system.slice/docker-{CID}.scope", ctx(f"docker-{CID}.scope", CID, "docker")),
        # docker, cgroupfs driver
        (f"/docker/{CID}", ctx(None, CID, "docker")),
        # docker in docker: the innermost container
        (f"/docker/{CID2}/docker/{CID}", ctx(None, CID, "docker")),
        # nerdctl (containerd without Kubernetes)
        (f"/system.slice/nerdctl-{CID}.scope", ctx(f"nerdctl-{CID}.scope", CID, "containerd")),
        # podman, rootful; and with --cgroups=split / systemd in the container
        (f"/machine.slice/libpod-{CID}.scope", ctx(f"libpod-{CID}.scope", CID, "podman")),
        (
            f"/machine.slice/libpod-{CID}.scope/container",
            ctx(f"libpod-{CID}.scope", CID, "podman"),
        ),
        # podman, rootless: the unit is the user's manager
        (
            f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope",
            ctx("user@1000.service", CID, "podman"),
        ),
        # the monitors are not the container
        (f"/machine.slice/libpod-conmon-{CID}.scope", ctx(f"libpod-conmon-{CID}.scope")),
        # cgroupfs managers: podman's default parent, cri-o's default parent
        (f"/libpod_parent/libpod-{CID}", ctx(None, CID, "podman")),
        (f"/crio/crio-{CID}", ctx(None, CID, "cri-o")),
    ],
)
def test_containers(path: str, expected: CgroupContext) -> None:
    assert parse_cgroup_path(path) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # systemd driver, burstable / besteffort / guaranteed QoS
        (
            "/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{POD_}.slice/cri-containerd-{CID}.scope",
            ctx(f"cri-containerd-{CID}.scope", CID, "containerd", POD),
        ),
        (
            "/kubepods.slice/kubepods-besteffort.slice/"
            f"kubepods-besteffort-pod{POD_}.slice/crio-{CID}.scope",
            ctx(f"crio-{CID}.scope", CID, "cri-o", POD),
        ),
        (
            f"/kubepods.slice/kubepods-pod{POD_}.slice/cri-containerd-{CID}.scope",
            ctx(f"cri-containerd-{CID}.scope", CID, "containerd", POD),
        ),
        # cri-o's conmon scope sits in the pod but is not a container
        (
            "/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{POD_}.slice/crio-conmon-{CID}.scope",
            ctx(f"crio-conmon-{CID}.scope", None, None, POD),
        ),
        # dockershim-era node: docker scope in a pod slice
        (
            f"/kubepods.slice/kubepods-pod{POD_}.slice/docker-{CID}.scope",
            ctx(f"docker-{CID}.scope", CID, "docker", POD),
        ),
        # the pod's own slice (the pause process's parent)
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice",
            ctx(None, None, None, POD),
        ),
        # kind: kubelet with cgroup root /kubelet, systemd driver
        (
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
            f"kubelet-kubepods-besteffort-pod{POD_}.slice/cri-containerd-{CID}.scope",
            ctx(f"cri-containerd-{CID}.scope", CID, "containerd", POD),
        ),
        # cgroupfs driver: the leaf names no runtime
        (f"/kubepods/burstable/pod{POD}/{CID}", ctx(None, CID, None, POD)),
        (f"/kubepods/besteffort/pod{POD}/{CID}", ctx(None, CID, None, POD)),
        (f"/kubepods/pod{POD}/{CID}", ctx(None, CID, None, POD)),
        (f"/kubepods/burstable/pod{POD}", ctx(None, None, None, POD)),
        (f"/kubelet/kubepods/burstable/pod{POD}/{CID}", ctx(None, CID, None, POD)),
        # cri-o with its cgroupfs manager names the leaf crio-<id>; its conmon is no container
        (f"/kubepods/burstable/pod{POD}/crio-{CID}", ctx(None, CID, "cri-o", POD)),
        (f"/kubepods/pod{POD}/crio-conmon-{CID}", ctx(None, None, None, POD)),
    ],
)
def test_kubernetes(path: str, expected: CgroupContext) -> None:
    assert parse_cgroup_path(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        f"/system.slice/docker-{CID.upper()}.scope",  # ids are lower-case hex
        f"/system.slice/docker-{CID[:-1]}.scope",  # 63
        f"/system.slice/docker-{CID}0.scope",  # 65
        f"/system.slice/docker-{CID[:-1]}g.scope",  # not hex
        f"/docker/{CID[:12]}",  # short id
        f"/docker/{CID}.scope",
        f"/containers/{CID}",  # a bare id under an unknown parent
        f"/{CID}",
        f"/system.slice/containerd.service/{CID}",
        f"/kubepods/other/pod{POD}/{CID}",  # not a QoS class
        f"/somewhere/pod{POD}/{CID}",  # not under kubepods
        f"/kubepods.slice/kubepods-pod{POD_}.slice/{CID}",  # bare id under a systemd pod slice
    ],
)
def test_no_container(path: str) -> None:
    assert parse_cgroup_path(path).container_id is None
    assert parse_cgroup_path(path).container_runtime is None


@pytest.mark.parametrize(
    "path",
    [
        f"/kubepods.slice/kubepods-burstable-pod{POD}.slice",  # dashes in a systemd slice
        f"/kubepods/burstable/pod{POD_}",  # underscores in a cgroupfs dir
        f"/kubepods.slice/kubepods-pod{POD_.upper()}.slice",
        f"/kubepods/pod{POD[:-1]}",
        "/kubepods/pod6c1c8d0e2f3a4b5c9d7e1a2b3c4d5e6f",  # no dashes (static pods' hash uid)
        f"/kubepods.slice/kubepods-guaranteed-pod{POD_}.slice",  # no such QoS word
        f"/kubepods.slice/kubepods-burstable-pod{POD_}.slice.d",
    ],
)
def test_no_pod(path: str) -> None:
    assert parse_cgroup_path(path).pod_uid is None


@pytest.mark.parametrize(
    "path",
    [
        "",
        "system.slice/nginx.service",  # no leading "/": not a path from the root
        "0::/system.slice/nginx.service",  # a whole /proc/PID/cgroup line
        "\x00",
        "/\x00/\n",
        "🙂",
        "/😀.slice/🙂.service",
        "/" * 10_000,
        "/a" * 50_000,
        "/" + "x" * 1_000_000,
        "/system.slice/nginx.service\n",  # unstripped line: the component is not a unit name
        "/system.slice/nginx.service\udcff",  # surrogate from a lossy decode
    ],
)
def test_garbage(path: str) -> None:
    assert parse_cgroup_path(path) == NONE


def test_namespace_relative_path_has_no_unit() -> None:
    # /proc/PID/cgroup of a process outside the reader's cgroup namespace
    assert parse_cgroup_path("/../../system.slice/nginx.service").unit is None
    assert parse_cgroup_path(f"/../system.slice/docker-{CID}.scope") == ctx(None, CID, "docker")


def test_long_path_still_parsed() -> None:
    deep = "/system.slice/app.service" + "/sub" * 5_000 + f"/docker/{CID}"
    assert parse_cgroup_path(deep) == ctx("app.service", CID, "docker")


def test_frozen() -> None:
    c = parse_cgroup_path("/init.scope")
    with pytest.raises(AttributeError):
        c.unit = "x"  # type: ignore[misc]


_PIECES = [
    "system.slice",
    "kubepods",
    "kubepods.slice",
    "burstable",
    "docker",
    f"pod{POD}",
    f"kubepods-pod{POD_}.slice",
    CID,
    f"crio-{CID}.scope",
    f"libpod-conmon-{CID}.scope",
    "nginx.service",
    "..",
    "",
    "x",
]


@given(st.text())
def test_never_raises_on_text(path: str) -> None:
    result = parse_cgroup_path(path)
    assert isinstance(result, CgroupContext)
    assert parse_cgroup_path("/" + path) is not None


@given(st.lists(st.sampled_from(_PIECES), max_size=12))
def test_never_raises_on_plausible_pieces(parts: list[str]) -> None:
    result = parse_cgroup_path("/" + "/".join(parts))
    assert result.container_id is None or result.container_id == CID
    assert result.pod_uid is None or result.pod_uid == POD
    assert (result.container_runtime is None) or (result.container_id is not None)

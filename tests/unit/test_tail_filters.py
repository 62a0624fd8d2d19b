"""`procmon tail`'s filters without a probe: the userspace predicate, the cgroup path given in
either form, and bad values as one line (with real eBPF: tests/system/test_tail_filters.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.mqtt import sample_event
from procmon.event import ExitEvent
from procmon.event_filter import (
    EventFilter,
    FilterError,
    comm_pattern,
    container_prefix,
    uid_of,
)
from procmon.probe.cgroup_target import CgroupTargetError, cgroup_target
from procmon.probe.knobs import ProbeKnobs

CONTAINER = "ab" * 32


def _event(**fields: object) -> ExitEvent:
    values = {
        "comm": "nginx",
        "uid": 33,
        "unit": "nginx.service",
        "container_id": CONTAINER,
        **fields,
    }
    return sample_event(1).model_copy(update=values)


def test_no_filter_is_inactive() -> None:
    assert not EventFilter().active
    assert EventFilter(uid=0).active


@pytest.mark.parametrize(
    ("flt", "fields", "passes"),
    [
        (EventFilter(comm=re.compile("^ngi")), {}, True),
        (EventFilter(comm=re.compile("^gin")), {}, False),
        (EventFilter(comm=re.compile("gin")), {}, True),  # searched, as grep does
        (EventFilter(uid=33), {}, True),
        (EventFilter(uid=0), {}, False),
        (EventFilter(unit="nginx.service"), {}, True),
        (EventFilter(unit="nginx*"), {}, True),
        (EventFilter(unit="nginx"), {}, False),
        (EventFilter(unit="nginx.service"), {"unit": None}, False),
        (EventFilter(container=CONTAINER[:12]), {}, True),
        (EventFilter(container="cd"), {}, False),
        (EventFilter(container="ab"), {"container_id": None}, False),
        (EventFilter(uid=33, unit="nginx.service", comm=re.compile("^x")), {}, False),
    ],
)
def test_filter(flt: EventFilter, fields: dict[str, object], passes: bool) -> None:
    assert flt(_event(**fields)) is passes


def test_bad_values_name_the_flag() -> None:
    with pytest.raises(FilterError, match=r"^--comm '\(': not a regular expression"):
        comm_pattern("(")
    with pytest.raises(FilterError, match=r"^--uid 'no-such-user-x': no such user"):
        uid_of("no-such-user-x")
    assert uid_of("0") == 0 and uid_of("root") == 0
    with pytest.raises(FilterError, match=r"^--container 'XYZ': a container id is"):
        container_prefix("XYZ")


def _fake_hierarchy(tmp_path: Path) -> Path:
    root = tmp_path / "unified"
    for d in (root, root / "system.slice", root / "system.slice" / "nginx.service"):
        d.mkdir(exist_ok=True)
        (d / "cgroup.procs").touch()
    return root


@pytest.mark.parametrize(
    "given",
    [
        "/system.slice/nginx.service",
        "system.slice/nginx.service",
        "MOUNT/system.slice/nginx.service",
    ],
)
def test_cgroup_target_in_either_form(tmp_path: Path, given: str) -> None:
    root = _fake_hierarchy(tmp_path)
    target = cgroup_target(given.replace("MOUNT", str(root)), str(root))
    assert target.path == "/system.slice/nginx.service"
    assert target.level == 2
    assert target.cgroup_id == os.stat(root / "system.slice" / "nginx.service").st_ino


def test_cgroup_target_root_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _fake_hierarchy(tmp_path)
    assert cgroup_target("/", str(root)).level == 0
    assert cgroup_target(str(root), str(root)).path == "/"
    with pytest.raises(CgroupTargetError, match=r"^--cgroup /nope: no cgroup v2 directory"):
        cgroup_target("/nope", str(root))
    with pytest.raises(CgroupTargetError, match=r"'\.\.' is not allowed"):
        cgroup_target("/system.slice/../..", str(root))
    monkeypatch.setattr("procmon.probe.cgroup_target.cgroup2_mount", lambda: None)
    with pytest.raises(CgroupTargetError, match="no cgroup v2 hierarchy"):
        cgroup_target("/x")


def test_kernel_filters_are_rodata_knobs() -> None:
    rodata = ProbeKnobs(target_tgid=42, target_cgroup=7, target_cgroup_level=2).as_rodata()
    assert (rodata["target_tgid"], rodata["target_cgroup"], rodata["target_cgroup_level"]) == (
        42,
        7,
        2,
    )


def test_unit_and_container_need_context() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "procmon.cli", "tail", "--no-context", "--unit", "x.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "procmon: error: --unit needs the cgroup context that --no-context turns off\n"
    )


def test_pid_that_does_not_exist_is_one_line() -> None:
    """Its exit would never come: `tail --pid X --count 1` must not wait forever."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "procmon.cli", "tail", "--pid", str(pid_max + 1)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"procmon: error: --pid {pid_max + 1}: no such process\n"

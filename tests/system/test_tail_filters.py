"""`procmon tail`'s filters with real eBPF: --pid and --cgroup in the kernel, --comm, --uid,
--unit and --container in userspace. Each run starts other processes first, which must be
filtered out, then the one that must come through."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.cgroups import run_in_cgroup

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_ready")]

PROCMON = [sys.executable, "-m", "procmon.cli"]
NOBODY = 65534


class Tail:
    """`procmon --log-level info tail --json ...`, attached before the caller goes on."""

    def __init__(self, *filters: str) -> None:
        self.proc = subprocess.Popen(
            [*PROCMON, "--log-level", "info", "tail", "--json", *filters],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        attached = threading.Event()
        threading.Thread(target=self._read_err, args=(attached,), daemon=True).start()
        if not attached.wait(60):
            self.proc.kill()
            raise AssertionError(f"tail did not attach: {''.join(self.stderr)}")

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.events.append(json.loads(line))

    def _read_err(self, attached: threading.Event) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if "attached" in line:
                attached.set()

    def until(self, pid: int, timeout: float = 30) -> list[dict[str, Any]]:
        """Events until ``pid``'s, then a moment more; tail is stopped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(e["pid"] == pid for e in self.events):
            time.sleep(0.05)
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        time.sleep(0.1)  # the readers' last lines
        assert any(e["pid"] == pid for e in self.events), f"no event for {pid}: {self.stderr}"
        return self.events


def _run(*argv: str) -> int:
    proc = subprocess.Popen(list(argv))
    proc.wait(timeout=60)
    return proc.pid


def _others() -> set[int]:
    """Processes that no filter below lets through: root's, in this test's cgroup."""
    return {_run("sh", "-c", "exit 4") for _ in range(3)} | {_run("/bin/true")}


def test_pid_is_filtered_in_the_kernel() -> None:
    target = subprocess.Popen(["sh", "-c", "read x; exit 3"], stdin=subprocess.PIPE)
    tail = Tail("--pid", str(target.pid))
    others = _others()
    target.communicate(b"\n", timeout=30)
    events = tail.until(target.pid)
    assert [(e["pid"], e["exit_code"]) for e in events] == [(target.pid, 3)]
    assert not others & {e["pid"] for e in events}
    assert "filtered out" not in "".join(tail.stderr)  # nothing reached userspace to filter


def test_pid_with_count_waits_for_that_process() -> None:
    target = subprocess.Popen(["sh", "-c", "read x; exit 9"], stdin=subprocess.PIPE)
    tail = subprocess.Popen(
        [*PROCMON, "tail", "--json", "--pid", str(target.pid), "--count", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)  # attached (no log line asked for)
    _others()
    target.communicate(b"\n", timeout=30)
    out, _ = tail.communicate(timeout=60)
    (line,) = out.splitlines()
    assert (json.loads(line)["pid"], json.loads(line)["exit_code"]) == (target.pid, 9)


@pytest.mark.parametrize("form", ["hierarchy path", "mount path"])
def test_cgroup_is_filtered_in_the_kernel_with_its_descendants(
    form: str, scratch_cgroups: Callable[[str], Path], cgroup_root: Path
) -> None:
    parent = f"procmon-test-{secrets.token_hex(3)}"
    inner = scratch_cgroups(f"{parent}/inner")
    given = f"/{parent}" if form == "hierarchy path" else str(cgroup_root / parent)
    tail = Tail("--cgroup", given)
    others = _others()
    target = run_in_cgroup(inner, "sh", "-c", "exit 5")
    events = tail.until(target)
    assert [(e["pid"], e["exit_code"], e["cgroup"]) for e in events] == [
        (target, 5, f"/{parent}/inner")
    ]
    assert not others & {e["pid"] for e in events}


def test_cgroup_that_does_not_exist_is_one_line() -> None:
    proc = subprocess.run(
        [*PROCMON, "tail", "--cgroup", "/no-such-procmon-cgroup"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("procmon: error: --cgroup /no-such-procmon-cgroup: no cgroup v2")


def test_comm_regex(tmp_path: Path) -> None:
    name = f"pmcomm{secrets.token_hex(3)}"  # 12 characters: comm keeps 15
    (tmp_path / name).symlink_to("/bin/sh")
    tail = Tail("--comm", f"^pmcomm{name[6:8]}")
    others = _others()
    target = _run(str(tmp_path / name), "-c", "exit 6")
    events = tail.until(target)
    assert [(e["pid"], e["comm"], e["exit_code"]) for e in events] == [(target, name, 6)]
    assert not others & {e["pid"] for e in events}
    assert "filtered out: " in "".join(tail.stderr)


def test_uid_by_name() -> None:
    tail = Tail("--uid", "nobody")
    others = _others()
    target = _run("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "true")
    events = tail.until(target)
    assert any(e["pid"] == target for e in events)
    assert all(e["uid"] == NOBODY for e in events), events
    assert not others & {e["pid"] for e in events}


def test_unit(scratch_cgroups: Callable[[str], Path]) -> None:
    unit = f"pmunit-{secrets.token_hex(3)}.service"
    group = scratch_cgroups(f"procmon-test-{secrets.token_hex(3)}.slice/{unit}")
    other = scratch_cgroups(f"procmon-test-{secrets.token_hex(3)}.slice/other.service")
    tail = Tail("--unit", "pmunit-*.service")
    others = _others() | {run_in_cgroup(other, "sh", "-c", "exit 2")}
    target = run_in_cgroup(group, "sh", "-c", "exit 7")
    events = tail.until(target)
    assert [(e["pid"], e["unit"], e["exit_code"]) for e in events] == [(target, unit, 7)]
    assert not others & {e["pid"] for e in events}


def test_container(scratch_cgroups: Callable[[str], Path]) -> None:
    container = secrets.token_hex(32)
    slice_ = f"procmon-test-{secrets.token_hex(3)}.slice"
    group = scratch_cgroups(f"{slice_}/docker-{container}.scope")
    other = scratch_cgroups(f"{slice_}/docker-{secrets.token_hex(32)}.scope")
    tail = Tail("--container", container[:12])
    others = _others() | {run_in_cgroup(other, "sh", "-c", "exit 2")}
    target = run_in_cgroup(group, "sh", "-c", "exit 8")
    events = tail.until(target)
    assert [(e["pid"], e["container_id"], e["container_runtime"]) for e in events] == [
        (target, container, "docker")
    ]
    assert not others & {e["pid"] for e in events}


def test_probe_knobs_survive_alongside_the_filters() -> None:
    """--failed in the kernel and --comm in userspace together: a success of the right comm
    is dropped by the one, a failure of another comm by the other."""
    tail = Tail("--failed", "--comm", "^sh$")
    succeeded = _run("sh", "-c", "exit 0")
    other_comm = _run("/bin/false")
    target = _run("sh", "-c", "exit 11")
    events = tail.until(target)
    assert {e["pid"] for e in events} & {succeeded, other_comm} == set()
    assert all(e["comm"] == "sh" and (e["exit_code"] or e["signal"]) for e in events)
    assert os.getpid() not in {e["pid"] for e in events}

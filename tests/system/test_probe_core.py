"""Real eBPF: the CO-RE probe against ground truth from os.wait4."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import exit_cases
from helpers.common import require
from helpers.probe_collector import Collector

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_ready")]


@pytest.mark.parametrize("case", sorted(exit_cases.CASES))
def test_ground_truth(case: str, collect: Callable[..., Collector]) -> None:
    c = collect()
    truth = exit_cases.CASES[case]()
    c.poll_until(lambda evs: any(e.pid == truth.pid for e in evs))
    events = c.of_pid(truth.pid)
    assert len(events) == 1, f"{case}: expected one process event, got {len(events)}"
    assert exit_cases.check(truth, events[0].model_dump(mode="json")) == []


def test_leader_first_reports_worker_tid(collect: Callable[..., Collector]) -> None:
    c = collect()
    truth = exit_cases.leader_exits_first()
    c.poll_until(lambda evs: any(e.pid == truth.pid for e in evs))
    (event,) = c.of_pid(truth.pid)
    assert event.exit_code == 5
    assert event.tid != event.pid, "the last thread out was the worker"


def test_per_thread_gives_each_thread_and_the_process(collect: Callable[..., Collector]) -> None:
    c = collect(per_thread=True)
    truth = exit_cases.three_threads()
    c.poll_until(lambda evs: any(e.pid == truth.pid and e.scope == "process" for e in evs))
    events = c.of_pid(truth.pid)
    assert sorted(e.scope for e in events) == ["process", "thread", "thread", "thread"]
    assert len({e.tid for e in events if e.scope == "thread"}) == 3
    assert len({e.event_id for e in events}) == 4


def test_failed_only_skips_success(collect: Callable[..., Collector]) -> None:
    c = collect(failed_only=True)
    succeeded = subprocess.Popen(["true"])
    succeeded.wait()
    failed = exit_cases.exit_code_3()
    c.poll_until(lambda evs: any(e.pid == failed.pid for e in evs))
    assert c.of_pid(succeeded.pid) == []
    assert all(e.exit_code != 0 or e.signal for e in c.events)


def test_self_exclusion(collect: Callable[..., Collector]) -> None:
    """A probe excluding a tgid never reports that process."""
    proc = subprocess.Popen(["sleep", "0.2"])
    c = collect(self_tgid=proc.pid, self_pidns=os.stat("/proc/self/ns/pid").st_ino)
    other = exit_cases.exit_code_3()
    proc.wait()
    c.poll_until(lambda evs: any(e.pid == other.pid for e in evs))
    assert c.of_pid(proc.pid) == []


def test_self_exclusion_inside_a_pid_namespace(collect: Callable[..., Collector]) -> None:
    """An agent in a container knows itself only by its namespace-local pid."""
    unshare = subprocess.Popen(["unshare", "--pid", "--fork", "sh", "-c", "sleep 1; exit 5"])
    inner = _child_of(unshare.pid)
    inner_ns = os.stat(f"/proc/{inner}/ns/pid").st_ino
    c = collect(self_tgid=1, self_pidns=inner_ns)  # the inner shell is pid 1 there
    assert unshare.wait(timeout=30) == 5
    c.poll_until(lambda evs: any(e.pid == unshare.pid for e in evs))
    assert c.of_pid(unshare.pid), "the same pid number in another namespace is reported"
    assert c.of_pid(inner) == []


def _child_of(pid: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise AssertionError(f"process {pid} started no child")


def test_pidns_scope_excludes_other_namespaces(collect: Callable[..., Collector]) -> None:
    own_ns = os.stat("/proc/self/ns/pid").st_ino
    c = collect(target_pidns=own_ns)
    # unshare (in our namespace) forks a shell that is pid 1 of a new one; both exit 9.
    inside = subprocess.run(["unshare", "--pid", "--fork", "sh", "-c", "exit 9"], check=False)
    assert inside.returncode == 9
    c.poll_until(lambda evs: any(e.comm == "unshare" and e.exit_code == 9 for e in evs))
    assert any(e.comm == "unshare" and e.exit_code == 9 for e in c.events)
    assert not any(e.comm == "sh" and e.exit_code == 9 for e in c.events)
    assert all(e.pidns_inode == own_ns for e in c.events)


def test_pidns_fields_inside_namespace(collect: Callable[..., Collector]) -> None:
    c = collect()
    proc = subprocess.run(
        ["unshare", "--pid", "--fork", "sh", "-c", "sleep 0.05; exit 4"], check=False
    )
    assert proc.returncode == 4
    c.poll_until(lambda evs: any(e.exit_code == 4 and e.ns_pid == 1 for e in evs))
    inner = [e for e in c.events if e.exit_code == 4 and e.ns_pid == 1]
    assert inner, "the namespace's init (ns pid 1) exit with code 4"
    assert inner[0].pidns_inode != os.stat("/proc/self/ns/pid").st_ino


def test_cgroup_id_is_cgroup_directory_inode(collect: Callable[..., Collector]) -> None:
    roots = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
    cgroot = next((p for p in roots if (p / "cgroup.subtree_control").exists()), None)
    require(cgroot is not None, "no cgroup v2 hierarchy mounted")
    assert cgroot is not None
    group = cgroot / f"procmon-test-{secrets.token_hex(3)}"
    group.mkdir()
    try:
        c = collect()
        proc = subprocess.Popen(["sh", "-c", f"echo $$ > {group}/cgroup.procs; exit 6"])
        proc.wait()
        c.poll_until(lambda evs: any(e.pid == proc.pid for e in evs))
        (event,) = c.of_pid(proc.pid)
        assert event.exit_code == 6
        assert event.cgroup_id == group.stat().st_ino
    finally:
        _rmdir_when_empty(group)


def _rmdir_when_empty(group: Path) -> None:
    for _ in range(50):  # the last task leaves the cgroup a moment after it is reaped
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.1)
    group.rmdir()


def test_fork_storm_no_drops(collect: Callable[..., Collector], forkstorm: Path) -> None:
    n = 20_000
    name = f"fs{secrets.token_hex(3)}"
    binary = forkstorm.with_name(name)
    binary.write_bytes(forkstorm.read_bytes())
    binary.chmod(0o755)
    c = collect()
    subprocess.run([str(binary), str(n), "2"], check=True, stdout=subprocess.DEVNULL)
    expected = n + 2 + 1  # children, two workers, the main process
    c.poll_until(lambda evs: sum(e.comm == name for e in evs) >= expected, timeout=60)
    ours = [e for e in c.events if e.comm == name]
    assert len(ours) == expected
    assert c.probe.kernel_drops() == 0
    # With enrichment on: every child shares its worker's image and says so.
    children = [e for e in ours if e.exec_source == "fork"]
    assert len(children) >= n, "children that never exec'd inherit the image"
    assert all(e.exe == str(binary) for e in ours), {e.exe for e in ours}
    # Nobody drains the ring during the storm: past its context share (half of it) execs
    # elsewhere on the machine may be shed, and counted. The storm's own exec came first.


def test_loader_child_hands_over_an_attached_probe(
    collect: Callable[..., Collector], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object is loaded in a forked child (libbpf's BTF peak leaves with it): the probe
    it hands over stays attached after the child is gone, the child's own exit is excluded
    like the agent's, and detach still stops the records."""
    forked: list[int] = []
    real_fork = os.fork

    def recording_fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", recording_fork)
    c = collect(self_tgid=os.getpid(), self_pidns=os.stat("/proc/self/ns/pid").st_ino)
    assert len(forked) == 1, "the probe was not loaded in a child"
    with pytest.raises(ChildProcessError):
        os.waitpid(forked[0], os.WNOHANG)  # reaped already
    after = exit_cases.exit_code_3()
    c.poll_until(lambda evs: any(e.pid == after.pid for e in evs))
    assert c.of_pid(after.pid), "no event once the loader child had exited"
    assert c.of_pid(forked[0]) == [], "the loader child's exit was reported"
    c.probe.detach()
    c.poll_until(lambda evs: False, timeout=0.3)
    late = exit_cases.exit_code_3()
    c.poll_until(lambda evs: any(e.pid == late.pid for e in evs), timeout=1)
    assert c.of_pid(late.pid) == [], "still attached after detach"

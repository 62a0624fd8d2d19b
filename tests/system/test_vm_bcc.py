"""Both probe backends on a real bcc host: Debian bookworm's own 6.1 kernel in a qemu VM.

The VM (tests/system/vm/) is deployed with the real Ansible role, probe = bcc, from the released
artifacts: the procmon.procmon collection installed with ansible-galaxy and the .deb (install
method deb; bcc comes from Debian's python3-bpfcc through the package's .pth); the agent runs
under systemd and publishes to a mosquitto on this host. The VM reaches the broker through an SSH
reverse tunnel (its own 127.0.0.1:1883), so no other address is involved. The shared
ground-truth cases (exit_cases.py) then run inside the VM, and their events must arrive over
MQTT with the fields wait4 reported. The same cases run again after switching the agent to the
CO-RE backend (the 6.1 kernel has BTF), which also gives the backend comparison: start-up,
RSS and a short fork storm, written to build/vm/backend-comparison.json. For both backends the
context cases (tests/system/vm/context_cases.py) check what an event says about who exited: exe and
args of a process living under 5 ms, parent comm, the cgroup and unit of a cgroup removed right
after the exit, and the image owner of forks without exec, with and without a subreaper.

`make vm-test` runs this module. Cold (no cached image) it builds the image first.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers import exit_cases
from helpers.common import REPO, require
from helpers.mosquitto import Mosquitto, free_port, mosquitto_available
from helpers.mqtt import Collector
from helpers.release import build_release, install_collection, playbook_command, playbook_env

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1800)]

VM_DIR = Path(os.environ.get("PMTEST_VM_DIR", REPO / "build/vm"))
VM_SH = REPO / "tests/system/vm/vm.sh"
HOST_ID = "procmon-vm"
TOPIC = f"procmon/{HOST_ID}/exits"
# Emulated (TCG) CPUs are 20-50x slower, so the teardown after the exit tracepoint, which
# wait4's rusage still counts, takes tens of milliseconds instead of a fraction of one.
VM_CPU_TOLERANCE_NS = 150_000_000
COMPARISON = VM_DIR / "backend-comparison.json"
SHORT_LIVED_NS = 5_000_000


@dataclass
class Vm:
    image: Path
    port: int

    def ssh_args(self) -> list[str]:
        return [
            "ssh", "-q", "-i", str(self.image / "id_ed25519"), "-p", str(self.port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ServerAliveInterval=5",
        ]  # fmt: skip

    def ssh(
        self, command: str, timeout: float = 300, check: bool = True, stdin: bytes | None = None
    ) -> str:
        proc = subprocess.run(
            [*self.ssh_args(), "root@127.0.0.1", command],
            input=stdin,
            capture_output=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"in the VM, {command!r} exited {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace')[-2000:]}"
            )
        return proc.stdout.decode(errors="replace")

    def put(self, local: Path, remote: str) -> None:
        self.ssh(f"cat > {remote}", stdin=local.read_bytes())


def _stop_vm(run: Path) -> None:
    subprocess.run([str(VM_SH), "stop", str(run)], check=False, timeout=30)


@pytest.fixture(scope="module")
def vm() -> Iterator[Vm]:
    require(os.geteuid() == 0, "needs root (debootstrap, qemu)")
    for tool in ("qemu-system-x86_64", "debootstrap", "mkfs.ext4", "ssh"):
        require(shutil.which(tool) is not None, f"needs {tool} (make vm-deps)")
    image = Path(
        subprocess.run(
            [str(REPO / "tests/system/vm/build-image.sh"), str(VM_DIR)],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
            timeout=1200,
        ).stdout.strip()
    )
    # A fixed run directory: a start after a killed run also stops its stray qemu.
    run = VM_DIR / "run"
    port = free_port()
    # qemu is daemonized: stop it by pid on every way out, SIGTERM and SIGHUP included.
    atexit.register(_stop_vm, run)
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
        for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        subprocess.run(
            [str(VM_SH), "start", str(image), str(run), str(port)], check=True, timeout=600
        )
        yield Vm(image, port)
    finally:
        _stop_vm(run)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class Deployment:
    vm: Vm
    broker: Mosquitto
    collector: Collector
    backend: str = "bcc"
    measures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def events(self, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        out = []
        for message in self.collector.on(TOPIC):
            event = message.json()
            if match(event):
                out.append(event)
        return out

    def wait_events(
        self, match: Callable[[dict[str, Any]], bool], want: int = 1, timeout: float = 60
    ) -> list[dict[str, Any]]:
        """Wait for `want` matching events, then a little longer for any that should not be."""
        deadline = time.monotonic() + timeout
        while len(self.events(match)) < want and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        return self.events(match)

    def run_case(self, case: str) -> exit_cases.Truth:
        line = self.vm.ssh(f"/usr/bin/python3 /root/exit_cases.py {case}", timeout=120)
        data = json.loads(line.strip().splitlines()[-1])
        data.pop("exit_code", None)  # a property of Truth, printed for humans
        return exit_cases.Truth(**data)

    def run_context_case(self, case: str, *args: str) -> dict[str, Any]:
        line = self.vm.ssh(
            f"/usr/bin/python3 /root/context_cases.py {case} {' '.join(args)}", timeout=120
        )
        truth: dict[str, Any] = json.loads(line.strip().splitlines()[-1])
        return truth

    def process_event(self, pid: int) -> dict[str, Any]:
        events = self.wait_events(lambda e: e["pid"] == pid and e["scope"] == "process")
        assert len(events) == 1, f"expected one process event for pid {pid}, got {events}"
        return events[0]

    def agent_pid(self) -> int:
        return int(self.vm.ssh("systemctl show -p MainPID --value procmon-agent").strip())


def _deploy(vm: Vm, tmp: Path) -> str:
    playbook = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent))
    require(playbook is not None, "needs ansible-playbook (pip install -e '.[dev]')")
    release = build_release(VM_DIR / "dist")
    collections = tmp / "collections"
    install_collection(release, collections)
    inventory = tmp / "inventory.json"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "children": {
                        "procmon_brokers": {"hosts": {}},
                        "procmon_agents": {
                            "hosts": {
                                HOST_ID: {
                                    "ansible_host": "127.0.0.1",
                                    "ansible_port": vm.port,
                                    "ansible_user": "root",
                                    "ansible_ssh_private_key_file": str(vm.image / "id_ed25519"),
                                    "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                                    "-o UserKnownHostsFile=/dev/null",
                                }
                            }
                        },
                    }
                }
            }
        )
    )
    extra = tmp / "extra-vars.json"
    extra.write_text(
        json.dumps(
            {
                "procmon_agent_probe": "bcc",
                "procmon_agent_deb": str(release.deb),
                # The reverse tunnel's end in the VM: no address but loopback.
                "procmon_agent_mqtt_broker": "mqtt://127.0.0.1:1883",
                "procmon_agent_mqtt_allow_plain": True,
                "procmon_agent_host_id": HOST_ID,
                "procmon_agent_mqtt_username": "",
                "procmon_agent_mqtt_ca_cert": "",
                "procmon_agent_stats_interval_s": 2,
            }
        )
    )
    started = time.monotonic()
    proc = subprocess.run(
        playbook_command(inventory, "-e", f"@{extra}"),
        cwd=tmp,
        env={**playbook_env(collections), "ANSIBLE_HOST_KEY_CHECKING": "False"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode != 0:
        journal = vm.ssh("journalctl -u procmon-agent -o cat --no-pager | tail -20", check=False)
        raise AssertionError(
            f"ansible-playbook failed:\n{proc.stdout[-3000:]}{proc.stderr}\n"
            f"agent journal:\n{journal}"
        )
    return f"{time.monotonic() - started:.1f} s"


def _tunnel(vm: Vm, broker_port: int) -> subprocess.Popen[bytes]:
    """ssh -R: the VM's 127.0.0.1:1883 reaches this host's broker on 127.0.0.1."""
    proc = subprocess.Popen(
        [*vm.ssh_args(), "-N", "-o", "ExitOnForwardFailure=yes",
         "-R", f"127.0.0.1:1883:127.0.0.1:{broker_port}", "root@127.0.0.1"],
    )  # fmt: skip
    vm.ssh(
        "for i in $(seq 100); do ss -ltnH 'sport = :1883' | grep -q . && exit 0; sleep 0.2;"
        " done; exit 1",
        timeout=60,
    )
    return proc


@pytest.fixture(scope="module")
def quick_exit(cc: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/system/vm/quick_exit.c: a process short enough for the < 5 ms case even under TCG."""
    out = tmp_path_factory.mktemp("bin") / "quick_exit"
    src = REPO / "tests/system/vm/quick_exit.c"
    subprocess.run([cc, "-O2", "-static", "-nostdlib", "-o", str(out), str(src)], check=True)
    return out


@pytest.fixture(scope="module")
def deployed(
    vm: Vm, tmp_path_factory: pytest.TempPathFactory, forkstorm: Path, quick_exit: Path
) -> Iterator[Deployment]:
    require(mosquitto_available(), "needs mosquitto (apt-get install mosquitto)")
    tmp = tmp_path_factory.mktemp("vm-deploy")
    broker = Mosquitto(tmp / "broker")
    broker.start()
    collector = Collector(broker, [f"procmon/{HOST_ID}/#"])
    tunnel = _tunnel(vm, broker.port)
    try:
        vm.put(Path(exit_cases.__file__), "/root/exit_cases.py")
        # Built on this host (the VM has no libc headers); both are Debian 12, same glibc.
        vm.put(forkstorm, "/root/forkstorm")
        vm.put(REPO / "tests/system/vm/context_cases.py", "/root/context_cases.py")
        vm.put(quick_exit, "/root/quick_exit")
        vm.ssh("chmod 755 /root/forkstorm /root/quick_exit")
        deploy_time = _deploy(vm, tmp)
        d = Deployment(vm, broker, collector)
        d.measures["deploy"] = {"ansible_playbook": deploy_time}
        assert vm.ssh("systemctl is-active procmon-agent", check=False).strip() == "active"
        _measure_start(d, "bcc", restart_seconds=None)
        yield d
        COMPARISON.write_text(json.dumps(d.measures, indent=2) + "\n")
    finally:
        tunnel.terminate()
        collector.close()
        broker.stop()


def _measure_start(d: Deployment, backend: str, restart_seconds: float | None) -> None:
    """The agent's own account of its probe start-up, from the journal."""
    log = d.vm.ssh("journalctl -u procmon-agent -o cat --no-pager | grep 'attached' | tail -1")
    match = re.search(r"attached (\S+) in ([\d.]+) s(?: \(compile ([\d.]+) s\))?", log)
    assert match, f"no 'attached' line in the agent's journal: {log!r}"
    entry = d.measures.setdefault(backend, {})
    entry["program"] = match.group(1)
    entry["probe_start_s"] = float(match.group(2))
    if match.group(3):
        entry["compile_s"] = float(match.group(3))
    if restart_seconds is not None:
        entry["systemctl_restart_s"] = round(restart_seconds, 1)


@pytest.fixture(scope="module", params=["bcc", "core"])
def backend(request: pytest.FixtureRequest, deployed: Deployment) -> str:
    """The agent in the VM, switched to this backend (the role deployed bcc)."""
    wanted = str(request.param)
    if deployed.backend != wanted:
        started = time.monotonic()
        try:
            deployed.vm.ssh(
                f"sed -i 's/^backend = .*/backend = \"{wanted}\"/' /etc/procmon/agent.toml"
                " && systemctl restart procmon-agent",
                timeout=600,
            )
        except AssertionError as exc:
            journal = deployed.vm.ssh(
                "journalctl -u procmon-agent -o cat --no-pager | tail -15", check=False
            )
            raise AssertionError(f"{exc}\nagent journal:\n{journal}") from None
        deployed.backend = wanted
        _measure_start(deployed, wanted, time.monotonic() - started)
    # Events flow: an exit in the VM shows up over MQTT with this backend's name.
    marker = deployed.run_case("exit_code_3")
    got = deployed.wait_events(lambda e: e["pid"] == marker.pid, timeout=120)
    assert got and got[0]["probe"] == wanted, f"no {wanted} event for pid {marker.pid}: {got}"
    return wanted


@pytest.mark.parametrize("case", sorted(exit_cases.CASES))
def test_ground_truth_over_mqtt(case: str, backend: str, deployed: Deployment) -> None:
    truth = deployed.run_case(case)
    events = deployed.wait_events(lambda e: e["pid"] == truth.pid and e["scope"] == "process")
    assert len(events) == 1, f"{case}: expected one process event, got {len(events)}: {events}"
    event = events[0]
    assert event["probe"] == backend
    assert event["host"] == HOST_ID
    assert exit_cases.check(truth, event, cpu_tolerance_ns=VM_CPU_TOLERANCE_NS) == []
    if truth.threads > 1:
        # One event per multi-threaded process, not one per thread.
        assert deployed.events(lambda e: e["pid"] == truth.pid) == [event]


def _check_exec_context(event: dict[str, Any], truth: dict[str, Any]) -> None:
    """The exit names what the process exec'd, from the probe's exec record."""
    assert (event["exe"], event["args"]) == (truth["exe"], truth["args"]), event
    assert (event["exec_source"], event["args_truncated"]) == ("exec", False), event
    assert event["parent_comm"] == truth["parent_comm"], event
    assert event["exit_code"] == os.WEXITSTATUS(truth["status"]), event


def test_context_short_lived_process(backend: str, deployed: Deployment) -> None:
    """Gone within milliseconds, before anything could read /proc: exe and args still
    arrive. A loaded host may stretch one TCG run past 5 ms: up to 20 tries, the shortest is
    recorded, and every one must carry its exec context."""
    ages = []
    for _ in range(20):
        truth = deployed.run_context_case("short_lived")
        event = deployed.process_event(truth["pid"])
        _check_exec_context(event, truth)
        ages.append(event["age_ns"])
        if event["age_ns"] < SHORT_LIVED_NS:
            break
    deployed.measures.setdefault(backend, {})["short_lived_age_ms"] = min(ages) / 1e6
    assert min(ages) < SHORT_LIVED_NS, f"no run lived under 5 ms: ages {ages} ns"


def test_context_transient_cgroup(backend: str, deployed: Deployment) -> None:
    """/bin/sh -c 'exit 7' in a cgroup v2 directory made just before and removed right after
    the exit: the event still has its path and unit."""
    truth = deployed.run_context_case("transient_cgroup")
    assert truth["removed"]
    event = deployed.process_event(truth["pid"])
    _check_exec_context(event, truth)
    assert (event["cgroup"], event["unit"]) == (truth["cgroup"], truth["unit"]), event
    assert event["cgroup_id"] != 0 and event["container_id"] is None, event


@pytest.mark.parametrize("subreaper", ["0", "1"])
def test_context_forks_without_exec(backend: str, deployed: Deployment, subreaper: str) -> None:
    """Children that never exec carry the image of the ancestor that did (exec_source fork),
    unless a subreaper is on the way (the probe reads signal->is_child_subreaper, a bitfield):
    then the owner is unknown and exe and args stay null rather than guessed."""
    truth = deployed.run_context_case("forks_without_exec", subreaper)
    for pid in (truth["child"], truth["grandchild"]):
        event = deployed.process_event(pid)
        got = (event["exe"], event["args"], event["exec_source"])
        if truth["subreaper"]:
            assert got == (None, None, None), event
        else:
            assert got == (truth["exe"], truth["args"], "fork"), event


def test_agent_rss(backend: str, deployed: Deployment) -> None:
    rss_kb = int(deployed.vm.ssh(f"ps -o rss= -p {deployed.agent_pid()}").strip())
    deployed.measures.setdefault(backend, {})["rss_kb"] = rss_kb
    assert rss_kb > 0


def test_fork_storm(backend: str, deployed: Deployment) -> None:
    """A short storm: every child's exit arrives, and the kernel side dropped nothing."""
    n, workers = 3000, 2
    name = f"storm{backend}"  # the comm of the storm's processes, unique per backend
    deployed.vm.ssh(f"cp /root/forkstorm /root/{name}")
    out = deployed.vm.ssh(f"/root/{name} {n} {workers}", timeout=600).split()
    expected = n + workers + 1  # children, workers, the main process
    delivered = deployed.wait_events(lambda e: e["comm"] == name, want=expected, timeout=120)
    stats = _latest_stats(deployed)
    deployed.measures.setdefault(backend, {})["fork_storm"] = {
        "children": n,
        "workers": workers,
        "storm_seconds": float(out[1]) if len(out) > 1 else None,
        "expected_events": expected,
        "delivered": len(delivered),
        "lost": expected - len(delivered),
        "dropped_kernel": stats.get("dropped_kernel"),
    }
    assert len(delivered) == expected
    assert stats.get("dropped_kernel", 0) == 0
    assert stats.get("dropped_context_kernel", 0) == 0


def _latest_stats(d: Deployment) -> dict[str, Any]:
    time.sleep(3)  # stats_interval_s is 2 in the VM's config
    with contextlib.suppress(Exception):
        stats = d.collector.last_json(f"procmon/{HOST_ID}/stats")
        if isinstance(stats, dict):
            return stats
    return {}

"""Real eBPF: who exited. exe and args captured at exec (or seeded from /proc), cgroup paths
that outlive their cgroup, container and pod ids, redaction, all the way to MQTT."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from helpers.cgroups import remove_cgroup, run_in_cgroup
from helpers.common import REPO
from helpers.mosquitto import Mosquitto
from helpers.mqtt import SLOW, unique_host, wait_until
from helpers.probe_collector import Collector
from procmon.config import EnrichConfig
from procmon.enrich.cgroup_cache import cgroup2_mount
from procmon.event import ExitEvent

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_ready")]


def marker() -> str:
    return f"--marker={secrets.token_hex(6)}"


def event_of(c: Collector, pid: int) -> ExitEvent:
    c.poll_until(lambda evs: any(e.pid == pid for e in evs))
    (event,) = c.of_pid(pid)
    return event


def test_process_living_under_5ms_has_exe_and_args(collect: Callable[..., Collector]) -> None:
    c = collect()
    for _ in range(10):  # a loaded machine may stretch one run past 5 ms: try again
        arg = marker()
        proc = subprocess.Popen(["/bin/true", arg, "two words"])
        proc.wait()
        event = event_of(c, proc.pid)
        assert (event.exe, event.args) == ("/bin/true", ("/bin/true", arg, "two words"))
        assert (event.exec_source, event.args_truncated) == ("exec", False)
        assert event.parent_comm == Path("/proc/self/comm").read_text().strip()  # the test
        if event.age_ns < 5_000_000:
            return
    pytest.fail(f"no run of /bin/true lived under 5 ms (last: {event.age_ns} ns)")


def test_process_started_before_the_agent_comes_from_the_proc_seed(
    collect: Callable[..., Collector],
) -> None:
    arg = marker()
    proc = subprocess.Popen(["/bin/sh", "-c", "read line", "sh", arg], stdin=subprocess.PIPE)
    time.sleep(0.2)  # exec'd, reading
    c = collect()
    assert c.context is not None
    c.context.seed()
    proc.communicate(b"go\n", timeout=SLOW)
    event = event_of(c, proc.pid)
    assert event.exec_source == "proc"
    assert event.exe == os.path.realpath("/bin/sh")  # /proc/<pid>/exe is resolved
    assert event.args == ("/bin/sh", "-c", "read line", "sh", arg)


def test_children_that_never_exec_carry_their_ancestor_image(
    collect: Callable[..., Collector],
) -> None:
    """A subshell of a subshell: two forks without exec below the exec'ing shell."""
    c = collect()
    arg = marker()
    script = "(echo $$ >/dev/null; (exit 3); exit 4); exit 5"
    proc = subprocess.Popen(["/bin/sh", "-c", script, "sh", arg])
    assert proc.wait(timeout=SLOW) == 5
    c.poll_until(lambda evs: sum(e.args is not None and arg in e.args for e in evs) >= 3)
    ours = sorted((e for e in c.events if e.args and arg in e.args), key=lambda e: e.exit_code)
    assert [(e.exit_code, e.exec_source) for e in ours] == [(3, "fork"), (4, "fork"), (5, "exec")]
    assert {e.exe for e in ours} == {"/bin/sh"}


def test_capture_args_off_keeps_exe_only(collect: Callable[..., Collector]) -> None:
    c = collect(enrich=EnrichConfig(capture_args=False), capture_args=False)
    proc = subprocess.Popen(["/bin/true", marker()])
    proc.wait()
    event = event_of(c, proc.pid)
    assert (event.exe, event.args, event.args_truncated) == ("/bin/true", None, None)


def test_long_command_line_is_cut_and_flagged(collect: Callable[..., Collector]) -> None:
    c = collect()
    long_args = [f"a{i:04d}" + "x" * 60 for i in range(40)]  # 2.6 KB
    proc = subprocess.Popen(["/bin/true", *long_args])
    proc.wait()
    event = event_of(c, proc.pid)
    assert event.args is not None and event.args_truncated is True
    assert event.args[: len(event.args) - 1] == ("/bin/true", *long_args)[: len(event.args) - 1]
    assert sum(len(a) for a in event.args) + len(event.args) - 1 <= 1024  # NULs between


def test_transient_cgroup_removed_right_after_still_resolves(
    collect: Callable[..., Collector], scratch_cgroups: Callable[[str], Path]
) -> None:
    c = collect()  # attached first: the cgroup is learnt from the probe's mkdir record
    tag = secrets.token_hex(3)
    rel = f"procmon-test-{tag}.slice/run-r{tag}.scope"
    group = scratch_cgroups(rel)
    pid = run_in_cgroup(group, "/bin/true", marker())
    remove_cgroup(group)
    remove_cgroup(group.parent)
    assert not group.exists()
    event = event_of(c, pid)  # consumed only now, after the removal
    assert event.cgroup == "/" + rel
    assert event.unit == f"run-r{tag}.scope"
    assert event.cgroup_id != 0 and event.container_id is None


def test_containerd_named_cgroup_gives_container_and_pod(
    collect: Callable[..., Collector], scratch_cgroups: Callable[[str], Path]
) -> None:
    c = collect()
    pod = "3f1c2b4a-5d6e-4f70-8a9b-0c1d2e3f4a5b"
    container = secrets.token_hex(32)
    rel = (
        f"procmon-test-{secrets.token_hex(3)}.slice/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{pod.replace('-', '_')}.slice/cri-containerd-{container}.scope"
    )
    group = scratch_cgroups(rel)
    pid = run_in_cgroup(group, "/bin/true", marker())
    event = event_of(c, pid)
    assert event.cgroup == "/" + rel
    assert (event.container_id, event.container_runtime, event.pod_uid) == (
        container,
        "containerd",
        pod,
    )
    assert event.unit == f"cri-containerd-{container}.scope"


# --- on the bus -----------------------------------------------------------------------------


SECRETS = ("hunter2", "s3cretpw", "tok-abc-123", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln")


def test_fields_arrive_on_mqtt_redacted(
    agent_ready: None,
    broker: Mosquitto,
    agents: Any,
    subscribers: Any,
    scratch_cgroups: Callable[[str], Path],
) -> None:
    host = unique_host()
    sub = subscribers("enrich", broker.url, topic_filter=f"procmon/{host}/exits")
    agents(broker.url, host_id=host).start()
    group = scratch_cgroups(f"procmon-test-{secrets.token_hex(3)}.slice/app.service")
    # A realistic command line: a client with a password option, a DSN, a token and a JWT.
    argv = [
        "/bin/true",
        "mysql",
        "--user=app",
        f"--password={SECRETS[0]}",
        f"postgres://app:{SECRETS[1]}@db.internal:5432/orders",
        "--token",
        SECRETS[2],
        f"Authorization: Bearer {SECRETS[3]}",
    ]
    pid = run_in_cgroup(group, *argv)
    wait_until(lambda: any(e["pid"] == pid for e in sub.events()), SLOW, "the exit on MQTT")
    (event,) = [e for e in sub.events() if e["pid"] == pid]
    payload = json.dumps(event)
    assert not [s for s in SECRETS if s in payload], payload
    assert event["exe"] == "/bin/true" and event["exec_source"] == "exec"
    assert event["args"] == [
        "/bin/true",
        "mysql",
        "--user=app",
        "--password=<redacted>",
        "postgres://app:<redacted>@db.internal:5432/orders",
        "--token",
        "<redacted>",
        "Authorization: Bearer <redacted>",
    ]
    # The shell exec'd into /bin/true: its parent is this test process.
    assert event["parent_comm"] == Path("/proc/self/comm").read_text().strip()
    assert event["cgroup"] == str(group).removeprefix(str(cgroup2_mount()))
    assert event["unit"] == "app.service"
    schema = json.loads((REPO / "schemas/exit-event.v1.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(event)

"""`procmon agent` on the bus, against a real mosquitto started by each test.

The agent runs as a subprocess (`python -m procmon.cli agent`) with its own spool and sees
every exit on the machine; tests pick out the processes they started (by pid, or by the
unique comm of a renamed fork-storm binary). Tests that need root/eBPF or mosquitto fail in
CI (CI=true) and skip elsewhere (see helpers.common.require). The pieces that need no broker
(broker URLs, password-file rules, sd_notify): tests/unit/test_mqtt_agent.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from helpers import exit_cases
from helpers.common import REPO
from helpers.mosquitto import Mosquitto, make_tls_files
from helpers.mqtt import (
    SLOW,
    AgentProcess,
    Collector,
    Storm,
    sample_event,
    unique_host,
    wait_until,
    wait_until_steady,
)
from procmon.config import MqttConfig
from procmon.event import SCHEMA_ID
from procmon.sinks.mqtt import AgentIdentity, MqttSink
from procmon.spool import Spool

# --- helpers -------------------------------------------------------------------------------


def run_exit(code: int) -> int:
    """Start `sh -c 'exit CODE'`, reap it, return its pid."""
    proc = subprocess.Popen(["sh", "-c", f"exit {code}"])
    assert proc.wait(timeout=SLOW) == code
    return proc.pid


def exits_of(collector: Collector, host: str) -> list[dict[str, Any]]:
    return [m.json() for m in collector.on(f"procmon/{host}/exits")]


def by_pid(events: list[dict[str, Any]], pid: int, ppid: int | None = None) -> list[dict[str, Any]]:
    """The events of pid whose parent is ppid (default: this process), so that a reused pid
    is not taken for the process."""
    parent = os.getpid() if ppid is None else ppid
    return [e for e in events if e["pid"] == pid and e["ppid"] == parent]


def broker_down_with_queued_session(broker: Mosquitto, topics: list[str]) -> Collector:
    """A persistent collector the broker remembers across the restart that follows, so no
    message published right after the broker comes back can miss it."""
    assert broker.persistence
    broker.start()
    collector = Collector(broker, topics, session=f"collector-{uuid.uuid4().hex[:8]}")
    broker.stop()  # SIGTERM: mosquitto saves the session to its persistence file
    return collector


def identity(host: str = "sink-host") -> AgentIdentity:
    return AgentIdentity(host=host, version="test", probe="core", started_at="now")


# --- the sink against a broker, without a probe ---------------------------------------------


def test_sink_publishes_in_order_and_empties_the_spool(broker: Mosquitto, tmp_path: Path) -> None:
    collector = Collector(broker, ["procmon/sink-host/#"])
    spool = Spool(tmp_path / "spool.db", 10_000)
    sink = MqttSink(MqttConfig(broker=broker.url, max_inflight=16), identity(), spool)
    try:
        for start in range(0, 2000, 100):
            sink.emit([sample_event(n) for n in range(start, start + 100)])
        wait_until(lambda: len(exits_of(collector, "sink-host")) == 2000, what="2000 events")
        assert [e["pid"] for e in exits_of(collector, "sink-host")] == list(range(2000))
        wait_until(lambda: sink.counters()["spool_depth"] == 0, what="an empty spool")
        assert sink.counters()["published"] == 2000
        message = collector.on("procmon/sink-host/exits")[0]
        assert message.properties.ContentType == "application/json"
        assert message.user_properties() == {"schema": SCHEMA_ID}
        status = collector.last_json("procmon/sink-host/status")
        assert status["state"] == "online" and status["probe"] == "core"
    finally:
        sink.close()
        collector.close()
    wait_until(lambda: collector.last_json("procmon/sink-host/status")["state"] == "offline")


class CountingSpool(Spool):
    """A Spool that counts its read-backs."""

    reads = 0

    def read_after(self, after_id: int, limit: int) -> list[tuple[int, bytes]]:
        self.reads += 1
        return super().read_after(after_id, limit)


def test_emits_larger_than_the_window_are_sent_from_memory(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """The pipeline hands over up to 512 events at once, the window is 256 messages: the rest
    waits in memory for PUBACKs, and is not read back from the spool (issue 17)."""
    collector = Collector(broker, ["procmon/sink-host/exits"])
    spool = CountingSpool(tmp_path / "spool.db", 10_000)
    sink = MqttSink(MqttConfig(broker=broker.url, max_inflight=256), identity(), spool)
    try:
        wait_until(lambda: sink.connected, what="a connection")
        for start in (0, 1024):  # a poll's 1024 records: two emits back to back
            sink.emit([sample_event(n) for n in range(start, start + 512)])
            sink.emit([sample_event(n) for n in range(start + 512, start + 1024)])
            wait_until(lambda: sink.counters()["spool_depth"] == 0, what="an empty spool")
        wait_until(lambda: len(exits_of(collector, "sink-host")) == 2048, what="2048 events")
        assert [e["pid"] for e in exits_of(collector, "sink-host")] == list(range(2048))
        assert spool.reads == 0
    finally:
        sink.close()
        collector.close()


def test_sink_spools_while_broker_down_and_replays_after_restart(
    tmp_path: Path, mosquitto_ready: None
) -> None:
    broker = Mosquitto(tmp_path / "broker")  # not started yet
    path = tmp_path / "spool.db"
    cfg = MqttConfig(broker=broker.url, reconnect_max_s=1)
    sink = MqttSink(cfg, identity(), Spool(path, 1000))
    sink.emit([sample_event(n) for n in range(50)])
    sink.close()  # like an agent stopped during the outage: the spool keeps everything

    broker.start()
    try:
        collector = Collector(broker, ["procmon/sink-host/exits"])
        sink = MqttSink(cfg, identity(), Spool(path, 1000))
        assert sink.counters()["spool_replayed"] == 50
        wait_until(lambda: len(exits_of(collector, "sink-host")) == 50, what="the replay")
        assert [e["pid"] for e in exits_of(collector, "sink-host")] == list(range(50))
        sink.close()
        collector.close()
    finally:
        broker.kill()


# --- the agent -----------------------------------------------------------------------------


def test_known_exits_arrive_with_right_fields(
    agent_ready: None, broker: Mosquitto, agents: Any, subscribers: Any
) -> None:
    host = unique_host()
    sub = subscribers("known", broker.url, topic_filter=f"procmon/{host}/exits")
    agent: AgentProcess = agents(broker.url, host_id=host).start()
    truths = [case() for case in exit_cases.CASES.values()]

    def arrived() -> bool:
        events = sub.events()
        return all(by_pid(events, t.pid, t.ppid) for t in truths)

    wait_until(arrived, SLOW, "an event for every known process")
    events = sub.events()
    problems: list[str] = []
    for truth in truths:
        (event,) = [e for e in by_pid(events, truth.pid, truth.ppid) if e["scope"] == "process"]
        problems += exit_cases.check(truth, event)
        assert event["host"] == host and event["probe"] == "core"
    assert problems == []
    assert agent.terminate() == 0


def test_published_json_validates_against_the_schema(
    agent_ready: None, broker: Mosquitto, agents: Any
) -> None:
    schema = json.loads((REPO / "schemas/exit-event.v1.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    host = unique_host()
    collector = Collector(broker, [f"procmon/{host}/exits"])
    agents(broker.url, host_id=host).start()
    pids = [run_exit(code) for code in (0, 1, 255)]
    wait_until(lambda: all(by_pid(exits_of(collector, host), p) for p in pids))
    messages = collector.on(f"procmon/{host}/exits")
    for message in messages:  # ours and every other exit on the machine
        validator.validate(message.json())
        assert message.properties.ContentType == "application/json"
        assert message.user_properties() == {"schema": SCHEMA_ID}
    collector.close()


@pytest.mark.timeout(900)
def test_broker_sigkill_during_5000_exits_then_restart_delivers_all(
    agent_ready: None,
    agents: Any,
    subscribers: Any,
    forkstorm: Path,
    tmp_path: Path,
) -> None:
    total = 5000
    host = unique_host()
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()
    try:
        # A named consumer: its session and queue survive the broker's restart.
        sub = subscribers(
            "restart", broker.url, topic_filter=f"procmon/{host}/exits", client_id="c-restart"
        )
        db = broker.workdir / "mosquitto.db"
        wait_until(db.exists, SLOW, "the broker to save the consumer's session")
        # Alone in a pid namespace: the machine's other exits (thousands a second on a
        # shared test host) would make the broker, not the agent, the thing under test.
        agent = agents(broker.url, host_id=host, own_pid_namespace=True).start()
        storm = Storm(forkstorm, tmp_path / "bin")
        storm.start(total, rate=1000, pid_namespace_of=agent.pid)
        wait_until(lambda: len(storm.children(sub.events())) >= 500, SLOW, "the stream")
        # mosquitto acknowledges a QoS 1 publish before its next autosave, and a SIGKILL resets
        # the consumer's socket, dropping what it had not read yet: a plain SIGKILL loses
        # events the broker had acknowledged (27 of 5,000 once, under load), which no
        # publisher can replay. Freeze it first and let the consumer drain what it was sent:
        # the kill then loses only what the broker had not acknowledged, which is the agent's
        # to replay.
        broker.freeze()
        before = wait_until_steady(
            lambda: len(storm.children(sub.events())), what="the consumer's stream"
        )
        broker.kill()
        storm.wait()
        broker.start()
        wait_until(lambda: len(storm.children(sub.events())) >= total, 300, f"all {total} exits")
        delivered = len(storm.children(sub.events()))
        print(f"broker SIGKILL mid-stream: {before} before the kill, {delivered} delivered")
        assert delivered == total
    finally:
        broker.kill()


def test_agent_started_while_broker_down(
    agent_ready: None, agents: Any, tmp_path: Path, mosquitto_ready: None
) -> None:
    host = unique_host()
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    collector = broker_down_with_queued_session(broker, [f"procmon/{host}/exits"])
    try:
        agent = agents(broker.url, host_id=host).start()
        pids = [run_exit(code) for code in (3, 4, 5)]
        wait_until(lambda: "connection refused" in agent.stderr(), SLOW, "a failed connect")
        broker.start()
        wait_until(lambda: all(by_pid(exits_of(collector, host), p) for p in pids))
        codes = [by_pid(exits_of(collector, host), p)[0]["exit_code"] for p in pids]
        assert codes == [3, 4, 5]
        # Many retries, one line about the outage.
        assert agent.stderr().count("connection refused") == 1
        assert agent.terminate() == 0
    finally:
        collector.close()
        broker.kill()


def test_sigterm_gives_retained_offline_total_and_final_stats(
    agent_ready: None, broker: Mosquitto, agents: Any
) -> None:
    host = unique_host()
    collector = Collector(broker, [f"procmon/{host}/#"])
    agent: AgentProcess = agents(broker.url, host_id=host, env={"WATCHDOG_USEC": "1000000"})
    agent.start()
    status = f"procmon/{host}/status"
    wait_until(lambda: (collector.last_json(status) or {}).get("state") == "online")
    for _ in range(3):
        run_exit(0)
    assert agent.terminate() == 0
    wait_until(lambda: collector.last_json(status)["state"] == "offline", what="offline")
    (total_line,) = [x for x in agent.stdout().splitlines() if x.startswith("Total process")]
    total = int(total_line.rsplit(" ", 1)[1])
    assert total >= 3
    stats = collector.last_json(f"procmon/{host}/stats")
    assert stats["events_seen"] == total
    assert stats["published"] == total and stats["spool_depth"] == 0
    notices = agent.notify.poll()
    assert notices[0] == "READY=1" and notices[-1] == "STOPPING=1"
    assert notices.count("WATCHDOG=1") >= 1
    collector.close()

    late = Collector(broker, [status])  # a newcomer sees the retained state
    wait_until(lambda: late.last_json(status) is not None, what="the retained status")
    retained = late.on(status)[-1]
    assert retained.retain
    assert retained.json()["state"] == "offline" and retained.json()["reason"] == "stopped"
    assert retained.json()["events_seen"] == total
    late.close()


def test_sigkill_gives_offline_through_the_last_will(
    agent_ready: None, broker: Mosquitto, agents: Any
) -> None:
    host = unique_host()
    status = f"procmon/{host}/status"
    collector = Collector(broker, [status])
    agent: AgentProcess = agents(broker.url, host_id=host).start()
    wait_until(lambda: (collector.last_json(status) or {}).get("state") == "online")
    agent.kill()
    wait_until(lambda: collector.last_json(status)["state"] == "offline", what="the will")
    collector.close()
    late = Collector(broker, [status])
    wait_until(lambda: late.last_json(status) is not None, what="the retained status")
    assert late.on(status)[-1].retain
    assert late.last_json(status)["reason"] == "connection lost"
    late.close()


def test_spool_cap_drops_are_counted_exactly(
    agent_ready: None, agents: Any, forkstorm: Path, tmp_path: Path, mosquitto_ready: None
) -> None:
    host = unique_host()
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    collector = broker_down_with_queued_session(broker, [f"procmon/{host}/#"])
    try:
        # The stdout sink shows every event the agent saw: the ground truth for "dropped".
        agent: AgentProcess = agents(
            broker.url,
            host_id=host,
            env={"PROCMON_SPOOL__MAX_EVENTS": "100"},
            config='[sinks]\nstdout = "json"\n',
        ).start()
        storm = Storm(forkstorm, tmp_path / "bin").start(300)
        storm.wait()

        def seen() -> list[dict[str, Any]]:
            lines = agent.stdout().split("\n")[:-1]  # the last one may still be partial
            return [json.loads(x) for x in lines if x.startswith("{")]

        wait_until(lambda: storm.main_seen(seen()), SLOW, "the agent to see the whole storm")
        broker.start()
        stats_topic = f"procmon/{host}/stats"
        wait_until(
            lambda: (collector.last_json(stats_topic) or {}).get("published", 0) >= 100,
            SLOW,
            "the spool's 100 events to be published",
        )
        assert agent.terminate() == 0
        status_topic = f"procmon/{host}/status"
        # The final stats go out after the flush, just before the offline status.
        wait_until(lambda: (collector.last_json(status_topic) or {}).get("state") == "offline")
        final = collector.last_json(stats_topic)
        assert final["spool_depth"] == 0
        wait_until(
            lambda: len({e["event_id"] for e in exits_of(collector, host)}) == final["published"],
            SLOW,
            "every published event at the collector",
        )
        received = {e["event_id"] for e in exits_of(collector, host)}
        events = seen()
        not_delivered = {e["event_id"] for e in events} - received
        assert len(events) == final["events_seen"]
        assert final["dropped_spool"] == len(not_delivered)  # each undelivered one counted
        assert final["dropped_spool"] >= 302 - 100  # the storm alone overflowed the spool
        assert final["events_seen"] == (
            final["published"] + final["dropped_spool"] + final["dropped_queue"]
        )
        status = collector.last_json(status_topic)
        assert status["dropped_spool"] == final["dropped_spool"]
    finally:
        collector.close()
        broker.kill()


def test_reload_replaces_the_probe_with_threads_running(
    agent_ready: None, broker: Mosquitto, agents: Any
) -> None:
    """A probe setting changed on SIGHUP loads a new probe while the MQTT thread runs (in the
    agent itself: the first load's forked child is not used beside threads); events flow before
    and after, and the first loader child's exit is not reported."""
    host = unique_host()
    collector = Collector(broker, [f"procmon/{host}/exits"])
    agent: AgentProcess = agents(broker.url, host_id=host, config="log_level = 'info'\n").start()
    pid = run_exit(13)
    wait_until(lambda: bool(by_pid(exits_of(collector, host), pid)), SLOW, "events before it")
    agent.config.write_text("log_level = 'info'\n[probe]\nwakeup_latency_ms = 25\n")
    agent.signal(signal.SIGHUP)
    wait_until(lambda: "configuration applied" in agent.stderr(), SLOW, "the applied reload")
    pid = run_exit(14)
    wait_until(lambda: bool(by_pid(exits_of(collector, host), pid)), SLOW, "events after it")
    assert "reload failed" not in agent.stderr()
    children = [e for e in exits_of(collector, host) if e["ppid"] == agent.pid]
    assert children == [], "a loader child's exit was reported"
    assert agent.terminate() == 0
    collector.close()


def test_wrong_password_is_one_clear_line_and_sighup_rereads_it(
    agent_ready: None, agents: Any, tmp_path: Path
) -> None:
    broker = Mosquitto(tmp_path / "broker", passwords={"agent": "right-horse"})
    broker.start()
    try:
        password = tmp_path / "password"
        password.write_text("wrong-battery\n")
        password.chmod(0o600)
        host = unique_host()
        agent: AgentProcess = agents(
            broker.url,
            host_id=host,
            env={"PROCMON_MQTT__USERNAME": "agent", "PROCMON_MQTT__PASSWORD_FILE": str(password)},
        ).start()
        wait_until(lambda: broker.log_text().count("not authorised") >= 3, SLOW, "three refusals")
        refusals = [x for x in agent.stderr().splitlines() if "refused" in x]
        assert len(refusals) == 1, agent.stderr()
        assert "check mqtt.username and the password file" in refusals[0]
        assert "wrong-battery" not in agent.stderr() + agent.stdout()

        password.write_text("right-horse\n")
        agent.signal(signal.SIGHUP)
        status = f"procmon/{host}/status"
        collector = Collector(broker, [status], login=("agent", "right-horse"))
        wait_until(lambda: (collector.last_json(status) or {}).get("state") == "online")
        assert "right-horse" not in agent.stderr() + agent.stdout()
        assert agent.terminate() == 0
        collector.close()
    finally:
        broker.kill()


def test_tls_with_ca_and_client_certificate(
    agent_ready: None, agents: Any, tmp_path: Path, mosquitto_ready: None
) -> None:
    tls = make_tls_files(tmp_path / "tls")
    broker = Mosquitto(tmp_path / "broker", tls=tls)
    broker.start()
    try:
        host = unique_host()
        collector = Collector(broker, [f"procmon/{host}/exits"], tls=True)
        agents(
            broker.url,
            host_id=host,
            env={
                "PROCMON_MQTT__CA_FILE": str(tls.ca_cert),
                "PROCMON_MQTT__CERT_FILE": str(tls.client_cert),
                "PROCMON_MQTT__KEY_FILE": str(tls.client_key),
            },
        ).start()
        assert broker.url.startswith("mqtts://")
        pid = run_exit(42)
        wait_until(lambda: bool(by_pid(exits_of(collector, host), pid)), SLOW, "a TLS event")
        assert by_pid(exits_of(collector, host), pid)[0]["exit_code"] == 42
        collector.close()
    finally:
        broker.kill()


def test_untrusted_server_certificate_is_one_clear_line(
    agent_ready: None, agents: Any, tmp_path: Path, mosquitto_ready: None
) -> None:
    tls = make_tls_files(tmp_path / "tls")
    stranger = make_tls_files(tmp_path / "other-ca")
    broker = Mosquitto(tmp_path / "broker", tls=tls)
    broker.start()
    try:
        agent: AgentProcess = agents(
            broker.url,
            env={
                "PROCMON_MQTT__CA_FILE": str(stranger.ca_cert),
                "PROCMON_MQTT__CERT_FILE": str(tls.client_cert),
                "PROCMON_MQTT__KEY_FILE": str(tls.client_key),
            },
        ).start()
        wait_until(lambda: broker.log_text().count("New connection from") >= 3, SLOW, "3 attempts")
        lines = [x for x in agent.stderr().splitlines() if "certificate" in x]
        assert len(lines) == 1, agent.stderr()
        assert "server certificate rejected" in lines[0] and "CA file" in lines[0]
    finally:
        broker.kill()


def test_two_shared_subscribers_receive_each_event_once(
    agent_ready: None, broker: Mosquitto, agents: Any, subscribers: Any, forkstorm: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    host = unique_host()
    shared = f"$share/procmon-test/procmon/{host}/exits"
    subs = [subscribers(name, broker.url, topic_filter=shared) for name in ("a", "b")]
    agents(broker.url, host_id=host).start()
    storm = Storm(forkstorm, tmp_path / "bin").start(300)

    def children() -> list[dict[str, dict[str, Any]]]:
        outputs = [s.events() for s in subs]
        union = outputs[0] + outputs[1]
        return [storm.children(events, context=union) for events in outputs]

    def storm_exits() -> int:  # 300 children, their parent worker and the main process
        return sum(e["comm"] == storm.comm for s in subs for e in s.events())

    wait_until(lambda: storm_exits() >= 302, SLOW, "the storm's 302 exits")
    a, b = children()
    assert len(a) + len(b) == 300
    assert not set(a) & set(b)
    assert a and b  # the group really shared the stream
    for sub in subs:
        ids = [e["event_id"] for e in sub.events()]
        assert len(ids) == len(set(ids))


def test_mqtt_311_is_selectable(agent_ready: None, broker: Mosquitto, agents: Any) -> None:
    host = unique_host()
    collector = Collector(broker, [f"procmon/{host}/exits"])
    agents(broker.url, host_id=host, env={"PROCMON_MQTT__PROTOCOL": "3.1.1"}).start()
    pid = run_exit(9)
    wait_until(lambda: bool(by_pid(exits_of(collector, host), pid)), SLOW, "a 3.1.1 event")
    collector.close()


def test_bad_reload_keeps_running_and_a_good_one_applies(
    agent_ready: None, broker: Mosquitto, agents: Any
) -> None:
    host = unique_host()
    collector = Collector(broker, [f"procmon/{host}/exits"])
    agent: AgentProcess = agents(broker.url, host_id=host, config="log_level = 'info'\n").start()
    agent.config.write_text("[mqtt]\nbogus_key = 1\n")
    agent.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in agent.stderr(), SLOW, "the refused reload")
    (line,) = [x for x in agent.stderr().splitlines() if "reload refused" in x]
    assert "mqtt.bogus_key" in line
    pid = run_exit(11)
    wait_until(lambda: bool(by_pid(exits_of(collector, host), pid)), SLOW, "events after it")

    agent.config.write_text("log_level = 'info'\n[mqtt]\nkeepalive_s = 20\n")
    agent.signal(signal.SIGHUP)
    wait_until(lambda: "configuration applied" in agent.stderr(), SLOW, "the applied reload")
    pid = run_exit(12)
    wait_until(lambda: bool(by_pid(exits_of(collector, host), pid)), SLOW, "events after it")
    assert agent.terminate() == 0
    collector.close()


def test_world_readable_password_file_stops_the_agent_at_start(agents: Any, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("hunter2\n")
    password.chmod(0o644)
    agent: AgentProcess = agents(
        "mqtt://127.0.0.1:1",
        env={"PROCMON_MQTT__USERNAME": "u", "PROCMON_MQTT__PASSWORD_FILE": str(password)},
    ).start(wait_ready=False)
    assert agent.proc is not None
    assert agent.proc.wait(timeout=SLOW) == 2
    (line,) = agent.stderr().strip().splitlines()
    assert "readable by everyone" in line and str(password) in line
    assert "hunter2" not in agent.stderr()

"""The agent's MQTT client against real mosquitto brokers: the CONNACK's Maximum Packet Size,
an IPv6 listener, `procmon check --broker` over mTLS, and failover between two brokers.
The hostile cases a real broker does not produce: tests/unit/test_mqtt_hostile_broker.py."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.mosquitto import Mosquitto, make_tls_files
from helpers.mqtt import (
    PY,
    SLOW,
    Collector,
    Storm,
    sample_event,
    unique_host,
    wait_until,
    wait_until_steady,
)
from procmon.config import MqttConfig
from procmon.mqtt.check import broker_line
from procmon.sinks.mqtt import AgentIdentity, MqttSink
from procmon.spool import Spool

HOST = "limits-host"
IDENTITY = AgentIdentity(host=HOST, version="test", probe="core", started_at="now")


def pids(collector: Collector) -> list[int]:
    return [m.json()["pid"] for m in collector.on(f"procmon/{HOST}/exits")]


def test_maximum_packet_size_from_a_real_connack(
    tmp_path: Path, mosquitto_ready: None, caplog: pytest.LogCaptureFixture
) -> None:
    """mosquitto 2.0.11 advertises max_packet_size in its MQTT 5 CONNACK and drops a client
    that sends more (0x95). Before: the agent sent it anyway and reconnected forever."""
    broker = Mosquitto(tmp_path / "broker", extra=["max_packet_size 1024"])
    broker.start()
    collector = Collector(broker, [f"procmon/{HOST}/#"])
    sink = MqttSink(MqttConfig(broker=broker.url), IDENTITY, Spool(tmp_path / "spool.db", 1000))
    try:
        big = sample_event(2).model_copy(update={"args": ("x" * 2000,)})  # ~2.7 KB of JSON
        sink.emit([sample_event(1), big, sample_event(3)])
        wait_until(lambda: sorted(pids(collector)) == [1, 3], what="the two events that fit")
        wait_until(lambda: sink.counters()["spool_depth"] == 0, what="an empty spool")
        # Stats longer than the limit: trimmed, and dropped_oversize kept.
        many = {f"some_counter_with_a_long_name_{n}": n for n in range(60)}
        sink.publish_stats(many)
        wait_until(lambda: bool(collector.on(f"procmon/{HOST}/stats")), what="the stats")
        stats = collector.on(f"procmon/{HOST}/stats")[-1].json()
        assert stats["dropped_oversize"] == 1 and stats["host"] == HOST
        status = collector.last_json(f"procmon/{HOST}/status")
        assert status["state"] == "online"
        assert sink.counters()["connects"] == 1  # never dropped by the broker
        assert "oversize" not in broker.log_text()
        assert any("dropped_oversize" in r.getMessage() for r in caplog.records)
    finally:
        sink.close()
        collector.close()
        broker.stop()


def _ipv6_loopback() -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        return True
    return False


def test_an_ipv6_broker_url_connects(tmp_path: Path, mosquitto_ready: None) -> None:
    if not _ipv6_loopback():
        if os.environ.get("CI") == "true":
            pytest.fail("::1 cannot be bound on this machine")
        pytest.skip("no IPv6 loopback here")
    broker = Mosquitto(tmp_path / "broker", host="::1")
    broker.start()
    assert broker.url == f"mqtt://[::1]:{broker.port}"
    collector = Collector(broker, [f"procmon/{HOST}/exits"])
    sink = MqttSink(MqttConfig(broker=broker.url), IDENTITY, Spool(tmp_path / "spool.db", 1000))
    try:
        sink.emit([sample_event(n) for n in range(10)])
        wait_until(lambda: sorted(pids(collector)) == list(range(10)), what="10 events over ::1")
        assert broker_line(broker.url).ok
    finally:
        sink.close()
        collector.close()
        broker.stop()


def test_check_broker_over_mtls_uses_the_client_certificate(
    tmp_path: Path, mosquitto_ready: None
) -> None:
    tls = make_tls_files(tmp_path / "tls")
    broker = Mosquitto(tmp_path / "broker", tls=tls)  # require_certificate true
    broker.start()
    try:
        base = [PY, "-m", "procmon.cli", "check", "--backend", "core", "--broker", broker.url]
        base += ["--ca-file", str(tls.ca_cert)]
        with_cert = [*base, "--cert-file", str(tls.client_cert), "--key-file", str(tls.client_key)]
        ok = subprocess.run(with_cert, capture_output=True, text=True, timeout=SLOW)
        assert f"ok   broker {broker.url}: connected (MQTT 5)" in ok.stdout, ok.stdout + ok.stderr
        without = subprocess.run(base, capture_output=True, text=True, timeout=SLOW)
        (line,) = [x for x in without.stdout.splitlines() if "broker" in x]
        assert line.startswith(f"FAIL broker {broker.url}: "), line
        assert without.returncode == 1
    finally:
        broker.stop()


def test_failover_to_the_second_broker_loses_nothing(
    tmp_path: Path, mosquitto_ready: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Two brokers, a consumer on each; the active one dies while events flow. Every event
    arrives on one or the other. The broker is frozen, its consumer left to drain, then
    SIGKILLed: a bare SIGKILL also loses what mosquitto acknowledged but its subscribers had
    not read, which no publisher can replay (docs/reliability.md)."""
    first = Mosquitto(tmp_path / "first")
    second = Mosquitto(tmp_path / "second")
    first.start()
    second.start()
    collectors = [Collector(b, [f"procmon/{HOST}/exits"]) for b in (first, second)]
    cfg = MqttConfig(brokers=(first.url, second.url), keepalive_s=5, reconnect_max_s=2)
    sink = MqttSink(cfg, IDENTITY, Spool(tmp_path / "spool.db", 100_000))
    total = 3000
    sent = threading.Event()

    def flow() -> None:
        for start in range(0, total, 30):
            sink.emit([sample_event(n) for n in range(start, start + 30)])
            time.sleep(0.01)
        sent.set()

    emitter = threading.Thread(target=flow)
    try:
        emitter.start()
        wait_until(lambda: len(pids(collectors[0])) >= 500, what="events on the first broker")
        first.freeze()
        time.sleep(1.0)  # the consumer reads what the broker had sent it
        first.kill()
        emitter.join(SLOW)
        assert sent.is_set()
        wait_until(lambda: sink.counters()["spool_depth"] == 0, what="an empty spool")

        def arrived() -> set[int]:
            return set(pids(collectors[0])) | set(pids(collectors[1]))

        wait_until(lambda: arrived() == set(range(total)), what=f"all {total} events")
        assert pids(collectors[1]), "nothing went to the second broker"
        assert sink.broker == second.url
        assert any("MQTT failover: publishing to" in r.getMessage() for r in caplog.records)
    finally:
        sink.close()
        for collector in collectors:
            with contextlib.suppress(Exception):
                collector.close()
        first.kill()
        second.stop()


def test_agent_fails_over_while_exits_flow_and_loses_none(
    agent_ready: None,
    agents: Any,
    subscribers: Any,
    forkstorm: Path,
    tmp_path: Path,
) -> None:
    """The agent with PROCMON_MQTT_BROKERS naming two brokers, a consumer on each, 3,000 real
    exits at 1k/s; the active broker is frozen, its consumer drained, then SIGKILLed."""
    total = 3000
    host = unique_host()
    first = Mosquitto(tmp_path / "first")
    second = Mosquitto(tmp_path / "second")
    first.start()
    second.start()
    try:
        subs = [
            subscribers(name, b.url, topic_filter=f"procmon/{host}/exits")
            for name, b in (("first", first), ("second", second))
        ]
        env = {"PROCMON_MQTT_BROKERS": f"{first.url},{second.url}"}
        agent = agents("", host_id=host, own_pid_namespace=True, env=env).start()
        storm = Storm(forkstorm, tmp_path / "bin")
        storm.start(total, rate=1000, pid_namespace_of=agent.pid)

        def delivered() -> set[str]:
            return set(storm.children(subs[0].events())) | set(storm.children(subs[1].events()))

        wait_until(lambda: len(storm.children(subs[0].events())) >= 500, SLOW, "the stream")
        first.freeze()
        wait_until_steady(lambda: len(storm.children(subs[0].events())), what="the drain")
        first.kill()
        storm.wait()
        wait_until(lambda: len(delivered()) >= total, 300, f"all {total} exits")
        on_second = len(storm.children(subs[1].events()))
        print(f"failover: {total} exits, {on_second} through the second broker")
        assert len(delivered()) == total and on_second > 0
        assert "MQTT failover: publishing to " + second.url in agent.stderr()
    finally:
        first.kill()
        second.stop()

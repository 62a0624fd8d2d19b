"""The MQTT sink against scripted brokers: the hostile cases a real broker does not produce.
Each case ends with the line the issue asks for, or the behaviour (fallback, backoff, acks).
Real brokers: tests/system/test_mqtt_limits.py and the conformance suite."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.mqtt import sample_event
from helpers.scripted_broker import (
    ScriptedBroker,
    connack,
    connect_level,
    read_packet,
    serve_publishes,
)
from procmon.config import MqttConfig
from procmon.mqtt import connector
from procmon.mqtt.broker_url import BrokerOptions
from procmon.mqtt.check import broker_line
from procmon.mqtt.wire import (
    MAXIMUM_QOS,
    PROTOCOL_5,
    REASON_STRING,
    RETAIN_AVAILABLE,
    encode_connect,
    encode_properties,
    encode_varint,
)
from procmon.sinks import mqtt as sink_module
from procmon.sinks.mqtt import AgentIdentity, MqttSink
from procmon.spool import Spool

IDENTITY = AgentIdentity(host="h", version="test", probe="core", started_at="now")


def wait_for(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def make_sink(tmp_path: Path) -> Iterator[Callable[..., MqttSink]]:
    sinks: list[MqttSink] = []

    def make(url: str, **cfg: Any) -> MqttSink:
        # model_construct: keepalives and retries shorter than a real config allows.
        fields = {**MqttConfig().model_dump(), "broker": url, **cfg}
        sink = MqttSink(
            MqttConfig.model_construct(**fields), IDENTITY, Spool(tmp_path / "spool.db", 1000)
        )
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_a_311_only_broker_gets_one_fallback_and_one_warning(
    make_sink: Callable[..., MqttSink], caplog: pytest.LogCaptureFixture
) -> None:
    def script(sock: socket.socket, _n: int) -> None:
        _, body = read_packet(sock)
        if connect_level(body) == 5:
            sock.sendall(connack(4, 0x01))  # aedes: a 3.1.1 "unacceptable protocol version"
            return
        sock.sendall(connack(4))
        serve_publishes(sock)

    with ScriptedBroker(script) as broker:
        sink = make_sink(broker.url, protocol="5")
        sink.emit([sample_event(n) for n in range(5)])
        wait_for(lambda: sink.counters()["published"] == 5, what="5 events acknowledged")
        warning = f'broker {broker.url} speaks MQTT 3.1.1 only: using it; set mqtt.protocol = "3.1.1" to say so'  # noqa: E501
        assert lines(caplog, "speaks MQTT 3.1.1") == [warning]
        assert broker.connections == 2


def test_a_link_closed_before_connack_falls_back_too_and_names_the_protocol_when_both_fail(
    make_sink: Callable[..., MqttSink], caplog: pytest.LogCaptureFixture
) -> None:
    def script(sock: socket.socket, _n: int) -> None:
        read_packet(sock)  # RabbitMQ: an MQTT 5 CONNECT just closes the link; here both do

    with ScriptedBroker(script) as broker:
        make_sink(broker.url, protocol="5")
        wait_for(lambda: bool(lines(caplog, "MQTT 3.1.1:")), what="the error line")
        (line,) = lines(caplog, "MQTT 3.1.1:")
        assert "MQTT 5: the link was closed by the broker before any CONNACK" in line
        assert 'mqtt.protocol = "3.1.1"' in line


def test_no_connack_is_said_as_such(
    make_sink: Callable[..., MqttSink],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connector, "CONNECT_TIMEOUT_S", 0.5)

    def script(sock: socket.socket, _n: int) -> None:
        read_packet(sock)
        time.sleep(3)

    with ScriptedBroker(script) as broker:
        make_sink(broker.url, protocol="3.1.1")
        wait_for(lambda: bool(lines(caplog, "no CONNACK")), what="the no-CONNACK line")
        assert lines(caplog, "no CONNACK")[0].startswith(
            f"MQTT broker {broker.url}: no CONNACK within 0.5 s"
        )


def test_disconnect_reason_string_is_shown(
    make_sink: Callable[..., MqttSink], caplog: pytest.LogCaptureFixture
) -> None:
    def script(sock: socket.socket, n: int) -> None:
        read_packet(sock)
        sock.sendall(connack(5))
        if n == 0:
            body = b"\x95" + encode_properties([(REASON_STRING, "message too big for us")])
            sock.sendall(b"\xe0" + encode_varint(len(body)) + body)
            time.sleep(0.5)
            return
        serve_publishes(sock)

    with ScriptedBroker(script) as broker:
        make_sink(broker.url)
        wait_for(lambda: bool(lines(caplog, "connection lost")), what="the lost line")
        assert lines(caplog, "connection lost")[0] == (
            f"MQTT broker {broker.url}: connection lost (the broker disconnected: Packet too "
            'large ("message too big for us")); reconnecting'
        )


def test_a_broker_that_acknowledges_nothing_is_named(
    make_sink: Callable[..., MqttSink], caplog: pytest.LogCaptureFixture
) -> None:
    def script(sock: socket.socket, _n: int) -> None:
        read_packet(sock)
        sock.sendall(connack(5))
        serve_publishes(sock, ack=False)  # answers pings, never a PUBLISH

    with ScriptedBroker(script) as broker:
        sink = make_sink(broker.url, keepalive_s=1)
        sink.emit([sample_event(1)])
        wait_for(lambda: bool(lines(caplog, "nothing acknowledged")), what="the silent line")
        (line,) = lines(caplog, "nothing acknowledged")
        assert line.startswith(f"MQTT broker {broker.url}: connected but nothing acknowledged for")


@pytest.mark.parametrize("then", [b"", b"\xf0\x00", b"\x20\x03\x00\x00\x00"])
def test_accept_then_disconnect_or_garbage_backs_off_and_collapses_its_lines(
    make_sink: Callable[..., MqttSink],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    then: bytes,
) -> None:
    monkeypatch.setattr(sink_module, "FIRST_RETRY_S", 0.02)

    def script(sock: socket.socket, _n: int) -> None:
        read_packet(sock)
        # Accepted, then dropped at once (or sent AUTH, or a second CONNACK), forever.
        sock.sendall(connack(5) + then)
        time.sleep(0.01)

    with ScriptedBroker(script) as broker:
        make_sink(broker.url, reconnect_max_s=60)
        time.sleep(0.7)
        # Delays 0.02, 0.04, 0.08, 0.16, 0.32 s: about 5 connections, not one per 0.02 s (35).
        assert 2 <= broker.connections <= 8
    lost = lines(caplog, "connection lost")
    assert len(lost) == len(set(lost)) < broker.connections  # repeats counted, not logged


def test_the_brokers_own_publish_is_acknowledged_and_discarded(
    make_sink: Callable[..., MqttSink],
) -> None:
    answers: list[tuple[int, int]] = []

    def answer(sock: socket.socket) -> None:
        """The client's next packet that is not a PUBLISH (those are acknowledged)."""
        first, body = read_packet(sock)
        while first & 0xF0 == 0x30:
            topic_end = 2 + int.from_bytes(body[:2], "big")
            sock.sendall(b"\x40\x02" + body[topic_end : topic_end + 2])
            first, body = read_packet(sock)
        answers.append((first, int.from_bytes(body[:2], "big")))

    def script(sock: socket.socket, _n: int) -> None:
        read_packet(sock)
        sock.sendall(connack(4))
        # amqtt: retained messages right after CONNECT (QoS 1 and 2), then a PUBREL.
        sock.sendall(b"\x32\x07\x00\x01t\x00\x07ab" + b"\x34\x07\x00\x01t\x00\x09ab")
        answer(sock)
        answer(sock)
        sock.sendall(b"\x62\x02\x00\x09")
        answer(sock)
        serve_publishes(sock)

    with ScriptedBroker(script) as broker:
        sink = make_sink(broker.url, protocol="3.1.1")
        sink.emit([sample_event(n) for n in range(3)])
        wait_for(lambda: sink.counters()["published"] == 3, what="3 events acknowledged")
        wait_for(lambda: len(answers) == 3, what="the PUBCOMP")
        assert answers == [(0x40, 7), (0x50, 9), (0x70, 9)]
        assert sink.counters()["connects"] == 1 and broker.connections == 1


def test_maximum_packet_size_skips_and_counts_the_event_over_it(
    make_sink: Callable[..., MqttSink],
) -> None:
    sizes: list[int] = []

    def script(sock: socket.socket, _n: int) -> None:
        read_packet(sock)
        sock.sendall(connack(5, max_packet_size=1200))
        while True:
            first, body = read_packet(sock)
            sizes.append(1 + len(encode_varint(len(body))) + len(body))
            if first & 0xF0 == 0x30:
                topic_end = 2 + int.from_bytes(body[:2], "big")
                sock.sendall(b"\x40\x02" + body[topic_end : topic_end + 2])
            elif first == 0xC0:
                sock.sendall(b"\xd0\x00")

    with ScriptedBroker(script) as broker:
        sink = make_sink(broker.url)
        big = sample_event(2).model_copy(update={"args": ("x" * 2000,)})
        sink.emit([sample_event(1), big, sample_event(3)])
        wait_for(lambda: sink.counters()["spool_depth"] == 0, what="an empty spool")
        counters = sink.counters()
        assert counters["published"] == 2 and counters["dropped_oversize"] == 1
        stats = sink.publish_stats({"events_seen": 3, "long_counter_" * 20: 1})
        assert stats["dropped_oversize"] == 1
        wait_for(lambda: len(sizes) >= 4, what="the stats message")
        assert max(sizes) <= 1200 and broker.connections == 1


def test_maximum_qos_0_and_no_retain_are_honoured(make_sink: Callable[..., MqttSink]) -> None:
    firsts: list[int] = []

    def script(sock: socket.socket, _n: int) -> None:
        _, body = read_packet(sock)
        will_flags = body[7] & 0x3C  # will flag, will QoS, will retain
        if will_flags & 0x20:
            sock.sendall(connack(5, 0x9A))  # Retain not supported
            return
        if will_flags & 0x18:
            sock.sendall(connack(5, 0x9B))  # QoS not supported
            return
        sock.sendall(connack(5, props=[(MAXIMUM_QOS, 0), (RETAIN_AVAILABLE, 0)]))
        while True:
            first, _ = read_packet(sock)
            firsts.append(first)
            if first == 0xC0:
                sock.sendall(b"\xd0\x00")

    with ScriptedBroker(script) as broker:
        sink = make_sink(broker.url)
        sink.emit([sample_event(n) for n in range(3)])
        wait_for(lambda: sink.counters()["spool_depth"] == 0, what="an empty spool")
        wait_for(lambda: len(firsts) >= 4, what="status and 3 events")
        assert set(firsts) == {0x30}  # QoS 0, never retained
        assert sink.counters()["published"] == 3 and broker.connections == 3


# --- procmon check --broker: the same client, the same fallback ------------------------------


def test_check_broker_falls_back_to_311_and_says_so() -> None:
    def script(sock: socket.socket, _n: int) -> None:
        _, body = read_packet(sock)
        sock.sendall(connack(4, 0x01 if connect_level(body) == 5 else 0))
        with contextlib.suppress(ConnectionError):
            read_packet(sock)  # DISCONNECT

    with ScriptedBroker(script) as broker:
        line = broker_line(broker.url)
    assert line.ok and line.detail == 'connected (MQTT 3.1.1 only: set mqtt.protocol = "3.1.1")'


def test_check_broker_failures_are_one_line() -> None:
    def closes(sock: socket.socket, _n: int) -> None:
        read_packet(sock)

    def bad_password(sock: socket.socket, _n: int) -> None:
        _, body = read_packet(sock)
        sock.sendall(connack(connect_level(body), 0x86))

    with ScriptedBroker(closes) as broker:
        line = broker_line(broker.url)
    assert (
        not line.ok
        and "MQTT 5: the link was closed by the broker before any CONNACK" in line.detail
    )
    assert 'mqtt.protocol = "5"' in line.detail
    with ScriptedBroker(bad_password) as broker:
        line = broker_line(broker.url, username="u")
    assert (
        line.detail
        == "refused: Bad user name or password (check mqtt.username and the password file)"
    )
    assert "\n" not in line.detail


def test_connector_moves_to_the_next_broker_when_one_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def accepts(sock: socket.socket, _n: int) -> None:
        read_packet(sock)
        sock.sendall(connack(5))
        with contextlib.suppress(ConnectionError):
            read_packet(sock)

    def packet(protocol: int, _options: BrokerOptions, _will: connector.WillTerms) -> bytes:
        return encode_connect(protocol=protocol, client_id="c", keepalive=5)

    nobody = socket.socket()
    nobody.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    down = BrokerOptions.build(f"mqtt://127.0.0.1:{nobody.getsockname()[1]}")
    stop = os.eventfd(0)
    try:
        with ScriptedBroker(accepts) as broker:
            up = BrokerOptions.build(broker.url)
            chooser = connector.Connector([down, up], PROTOCOL_5, stop, logging.getLogger("t"))
            connected = chooser.connect(packet)
            assert connected is not None and chooser.current == 1
            connected[0].close()
            # The one in use is tried first from now on: no second failover line.
            again = chooser.connect(packet)
            assert again is not None
            again[0].close()
    finally:
        os.close(stop)
        nobody.close()
    said = [r.getMessage() for r in caplog.records]
    assert f"MQTT failover: publishing to {broker.url} ({down.url} unreachable)" in said
    assert sum("failover" in x for x in said) == 1
    assert any("connection refused" in x for x in said)

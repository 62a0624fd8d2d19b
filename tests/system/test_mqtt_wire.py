"""The MQTT sink's wire codec (procmon.mqtt.wire) and connection helpers (procmon.mqtt.conn)
against a real mosquitto (byte for byte against paho and the decoder alone:
tests/unit/test_mqtt_wire.py)."""

from __future__ import annotations

import os
import select
import socket
from typing import Any

import pytest

from helpers.mosquitto import Mosquitto
from helpers.mqtt import Collector, wait_until
from helpers.wire import EXIT_PROPS, flat
from procmon.mqtt import wire
from procmon.mqtt.broker_url import parse_broker_url
from procmon.mqtt.conn import open_link, refused
from procmon.mqtt.wire import (
    PROTOCOL_5,
    PROTOCOL_311,
    ConnAck,
    Decoder,
    PingResp,
    PubAck,
    PublishEncoder,
)


def read_packets(sock: socket.socket, decoder: Decoder, count: int) -> list[Any]:
    got: list[Any] = []
    while len(flat(got)) < count:
        data = sock.recv(65536)
        assert data, "the broker closed the connection"
        got += decoder.feed(data)
    return got


@pytest.mark.parametrize("protocol", [PROTOCOL_5, PROTOCOL_311])
def test_a_broker_understands_the_codec(broker: Mosquitto, protocol: int) -> None:
    topic = f"wire/{protocol}"
    collector = Collector(broker, [f"{topic}/#"])
    props = EXIT_PROPS if protocol == PROTOCOL_5 else []
    encoder = PublishEncoder(f"{topic}/exits", protocol=protocol, properties=props)
    with socket.create_connection(("127.0.0.1", broker.port), timeout=30) as sock:
        sock.sendall(
            wire.encode_connect(protocol=protocol, client_id=f"wire-{protocol}", keepalive=10)
        )
        decoder = Decoder(protocol)
        (connack,) = read_packets(sock, decoder, 1)
        assert connack == ConnAck(False, 0, connack.properties)
        batch = bytearray()
        for packet_id in range(1, 501):  # one write for the whole batch
            encoder.encode_into(batch, packet_id, b'{"n": %d}' % packet_id)
        batch += wire.encode_pingreq()
        sock.sendall(batch)
        replies = flat(read_packets(sock, decoder, 501))
        assert sorted(p.packet_id for p in replies if isinstance(p, PubAck)) == list(range(1, 501))
        assert PingResp() in replies
        sock.sendall(wire.encode_disconnect(protocol))
        assert sock.recv(10) == b""  # the broker closes after DISCONNECT
    wait_until(lambda: len(collector.on(f"{topic}/exits")) == 500, what="500 messages")
    messages = collector.on(f"{topic}/exits")
    assert [m.json()["n"] for m in messages] == list(range(1, 501))
    if protocol == PROTOCOL_5:
        assert messages[0].properties.ContentType == "application/json"
        assert messages[0].user_properties() == {"schema": "procmon.exit/v1"}
    collector.close()


def test_open_link_shakes_hands_and_the_link_reads_replies(broker: Mosquitto) -> None:
    stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        packet = wire.encode_connect(protocol=PROTOCOL_5, client_id="link-test", keepalive=10)
        link, connack = open_link(parse_broker_url(broker.url), None, packet, PROTOCOL_5, stop)
        try:
            assert not refused(connack)
            link.out += wire.encode_pingreq()
            assert link.flush() and not link.out
            poller = select.poll()
            poller.register(link.sock, select.POLLIN)
            assert poller.poll(30_000)
            assert link.read() == [PingResp()]
            assert link.read() is None  # nothing more: the socket does not block
        finally:
            link.close()
    finally:
        os.close(stop)

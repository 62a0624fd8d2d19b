"""The publisher's sans-IO session (procmon.mqtt.session): CONNACK limits, packet ids, the
in-flight window, rewind on loss and the broker's own PUBLISH, with no socket or thread."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from procmon.config import ConfigError, load_config
from procmon.mqtt import wire
from procmon.mqtt.broker_url import BrokerConfigError, RepeatedLines, parse_broker_url
from procmon.mqtt.session import MAX_WINDOW, Limits, Session
from procmon.mqtt.wire import (
    PROTOCOL_5,
    ConnAck,
    Decoder,
    Disconnect,
    PingResp,
    PubAck,
    PubAcks,
    Publish,
    PublishEncoder,
    PubRel,
)

ENCODER = PublishEncoder("procmon/h/exits", protocol=PROTOCOL_5)


def connack(**props: int | str) -> ConnAck:
    ids = {
        "receive_maximum": wire.RECEIVE_MAXIMUM,
        "maximum_packet_size": wire.MAXIMUM_PACKET_SIZE,
        "maximum_qos": wire.MAXIMUM_QOS,
        "retain_available": wire.RETAIN_AVAILABLE,
        "server_keepalive": wire.SERVER_KEEP_ALIVE,
        "assigned_client_id": wire.ASSIGNED_CLIENT_IDENTIFIER,
        "topic_alias_maximum": wire.TOPIC_ALIAS_MAXIMUM,
    }
    return ConnAck(False, 0, {ids[name]: value for name, value in props.items()})


def rows(first: int, n: int, size: int = 10) -> list[tuple[int, bytes]]:
    return [(row, b"x" * size) for row in range(first, first + n)]


def test_limits_come_from_the_connack_and_default_to_none() -> None:
    assert Limits.from_connack(ConnAck(False, 0)) == Limits()
    limits = Limits.from_connack(
        connack(
            receive_maximum=10,
            maximum_packet_size=128,
            maximum_qos=0,
            retain_available=0,
            server_keepalive=7,
            assigned_client_id="auto-1",
            topic_alias_maximum=5,
        )
    )
    assert limits == Limits(10, 128, 0, False, 7, "auto-1", 5)


def test_the_window_is_the_smaller_of_ours_and_receive_maximum() -> None:
    session: Session[str] = Session(256)
    session.start(connack(receive_maximum=20))
    assert session.window == 20 and session.room() == 20
    session.start(ConnAck(False, 0))
    assert session.window == 256
    assert Session[str](100_000).max_window == MAX_WINDOW


def test_packet_ids_wrap_and_skip_those_in_flight() -> None:
    session: Session[str] = Session(10)
    session.last_packet_id = 0xFFFE
    out = bytearray()
    session.assign(rows(1, 2), ENCODER.encode_into, out, 1 << 30, 0.0)
    assert session.inflight == {0xFFFF: 1, 1: 2}
    assert session.send_control("stats", 0.0) == 2
    session.last_packet_id = 0
    assert session.next_packet_id() == 3  # 1 and 2 are in flight
    assert Decoder(PROTOCOL_5).feed(bytes(out)) == [Publish(1, 0xFFFF), Publish(1, 1)]


def test_acks_move_rows_to_acked_and_controls_to_done() -> None:
    session: Session[str] = Session(10)
    session.assign(rows(1, 3), ENCODER.encode_into, bytearray(), 1 << 30, 0.0)
    control = session.send_control("status", 0.0)
    handled = session.handle([PubAcks((1, 2, control)), PubAck(3), PingResp()], 5.0)
    assert handled.acked == 3 and session.acked == [1, 2, 3] and handled.done == ["status"]
    assert not session.inflight and session.last_ack_at == 5.0
    assert session.waiting_for_ack(9.0) == 0.0


def test_oversize_rows_are_not_sent_and_come_back() -> None:
    session: Session[str] = Session(10)
    out = bytearray()
    oversize = session.assign(
        [(1, b"a" * 10), (2, b"b" * 500), (3, b"c")], ENCODER.encode_into, out, 100, 0.0
    )
    assert oversize == [2] and sorted(session.inflight.values()) == [1, 3]
    assert b"b" * 500 not in out


def test_qos0_rows_count_as_delivered_when_sent() -> None:
    session: Session[str] = Session(10)
    assert session.sent_unacknowledged([(1, b"a"), (2, b"b" * 50)], 10) == [2]
    assert session.acked == [1]


def test_a_lost_connection_rewinds_to_the_first_row_in_flight() -> None:
    session: Session[str] = Session(10)
    session.assign(rows(5, 4), ENCODER.encode_into, bytearray(), 1 << 30, 0.0)
    session.advance(8)
    session.send_control("status", 0.0)
    session.handle([PubAck(1)], 1.0)  # row 5 acknowledged
    assert session.lost() == ["status"]
    assert session.cursor == 5 and not session.inflight and not session.control_ids


def test_a_rejection_rewinds_after_a_pause_that_grows() -> None:
    session: Session[str] = Session(10)
    session.assign(rows(1, 3), ENCODER.encode_into, bytearray(), 1 << 30, 0.0)
    session.advance(3)
    handled = session.handle([PubAck(2, 0x87)], 10.0)
    assert handled.rejected == [(2, 0x87)]
    session.rejected(2, 10.0, max_delay_s=30)
    assert not session.ready_to_resume(10.5)
    assert session.ready_to_resume(11.0)
    assert session.cursor == 1 and session.skip_rows == {1, 3}
    session.rejected(2, 11.0, max_delay_s=30)
    assert session.resume_at == 13.0  # 2 s: the pause doubled


def test_the_brokers_publish_is_acknowledged_per_qos_and_discarded() -> None:
    session: Session[str] = Session(10)
    qos0 = b"\x30\x05\x00\x01tab"
    qos1 = b"\x32\x07\x00\x01t\x00\x07ab"
    qos2 = b"\x34\x07\x00\x01t\x00\x09ab"
    pubrel = b"\x62\x02\x00\x09"
    packets = Decoder(PROTOCOL_5).feed(qos0 + qos1 + qos2 + pubrel)
    assert packets == [Publish(0), Publish(1, 7), Publish(2, 9), PubRel(9)]
    handled = session.handle(packets, 0.0)
    assert bytes(handled.replies) == b"\x40\x02\x00\x07" + b"\x50\x02\x00\x09" + b"\x70\x02\x00\x09"
    assert handled.unexpected is None and handled.ended is None and not session.incoming_qos2


def test_disconnect_ends_and_unexpected_packets_are_named() -> None:
    session: Session[str] = Session(10)
    goodbye = Disconnect(0x95, {wire.REASON_STRING: "too big"})
    assert session.handle([goodbye, PubAck(1)], 0.0).ended == goodbye
    assert session.handle([ConnAck(False, 0)], 0.0).unexpected == "ConnAck"


def test_waiting_for_ack_counts_from_the_first_unanswered_message() -> None:
    session: Session[str] = Session(10)
    session.assign(rows(1, 2), ENCODER.encode_into, bytearray(), 1 << 30, 100.0)
    assert session.waiting_for_ack(130.0) == 30.0
    session.handle([PubAck(1)], 131.0)  # progress: counts again from here
    assert session.waiting_for_ack(135.0) == 4.0


def test_packet_size_and_the_largest_payload_that_fits() -> None:
    for limit in (40, 127, 128, 129, 130, 16384, 16386, 1 << 20):
        best = ENCODER.max_payload(limit)
        assert ENCODER.packet_size(best) <= limit < ENCODER.packet_size(best + 1)
        assert len(ENCODER.encode(1, b"x" * best)) == ENCODER.packet_size(best)
    assert ENCODER.max_payload(10) == -1


def test_repeated_lines_are_counted_then_said_with_their_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    lines = RepeatedLines(logging.getLogger("procmon.test"), 60.0, clock=lambda: now[0])
    for second in range(61):
        now[0] = float(second)
        lines.log(logging.WARNING, "lost")
        lines.log(logging.WARNING, "other")
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "lost",
        "other",
        "lost (repeated 59 times in 60 s)",
        "other (repeated 59 times in 60 s)",
    ]


def test_broker_urls_take_ipv6_in_brackets_and_refuse_the_rest_in_one_line() -> None:
    assert str(parse_broker_url("mqtt://[::1]:1884")) == "mqtt://[::1]:1884"
    assert parse_broker_url("mqtts://[::1]").host == "::1"
    assert parse_broker_url("mqtts://[::1]").port == 8883
    for bad, said in [
        ("mqtt://::1", "IPv6 address goes in brackets"),
        ("mqtt://[::1", "Invalid IPv6 URL"),
        ("mqtt://[nope]:1", "broker"),
        ("mqtt://u:p@host", "credentials do not belong in the URL"),
        ("mqtt://host/x", "nothing may follow"),
        ("mqtt://host:0", "port 0"),
    ]:
        with pytest.raises(BrokerConfigError, match=re.escape(said)) as err:
            parse_broker_url(bad)
        assert "\n" not in str(err.value)


def test_mqtt_brokers_from_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[mqtt]\nbrokers = ["mqtt://a:1883", "mqtt://[::1]:1884"]\n')
    assert load_config(path).mqtt.broker_urls == ("mqtt://a:1883", "mqtt://[::1]:1884")
    monkeypatch.setenv("PROCMON_MQTT_BROKERS", "mqtt://b:1, mqtt://c:2")
    assert load_config(path).mqtt.broker_urls == ("mqtt://b:1", "mqtt://c:2")
    # A flag names the one broker: it wins over the list.
    flag = load_config(path, {"mqtt": {"broker": "mqtt://d:3", "brokers": ()}})
    assert flag.mqtt.broker_urls == ("mqtt://d:3",)
    monkeypatch.setenv("PROCMON_MQTT_BROKERS", "mqtt://b:1,mqtt://b:1")
    with pytest.raises(ConfigError, match=r"mqtt\.brokers: .*listed twice"):
        load_config(path)
    monkeypatch.setenv("PROCMON_MQTT_BROKERS", "mqtt://b:1,http://x")
    with pytest.raises(ConfigError, match=r"mqtt\.brokers"):
        load_config(path)
    monkeypatch.delenv("PROCMON_MQTT_BROKERS")
    path.write_text('[mqtt]\nbroker = "mqtt://z:1"\nbrokers = ["mqtt://a:1883"]\n')
    with pytest.raises(ConfigError, match=r"not among mqtt\.brokers"):
        load_config(path)

"""The MQTT sink's wire codec (procmon.mqtt.wire) and connection helpers (procmon.mqtt.conn).

Encoded packets are checked byte for byte against what paho encodes for the same message, and
decoded by paho's own decoders; the incremental decoder is fed the same stream whole, byte by
byte and in random pieces. The codec spoken to a real mosquitto: tests/system/test_mqtt_wire.py.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode

from helpers.mosquitto import free_port
from helpers.wire import EXIT_PROPS, flat
from procmon.mqtt import wire
from procmon.mqtt.broker_url import describe_connect_error, describe_refusal, parse_broker_url
from procmon.mqtt.conn import (
    Backoff,
    Interrupted,
    connack_reason,
    open_link,
    reason,
)
from procmon.mqtt.wire import (
    PROTOCOL_5,
    PROTOCOL_311,
    ConnAck,
    Decoder,
    Disconnect,
    PingResp,
    ProtocolError,
    PubAck,
    PubAcks,
    PublishEncoder,
    Will,
)

PAHO_PROTOCOL = {PROTOCOL_5: mqtt.MQTTv5, PROTOCOL_311: mqtt.MQTTv311}


def paho_publish_properties(expiry: int = 3600) -> Any:
    """The properties the paho-based sink attached to each event."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = expiry
    props.ContentType = "application/json"
    props.UserProperty = [("schema", "procmon.exit/v1")]
    return props


class _NoSocket:
    def close(self) -> None:
        pass


class PahoEncoder:
    """What a paho client would put on the wire: its _packet_queue captures the packets."""

    def __init__(self, protocol: int, client_id: str = "procmon-h") -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=PAHO_PROTOCOL[protocol],
            clean_session=None if protocol == PROTOCOL_5 else True,
        )
        self.packets: list[bytes] = []
        self.client._sock = _NoSocket()  # type: ignore[assignment]  # "connected": queue packets

        def capture(command: int, packet: bytes, *args: Any, **kwargs: Any) -> int:
            self.packets.append(bytes(packet))
            return 0

        self.client._packet_queue = capture  # type: ignore[assignment,method-assign]

    def last(self) -> bytes:
        return self.packets[-1]


def split_first(data: bytes) -> tuple[int, bytes, bytes]:
    """(first byte, body, what follows) of the first packet in data."""
    length, shift, pos = 0, 0, 1
    while True:
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return data[0], data[pos : pos + length], data[pos + length :]


def split(packet: bytes) -> tuple[int, bytes]:
    """(first byte, body) of one encoded packet."""
    first, body, rest = split_first(packet)
    assert rest == b"", "remaining length does not match the body"
    return first, body


# --- encoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [0, 1, 127, 128, 321, 16383, 16384, 2_097_151, 2_097_152, wire.MAX_VARINT]
)
def test_varint_matches_paho(value: int) -> None:
    assert wire.encode_varint(value) == VariableByteIntegers.encode(value)  # type: ignore[no-untyped-call]


def test_varint_out_of_range() -> None:
    for bad in (-1, wire.MAX_VARINT + 1):
        with pytest.raises(ValueError):
            wire.encode_varint(bad)


def test_utf8_string_limits() -> None:
    assert wire.encode_utf8("ab") == b"\x00\x02ab"
    assert wire.encode_utf8("é") == b"\x00\x02\xc3\xa9"
    with pytest.raises(ValueError):
        wire.encode_utf8("x" * 65536)


def test_properties_match_paho() -> None:
    assert wire.encode_properties(EXIT_PROPS) == paho_publish_properties().pack()
    assert wire.encode_properties([]) == b"\x00"


@pytest.mark.parametrize("protocol", [PROTOCOL_5, PROTOCOL_311])
@pytest.mark.parametrize("size", [0, 10, 700, 20_000, 3_000_000])
@pytest.mark.parametrize("retain", [False, True])
def test_publish_is_byte_for_byte_paho_and_decodes_with_paho(
    protocol: int, size: int, retain: bool
) -> None:
    topic = "procmon/host-1/exits"
    payload = bytes(random.Random(size).getrandbits(8) for _ in range(min(size, 4096)))
    payload = (payload * (size // max(1, len(payload)) + 1))[:size]
    props = EXIT_PROPS if protocol == PROTOCOL_5 else []
    ours = wire.encode_publish(
        topic, payload, 4242, protocol=protocol, retain=retain, properties=props
    )
    paho = PahoEncoder(protocol)
    paho.client._send_publish(
        4242,
        topic.encode(),
        payload,
        qos=1,
        retain=retain,
        properties=paho_publish_properties() if protocol == PROTOCOL_5 else None,
    )
    assert ours == paho.last()

    first, body = split(ours)
    decoded = _packet.decode_publish(first, body, MQTTProtocolVersion(PAHO_PROTOCOL[protocol]))
    assert decoded.topic == topic.encode()
    assert decoded.payload == payload
    assert (decoded.qos, decoded.mid, decoded.retain, decoded.dup) == (1, 4242, retain, False)
    if protocol == PROTOCOL_5:
        got: Any = decoded.properties  # paho's Properties: the names are set as attributes
        assert got.ContentType == "application/json"
        assert got.PayloadFormatIndicator == 1
        assert got.MessageExpiryInterval == 3600
        assert got.UserProperty == [("schema", "procmon.exit/v1")]


def test_publish_encoder_batches_into_one_buffer() -> None:
    encoder = PublishEncoder("t/x", protocol=PROTOCOL_5, properties=EXIT_PROPS)
    out = bytearray()
    messages = [(i + 1, f'{{"n":{i}}}'.encode() * (i % 50)) for i in range(200)]
    for packet_id, payload in messages:
        encoder.encode_into(out, packet_id, payload)
    decoded = []
    rest = bytes(out)
    while rest:
        first, body, rest = split_first(rest)
        packet = _packet.decode_publish(first, body, MQTTProtocolVersion.MQTTv5)
        decoded.append((packet.mid, packet.payload))
    assert decoded == messages


def test_publish_flags_and_refusals() -> None:
    first, _ = split(wire.encode_publish("a/b", b"x", 7, protocol=PROTOCOL_311, dup=True))
    assert first == 0x3A  # PUBLISH, DUP, QoS 1
    first, body = split(wire.encode_publish("a/b", b"x", 7, protocol=PROTOCOL_311, qos=0))
    assert first == 0x30 and body == b"\x00\x03a/bx"  # QoS 0: no packet id
    for topic in ("a/+", "a/#", ""):
        with pytest.raises(ValueError):
            PublishEncoder(topic, protocol=PROTOCOL_5)
    with pytest.raises(ValueError):
        PublishEncoder("a", protocol=PROTOCOL_311, properties=EXIT_PROPS)
    with pytest.raises(ValueError):
        PublishEncoder("a", protocol=PROTOCOL_5, qos=2)


@pytest.mark.parametrize("protocol", [PROTOCOL_5, PROTOCOL_311])
@pytest.mark.parametrize("login", [None, ("agent", None), ("agent", "s3cret")])
@pytest.mark.parametrize("with_will", [True, False])
def test_connect_is_byte_for_byte_paho(
    protocol: int, login: tuple[str, str | None] | None, with_will: bool
) -> None:
    v5 = protocol == PROTOCOL_5
    will_payload = b'{"state": "offline", "reason": "connection lost"}'
    will_props: list[tuple[int, Any]] = []
    paho = PahoEncoder(protocol, client_id="procmon-host-1")
    if with_will:
        paho_will_props = None
        if v5:
            will_props = [
                (wire.CONTENT_TYPE, "application/json"),
                (wire.USER_PROPERTY, ("schema", "procmon.status/v1")),
            ]
            paho_will_props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            paho_will_props.ContentType = "application/json"
            paho_will_props.UserProperty = [("schema", "procmon.status/v1")]
        paho.client.will_set(
            "procmon/host-1/status", will_payload, qos=1, retain=True, properties=paho_will_props
        )
    if login:
        paho.client.username_pw_set(*login)
    paho.client._send_connect(30)
    ours = wire.encode_connect(
        protocol=protocol,
        client_id="procmon-host-1",
        keepalive=30,
        clean_start=True,
        username=login[0] if login else None,
        password=login[1] if login else None,
        will=Will("procmon/host-1/status", will_payload, properties=will_props)
        if with_will
        else None,
    )
    assert ours == paho.last()


def test_connect_refuses_a_password_without_a_user() -> None:
    with pytest.raises(ValueError):
        wire.encode_connect(protocol=PROTOCOL_5, client_id="x", keepalive=5, password="p")


def test_pingreq_and_disconnect() -> None:
    assert wire.encode_pingreq() == b"\xc0\x00"
    paho = PahoEncoder(PROTOCOL_311)
    paho.client._send_pingreq()
    assert wire.encode_pingreq() == paho.last()
    assert wire.encode_disconnect(PROTOCOL_311) == b"\xe0\x00"
    assert wire.encode_disconnect(PROTOCOL_5) == b"\xe0\x00"  # normal: the will is dropped
    assert wire.encode_disconnect(PROTOCOL_5, 0x04) == b"\xe0\x01\x04"  # with the will


# --- decoding ----------------------------------------------------------------------------------


def paho_props(packet_type: int, **values: Any) -> bytes:
    props = Properties(packet_type)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    packed: bytes = props.pack()  # type: ignore[no-untyped-call]
    return packed


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + wire.encode_varint(len(body)) + body


def paho_puback(packet_id: int) -> bytes:
    paho = PahoEncoder(PROTOCOL_5)
    paho.client._send_puback(packet_id)
    return paho.last()


def test_connack_v5_with_properties() -> None:
    props = paho_props(
        PacketTypes.CONNACK,
        ReceiveMaximum=20,
        ServerKeepAlive=15,
        AssignedClientIdentifier="auto-1",
        MaximumPacketSize=1 << 20,
        UserProperty=[("a", "1"), ("b", "2")],
        ReasonString="fine",
    )
    (connack,) = Decoder(PROTOCOL_5).feed(packet(0x20, b"\x01\x00" + props))
    assert isinstance(connack, ConnAck)
    assert connack.session_present and connack.reason_code == 0
    assert connack.properties[wire.RECEIVE_MAXIMUM] == 20
    assert connack.properties[wire.SERVER_KEEP_ALIVE] == 15
    assert connack.properties[wire.ASSIGNED_CLIENT_IDENTIFIER] == "auto-1"
    assert connack.properties[wire.MAXIMUM_PACKET_SIZE] == 1 << 20
    assert connack.properties[wire.USER_PROPERTY] == [("a", "1"), ("b", "2")]
    assert connack.properties[wire.REASON_STRING] == "fine"


def test_connack_refusals_read_as_before() -> None:
    """The words of a refusal are paho's, as the paho-based sink logged them."""
    (v5,) = Decoder(PROTOCOL_5).feed(packet(0x20, b"\x00\x86\x00"))
    assert isinstance(v5, ConnAck)
    assert describe_refusal(connack_reason(v5, PROTOCOL_5)) == describe_refusal(
        ReasonCode(PacketTypes.CONNACK, identifier=0x86)
    )
    assert "check mqtt.username and the password file" in describe_refusal(
        connack_reason(v5, PROTOCOL_5)
    )
    for code in range(1, 7):
        (v3,) = Decoder(PROTOCOL_311).feed(packet(0x20, bytes((0, code))))
        assert isinstance(v3, ConnAck) and v3.reason_code == code
        assert describe_refusal(connack_reason(v3, PROTOCOL_311)) == describe_refusal(
            _packet.convert_connack_rc_to_reason_code(code)  # type: ignore[arg-type]
        )
    assert str(reason(PacketTypes.PUBACK, 0x87)) == "Not authorized"
    assert str(reason(PacketTypes.PUBACK, 0x55)) == "reason code 0x55"


def test_puback_forms() -> None:
    reason_string = paho_props(PacketTypes.PUBACK, ReasonString="quota")
    stream = (
        paho_puback(1)
        + packet(0x40, b"\x00\x02\x10")  # v5: no matching subscribers (a success)
        + packet(0x40, b"\x00\x03\x97" + reason_string)  # v5: quota exceeded, with a reason
        + packet(0x40, b"\xff\xff\x00\x00")  # v5: reason 0 and an empty property list
        + b"\xd0\x00"  # PINGRESP
    )
    assert Decoder(PROTOCOL_5).feed(stream) == [
        PubAck(1),
        PubAck(2, 0x10),
        PubAck(3, 0x97),
        PubAck(0xFFFF, 0),
        PingResp(),
    ]
    assert Decoder(PROTOCOL_311).feed(paho_puback(513)) == [PubAck(513)]


def test_disconnect_from_a_v5_broker() -> None:
    props = paho_props(PacketTypes.DISCONNECT, ReasonString="taken over")
    (disconnect,) = Decoder(PROTOCOL_5).feed(packet(0xE0, b"\x8e" + props))
    assert disconnect == Disconnect(0x8E, {wire.REASON_STRING: "taken over"})
    assert Decoder(PROTOCOL_5).feed(b"\xe0\x00") == [Disconnect(0)]
    decoded = _packet.decode_disconnect(0xE0, b"\x8e" + props, MQTTProtocolVersion.MQTTv5)
    assert decoded.reason is not None and decoded.reason.value == 0x8E


def mixed_stream(n: int) -> tuple[bytes, list[Any]]:
    rnd = random.Random(n)
    stream = bytearray()
    expected: list[Any] = []
    for i in range(n):
        kind = rnd.randrange(4)
        if kind == 0:
            stream += paho_puback(i + 1)
            expected.append(PubAck(i + 1))
        elif kind == 1:
            stream += packet(0x40, (i + 1).to_bytes(2, "big") + b"\x87")
            expected.append(PubAck(i + 1, 0x87))
        elif kind == 2:
            stream += b"\xd0\x00"
            expected.append(PingResp())
        else:  # a reason string long enough for a 2-byte remaining length
            text = "r" * rnd.randrange(100, 300)
            props = paho_props(PacketTypes.PUBACK, ReasonString=text)
            stream += packet(0x40, (i + 1).to_bytes(2, "big") + b"\x83" + props)
            expected.append(PubAck(i + 1, 0x83))
    return bytes(stream), expected


def test_decoder_handles_partial_reads() -> None:
    stream, expected = mixed_stream(300)
    assert flat(Decoder(PROTOCOL_5).feed(stream)) == expected

    decoder = Decoder(PROTOCOL_5)
    one_by_one: list[Any] = []
    for i in range(len(stream)):
        one_by_one += decoder.feed(stream[i : i + 1])
    assert one_by_one == expected
    assert decoder.pending == 0

    rnd = random.Random(7)
    for _ in range(20):
        decoder = Decoder(PROTOCOL_5)
        pieces: list[Any] = []
        pos = 0
        while pos < len(stream):
            step = rnd.randrange(1, 40)
            pieces += decoder.feed(stream[pos : pos + step])
            pos += step
        assert flat(pieces) == expected


@pytest.mark.parametrize("protocol", [PROTOCOL_5, PROTOCOL_311])
def test_a_read_of_plain_pubacks_is_one_pubacks(protocol: int) -> None:
    ids = [1, 2, 65535, 7, *range(100, 1100)]
    stream = b"".join(paho_puback(i) for i in ids)
    assert Decoder(protocol).feed(stream) == [PubAcks(tuple(ids))]
    # Reason 0x10 (nobody subscribed) is a success too; mosquitto sends it as a 5-byte PUBACK.
    with_reason = b"".join(packet(0x40, i.to_bytes(2, "big") + b"\x10") for i in ids)
    assert Decoder(PROTOCOL_5).feed(with_reason) == [PubAcks(tuple(ids))]
    # A tail: a whole run, then the rest one by one, then what is still incomplete.
    decoder = Decoder(protocol)
    assert decoder.feed(stream + b"\xd0\x00" + paho_puback(9) + b"\x40") == [
        PubAcks(tuple(ids)),
        PingResp(),
        PubAck(9),
    ]
    assert decoder.pending == 1


def test_a_rejection_among_pubacks_is_not_hidden_in_a_run() -> None:
    stream = b"".join(packet(0x40, i.to_bytes(2, "big") + b"\x10") for i in range(1, 10))
    stream += packet(0x40, b"\x00\x0a\x87") + packet(0x40, b"\x00\x0b\x00")
    packets = Decoder(PROTOCOL_5).feed(stream)
    assert PubAck(10, 0x87) in packets
    assert [p.packet_id for p in flat(packets)] == list(range(1, 12))


def test_decoder_keeps_an_incomplete_tail() -> None:
    decoder = Decoder(PROTOCOL_5)
    assert decoder.feed(paho_puback(9) + b"\x40\x02\x00") == [PubAck(9)]
    assert decoder.pending == 3
    assert decoder.feed(b"\x0a") == [PubAck(10)]
    assert decoder.pending == 0


@pytest.mark.parametrize(
    "data",
    [
        b"\x36\x05\x00\x01a\x00\x01",  # a PUBLISH with QoS 3
        b"\x32\x04\x00\x01a\x00",  # a QoS 1 PUBLISH without a whole packet id
        b"\x90\x03\x00\x01\x00",  # SUBACK
        b"\xf0\x00",  # AUTH
        b"\x40\xff\xff\xff\xff\x01",  # remaining length of five bytes
        b"\x40\x01\x00",  # PUBACK without a whole packet id
        b"\xd0\x01\x00",  # PINGRESP with a body
        b"\x20\x02\x02\x00",  # CONNACK with reserved flags set
        b"\x40\x05\x00\x01\x00\x05\x00",  # properties longer than the packet
        b"\x40\x06\x00\x01\x00\x02\x7f\x00",  # an unknown property
    ],
)
def test_decoder_refuses_what_a_publisher_cannot_get(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        Decoder(PROTOCOL_5).feed(data)


def test_decoder_refuses_v5_packets_on_a_311_link_and_huge_packets() -> None:
    with pytest.raises(ProtocolError):
        Decoder(PROTOCOL_311).feed(b"\xe0\x00")  # no DISCONNECT from a 3.1.1 broker
    with pytest.raises(ProtocolError):
        Decoder(PROTOCOL_311).feed(b"\x40\x03\x00\x01\x00")
    with pytest.raises(ProtocolError):
        Decoder(PROTOCOL_5, max_packet=1000).feed(b"\x40" + wire.encode_varint(1001))


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(1.0, 5.0)
    assert [backoff.next() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 1.0


# --- connection failures, without a broker ----------------------------------------------------


def test_open_link_failures_are_the_errors_the_reporter_words() -> None:
    stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    packet = wire.encode_connect(protocol=PROTOCOL_5, client_id="x", keepalive=10)
    try:
        nobody = parse_broker_url(f"mqtt://127.0.0.1:{free_port()}")
        with pytest.raises(ConnectionRefusedError) as refusal:
            open_link(nobody, None, packet, PROTOCOL_5, stop)
        assert (
            describe_connect_error(refusal.value) == "connection refused (is the broker running?)"
        )
        with socket.socket() as silent:  # accepts connections (backlog), never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            url = parse_broker_url(f"mqtt://127.0.0.1:{silent.getsockname()[1]}")
            with pytest.raises(TimeoutError) as timeout:
                open_link(url, None, packet, PROTOCOL_5, stop, timeout=0.5)
            assert describe_connect_error(timeout.value) == "no CONNACK within 0.5 s"
            threading.Timer(0.3, os.eventfd_write, (stop, 1)).start()
            with pytest.raises(Interrupted):  # close() does not wait for the timeout
                open_link(url, None, packet, PROTOCOL_5, stop, timeout=60)
    finally:
        os.close(stop)

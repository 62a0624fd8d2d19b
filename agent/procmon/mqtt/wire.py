"""The MQTT 3.1.1 and 5 packets a QoS 1 publisher needs, as pure functions on bytes.

Encoders for CONNECT, PUBLISH, PINGREQ, DISCONNECT and the acknowledgements of a PUBLISH the
broker sends unasked; an incremental decoder for what a broker sends a client that never
subscribes. No sockets, clocks or locks here.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

PROTOCOL_311 = 4  # the protocol level byte of CONNECT
PROTOCOL_5 = 5

# Fixed-header first bytes (packet type in the high nibble; flags as the spec requires).
CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
PUBREC = 0x50
PUBREL = 0x62  # flags 0010, as the spec requires
PUBCOMP = 0x70
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0

PINGREQ_PACKET = b"\xc0\x00"

# MQTT 5 property identifiers used by name here (the decoder knows every one, see _PROPERTY_TYPES).
PAYLOAD_FORMAT_INDICATOR = 0x01
MESSAGE_EXPIRY_INTERVAL = 0x02
CONTENT_TYPE = 0x03
SESSION_EXPIRY_INTERVAL = 0x11
ASSIGNED_CLIENT_IDENTIFIER = 0x12
SERVER_KEEP_ALIVE = 0x13
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27

# Value encodings of MQTT 5 properties (spec 2.2.2.2).
_BYTE, _TWO, _FOUR, _VARINT, _BINARY, _UTF8, _PAIR = range(7)
_PROPERTY_TYPES: dict[int, int] = {
    0x01: _BYTE,  # payload format indicator
    0x02: _FOUR,  # message expiry interval
    0x03: _UTF8,  # content type
    0x08: _UTF8,  # response topic
    0x09: _BINARY,  # correlation data
    0x0B: _VARINT,  # subscription identifier
    0x11: _FOUR,  # session expiry interval
    0x12: _UTF8,  # assigned client identifier
    0x13: _TWO,  # server keep alive
    0x15: _UTF8,  # authentication method
    0x16: _BINARY,  # authentication data
    0x17: _BYTE,  # request problem information
    0x18: _FOUR,  # will delay interval
    0x19: _BYTE,  # request response information
    0x1A: _UTF8,  # response information
    0x1C: _UTF8,  # server reference
    0x1F: _UTF8,  # reason string
    0x21: _TWO,  # receive maximum
    0x22: _TWO,  # topic alias maximum
    0x23: _TWO,  # topic alias
    0x24: _BYTE,  # maximum QoS
    0x25: _BYTE,  # retain available
    0x26: _PAIR,  # user property
    0x27: _FOUR,  # maximum packet size
    0x28: _BYTE,  # wildcard subscription available
    0x29: _BYTE,  # subscription identifier available
    0x2A: _BYTE,  # shared subscription available
}

PropertyValue = int | str | bytes | tuple[str, str]
# Decoded properties: identifier -> value; user properties (the only repeatable one) as a list.
Properties = dict[int, PropertyValue | list[tuple[str, str]]]

MAX_VARINT = 268_435_455  # four bytes of variable-length integer
# What a broker sends a publisher is tiny; a bigger packet means a broken or hostile peer.
MAX_INCOMING_PACKET = 1 << 20


class ProtocolError(Exception):
    """The broker sent something a QoS 1 publisher cannot accept."""


# --- encoding ---------------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """MQTT's variable byte integer (remaining length, property lengths)."""
    if value < 128:
        return bytes((value,))
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def encode_utf8(text: str | bytes) -> bytes:
    """A length-prefixed string (also used for binary data, which has the same layout)."""
    data = text.encode() if isinstance(text, str) else text
    if len(data) > 0xFFFF:
        raise ValueError(f"string of {len(data)} bytes is longer than MQTT allows (65535)")
    return struct.pack("!H", len(data)) + data


def encode_properties(properties: Sequence[tuple[int, PropertyValue]]) -> bytes:
    """MQTT 5 properties with their length prefix, in the order given."""
    body = bytearray()
    for identifier, value in properties:
        kind = _PROPERTY_TYPES[identifier]
        body += encode_varint(identifier)
        if kind == _PAIR:
            if not isinstance(value, tuple):
                raise TypeError(f"property 0x{identifier:02x} needs a (name, value) pair")
            body += encode_utf8(value[0]) + encode_utf8(value[1])
        elif kind in (_UTF8, _BINARY):
            if not isinstance(value, str | bytes):
                raise TypeError(f"property 0x{identifier:02x} needs text or bytes")
            body += encode_utf8(value)
        else:
            if not isinstance(value, int):
                raise TypeError(f"property 0x{identifier:02x} needs an integer")
            if kind == _VARINT:
                body += encode_varint(value)
            else:
                body += value.to_bytes({_BYTE: 1, _TWO: 2, _FOUR: 4}[kind], "big")
    return encode_varint(len(body)) + bytes(body)


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_varint(len(body)) + body


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for us when the connection dies without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    properties: Sequence[tuple[int, PropertyValue]] = ()


def encode_connect(
    *,
    protocol: int,
    client_id: str,
    keepalive: int,
    clean_start: bool = True,
    username: str | None = None,
    password: str | None = None,
    will: Will | None = None,
    properties: Sequence[tuple[int, PropertyValue]] = (),
) -> bytes:
    if protocol not in (PROTOCOL_311, PROTOCOL_5):
        raise ValueError(f"unsupported MQTT protocol level {protocol}")
    if password is not None and username is None:
        raise ValueError("MQTT sends a password only with a username")
    v5 = protocol == PROTOCOL_5
    flags = 0x02 if clean_start else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = bytearray(encode_utf8("MQTT"))
    body += struct.pack("!BBH", protocol, flags, keepalive)
    if v5:
        body += encode_properties(properties)
    body += encode_utf8(client_id)
    if will is not None:
        if v5:
            body += encode_properties(will.properties)
        body += encode_utf8(will.topic) + encode_utf8(will.payload)
    if username is not None:
        body += encode_utf8(username)
    if password is not None:
        body += encode_utf8(password)
    return _packet(CONNECT, bytes(body))


class PublishEncoder:
    """PUBLISH packets for one topic, QoS and set of properties, encoded straight into a buffer.

    Everything but the packet id and the payload is fixed, so it is encoded here once.
    """

    __slots__ = ("_first", "_fixed_length", "_properties", "_qos", "_topic")

    def __init__(
        self,
        topic: str,
        *,
        protocol: int,
        qos: int = 1,
        retain: bool = False,
        properties: Sequence[tuple[int, PropertyValue]] = (),
    ) -> None:
        if qos not in (0, 1):
            raise ValueError("only QoS 0 and 1 are supported")
        if "+" in topic or "#" in topic or not topic:
            raise ValueError(f"{topic!r} is not a topic to publish to")
        if properties and protocol != PROTOCOL_5:
            raise ValueError("properties need MQTT 5")
        self._qos = qos
        self._first = PUBLISH | (qos << 1) | (1 if retain else 0)
        self._topic = encode_utf8(topic)
        self._properties = encode_properties(properties) if protocol == PROTOCOL_5 else b""
        self._fixed_length = len(self._topic) + (2 if qos else 0) + len(self._properties)

    def encode_into(
        self, out: bytearray, packet_id: int, payload: bytes, dup: bool = False
    ) -> None:
        """Append one PUBLISH to ``out`` (packet_id is ignored for QoS 0)."""
        length = self._fixed_length + len(payload)
        # encode_varint, inlined for the one- and two-byte lengths events have.
        if length < 128:
            header = bytes((self._first | (dup << 3), length))
        elif length < 16384:
            header = bytes((self._first | (dup << 3), (length & 0x7F) | 0x80, length >> 7))
        else:
            header = bytes((self._first | (dup << 3),)) + encode_varint(length)
        out += header
        out += self._topic
        if self._qos:
            out += packet_id.to_bytes(2, "big")
        out += self._properties
        out += payload

    def packet_size(self, payload_length: int) -> int:
        """The whole PUBLISH's size in bytes for a payload this long (fixed header included)."""
        length = self._fixed_length + payload_length
        return 1 + len(encode_varint(length)) + length

    def max_payload(self, max_packet_size: int) -> int:
        """The longest payload whose PUBLISH fits ``max_packet_size`` bytes (-1: none does)."""
        best = -1
        for header in (1, 2, 3, 4):  # bytes of the remaining length itself
            payload = max_packet_size - 1 - header - self._fixed_length
            if payload >= 0 and self.packet_size(payload) <= max_packet_size:
                best = max(best, payload)
        return best

    def encode(self, packet_id: int, payload: bytes, dup: bool = False) -> bytes:
        out = bytearray()
        self.encode_into(out, packet_id, payload, dup)
        return bytes(out)


def encode_publish(
    topic: str,
    payload: bytes,
    packet_id: int,
    *,
    protocol: int,
    qos: int = 1,
    retain: bool = False,
    dup: bool = False,
    properties: Sequence[tuple[int, PropertyValue]] = (),
) -> bytes:
    encoder = PublishEncoder(
        topic, protocol=protocol, qos=qos, retain=retain, properties=properties
    )
    return encoder.encode(packet_id, payload, dup)


def encode_pingreq() -> bytes:
    return PINGREQ_PACKET


def encode_disconnect(protocol: int, reason_code: int = 0) -> bytes:
    """DISCONNECT; reason 0 (normal) tells an MQTT 5 broker to discard the will, as in 3.1.1."""
    if protocol == PROTOCOL_5 and reason_code:
        return bytes((DISCONNECT, 1, reason_code))
    return bytes((DISCONNECT, 0))


def encode_ack(first_byte: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP, success (the short form both versions accept)."""
    return bytes((first_byte, 2, packet_id >> 8, packet_id & 0xFF))


# --- decoding ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason_code: int  # MQTT 5 reason code, or the 3.1.1 return code (0 = accepted)
    properties: Properties = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_id: int
    reason_code: int = 0  # below 0x80: success (0x10: no matching subscribers)


@dataclass(frozen=True, slots=True)
class PubAcks:
    """Successful PUBACKs (reason code below 0x80, no properties) that arrived back to back:
    the bulk of what a broker sends a publisher, decoded in one go."""

    packet_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason_code: int = 0
    properties: Properties = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Publish:
    """A PUBLISH the broker sent unasked (amqtt sends retained messages to every client): only
    what acknowledging it takes; its topic and payload are discarded."""

    qos: int
    packet_id: int = 0  # 0 for QoS 0


@dataclass(frozen=True, slots=True)
class PubRel:
    """Step two of the broker's QoS 2 PUBLISH: answered with PUBCOMP."""

    packet_id: int


Packet = ConnAck | PubAck | PubAcks | PingResp | Disconnect | Publish | PubRel

_PINGRESP = PingResp()
# Reason codes from 0x80 are failures: 1 where a PUBACK reports one, 0 elsewhere.
_FAILURE_CODES = bytes(1 if code >= 0x80 else 0 for code in range(256))


def decode_properties(data: bytes | bytearray | memoryview) -> Properties:
    """MQTT 5 properties without their length prefix."""
    props: Properties = {}
    view = memoryview(data)
    pos, end = 0, len(view)
    try:
        while pos < end:
            identifier, pos = _read_varint(view, pos)
            kind = _PROPERTY_TYPES.get(identifier)
            if kind is None:
                raise ProtocolError(f"unknown MQTT 5 property 0x{identifier:02x}")
            value: PropertyValue
            if kind == _BYTE:
                value, pos = view[pos], pos + 1
            elif kind == _TWO:
                value, pos = int.from_bytes(view[pos : pos + 2], "big"), pos + 2
            elif kind == _FOUR:
                value, pos = int.from_bytes(view[pos : pos + 4], "big"), pos + 4
            elif kind == _VARINT:
                value, pos = _read_varint(view, pos)
            elif kind == _BINARY:
                value, pos = _read_bytes(view, pos)
            elif kind == _UTF8:
                raw, pos = _read_bytes(view, pos)
                value = raw.decode("utf-8", "replace")
            else:
                name, pos = _read_bytes(view, pos)
                text, pos = _read_bytes(view, pos)
                pair = (name.decode("utf-8", "replace"), text.decode("utf-8", "replace"))
                pairs = props.setdefault(identifier, [])
                assert isinstance(pairs, list)
                pairs.append(pair)
                continue
            if pos > end:
                raise ProtocolError("MQTT 5 property runs past its packet")
            props[identifier] = value
    except IndexError:
        raise ProtocolError("MQTT 5 property runs past its packet") from None
    return props


def read_varint(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[int, int] | None:
    """The variable byte integer at buf[pos:end] and the position after it; None when it is
    cut short by `end` or longer than its 4 bytes (a reader streaming packets waits or gives
    up; the Decoder raises)."""
    value = shift = 0
    for i in range(pos, min(end, pos + 4)):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    return None


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    found = read_varint(view, pos, len(view))
    if found is None:
        raise ProtocolError("variable byte integer cut short or longer than 4 bytes")
    return found


def _read_bytes(view: memoryview, pos: int) -> tuple[bytes, int]:
    n = int.from_bytes(view[pos : pos + 2], "big")
    if pos + 2 + n > len(view):
        raise IndexError
    return bytes(view[pos + 2 : pos + 2 + n]), pos + 2 + n


def _reason_and_properties(body: memoryview) -> tuple[int, Properties]:
    """MQTT 5 tail of PUBACK and DISCONNECT: an optional reason code, optional properties."""
    if not body:
        return 0, {}
    if len(body) == 1:
        return body[0], {}
    try:
        length, pos = _read_varint(body, 1)
    except IndexError:
        raise ProtocolError("truncated properties") from None
    if pos + length != len(body):
        raise ProtocolError("properties do not fill the packet")
    return body[0], decode_properties(body[pos:])


class Decoder:
    """Packets from a byte stream that arrives in arbitrary pieces: ``feed`` returns every
    packet completed so far and keeps the rest; a leading run of successful PUBACKs comes back
    as one ``PubAcks``."""

    def __init__(self, protocol: int, max_packet: int = MAX_INCOMING_PACKET) -> None:
        self._v5 = protocol == PROTOCOL_5
        self._max_packet = max_packet
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of a packet not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray) -> list[Packet]:
        buf = self._buf
        buf += data
        packets: list[Packet] = []
        pos, end = 0, len(buf)
        v5 = self._v5
        bulk = self._bulk_acks(buf)
        if bulk is not None:
            packets.append(bulk[0])
            pos = bulk[1]
        while pos + 2 <= end:
            first = buf[pos]
            second = buf[pos + 1]
            # The bulk of the stream: PUBACKs with a packet id and perhaps a reason code
            # (mosquitto adds 0x10 when nobody subscribes), parsed without slicing.
            if first == PUBACK and (second == 2 or (second == 3 and v5)):
                if pos + 2 + second > end:
                    break
                packet_id = (buf[pos + 2] << 8) | buf[pos + 3]
                packets.append(PubAck(packet_id, buf[pos + 4] if second == 3 else 0))
                pos += 2 + second
                continue
            length, header = 0, 1
            shift = 0
            while True:  # remaining length: up to 4 bytes, maybe not all here yet
                if pos + header >= end:
                    length = -1
                    break
                byte = buf[pos + header]
                header += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                if header > 4:
                    raise ProtocolError("remaining length longer than 4 bytes")
            if length < 0:
                break
            if length > self._max_packet:
                raise ProtocolError(f"packet of {length} bytes from the broker (type {first:#x})")
            if pos + header + length > end:
                break
            body = memoryview(buf)[pos + header : pos + header + length]
            try:
                packets.append(self._decode(first, body, v5))
            finally:
                body.release()
            pos += header + length
        if pos:
            del buf[:pos]
        return packets

    def _bulk_acks(self, buf: bytearray) -> tuple[PubAcks, int] | None:
        """The successful PUBACKs of one length (4 bytes, or 5 with a reason code) at the start
        of buf as one PubAcks, and where they end; found and unpacked in C, not per packet."""
        if len(buf) < 8 or buf[0] != PUBACK or buf[1] not in (2, 3):
            return None
        second = buf[1]
        if second == 3 and not self._v5:
            return None
        size = 2 + second
        span = len(buf) // size * size
        # The run ends at the first packet whose header (or reason code) differs.
        firsts = buf[0:span:size]
        seconds = buf[1:span:size]
        n = min(
            len(firsts) - len(firsts.lstrip(b"\x40")),
            len(seconds) - len(seconds.lstrip(bytes((second,)))),
        )
        if size == 5:
            failures = buf[4 : n * size : size].translate(_FAILURE_CODES)
            n = len(failures) - len(failures.lstrip(b"\x00"))  # up to the first rejection
        if n < 2:
            return None
        layout = "2xH" if size == 4 else "2xHx"
        return PubAcks(struct.unpack_from(">" + layout * n, buf)), n * size

    @staticmethod
    def _decode(first: int, body: memoryview, v5: bool) -> Packet:
        kind = first & 0xF0
        if first == PUBACK:
            if len(body) < 2:
                raise ProtocolError("PUBACK too short")
            packet_id = (body[0] << 8) | body[1]
            if not v5:
                if len(body) != 2:
                    raise ProtocolError("MQTT 3.1.1 PUBACK of the wrong length")
                return PubAck(packet_id)
            reason, _ = _reason_and_properties(body[2:])
            return PubAck(packet_id, reason)
        if first == CONNACK:
            if len(body) < 2 or body[0] & 0xFE:
                raise ProtocolError("malformed CONNACK")
            props: Properties = {}
            if v5:
                _, props = _reason_and_properties(body[1:])
            elif len(body) != 2:
                raise ProtocolError("MQTT 3.1.1 CONNACK of the wrong length")
            return ConnAck(bool(body[0] & 1), body[1], props)
        if first == PINGRESP:
            if len(body):
                raise ProtocolError("PINGRESP with a body")
            return _PINGRESP
        if first == DISCONNECT and v5:
            reason, props = _reason_and_properties(body)
            return Disconnect(reason, props)
        if kind == PUBLISH:
            qos = (first >> 1) & 3
            if qos == 3:
                raise ProtocolError("PUBLISH with QoS 3")
            if len(body) < 2:
                raise ProtocolError("PUBLISH too short")
            topic_end = 2 + ((body[0] << 8) | body[1])
            if not qos:
                if topic_end > len(body):
                    raise ProtocolError("PUBLISH topic runs past its packet")
                return Publish(0)
            if topic_end + 2 > len(body):
                raise ProtocolError("PUBLISH without a whole packet id")
            packet_id = (body[topic_end] << 8) | body[topic_end + 1]
            if not packet_id:
                raise ProtocolError("PUBLISH with packet id 0")
            return Publish(qos, packet_id)
        if first == PUBREL:
            if len(body) < 2:
                raise ProtocolError("PUBREL too short")
            return PubRel((body[0] << 8) | body[1])
        raise ProtocolError(f"unexpected packet type {kind >> 4} (first byte {first:#04x})")

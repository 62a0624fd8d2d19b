"""A paho-mqtt client for a consumer: bounded memory whatever the broker sends, and a bulk
read path for the PUBLISH stream.

Bounded: paho reads a packet whole, so a 250 MB message costs 250 MB and more. MQTT 5 lets a
client send Maximum Packet Size in CONNECT, and a broker then drops what is larger, but an MQTT
3.1.1 broker relays anything. Here a PUBLISH longer than ``max_packet`` is read in small pieces
and dropped as it arrives; only its head (topic and packet id) is kept, so it can be
acknowledged and reported.

Bulk: paho reads every packet with three or more ``recv`` calls and runs a callback, a
property decoder and an acknowledgement (a lock, a queue, a wake-up byte) per message: about
150 µs of CPU per event. Here the socket is read 256 KiB at a time; complete PUBLISH packets
are cut straight out of that buffer, handed over in batches (``on_publishes``), and acknowledged
by one write of all their PUBACKs after the batch was handled. Everything else (CONNACK, SUBACK,
a packet split across reads, an oversized one) goes through paho's own path, fed from the same
buffer. The hooks are paho 2.x's ``_sock_recv``, ``_packet_handle``, ``_handle_publish``,
``loop_read`` and ``_loop``.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

# The project's MQTT codec, imported here only (re-exported for the subscriber).
from procmon.mqtt.wire import USER_PROPERTY, ProtocolError, decode_properties, read_varint
from procmon.mqtt.wire import Properties as WireProperties

__all__ = ["USER_PROPERTY", "BoundedClient", "Publish", "WireProperties"]

_CHUNK = 64 << 10  # bytes read per call from an oversized packet
_HEAD = 70_000  # a topic (at most 65,535 bytes), its length and the packet id
_PUBLISH = 0x30
_PUBACK = 0x40
READ_SIZE = 256 << 10  # one recv: a few hundred events
BATCH = 2000  # messages per batch: written, flushed and acknowledged together (~50 ms of work)
_PROPERTY_CACHE = 256  # distinct MQTT 5 property blocks remembered (publishers repeat theirs)
_TOPIC_CACHE = 100_000  # decoded topics remembered: one per host


class Publish(NamedTuple):
    """One received PUBLISH."""

    topic: str
    payload: bytes
    properties: WireProperties | None  # MQTT 5 properties; None when they did not decode
    retain: bool
    qos: int
    mid: int


# Takes a batch, returns how many of its messages (a prefix) were consumed: those are
# acknowledged; the rest stay unacknowledged (a persistent session gets them again).
BatchHandler = Callable[[Sequence[Publish]], int]


class _Head:
    """Stands in for paho's packet buffer: keeps the first _HEAD bytes appended to it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def __iadd__(self, more: bytes) -> _Head:
        room = _HEAD - len(self.data)
        if room > 0:
            self.data += more[:room]
        return self


class BoundedClient(mqtt.Client):
    """paho's Client, except that an incoming packet over ``max_packet`` bytes is dropped as
    it streams in: a PUBLISH is acknowledged per its QoS and passed to ``on_oversized(topic,
    size, retained)``; any other packet that large is a protocol error (the link is dropped).
    PUBLISH packets go to ``on_publishes`` in batches (``on_message`` is not called)."""

    def __init__(
        self,
        *args: Any,
        max_packet: int,
        on_oversized: Callable[[str, int, bool], None],
        on_publishes: BatchHandler,
        after_batch: Callable[[], None] = lambda: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._after_batch = after_batch
        self._max_packet = max_packet
        self._on_oversized = on_oversized
        self._on_publishes = on_publishes
        self._v5 = kwargs.get("protocol") == mqtt.MQTTv5
        self._rbuf = b""  # read ahead from the socket, not yet parsed
        self._rpos = 0
        self._rsock: object = None  # the socket _rbuf came from
        self._batch: list[Publish] = []
        self._property_cache: dict[bytes, WireProperties | None] = {}
        self._topics: dict[bytes, str] = {}

    # --- reading: one large recv, packets cut from the buffer -------------------------------

    def _buffered(self) -> int:
        if self._rsock is not self._sock:  # a new connection: the old one's bytes are void
            self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
        return len(self._rbuf) - self._rpos

    def _sock_recv(self, bufsize: int) -> bytes:
        packet = self._in_packet
        if packet["have_remaining"] and packet["remaining_length"] > self._max_packet:
            if not isinstance(packet["packet"], _Head):
                packet["packet"] = _Head()  # type: ignore[typeddict-item]
            bufsize = min(bufsize, _CHUNK)
        if not self._buffered():
            data = super()._sock_recv(READ_SIZE)
            if not data:
                return data  # the broker closed the link: paho handles it
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start : self._rpos]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read and handle up to BATCH messages: complete PUBLISH packets straight from the
        buffer, anything else through paho; then hand the batch over and acknowledge it."""
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        try:
            while len(self._batch) < BATCH:
                if self._in_packet["command"] == 0 and self._buffered():
                    self._cut_publishes()
                    if len(self._batch) >= BATCH:
                        break
                step = self._packet_read()  # the rest of the buffer's head, or a new recv
                if step == MQTTErrorCode.MQTT_ERR_AGAIN:
                    break
                if step > 0:
                    rc = step
                    break
                if self._sock is None:
                    rc = MQTTErrorCode.MQTT_ERR_NO_CONN
                    break
        finally:
            self._deliver()
        with self._msgtime_mutex:
            self._last_bytes_received = time.monotonic()
        return self._loop_rc_handle(rc) if rc > 0 else rc

    def _loop(self, timeout: float = 1.0) -> MQTTErrorCode:
        if self._sock is not None and self._buffered():  # select() cannot see these bytes
            rc = self.loop_read()
            if rc or self._sock is None:
                return rc
            if self._buffered():
                timeout = 0.0
        return super()._loop(timeout)

    def _cut_publishes(self) -> None:
        """Every complete PUBLISH (within max_packet) at the head of the buffer."""
        buf, pos, end = self._rbuf, self._rpos, len(self._rbuf)
        batch, limit = self._batch, self._max_packet
        while pos + 2 <= end and len(batch) < BATCH:
            first = buf[pos]
            if first & 0xF0 != _PUBLISH or (first >> 1) & 3 == 2:
                break
            found = read_varint(buf, pos + 1, end)
            if found is None:
                break  # the length is not all here (or malformed): paho's path decides
            length, i = found
            if length > limit or i + length > end:
                break
            publish = self._decode(first, buf, i, i + length)
            if publish is None:
                break  # malformed: paho's path reports it
            batch.append(publish)
            pos = i + length
        self._rpos = pos

    def _decode(self, first: int, buf: bytes | bytearray, pos: int, end: int) -> Publish | None:
        if end - pos < 2:
            return None
        topic_end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
        qos = (first >> 1) & 3
        mid = 0
        if qos:
            if topic_end + 2 > end:
                return None
            mid = (buf[topic_end] << 8) | buf[topic_end + 1]
        body = topic_end + (2 if qos else 0)
        properties: WireProperties | None = {}
        if self._v5:
            found = read_varint(buf, body, end)
            if found is None:
                return None
            length, i = found
            if i + length > end:
                return None
            properties = self._properties(bytes(buf[i : i + length])) if length else {}
            body = i + length
        raw_topic = bytes(buf[pos + 2 : topic_end])
        topic = self._topics.get(raw_topic)
        if topic is None:  # a fleet has few topics: each is decoded once
            if len(self._topics) >= _TOPIC_CACHE:
                self._topics.clear()
            topic = self._topics[raw_topic] = raw_topic.decode("utf-8", "replace")
        return Publish(topic, bytes(buf[body:end]), properties, bool(first & 1), qos, mid)

    def _properties(self, raw: bytes) -> WireProperties | None:
        cache = self._property_cache
        if raw in cache:
            return cache[raw]
        try:
            decoded: WireProperties | None = decode_properties(raw)
        except ProtocolError:
            decoded = None
        if len(cache) >= _PROPERTY_CACHE:  # message expiry intervals make blocks differ
            cache.clear()
        cache[raw] = decoded
        return decoded

    def _handle_publish(self) -> MQTTErrorCode:
        """A PUBLISH that came through paho's path (split across reads): into the batch."""
        command = self._in_packet["command"]
        if (command >> 1) & 3 == 2:
            return super()._handle_publish()  # never asked for (we subscribe at QoS 1)
        packet = self._in_packet["packet"]
        publish = self._decode(command, packet, 0, len(packet))
        if publish is None:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._batch.append(publish)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _deliver(self) -> None:
        """The batch to the handler, then one write of PUBACKs for what it consumed."""
        batch = self._batch
        if not batch:
            return
        self._batch = []
        consumed = self._on_publishes(batch)
        acks = b"".join(
            struct.pack("!BBH", _PUBACK, 2, p.mid) for p in batch[:consumed] if p.qos == 1
        )
        if acks:
            self._packet_queue(_PUBACK, acks, 0, 0)
        self._after_batch()

    # --- oversized packets ------------------------------------------------------------------

    def _packet_handle(self) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if not isinstance(packet, _Head):
            return super()._packet_handle()
        head = packet.data
        command = self._in_packet["command"]
        size = self._in_packet["remaining_length"]
        if command & 0xF0 != _PUBLISH or len(head) < 2:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        (topic_len,) = struct.unpack_from("!H", head)
        topic = bytes(head[2 : 2 + topic_len]).decode("utf-8", "replace")
        qos = (command >> 1) & 3
        if qos:
            if len(head) < 4 + topic_len:
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
            (mid,) = struct.unpack_from("!H", head, 2 + topic_len)
            self._deliver()  # the order of acknowledgements follows the order of messages
            self.ack(mid, qos)  # consumed: a persistent session must not send it again
        self._on_oversized(topic, size, bool(command & 1))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

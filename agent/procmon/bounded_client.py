"""A paho-mqtt client whose memory stays bounded whatever the broker sends.

paho reads a packet whole: a 250 MB message costs 250 MB and more. MQTT 5 lets a client send
Maximum Packet Size in CONNECT, and a broker then drops what is larger, but an MQTT 3.1.1
broker relays anything. Here a PUBLISH longer than ``max_packet`` is read in small pieces and
dropped as it arrives; only its head (topic and packet id) is kept, so it can be acknowledged
and reported. The hooks are paho 2.x's ``_sock_recv`` and ``_packet_handle``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

_CHUNK = 64 << 10  # bytes read per call from an oversized packet
_HEAD = 70_000  # a topic (at most 65,535 bytes), its length and the packet id
_PUBLISH = 0x30


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
    size, retained)``; any other packet that large is a protocol error (the link is dropped)."""

    def __init__(
        self,
        *args: Any,
        max_packet: int,
        on_oversized: Callable[[str, int, bool], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._max_packet = max_packet
        self._on_oversized = on_oversized

    def _sock_recv(self, bufsize: int) -> bytes:
        packet = self._in_packet
        if packet["have_remaining"] and packet["remaining_length"] > self._max_packet:
            if not isinstance(packet["packet"], _Head):
                packet["packet"] = _Head()  # type: ignore[typeddict-item]
            bufsize = min(bufsize, _CHUNK)
        return super()._sock_recv(bufsize)

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
            self.ack(mid, qos)  # consumed: a persistent session must not send it again
        self._on_oversized(topic, size, bool(command & 1))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

"""The publisher's protocol state, sans IO: no socket, lock, thread or clock of its own.

What one connection to the broker allows (the CONNACK's limits), which packet ids are in
flight for which spool rows, how far the publisher has read (the cursor) and where it starts
again after a rejection or a lost connection. The broker's own PUBLISH packets are answered per
their QoS and discarded. Callers pass the time in; the sink holds the lock and the socket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from procmon.mqtt.wire import (
    ASSIGNED_CLIENT_IDENTIFIER,
    MAXIMUM_PACKET_SIZE,
    MAXIMUM_QOS,
    PUBACK,
    PUBCOMP,
    PUBREC,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    RETAIN_AVAILABLE,
    SERVER_KEEP_ALIVE,
    TOPIC_ALIAS_MAXIMUM,
    ConnAck,
    Disconnect,
    Packet,
    PingResp,
    PubAck,
    PubAcks,
    Publish,
    PubRel,
    encode_ack,
)

# Packet ids wrap at 65535: a smaller window keeps an in-flight id from being reused.
MAX_WINDOW = 60000

Token = TypeVar("Token")


@dataclass(frozen=True, slots=True)
class Limits:
    """What the broker's CONNACK allows this connection (MQTT 3.1.1: no limits)."""

    receive_maximum: int = 65535
    maximum_packet_size: int = 0  # 0: no limit
    maximum_qos: int = 2
    retain_available: bool = True
    server_keepalive: int | None = None
    assigned_client_id: str | None = None
    topic_alias_maximum: int = 0  # procmon never sends topic aliases, allowed or not
    reason_string: str | None = None

    @classmethod
    def from_connack(cls, connack: ConnAck) -> Limits:
        props = connack.properties

        def number(identifier: int, default: int) -> int:
            value = props.get(identifier)
            return value if isinstance(value, int) else default

        assigned = props.get(ASSIGNED_CLIENT_IDENTIFIER)
        reason = props.get(REASON_STRING)
        keepalive = props.get(SERVER_KEEP_ALIVE)
        return cls(
            receive_maximum=number(RECEIVE_MAXIMUM, 65535) or 65535,
            maximum_packet_size=number(MAXIMUM_PACKET_SIZE, 0),
            maximum_qos=min(number(MAXIMUM_QOS, 2), 2),
            retain_available=number(RETAIN_AVAILABLE, 1) != 0,
            server_keepalive=keepalive if isinstance(keepalive, int) else None,
            assigned_client_id=assigned if isinstance(assigned, str) else None,
            topic_alias_maximum=number(TOPIC_ALIAS_MAXIMUM, 0),
            reason_string=reason if isinstance(reason, str) else None,
        )


@dataclass(slots=True)
class Handled(Generic[Token]):
    """What the broker's packets meant: the caller logs, counts and sends ``replies``."""

    acked: int = 0  # rows newly acknowledged (appended to Session.acked)
    rejected: list[tuple[int, int]] = field(default_factory=list)  # (row, reason code)
    done: list[Token] = field(default_factory=list)  # control messages acknowledged
    replies: bytearray = field(default_factory=bytearray)  # acks of the broker's PUBLISH
    ended: Disconnect | None = None  # the broker said goodbye
    unexpected: str | None = None  # a packet a publisher cannot get: the link must end


class Session(Generic[Token]):
    """One publisher's protocol state, across connections (each a clean session).

    Spool rows are ints that only grow; ``cursor`` is the last row read for publishing.
    Control messages (status, stats) carry an opaque ``Token`` handed back once acknowledged
    or once the connection is gone.
    """

    def __init__(self, max_window: int) -> None:
        self.max_window = min(max_window, MAX_WINDOW)
        self.window = self.max_window
        self.limits = Limits()
        self.inflight: dict[int, int] = {}  # packet id -> spool row
        self.control_ids: dict[int, Token | None] = {}  # packet id -> token
        self.last_packet_id = 0
        self.cursor = 0  # the last row read for publishing; moves back to re-send
        self.handed = 0  # the highest row ever handed to the broker
        # After a rejection moved the cursor back: rows still in flight, not to be sent twice.
        self.skip_rows: set[int] = set()
        self.acked: list[int] = []  # acknowledged rows the caller has not deleted yet
        self.rewind_to: int | None = None  # after rejections: re-send from here
        self.resume_at = 0.0
        self.reject_delay = 1.0
        self.incoming_qos2: set[int] = set()  # the broker's QoS 2 PUBLISH awaiting PUBREL
        self.last_ack_at: float | None = None  # the broker's last acknowledgement this link
        self.unacked_since: float | None = None  # since when something waits for an ack

    # --- a connection's life ---------------------------------------------------------------

    def start(self, connack: ConnAck) -> Limits:
        """A new connection was accepted: take its limits."""
        self.limits = Limits.from_connack(connack)
        self.window = max(1, min(self.max_window, self.limits.receive_maximum))
        self.last_ack_at = self.unacked_since = None
        self.incoming_qos2.clear()
        return self.limits

    def lost(self) -> list[Token | None]:
        """The connection is gone (clean session): rows in flight are re-sent, in spool order;
        returns the control messages' tokens, never to be acknowledged now."""
        tokens = list(self.control_ids.values())
        self.control_ids.clear()
        if self.inflight:
            self.cursor = min(self.cursor, min(self.inflight.values()) - 1)
        self.inflight.clear()
        self.skip_rows.clear()
        self.incoming_qos2.clear()
        self.unacked_since = None
        return tokens

    # --- sending ---------------------------------------------------------------------------

    def room(self) -> int:
        return self.window - len(self.inflight) - len(self.control_ids)

    def next_packet_id(self) -> int:
        packet_id = self.last_packet_id
        while True:
            packet_id = packet_id + 1 if packet_id < 0xFFFF else 1
            if packet_id not in self.inflight and packet_id not in self.control_ids:
                self.last_packet_id = packet_id
                return packet_id

    def send_control(self, token: Token | None, now: float) -> int:
        """A packet id for a status or stats message, in flight until acknowledged."""
        packet_id = self.next_packet_id()
        self.control_ids[packet_id] = token
        if self.unacked_since is None:
            self.unacked_since = now
        return packet_id

    def ready_to_resume(self, now: float) -> bool:
        """False while a rejection's pause lasts; after it, the cursor moves back once."""
        if self.rewind_to is None:
            return True
        if now < self.resume_at:
            return False
        self.cursor = min(self.cursor, self.rewind_to)
        self.rewind_to = None
        self.skip_rows = set(self.inflight.values())
        return True

    def advance(self, cursor: int) -> None:
        """The caller read rows up to ``cursor`` for publishing."""
        self.cursor = cursor
        if cursor > self.handed:
            self.handed = cursor

    def assign(
        self,
        rows: Sequence[tuple[int, bytes]],
        encode_into: Callable[[bytearray, int, bytes], None],
        out: bytearray,
        max_payload: int,
        now: float,
    ) -> list[int]:
        """Encode rows as QoS 1 PUBLISH packets into ``out``, each under a fresh packet id;
        returns the rows over ``max_payload`` bytes, which are not sent (the broker would
        drop the link for them)."""
        oversize: list[int] = []
        inflight = self.inflight
        controls = self.control_ids
        packet_id = self.last_packet_id
        for row, payload in rows:  # next_packet_id, inlined: this loop runs for every event
            if len(payload) > max_payload:
                oversize.append(row)
                continue
            packet_id = packet_id + 1 if packet_id < 0xFFFF else 1
            while packet_id in inflight or packet_id in controls:
                packet_id = packet_id + 1 if packet_id < 0xFFFF else 1
            inflight[packet_id] = row
            encode_into(out, packet_id, payload)
        self.last_packet_id = packet_id
        if self.unacked_since is None and inflight:
            self.unacked_since = now
        return oversize

    def sent_unacknowledged(self, rows: Sequence[tuple[int, bytes]], max_payload: int) -> list[int]:
        """QoS 0 (the broker's Maximum QoS): sent rows count as delivered at once; returns the
        oversize ones, like ``assign``."""
        oversize = [row for row, payload in rows if len(payload) > max_payload]
        skip = set(oversize)
        self.acked += [row for row, _ in rows if row not in skip]
        return oversize

    # --- receiving -------------------------------------------------------------------------

    def handle(self, packets: Sequence[Packet], now: float) -> Handled[Token]:
        """Account for what the broker sent."""
        result: Handled[Token] = Handled()
        acked = self.acked
        inflight = self.inflight
        before = len(acked)
        for packet in packets:
            if type(packet) is PubAcks:
                pop = inflight.pop
                found = [pop(packet_id, None) for packet_id in packet.packet_ids]
                if None in found:  # status and stats messages among them
                    for packet_id, row in zip(packet.packet_ids, found, strict=True):
                        if row is None:
                            self._control_acked(packet_id, result)
                    found = [row for row in found if row is not None]
                acked += found  # type: ignore[arg-type]  # the None were filtered out
            elif type(packet) is PubAck:
                row = inflight.pop(packet.packet_id, None)
                if row is None:
                    self._control_acked(packet.packet_id, result)
                elif packet.reason_code >= 0x80:
                    result.rejected.append((row, packet.reason_code))
                else:
                    acked.append(row)
            elif type(packet) is PingResp:
                continue
            elif type(packet) is Publish:
                self._answer(packet, result.replies)
            elif type(packet) is PubRel:
                self.incoming_qos2.discard(packet.packet_id)
                result.replies += encode_ack(PUBCOMP, packet.packet_id)
            elif type(packet) is Disconnect:
                result.ended = packet
                break
            else:
                result.unexpected = type(packet).__name__
                break
        result.acked = len(acked) - before
        if result.acked or result.done or result.rejected:
            self.last_ack_at = now
            self.unacked_since = now if inflight or self.control_ids else None
            if result.acked:
                self.reject_delay = 1.0
        return result

    def _control_acked(self, packet_id: int, result: Handled[Token]) -> None:
        if packet_id in self.control_ids:
            token = self.control_ids.pop(packet_id)
            if token is not None:
                result.done.append(token)

    def _answer(self, packet: Publish, replies: bytearray) -> None:
        """Acknowledge the broker's PUBLISH per its QoS; its content is not ours to keep."""
        if packet.qos == 1:
            replies += encode_ack(PUBACK, packet.packet_id)
        elif packet.qos == 2:
            self.incoming_qos2.add(packet.packet_id)
            replies += encode_ack(PUBREC, packet.packet_id)

    def rejected(self, row: int, now: float, max_delay_s: float) -> None:
        """The broker refused one event: re-send from it after a pause that grows."""
        self.rewind_to = min(row - 1, self.rewind_to if self.rewind_to is not None else row)
        self.resume_at = now + self.reject_delay
        self.reject_delay = min(self.reject_delay * 2, max_delay_s)

    def waiting_for_ack(self, now: float) -> float:
        """Seconds something has waited for the broker's acknowledgement (0: nothing waits)."""
        return 0.0 if self.unacked_since is None else now - self.unacked_since

"""MqttSink: every event goes to the spool first, then to the broker with QoS 1.

Rows leave the spool only once the broker acknowledges them: an outage or a crash costs
duplicates, never silent loss. This module is the glue: the network thread, the spool and the
counters. The protocol state lives in procmon.mqtt.session (sans IO), the codec in
procmon.mqtt.wire, the socket in procmon.mqtt.conn. ``_lock`` guards the session and the link's
socket; threading and locking rules are in docs/design.md.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import json
import logging
import os
import select
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from procmon.config import MqttConfig
from procmon.event import SCHEMA_ID, ExitEvent
from procmon.mqtt.broker_url import (
    BrokerOptions,
)
from procmon.mqtt.conn import (
    Backoff,
    Interrupted,
    Link,
    describe_io_error,
    disconnect_reason,
    puback_reason,
    say_goodbye,
)
from procmon.mqtt.connector import Connector, WillTerms
from procmon.mqtt.session import Limits, Session
from procmon.mqtt.wire import (
    CONTENT_TYPE,
    MAX_INCOMING_PACKET,
    MAXIMUM_PACKET_SIZE,
    MESSAGE_EXPIRY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR,
    PINGREQ_PACKET,
    PROTOCOL_5,
    PROTOCOL_311,
    REASON_STRING,
    USER_PROPERTY,
    Disconnect,
    PropertyValue,
    ProtocolError,
    PublishEncoder,
    Will,
    encode_connect,
    encode_disconnect,
)
from procmon.spool import Spool

log = logging.getLogger("procmon.mqtt")

STATUS_SCHEMA = "procmon.status/v1"
STATS_SCHEMA = "procmon.stats/v1"
# Packet ids wrap at 65535: a smaller window keeps an in-flight id from being reused.
MAX_WINDOW = 60000
# Acks are deleted from the spool in batches: one transaction per PUBACK would cost more
# than the publish itself. Unflushed acks only mean a re-send after a crash.
ACK_BATCH = 128
ACK_MAX_DELAY_S = 0.2
FLUSH_TIMEOUT_S = 10.0
DROP_COUNTERS = ("dropped_kernel", "dropped_queue", "dropped_spool")
OFFLINE_TIMEOUT_S = 3.0
# Without PINGRESP or anything else from the broker for this many keepalives: a dead link.
DEAD_AFTER_KEEPALIVES = 1.5
GOODBYE_TIMEOUT_S = 1.0
FIRST_RETRY_S = 1.0
# Longest close() waits for the network thread (a connect or the goodbye in progress).
JOIN_TIMEOUT_S = 15.0
# A connection is healthy (the next reconnect waits FIRST_RETRY_S again) once it lasted this
# long with the broker acknowledging: a broker that accepts and then drops us gets backoff.
HEALTHY_AFTER_S = 30.0
# Keys the status and stats messages keep when trimmed to the broker's Maximum Packet Size.
STATUS_REQUIRED = ("state", "host")
STATS_REQUIRED = (
    "host",
    "time",
    "events_seen",
    "published",
    "dropped_kernel",
    "dropped_queue",
    "dropped_spool",
    "dropped_oversize",
)
# While emits come at least this often and the window has room, they read the PUBACKs; the
# network thread only watches the socket once they stop, so a steady stream never wakes it.
EMIT_READS_S = 0.1
# Rows emit just stored are kept in memory for publishing up to this many (or a window, if
# larger): a batch of up to 1024 records (the pipeline's chunks of 512) waiting for room in a
# 256-message window is then sent from memory as PUBACKs come, not read back from the spool.
FRESH_ROWS = 1024

_to_json = ExitEvent.__pydantic_serializer__.to_json


@dataclass(frozen=True)
class Topics:
    exits: str
    status: str
    stats: str

    @classmethod
    def for_host(cls, prefix: str, host: str) -> Topics:
        base = f"{prefix}/{host}"
        return cls(exits=f"{base}/exits", status=f"{base}/status", stats=f"{base}/stats")


@dataclass(frozen=True)
class AgentIdentity:
    """What the retained status message says about this agent."""

    host: str
    version: str
    probe: str
    started_at: str


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _v5_properties(schema: str, expiry_s: int = 0) -> list[tuple[int, PropertyValue]]:
    props: list[tuple[int, PropertyValue]] = [(PAYLOAD_FORMAT_INDICATOR, 1)]  # UTF-8
    if expiry_s:
        props.append((MESSAGE_EXPIRY_INTERVAL, expiry_s))
    props += [(CONTENT_TYPE, "application/json"), (USER_PROPERTY, ("schema", schema))]
    return props


def _row_id(row: tuple[int, bytes]) -> int:
    return row[0]


class _Control(NamedTuple):
    """A status or stats message waiting for room in the window."""

    kind: str  # "status" or "stats"
    message: dict[str, Any]
    done: threading.Event | None  # set once acknowledged or the connection is gone


class _Encoders(NamedTuple):
    """One connection's PUBLISH encoders: the protocol, QoS and retain it allows."""

    exits: PublishEncoder
    status: PublishEncoder
    stats: PublishEncoder
    qos: int
    max_payload: int  # of an exit event: over it, skipped and counted (dropped_oversize)
    max_packet_size: int  # 0: no limit


def _fit(
    encoder: PublishEncoder, message: dict[str, Any], limit: int, keep: Sequence[str]
) -> bytes | None:
    """``message`` as JSON, trimmed of its optional keys (the last first) until its PUBLISH
    fits ``limit`` bytes (0: no limit); None if even the required keys do not fit."""
    payload = json.dumps(message).encode()
    if not limit or encoder.packet_size(len(payload)) <= limit:
        return payload
    trimmed = dict(message)
    for key in reversed(list(message)):
        if key in keep:
            continue
        del trimmed[key]
        payload = json.dumps(trimmed).encode()
        if encoder.packet_size(len(payload)) <= limit:
            return payload
    return None


class MqttSink:
    """The Sink that publishes through the spool. Takes ownership of ``spool`` (closes it).

    ``options`` is the first broker; ``cfg.broker_urls`` may name more, tried in turn when one
    is unreachable (failover), with the same credentials and TLS files.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        identity: AgentIdentity,
        spool: Spool,
        options: BrokerOptions | None = None,
        prefix: str | None = None,
    ) -> None:
        self.identity = identity
        self.topics = Topics.for_host(prefix or cfg.prefix, identity.host)
        first = options or BrokerOptions.build(
            cfg.broker_urls[0],
            cfg.username,
            cfg.password_file,
            cfg.ca_file,
            cfg.cert_file,
            cfg.key_file,
        )
        brokers = [first] + [
            BrokerOptions.build(
                url, cfg.username, cfg.password_file, cfg.ca_file, cfg.cert_file, cfg.key_file
            )
            for url in cfg.broker_urls[1:]
        ]
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:  # TLS contexts built now: a BrokerConfigError shows at start, not at each connect
            self._connector = Connector(
                brokers,
                PROTOCOL_5 if cfg.protocol == "5" else PROTOCOL_311,
                self._stop_fd,
                log,
                "retrying with backoff; events stay in the spool",
            )
        except BaseException:
            os.close(self._stop_fd)
            raise
        self._spool = spool
        self._client_id = cfg.client_id if cfg.client_id is not None else f"procmon-{identity.host}"
        self._keepalive_s = cfg.keepalive_s
        self._expiry_s = cfg.message_expiry_s
        self._retry_max_s = float(cfg.reconnect_max_s)
        self._connector.reporter.warn_plain_credentials(first.username)
        if first.username and first.username != identity.host:
            log.warning(
                "mqtt.username %r is not host_id %r: a broker ACL that lets each user publish "
                "only under its own host's topics (the procmon.procmon.broker role's) refuses "
                "every event, and MQTT 3.1.1 cannot say so",
                first.username,
                identity.host,
            )
        self._encoders = self._make_encoders(Limits())

        # Guarded by _lock (see docs/design.md).
        self._lock = threading.Lock()
        self._session: Session[threading.Event] = Session(cfg.max_inflight)
        self._link: Link | None = None  # set while connected: whoever holds _lock may send
        self._keepalive = float(cfg.keepalive_s)  # the broker's Server Keep Alive overrides it
        self._controls: collections.deque[_Control] = collections.deque()
        # Rows emit just stored, still in memory: published without reading them back from
        # the spool while they directly follow the cursor.
        self._fresh: list[tuple[int, bytes]] = []
        self._fresh_generation = spool.generation
        self._acked_since = 0.0
        self._reported_rejections: set[int] = set()
        self._last_in = self._last_out = self._last_emit = 0.0
        self._ping_sent: float | None = None
        self._silence_reported = False  # "nothing acknowledged", once per connection
        self._status_due = False
        self._last_counters: dict[str, Any] = {}
        self._last_status_drops: tuple[Any, ...] = ()

        # Written under _lock or by one thread, read anywhere (GIL-atomic).
        self._connected = False
        self._connected_at = 0.0
        self._closing = False
        self._stop = False
        self._wake_pending = False
        self.published = 0
        self.rejected = 0
        self.connects = 0
        self.dropped_oversize = 0

        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread = threading.Thread(target=self._network_main, name="procmon-mqtt", daemon=True)
        self._thread.start()

    def _make_encoders(self, limits: Limits) -> _Encoders:
        """PUBLISH encoders for what this connection allows: QoS at most the broker's Maximum
        QoS, retain only where Retain Available, and no topic alias ever."""
        protocol = self._connector.protocol
        v5 = protocol == PROTOCOL_5
        qos = min(1, limits.maximum_qos)

        def encoder(topic: str, schema: str, retain: bool, expiry_s: int = 0) -> PublishEncoder:
            props = _v5_properties(schema, expiry_s) if v5 else []
            return PublishEncoder(
                topic,
                protocol=protocol,
                qos=qos,
                retain=retain and limits.retain_available,
                properties=props,
            )

        exits = encoder(self.topics.exits, SCHEMA_ID, False, self._expiry_s)
        limit = limits.maximum_packet_size
        return _Encoders(
            exits=exits,
            status=encoder(self.topics.status, STATUS_SCHEMA, True),
            stats=encoder(self.topics.stats, STATS_SCHEMA, False),
            qos=qos,
            max_payload=exits.max_payload(limit) if limit else 1 << 62,
            max_packet_size=limit,
        )

    # --- the network thread: connections ---------------------------------------------------

    def _network_main(self) -> None:
        backoff = Backoff(FIRST_RETRY_S, self._retry_max_s)
        while not self._stop:
            link: Link | None = None
            try:
                link = self._connect_any()
            except Interrupted:
                return
            except Exception:  # a bug, not the network: keep trying all the same
                log.exception("MQTT connect step failed")
            if link is not None:
                why = "internal error"
                try:
                    why = self._serve(link)
                except (OSError, ProtocolError) as exc:
                    why = describe_io_error(exc)
                except Exception:
                    log.exception("MQTT network step failed")
                finally:
                    if self._connection_ended(why):
                        backoff.reset()  # only a connection that proved healthy resets it
                    link.close()
            if not self._stop:
                self._pause(backoff.next())

    def _pause(self, seconds: float) -> None:
        """Sleep between attempts; close() ends it at once."""
        poller = select.poll()
        poller.register(self._stop_fd, select.POLLIN)
        poller.poll(seconds * 1000)

    def _connect_any(self) -> Link | None:
        """The broker in use, else each other one in turn (failover); then its limits."""
        connected = self._connector.connect(self._connect_packet)
        if connected is None:
            return None
        link, connack = connected
        with self._lock:
            limits = self._session.start(connack)
            self._encoders = self._make_encoders(limits)
            self._keepalive = float(limits.server_keepalive or self._keepalive_s)
        self._describe_limits(self._connector.options.url, limits)
        return link

    def _connect_packet(self, protocol: int, options: BrokerOptions, will: WillTerms) -> bytes:
        with self._lock:
            encoders = self._make_encoders(self._session.limits)
            status = self._status_message("offline", reason="connection lost")
            payload = (
                _fit(encoders.status, status, encoders.max_packet_size, STATUS_REQUIRED)
                or json.dumps({k: status[k] for k in STATUS_REQUIRED}).encode()
            )
        v5 = protocol == PROTOCOL_5
        will_properties: list[tuple[int, PropertyValue]] = (
            [(CONTENT_TYPE, "application/json"), (USER_PROPERTY, ("schema", STATUS_SCHEMA))]
            if v5
            else []
        )
        return encode_connect(
            protocol=protocol,
            client_id=self._client_id,
            keepalive=self._keepalive_s,
            clean_start=True,
            username=options.username,
            password=options.password,
            will=Will(
                self.topics.status, payload, qos=will.qos, retain=will.retain,
                properties=will_properties,
            ),
            # The largest packet we take: a broker then drops a larger retained message for us
            # instead of sending it.
            properties=[(MAXIMUM_PACKET_SIZE, MAX_INCOMING_PACKET)] if v5 else [],
        )  # fmt: skip

    def _describe_limits(self, url: object, limits: Limits) -> None:
        if limits.assigned_client_id is not None:
            log.info("MQTT broker %s assigned client id %r", url, limits.assigned_client_id)
        if limits.maximum_qos < 1:
            log.warning(
                "MQTT broker %s takes QoS 0 only: events are sent without acknowledgement and "
                "may be lost",
                url,
            )
        if not limits.retain_available:
            log.warning("MQTT broker %s keeps no retained messages: status is not retained", url)
        if limits.maximum_packet_size:
            log.info(
                "MQTT broker %s takes packets up to %d bytes: larger events are skipped "
                "(dropped_oversize)",
                url,
                limits.maximum_packet_size,
            )

    def _connection_ended(self, why: str) -> bool:
        """Forget the connection; True if it had proved healthy (resets the backoff)."""
        with self._lock:
            self._link = None
            was_connected, self._connected = self._connected, False
            lasted = time.monotonic() - self._connected_at
            healthy = lasted >= HEALTHY_AFTER_S and self._session.last_ack_at is not None
            if was_connected and not self._closing:
                self._connector.reporter.lost(why, lasted)
            self._ping_sent = None
            for done in self._session.lost():  # clean session: rows in flight are re-sent
                if done is not None:
                    done.set()
            for control in self._controls:
                if control.done is not None:
                    control.done.set()
            self._controls.clear()
            if not self._stop:  # close() may be closing the spool
                self._delete_acked_locked()
            self._fresh.clear()
        return healthy

    # --- the network thread: one connection ------------------------------------------------

    def _serve(self, link: Link) -> str:
        """Read, keep alive and refill until the link breaks (returns why) or close()."""
        now = time.monotonic()
        with self._lock:
            self._last_in = self._last_out = now
            self._ping_sent = None
            self._silence_reported = False
            self.connects += 1
            self._connected = True
            self._connected_at = now
            self._status_due = True  # the retained online status goes first
            if link.backlog:
                why = self._handle_locked(link, link.backlog, now)
                if why:
                    return why
            self._link = link
            self._pump_locked(link, now)
        sock_fd = link.fileno()
        epoll = select.epoll()
        try:
            watching = select.EPOLLIN
            epoll.register(sock_fd, watching)
            epoll.register(self._wake_fd, select.EPOLLIN)
            epoll.register(self._stop_fd, select.EPOLLIN)
            while not self._stop:
                with self._lock:
                    if link.broken is not None:
                        return link.broken
                    # Rows waiting for room in the window: each PUBACK should refill it.
                    waiting = self._session.cursor < self._spool.last_id
                    emits_read = (
                        now - self._last_emit < EMIT_READS_S and not waiting and not self._closing
                    )
                    wanted = 0 if emits_read else select.EPOLLIN
                    if link.out and not link.write_needs_read:
                        wanted |= select.EPOLLOUT
                    timeout = self._next_timeout(now, emits_read)
                    # When the keepalive, ack and retry timers are due, emits or not.
                    timers_due = now + self._next_timeout(now, False)
                if wanted != watching:  # errors and hang-ups are reported regardless
                    epoll.modify(sock_fd, wanted)
                    watching = wanted
                ready = epoll.poll(timeout)
                now = time.monotonic()
                if any(fd == self._wake_fd for fd, _ in ready):
                    self._wake_pending = False
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._wake_fd)
                if self._stop:
                    break
                if (
                    not ready
                    and emits_read
                    and now < timers_due
                    and now - self._last_emit < EMIT_READS_S
                ):
                    # Only the "emits stopped?" timer, and they have not: the last emit pumped
                    # (read, keepalive, deletes, fill), so this wakeup has nothing to do.
                    continue
                with self._lock:
                    self._pump_locked(link, now)
        finally:
            epoll.close()
        with self._lock:
            self._link = None  # from here on, nobody else sends
        say_goodbye(link, encode_disconnect(self._connector.protocol), GOODBYE_TIMEOUT_S)
        return "closed"

    def _next_timeout(self, now: float, emits_read: bool) -> float:
        keepalive = self._keepalive
        session = self._session
        if self._ping_sent is None:
            due = min(self._last_in, self._last_out) + keepalive
        else:
            due = self._last_in + DEAD_AFTER_KEEPALIVES * keepalive
        if session.acked:
            due = min(due, self._acked_since + ACK_MAX_DELAY_S)
        if session.rewind_to is not None and session.resume_at > now:  # past: waits for room
            due = min(due, session.resume_at)
        if session.unacked_since is not None and not self._silence_reported:
            due = min(due, session.unacked_since + keepalive)
        if emits_read:  # then watch the socket ourselves
            due = min(due, self._last_emit + EMIT_READS_S)
        return max(0.0, due - now)

    def _handle_locked(self, link: Link, packets: list[Any], now: float) -> str | None:
        """Account for what the broker sent; returns why the link ends, if it does."""
        session = self._session
        before = len(session.acked)
        handled = session.handle(packets, now)
        if handled.replies:
            link.out += handled.replies
        for done in handled.done:
            done.set()
        for row, code in handled.rejected:
            self._rejected(row, code, now)
        if handled.acked:
            if not before:
                self._acked_since = now
            self.published += handled.acked
        if handled.ended is not None:
            return _disconnect_text(handled.ended)
        if handled.unexpected is not None:
            return f"protocol error: unexpected {handled.unexpected}"
        return None

    def _rejected(self, row: int, code: int, now: float) -> None:
        """The broker refused one event: keep it spooled and re-send after a pause."""
        self.rejected += 1
        if code not in self._reported_rejections:
            self._reported_rejections.add(code)
            log.error(
                "MQTT broker %s rejected an event on %s: %s; events stay in the spool and are "
                "re-sent with backoff",
                self._connector.options.url,
                self.topics.exits,
                puback_reason(code),
            )
        self._session.rejected(row, now, self._retry_max_s)

    # --- pumping (any thread, _lock held) -----------------------------------------------------

    def _pump_locked(self, link: Link, now: float) -> None:
        """One round on the link, never blocking: take in what the broker sent, delete acked
        rows when due, keep alive, fill the window and send. A broken link is marked
        (``link.broken``) for the network thread to end it."""
        if link.broken is not None:
            return
        session = self._session
        try:
            packets = link.read()
            if packets is not None:
                self._last_in = now
                link.broken = self._handle_locked(link, packets, now)
                if link.broken is not None:
                    return
            if session.acked and (
                len(session.acked) >= ACK_BATCH or now - self._acked_since >= ACK_MAX_DELAY_S
            ):
                self._delete_acked_locked()
            # Keepalive: ping after a keepalive without traffic; dead once 1.5 keepalives
            # passed without a byte from the broker (a black-holed link gives no RST, no FIN).
            if self._ping_sent is not None:
                if now - self._last_in >= DEAD_AFTER_KEEPALIVES * self._keepalive:
                    link.broken = f"no answer from the broker for {now - self._last_in:.1f} s"
                    return
                if packets is not None:
                    self._ping_sent = None  # the broker answered (PINGRESP or anything else)
            elif now - self._last_in >= self._keepalive or now - self._last_out >= self._keepalive:
                link.out += PINGREQ_PACKET
                self._ping_sent = now
            # A broker that answers pings but acknowledges nothing: say so, once a connection.
            silent_s = session.waiting_for_ack(now)
            if silent_s >= self._keepalive and not self._silence_reported:
                self._silence_reported = True
                self._connector.reporter.warning(
                    f"connected but nothing acknowledged for {silent_s:.0f} s "
                    f"({len(session.inflight) + len(session.control_ids)} messages waiting)"
                )
            self._fill_locked(link, now)
            if link.out:
                link.flush()
                self._last_out = now
        except (OSError, ProtocolError) as exc:
            link.broken = describe_io_error(exc)
        finally:
            if link.out or link.broken is not None or session.cursor < self._spool.last_id:
                # The network thread waits for room in the socket or in the window, or ends
                # the link.
                self._wake()

    def _fill_locked(self, link: Link, now: float) -> None:
        """Encode status and stats messages, then spooled rows, until the window is full."""
        session = self._session
        room = session.room()
        if room <= 0:
            return
        encoders = self._encoders
        if self._status_due and not self._closing:
            self._status_due = False
            self._controls.appendleft(_Control("status", self._status_message("online"), None))
        while self._controls and room > 0:
            kind, message, done = self._controls.popleft()
            encoder = encoders.status if kind == "status" else encoders.stats
            keep = STATUS_REQUIRED if kind == "status" else STATS_REQUIRED
            payload = _fit(encoder, message, encoders.max_packet_size, keep)
            if payload is None:
                log.warning("MQTT %s message skipped: over the broker's packet size limit", kind)
                if done is not None:
                    done.set()
                continue
            if encoders.qos:
                encoder.encode_into(link.out, session.send_control(done, now), payload)
                room -= 1
            else:
                encoder.encode_into(link.out, 0, payload)
                if done is not None:
                    done.set()
        if self._closing or room <= 0:
            return  # the offline status is the last message
        if not session.ready_to_resume(now):
            return
        # Refill in chunks: one spool read per few PUBACKs, not one per PUBACK.
        if session.inflight and room < max(1, session.window // 8):
            return
        rows = self._take_rows_locked(room)
        if not rows:
            return
        if encoders.qos:
            oversize = session.assign(
                rows, encoders.exits.encode_into, link.out, encoders.max_payload, now
            )
        else:
            oversize = session.sent_unacknowledged(rows, encoders.max_payload)
            sent = set(oversize)
            for row, payload in rows:
                if row not in sent:
                    encoders.exits.encode_into(link.out, 0, payload)
            self.published += len(rows) - len(oversize)
        if oversize:
            self._oversize_locked(oversize)

    def _oversize_locked(self, rows: list[int]) -> None:
        """Events the broker would refuse (Maximum Packet Size): deleted and counted."""
        if not self.dropped_oversize:
            log.error(
                "MQTT broker %s takes packets up to %d bytes: an event over it is skipped "
                "(counted as dropped_oversize)",
                self._connector.options.url,
                self._encoders.max_packet_size,
            )
        self.dropped_oversize += len(rows)
        if not self._session.acked:
            self._acked_since = time.monotonic()
        self._session.acked += rows

    def _take_rows_locked(self, room: int) -> list[tuple[int, bytes]]:
        """Up to ``room`` rows after the cursor, from ``_fresh`` or else the spool."""
        spool = self._spool
        session = self._session
        rows: list[tuple[int, bytes]] = []
        cursor = session.cursor
        fresh = self._fresh
        if fresh and self._fresh_generation != spool.generation:
            fresh.clear()  # some of them were dropped or lost with a replaced file
        while room > 0 and cursor < spool.last_id:
            if fresh and fresh[0][0] <= cursor:  # passed by a spool read
                del fresh[: bisect.bisect_right(fresh, cursor, key=_row_id)]
            if fresh and fresh[0][0] == cursor + 1:
                batch = fresh[:room]
                del fresh[:room]
            else:
                batch = spool.read_after(cursor, room)
                if not batch:
                    break
            cursor = batch[-1][0]
            if session.skip_rows:
                batch = [r for r in batch if r[0] not in session.skip_rows]
            rows += batch
            room -= len(batch)
        session.advance(cursor)
        return rows

    def _keep_fresh_locked(self, ids: range, payloads: list[bytes]) -> None:
        """Keep the rows just stored (``ids``, the last of ``payloads``) for publishing."""
        if not ids:
            return  # nothing stored; rows that vanished show in the spool's generation
        fresh = self._fresh
        generation = self._spool.generation
        if fresh and (fresh[-1][0] + 1 != ids.start or self._fresh_generation != generation):
            fresh.clear()
        # Only while connected, and at most FRESH_ROWS or a window: otherwise the spool serves.
        if self._connected and len(fresh) + len(ids) <= max(FRESH_ROWS, self._session.max_window):
            fresh += zip(ids, payloads[len(payloads) - len(ids) :], strict=True)
            self._fresh_generation = generation
        else:
            fresh.clear()

    def _delete_acked_locked(self) -> None:
        session = self._session
        if session.acked:
            self._spool.ack(session.acked)
            session.acked = []

    def _wake(self) -> None:
        if not self._wake_pending and threading.get_ident() != self._thread.ident:
            self._wake_pending = True
            os.eventfd_write(self._wake_fd, 1)

    # --- Sink protocol and agent hooks --------------------------------------------------------

    def emit(self, events: Sequence[ExitEvent]) -> None:
        payloads = [_to_json(ev) for ev in events]
        with self._lock:
            # Rows handed to the broker are protected from the drop-oldest rule: they may be
            # delivered, and must not be counted as both published and dropped.
            ids, _ = self._spool.append_ids(payloads, protect_upto=self._session.handed)
            self._keep_fresh_locked(ids, payloads)
            if self._link is not None:
                self._last_emit = now = time.monotonic()
                self._pump_locked(self._link, now)

    def counters(self) -> dict[str, int]:
        """This sink's part of the stats (exact: spool depth counts undeleted acks out)."""
        with self._lock:
            self._delete_acked_locked()
            spool = self._spool.counters
            return {
                "published": self.published,
                "dropped_queue": spool.dropped_error,
                "dropped_spool": spool.dropped_full + spool.dropped_corrupt,
                "dropped_oversize": self.dropped_oversize,
                "spool_depth": self._spool.depth,
                "spool_bytes": self._spool.payload_bytes,
                "inflight": len(self._session.inflight),
                "spool_replayed": spool.replayed,
                "spool_corrupt_files": spool.corrupt_files,
                "rejected": self.rejected,
                "connects": self.connects,
            }

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def broker(self) -> str:
        """The broker in use (or tried next), as a URL."""
        return str(self._connector.options.url)

    def publish_stats(self, agent_counters: Mapping[str, int | float]) -> dict[str, Any]:
        """Publish `<prefix>/<host>/stats` (skipped while disconnected); returns the stats."""
        stats: dict[str, Any] = {
            "host": self.identity.host,
            "time": utc_now(),
            **agent_counters,
            **self.counters(),
            "connected": self._connected,
        }
        with self._lock:
            self._last_counters = stats
            drops = tuple(stats.get(k) for k in DROP_COUNTERS)
            if drops != self._last_status_drops:  # keep the retained status's counters current
                self._last_status_drops = drops
                self._status_due = True
            if self._link is not None:
                self._controls.append(_Control("stats", stats, None))
                self._pump_locked(self._link, time.monotonic())
        return stats

    def _status_message(self, state: str, **extra: Any) -> dict[str, Any]:
        status: dict[str, Any] = {
            "state": state,
            "host": self.identity.host,
            **extra,
            "version": self.identity.version,
            "probe": self.identity.probe,
            "started_at": self.identity.started_at,
            "time": utc_now(),
        }
        for key in (*DROP_COUNTERS, "events_seen", "published", "dropped_oversize"):
            if key in self._last_counters:
                status[key] = self._last_counters[key]
        return status

    def flush(self, timeout: float) -> bool:
        """Wait until every spooled event is acknowledged; False on timeout or disconnect."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                self._delete_acked_locked()
                if self._spool.depth == 0:
                    return True
                if self._link is None:
                    return False
                self._pump_locked(self._link, time.monotonic())
            time.sleep(0.02)
        return False

    def on_stop(self, total: int) -> None:
        self.flush(FLUSH_TIMEOUT_S)  # before the agent's final counters

    def close(self) -> None:
        """Flush, publish the retained offline status, disconnect, close the spool."""
        flushed = self.flush(FLUSH_TIMEOUT_S)
        if not flushed and self._spool.depth:
            log.warning(
                "%d events not yet acknowledged stay in the spool for the next start",
                self._spool.depth,
            )
        offline: threading.Event | None = None
        with self._lock:
            self._closing = True
            if self._link is not None:
                offline = threading.Event()
                message = self._status_message("offline", reason="stopped")
                self._controls.append(_Control("status", message, offline))
                self._pump_locked(self._link, time.monotonic())
        self._wake()  # no more emits: the network thread reads the acknowledgement
        if offline is not None:
            offline.wait(OFFLINE_TIMEOUT_S)
        self._stop = True
        os.eventfd_write(self._stop_fd, 1)
        self._thread.join(JOIN_TIMEOUT_S)
        if self._thread.is_alive():  # leave its descriptors alone: it may still use them
            log.warning("MQTT network thread did not stop within %.0f s", JOIN_TIMEOUT_S)
        else:
            os.close(self._wake_fd)
            os.close(self._stop_fd)
        with self._lock:
            self._delete_acked_locked()
            self._spool.close()


def _disconnect_text(packet: Disconnect) -> str:
    """The broker's DISCONNECT in words, with its reason string when it sent one."""
    why = f"the broker disconnected: {disconnect_reason(packet.reason_code)}"
    text = packet.properties.get(REASON_STRING)
    return why + (f' ("{text}")' if isinstance(text, str) else "")

"""MqttSink: every event goes to the spool first, then to the broker with QoS 1.

Rows leave the spool only once the broker acknowledges them: an outage or a crash costs
duplicates, never silent loss. ``_lock`` guards all publisher state and the link's socket;
threading and locking rules are in docs/design.md.
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
from typing import Any, NamedTuple, cast

from procmon.config import MqttConfig
from procmon.event import SCHEMA_ID, ExitEvent
from procmon.mqtt.broker_url import (
    BrokerOptions,
    ConnectionReporter,
    describe_connect_error,
    describe_refusal,
)
from procmon.mqtt.conn import (
    Backoff,
    Interrupted,
    Link,
    connack_reason,
    describe_io_error,
    disconnect_reason,
    open_link,
    puback_reason,
    refused,
    say_goodbye,
    tls_context,
)
from procmon.mqtt.wire import (
    CONTENT_TYPE,
    MESSAGE_EXPIRY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR,
    PINGREQ_PACKET,
    PROTOCOL_5,
    PROTOCOL_311,
    RECEIVE_MAXIMUM,
    SERVER_KEEP_ALIVE,
    USER_PROPERTY,
    Disconnect,
    Packet,
    PingResp,
    PropertyValue,
    ProtocolError,
    PubAck,
    PubAcks,
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
# While emits come at least this often and the window has room, they read the PUBACKs; the
# network thread only watches the socket once they stop, so a steady stream never wakes it.
EMIT_READS_S = 0.1

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

    encoder: PublishEncoder
    payload: bytes
    done: threading.Event | None  # set once acknowledged or the connection is gone


class MqttSink:
    """The Sink that publishes through the spool. Takes ownership of ``spool`` (closes it)."""

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
        self._options = options or BrokerOptions.build(
            cfg.broker, cfg.username, cfg.password_file, cfg.ca_file, cfg.cert_file, cfg.key_file
        )
        self._tls = tls_context(self._options)  # BrokerConfigError now, not at each connect
        self._spool = spool
        self._protocol = PROTOCOL_5 if cfg.protocol == "5" else PROTOCOL_311
        v5 = self._protocol == PROTOCOL_5
        self._client_id = cfg.client_id or f"procmon-{identity.host}"
        self._keepalive_s = cfg.keepalive_s
        self._max_window = min(cfg.max_inflight, MAX_WINDOW)
        self._retry_max_s = float(cfg.reconnect_max_s)
        self._reporter = ConnectionReporter(
            log, self._options.url, "retrying with backoff; events stay in the spool"
        )
        self._reporter.warn_plain_credentials(self._options.username)
        if self._options.username and self._options.username != identity.host:
            log.warning(
                "mqtt.username %r is not host_id %r: a broker ACL that lets each user publish "
                "only under its own host's topics (the procmon_broker role's) refuses every "
                "event, and MQTT 3.1.1 cannot say so",
                self._options.username,
                identity.host,
            )

        def encoder(topic: str, schema: str, retain: bool, expiry_s: int = 0) -> PublishEncoder:
            props = _v5_properties(schema, expiry_s) if v5 else []
            return PublishEncoder(topic, protocol=self._protocol, retain=retain, properties=props)

        self._exit_encoder = encoder(self.topics.exits, SCHEMA_ID, False, cfg.message_expiry_s)
        self._status_encoder = encoder(self.topics.status, STATUS_SCHEMA, True)
        self._stats_encoder = encoder(self.topics.stats, STATS_SCHEMA, False)
        self._will_properties: list[tuple[int, PropertyValue]] = (
            [(CONTENT_TYPE, "application/json"), (USER_PROPERTY, ("schema", STATUS_SCHEMA))]
            if v5
            else []
        )

        # Guarded by _lock (see docs/design.md).
        self._lock = threading.Lock()
        self._link: Link | None = None  # set while connected: whoever holds _lock may send
        self._window = self._max_window
        self._keepalive = float(cfg.keepalive_s)  # the broker's Server Keep Alive overrides it
        self._cursor = 0  # the last row read for publishing; moves back to re-send
        self._handed = 0  # the highest row ever handed to the broker
        self._inflight: dict[int, int] = {}  # packet id -> spool row id
        # After a rejection moved the cursor back: rows still in flight, not to be sent twice.
        self._skip_rows: set[int] = set()
        self._control_ids: dict[int, threading.Event | None] = {}  # status and stats messages
        self._controls: collections.deque[_Control] = collections.deque()
        self._last_packet_id = 0
        # Rows emit just stored, still in memory: published without reading them back from
        # the spool while they directly follow the cursor.
        self._fresh: list[tuple[int, bytes]] = []
        self._fresh_generation = spool.generation
        self._acked: list[int] = []  # acknowledged rows not yet deleted from the spool
        self._acked_since = 0.0
        self._rewind_to: int | None = None  # after rejections: re-send from here
        self._resume_at = 0.0
        self._reject_delay = 1.0
        self._reported_rejections: set[int] = set()
        self._last_in = self._last_out = self._last_emit = 0.0
        self._ping_sent: float | None = None
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

        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread = threading.Thread(target=self._network_main, name="procmon-mqtt", daemon=True)
        self._thread.start()

    # --- the network thread: connections ---------------------------------------------------

    def _network_main(self) -> None:
        backoff = Backoff(FIRST_RETRY_S, self._retry_max_s)
        while not self._stop:
            link: Link | None = None
            try:
                link = self._connect()
            except Interrupted:
                return
            except Exception:  # a bug, not the network: keep trying all the same
                log.exception("MQTT connect step failed")
            if link is not None:
                backoff.reset()
                why = "internal error"
                try:
                    why = self._serve(link)
                except (OSError, ProtocolError) as exc:
                    why = describe_io_error(exc)
                except Exception:
                    log.exception("MQTT network step failed")
                finally:
                    self._connection_ended(why)
                    link.close()
            if not self._stop:
                self._pause(backoff.next())

    def _pause(self, seconds: float) -> None:
        """Sleep between attempts; close() ends it at once."""
        poller = select.poll()
        poller.register(self._stop_fd, select.POLLIN)
        poller.poll(seconds * 1000)

    def _connect(self) -> Link | None:
        with self._lock:
            will_payload = self._status_json("offline", reason="connection lost")
        packet = encode_connect(
            protocol=self._protocol,
            client_id=self._client_id,
            keepalive=self._keepalive_s,
            clean_start=True,
            username=self._options.username,
            password=self._options.password,
            will=Will(
                self.topics.status, will_payload, qos=1, retain=True,
                properties=self._will_properties,
            ),
        )  # fmt: skip
        try:
            link, connack = open_link(
                self._options.url, self._tls, packet, self._protocol, self._stop_fd
            )
        except ProtocolError as exc:
            self._reporter.failed(f"protocol error ({exc})")
            return None
        except OSError as exc:
            self._reporter.failed(describe_connect_error(exc))
            return None
        if refused(connack):
            link.close()
            self._reporter.failed(describe_refusal(connack_reason(connack, self._protocol)))
            return None
        self._reporter.connected()
        # MQTT 5 brokers may accept fewer unacknowledged publishes, or impose a keepalive.
        receive_max = connack.properties.get(RECEIVE_MAXIMUM)
        server_keepalive = connack.properties.get(SERVER_KEEP_ALIVE)
        with self._lock:
            self._window = self._max_window
            if isinstance(receive_max, int) and receive_max > 0:
                self._window = min(self._max_window, receive_max)
            self._keepalive = float(self._keepalive_s)
            if isinstance(server_keepalive, int) and server_keepalive > 0:
                self._keepalive = float(server_keepalive)
        return link

    def _connection_ended(self, why: str) -> None:
        with self._lock:
            self._link = None
            was_connected, self._connected = self._connected, False
            if was_connected and not self._closing:
                self._reporter.lost(why, time.monotonic() - self._connected_at)
            self._ping_sent = None
            for done in self._control_ids.values():
                if done is not None:
                    done.set()
            self._control_ids.clear()
            for control in self._controls:
                if control.done is not None:
                    control.done.set()
            self._controls.clear()
            if not self._stop:  # close() may be closing the spool
                self._delete_acked_locked()
            if self._inflight:  # clean session: re-send them, in spool order
                self._cursor = min(self._cursor, min(self._inflight.values()) - 1)
            self._inflight.clear()
            self._skip_rows.clear()
            self._fresh.clear()

    # --- the network thread: one connection ------------------------------------------------

    def _serve(self, link: Link) -> str:
        """Read, keep alive and refill until the link breaks (returns why) or close()."""
        now = time.monotonic()
        with self._lock:
            self._last_in = self._last_out = now
            self._ping_sent = None
            self.connects += 1
            self._connected = True
            self._connected_at = now
            self._status_due = True  # the retained online status goes first
            why = self._handle_locked(link.backlog) if link.backlog else None
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
                    waiting = self._cursor < self._spool.last_id
                    emits_read = (
                        now - self._last_emit < EMIT_READS_S and not waiting and not self._closing
                    )
                    wanted = 0 if emits_read else select.EPOLLIN
                    if link.out and not link.write_needs_read:
                        wanted |= select.EPOLLOUT
                    timeout = self._next_timeout(now, emits_read)
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
                with self._lock:
                    self._pump_locked(link, now)
        finally:
            epoll.close()
        with self._lock:
            self._link = None  # from here on, nobody else sends
        say_goodbye(link, encode_disconnect(self._protocol), GOODBYE_TIMEOUT_S)
        return "closed"

    def _next_timeout(self, now: float, emits_read: bool) -> float:
        keepalive = self._keepalive
        if self._ping_sent is None:
            due = min(self._last_in, self._last_out) + keepalive
        else:
            due = self._last_in + DEAD_AFTER_KEEPALIVES * keepalive
        if self._acked:
            due = min(due, self._acked_since + ACK_MAX_DELAY_S)
        if self._rewind_to is not None and self._resume_at > now:  # past: waits for room
            due = min(due, self._resume_at)
        if emits_read:  # then watch the socket ourselves
            due = min(due, self._last_emit + EMIT_READS_S)
        return max(0.0, due - now)

    def _handle_locked(self, packets: list[Packet]) -> str | None:
        """Account for what the broker sent; returns why the link ends, if it does."""
        acked = self._acked
        inflight = self._inflight
        before = len(acked)
        for packet in packets:
            if type(packet) is PubAcks:
                pop = inflight.pop
                found = [pop(packet_id, None) for packet_id in packet.packet_ids]
                if None in found:  # status and stats messages among them
                    for packet_id, row in zip(packet.packet_ids, found, strict=True):
                        if row is None:
                            self._control_acked(packet_id)
                    found = [row for row in found if row is not None]
                acked += cast(list[int], found)
            elif type(packet) is PubAck:
                row = inflight.pop(packet.packet_id, None)
                if row is None:
                    self._control_acked(packet.packet_id)
                elif packet.reason_code >= 0x80:
                    self._rejected(row, packet.reason_code)
                else:
                    acked.append(row)
            elif type(packet) is PingResp:
                self._ping_sent = None
            elif type(packet) is Disconnect:
                why = disconnect_reason(packet.reason_code)
                return f"the broker disconnected: {why}"
            else:
                return f"protocol error: unexpected {type(packet).__name__}"
        if len(acked) > before:
            if not before:
                self._acked_since = time.monotonic()
            self.published += len(acked) - before
            self._reject_delay = 1.0
        return None

    def _control_acked(self, packet_id: int) -> None:
        if packet_id in self._control_ids:
            done = self._control_ids.pop(packet_id)
            if done is not None:
                done.set()

    def _rejected(self, row: int, code: int) -> None:
        """The broker refused one event: keep it spooled and re-send after a pause."""
        self.rejected += 1
        if code not in self._reported_rejections:
            self._reported_rejections.add(code)
            log.error(
                "MQTT broker %s rejected an event on %s: %s; events stay in the spool and are "
                "re-sent with backoff",
                self._options.url,
                self.topics.exits,
                puback_reason(code),
            )
        self._rewind_to = min(row - 1, self._rewind_to if self._rewind_to is not None else row)
        self._resume_at = time.monotonic() + self._reject_delay
        self._reject_delay = min(self._reject_delay * 2, self._retry_max_s)

    # --- pumping (any thread, _lock held) -----------------------------------------------------

    def _pump_locked(self, link: Link, now: float) -> None:
        """One round on the link, never blocking: take in what the broker sent, delete acked
        rows when due, keep alive, fill the window and send. A broken link is marked
        (``link.broken``) for the network thread to end it."""
        if link.broken is not None:
            return
        try:
            packets = link.read()
            if packets is not None:
                self._last_in = now
                link.broken = self._handle_locked(packets)
                if link.broken is not None:
                    return
            if self._acked and (
                len(self._acked) >= ACK_BATCH or now - self._acked_since >= ACK_MAX_DELAY_S
            ):
                self._delete_acked_locked()
            # Keepalive: ping after a keepalive without traffic; dead once 1.5 keepalives
            # passed without a byte from the broker (a black-holed link gives no RST, no FIN).
            if self._ping_sent is not None:
                if now - self._last_in >= DEAD_AFTER_KEEPALIVES * self._keepalive:
                    link.broken = f"no answer from the broker for {now - self._last_in:.1f} s"
                    return
            elif now - self._last_in >= self._keepalive or now - self._last_out >= self._keepalive:
                link.out += PINGREQ_PACKET
                self._ping_sent = now
            self._fill_locked(link, now)
            if link.out:
                link.flush()
                self._last_out = now
        except (OSError, ProtocolError) as exc:
            link.broken = describe_io_error(exc)
        finally:
            if link.out or link.broken is not None or self._cursor < self._spool.last_id:
                # The network thread waits for room in the socket or in the window, or ends
                # the link.
                self._wake()

    def _next_packet_id(self) -> int:
        packet_id = self._last_packet_id
        while True:
            packet_id = packet_id + 1 if packet_id < 0xFFFF else 1
            if packet_id not in self._inflight and packet_id not in self._control_ids:
                self._last_packet_id = packet_id
                return packet_id

    def _fill_locked(self, link: Link, now: float) -> None:
        """Encode status and stats messages, then spooled rows, until the window is full."""
        room = self._window - len(self._inflight) - len(self._control_ids)
        if room <= 0:
            return
        if self._status_due and not self._closing:
            self._status_due = False
            self._controls.appendleft(
                _Control(self._status_encoder, self._status_json("online"), None)
            )
        while self._controls and room > 0:
            control = self._controls.popleft()
            packet_id = self._next_packet_id()
            self._control_ids[packet_id] = control.done
            control.encoder.encode_into(link.out, packet_id, control.payload)
            room -= 1
        if self._closing or room <= 0:
            return  # the offline status is the last message
        if self._rewind_to is not None:
            if now < self._resume_at:
                return
            self._cursor = min(self._cursor, self._rewind_to)
            self._rewind_to = None
            self._skip_rows = set(self._inflight.values())
        # Refill in chunks: one spool read per few PUBACKs, not one per PUBACK.
        if self._inflight and room < max(1, self._window // 8):
            return
        rows = self._take_rows_locked(room)
        if not rows:
            return
        out = link.out
        encode_into = self._exit_encoder.encode_into
        inflight = self._inflight
        controls = self._control_ids
        packet_id = self._last_packet_id
        for row, payload in rows:  # _next_packet_id, inlined: this loop runs for every event
            packet_id = packet_id + 1 if packet_id < 0xFFFF else 1
            while packet_id in inflight or packet_id in controls:
                packet_id = packet_id + 1 if packet_id < 0xFFFF else 1
            inflight[packet_id] = row
            encode_into(out, packet_id, payload)
        self._last_packet_id = packet_id

    def _take_rows_locked(self, room: int) -> list[tuple[int, bytes]]:
        """Up to ``room`` rows after the cursor, from ``_fresh`` or else the spool."""
        spool = self._spool
        rows: list[tuple[int, bytes]] = []
        cursor = self._cursor
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
            if self._skip_rows:
                batch = [r for r in batch if r[0] not in self._skip_rows]
            rows += batch
            room -= len(batch)
        self._cursor = cursor
        self._handed = max(self._handed, cursor)
        return rows

    def _keep_fresh_locked(self, ids: range, payloads: list[bytes]) -> None:
        """Keep the rows just stored (``ids``, the last of ``payloads``) for publishing."""
        if not ids:
            return  # nothing stored; rows that vanished show in the spool's generation
        fresh = self._fresh
        generation = self._spool.generation
        if fresh and (fresh[-1][0] + 1 != ids.start or self._fresh_generation != generation):
            fresh.clear()
        # Only while connected, and at most a window's worth: otherwise the spool serves.
        if self._connected and len(fresh) + len(ids) <= self._max_window:
            fresh += zip(ids, payloads[len(payloads) - len(ids) :], strict=True)
            self._fresh_generation = generation
        else:
            fresh.clear()

    def _delete_acked_locked(self) -> None:
        if self._acked:
            self._spool.ack(self._acked)
            self._acked = []

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
            ids, _ = self._spool.append_ids(payloads, protect_upto=self._handed)
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
                "spool_depth": self._spool.depth,
                "spool_bytes": self._spool.payload_bytes,
                "inflight": len(self._inflight),
                "spool_replayed": spool.replayed,
                "spool_corrupt_files": spool.corrupt_files,
                "rejected": self.rejected,
                "connects": self.connects,
            }

    @property
    def connected(self) -> bool:
        return self._connected

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
                self._controls.append(
                    _Control(self._stats_encoder, json.dumps(stats).encode(), None)
                )
                self._pump_locked(self._link, time.monotonic())
        return stats

    def _status_json(self, state: str, **extra: Any) -> bytes:
        status: dict[str, Any] = {
            "state": state,
            "host": self.identity.host,
            "version": self.identity.version,
            "probe": self.identity.probe,
            "started_at": self.identity.started_at,
            "time": utc_now(),
        }
        for key in ("events_seen", "published", "dropped_kernel", "dropped_queue", "dropped_spool"):
            if key in self._last_counters:
                status[key] = self._last_counters[key]
        status.update(extra)
        return json.dumps(status).encode()

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
                payload = self._status_json("offline", reason="stopped")
                self._controls.append(_Control(self._status_encoder, payload, offline))
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

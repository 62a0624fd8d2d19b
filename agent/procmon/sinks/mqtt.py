"""MqttSink: every event goes to the spool first, then to the broker with QoS 1.

Data flow: the probe thread serializes a batch and appends it to the spool in one transaction
(``emit``). A publisher reads rows in id order and hands at most ``window`` of them to paho;
each PUBACK (``on_publish``, in paho's ``loop_start`` network thread) deletes its row. Nothing
is deleted before the broker has acknowledged it, so a broker outage or an agent crash costs
duplicates (consumers de-duplicate on ``event_id``), never silent loss.

Locking: ``_lock`` guards the publisher state. paho calls ``on_publish`` while holding its own
message lock, and ``publish()`` takes that lock, so callbacks only *try* ``_lock``; whoever holds
it re-checks for work after releasing (``_kick``), so no acknowledgement waits longer than the
next PUBACK, emit or ``service()`` call.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from procmon.broker_url import (
    BrokerOptions,
    ConnectionReporter,
    describe_connect_error,
    describe_refusal,
)
from procmon.config import MqttConfig
from procmon.event import SCHEMA_ID, ExitEvent
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


class _FrozenProperties(Properties):
    """PUBLISH properties packed once: paho packs them again for every message otherwise
    (about 5 % of the agent's CPU at 1k exits/s)."""

    def __init__(self, props: Properties) -> None:
        super().__init__(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        # Properties.__setattr__ admits only MQTT property names: go around it.
        self.__dict__.update(props.__dict__)
        self.__dict__["packed"] = props.pack()  # type: ignore[no-untyped-call]

    def pack(self) -> bytes:
        packed: bytes = self.__dict__["packed"]
        return packed


def _v5_properties(schema: str, expiry_s: int = 0) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = "application/json"
    props.PayloadFormatIndicator = 1  # UTF-8
    props.UserProperty = [("schema", schema)]
    if expiry_s:
        props.MessageExpiryInterval = expiry_s
    return _FrozenProperties(props)


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
        self._spool = spool
        self._v5 = cfg.protocol == "5"
        self._max_window = min(cfg.max_inflight, MAX_WINDOW)
        self._window = self._max_window
        self._retry_max_s = float(cfg.reconnect_max_s)
        self._reporter = ConnectionReporter(
            log, self._options.url, "retrying with backoff; events stay in the spool"
        )
        self._exit_props = _v5_properties(SCHEMA_ID, cfg.message_expiry_s) if self._v5 else None
        self._status_props = _v5_properties(STATUS_SCHEMA) if self._v5 else None
        self._stats_props = _v5_properties(STATS_SCHEMA) if self._v5 else None

        # Publisher state, guarded by _lock.
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # paho message id -> spool row id
        self._inflight_rows: set[int] = set()
        self._control_mids: set[int] = set()  # status and stats messages
        self._cursor = 0  # highest row id handed to paho
        self._acked: list[int] = []  # row ids acked, not yet deleted from the spool
        self._acked_since = 0.0
        self._rewind_to: int | None = None  # after rejections: re-send from here
        self._resume_at = 0.0
        self._reject_delay = 1.0
        self._status_due = False
        self._last_counters: dict[str, Any] = {}
        self._last_status_drops: tuple[Any, ...] = ()
        self._reported_rejections: set[int] = set()

        # Written by paho's thread, read anywhere (single assignments, GIL-atomic).
        self._acks: collections.deque[tuple[int, ReasonCode]] = collections.deque()
        self._wake = False
        self._connected = False
        self._closing = False
        self.published = 0
        self.rejected = 0
        self.connects = 0

        self._client = self._make_client(cfg)
        self._client.connect_async(
            self._options.url.host,
            self._options.url.port,
            keepalive=cfg.keepalive_s,
            clean_start=True if self._v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        )
        self._client.loop_start()

    def _make_client(self, cfg: MqttConfig) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"procmon-{self.identity.host}",
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else True,
        )
        self._options.apply(client)
        client.reconnect_delay_set(min_delay=1, max_delay=cfg.reconnect_max_s)
        # The window is ours (it counts status and stats messages too): paho sends at once.
        client.max_inflight_messages_set(0)
        client.suppress_exceptions = True  # a failing callback must not end the network thread
        will_props = (
            Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            if self._v5
            else None
        )
        if will_props is not None:
            will_props.ContentType = "application/json"
            will_props.UserProperty = [("schema", STATUS_SCHEMA)]
        client.will_set(
            self.topics.status,
            self._status_json("offline", reason="connection lost"),
            qos=1,
            retain=True,
            properties=will_props,
        )
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # --- paho callbacks (network thread): never block on _lock, never raise -------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            self._connected_to_broker(reason, properties)
        except Exception:  # paho would otherwise swallow it silently
            log.exception("MQTT on_connect failed")

    def _connected_to_broker(self, reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            self._reporter.failed(describe_refusal(reason))
            return
        self._reporter.connected()
        # MQTT 5 brokers may accept fewer unacknowledged publishes than we would send.
        receive_max = getattr(properties, "ReceiveMaximum", None)
        self._window = min(self._max_window, receive_max or self._max_window)
        self.connects += 1
        self._connected = True
        self._status_due = True
        self._wake = True
        self._kick(blocking=False)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError:` block: the exception is the reason.
        self._reporter.failed(describe_connect_error(sys.exc_info()[1]))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected, self._connected = self._connected, False
        if was_connected and not self._closing:
            self._reporter.lost(str(reason))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._acks.append((mid, reason))
        self._kick(blocking=False)

    # --- the publisher ------------------------------------------------------------------------

    def _kick(self, blocking: bool) -> None:
        """Run the publisher if _lock is free; repeat while others left work for us."""
        while True:
            if not self._lock.acquire(blocking=blocking):
                return
            try:
                self._service_locked()
            except Exception:  # a callback must not die: the next kick retries
                log.exception("MQTT publisher step failed")
            finally:
                self._lock.release()
            if not self._acks and not self._wake:
                return
            blocking = False

    def _service_locked(self, flush_acks: bool = False) -> None:
        self._wake = False
        self._take_acks()
        if self._acked and (
            flush_acks
            or len(self._acked) >= ACK_BATCH
            or time.monotonic() - self._acked_since >= ACK_MAX_DELAY_S
        ):
            self._spool.ack(self._acked)
            self._acked = []
        if self._connected:
            if self._status_due:
                self._status_due = False
                self._publish_control(self.topics.status, self._status_json("online"), True)
            self._pump()

    def _take_acks(self) -> None:
        acks = self._acks
        while acks:
            mid, reason = acks.popleft()
            if mid in self._control_mids:
                self._control_mids.discard(mid)
                continue
            row = self._inflight.pop(mid, None)
            if row is None:
                continue
            self._inflight_rows.discard(row)
            if reason.is_failure:
                self._rejected(row, reason)
                continue
            if not self._acked:
                self._acked_since = time.monotonic()
            self._acked.append(row)
            self.published += 1
            self._reject_delay = 1.0

    def _rejected(self, row: int, reason: ReasonCode) -> None:
        """The broker refused one event: keep it spooled and re-send after a pause."""
        self.rejected += 1
        if reason.value not in self._reported_rejections:
            self._reported_rejections.add(reason.value)
            log.error(
                "MQTT broker %s rejected an event on %s: %s; events stay in the spool and are "
                "re-sent with backoff",
                self._options.url,
                self.topics.exits,
                reason,
            )
        self._rewind_to = min(row - 1, self._rewind_to if self._rewind_to is not None else row)
        self._resume_at = time.monotonic() + self._reject_delay
        self._reject_delay = min(self._reject_delay * 2, self._retry_max_s)

    def _pump(self) -> None:
        """Hand spooled rows to paho until the in-flight window is full."""
        if self._rewind_to is not None:
            if time.monotonic() < self._resume_at:
                return
            self._cursor = min(self._cursor, self._rewind_to)
            self._rewind_to = None
        room = self._window - len(self._inflight) - len(self._control_mids)
        # Refill in chunks: one spool read per few PUBACKs, not one per PUBACK.
        if room <= 0 or (self._inflight and room < max(1, self._window // 8)):
            return
        publish = self._client.publish
        topic = self.topics.exits
        while room > 0:
            rows = self._spool.read_after(self._cursor, room)
            if not rows:
                return
            for row, payload in rows:
                if row in self._inflight_rows:  # after a rewind: still with the broker
                    self._cursor = row
                    continue
                info = publish(topic, payload, qos=1, properties=self._exit_props)
                if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                    return  # message id still in use; the next PUBACK frees it
                self._inflight[info.mid] = row
                self._inflight_rows.add(row)
                self._cursor = row
                room -= 1

    def _publish_control(self, topic: str, payload: bytes, retain: bool) -> mqtt.MQTTMessageInfo:
        props = self._status_props if topic == self.topics.status else self._stats_props
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=props)
        self._control_mids.add(info.mid)
        return info

    # --- Sink protocol and agent hooks --------------------------------------------------------

    def emit(self, events: Sequence[ExitEvent]) -> None:
        payloads = [_to_json(ev) for ev in events]
        with self._lock:
            # Rows already with paho are protected from the drop-oldest rule: they may be
            # delivered, and must not be counted as both published and dropped.
            self._spool.append(payloads, protect_upto=self._cursor)
        self._kick(blocking=True)

    def service(self) -> None:
        """Called from the agent loop: flushes acks and refills the window when idle."""
        self._wake = True
        self._kick(blocking=True)

    def counters(self) -> dict[str, int]:
        """This sink's part of the stats (exact: spool depth counts undeleted acks out)."""
        with self._lock:
            self._take_acks()
            if self._acked:
                self._spool.ack(self._acked)
                self._acked = []
            spool = self._spool.counters
            return {
                "published": self.published,
                "dropped_queue": spool.dropped_error,
                "dropped_spool": spool.dropped_full + spool.dropped_corrupt,
                "spool_depth": self._spool.depth,
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
            if self._connected:
                self._publish_control(self.topics.stats, json.dumps(stats).encode(), False)
        self._kick(blocking=True)
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
                self._service_locked(flush_acks=True)
                if self._spool.depth == 0:
                    return True
                if not self._connected:
                    return False
            time.sleep(0.02)
        return False

    def close(self) -> None:
        """Flush, publish the retained offline status, disconnect, close the spool."""
        flushed = self.flush(FLUSH_TIMEOUT_S)
        if not flushed and self._spool.depth:
            log.warning(
                "%d events not yet acknowledged stay in the spool for the next start",
                self._spool.depth,
            )
        self._closing = True
        with self._lock:
            info = self._publish_control(
                self.topics.status, self._status_json("offline", reason="stopped"), True
            )
        if self._connected:
            with contextlib.suppress(RuntimeError, ValueError):  # not queued: nothing to wait for
                info.wait_for_publish(OFFLINE_TIMEOUT_S)
        self._client.disconnect()
        self._client.loop_stop()
        with self._lock:
            self._take_acks()
            if self._acked:
                self._spool.ack(self._acked)
                self._acked = []
        self._spool.close()

"""`procmon subscribe`: validated ExitEvents from the bus as JSON lines (for log shippers), or
human or seed lines, optionally filtered (host glob, failures only), with fleet metrics.

Every message is validated against ExitEvent. Bad ones (not JSON, wrong fields, another
schema, over the size bound, retained, or speaking for another host than its topic's) are
counted, reported on stderr (rate-limited) and skipped; the consumer keeps going.
``$share/<group>/<filter>`` splits one stream across consumers; ``dedup`` drops repeated
(host, event_id) pairs (at-least-once delivery re-sends after outages) in a bounded window.

Throughput: messages arrive in batches (bounded_client.BoundedClient); each batch's lines are
written with one write and one flush, and only then acknowledged with one write of PUBACKs. A
batch ends when the socket has nothing more to read or after BATCH messages, so a line waits
at most one batch's work (tens of milliseconds) before it reaches the file.
"""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import functools
import gc
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from procmon.bounded_client import USER_PROPERTY, BoundedClient, Publish, WireProperties
from procmon.event import SCHEMA_ID, ExitEvent
from procmon.exit_status import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from procmon.fleet_metrics import FleetMetrics, side_filters
from procmon.mqtt.broker_url import (
    BrokerConfigError,
    BrokerOptions,
    ConnectionReporter,
    describe_connect_error,
    describe_refusal,
)
from procmon.signals import Signals
from procmon.sinks.stdout import ColorChoice, TextFormat, failed, render, use_color

log = logging.getLogger("procmon.subscribe")

MAX_PACKET = 1 << 20  # default --max-packet-size: a message larger is never held in memory
DEDUP_WINDOW = 100_000  # event ids remembered; re-deliveries come within minutes, not days
SESSION_EXPIRY_S = 7 * 24 * 3600  # a named consumer's queue survives a week of downtime

_to_json = ExitEvent.__pydantic_serializer__.to_json
_validate_json = ExitEvent.__pydantic_validator__.validate_json


@dataclass
class SubscribeCounters:
    received: int = 0
    written: int = 0
    duplicates: int = 0
    invalid: int = 0
    oversized: int = 0
    wrong_schema: int = 0
    spoofed: int = 0  # the event's host is not its topic's host level
    retained: int = 0  # a retained message on an exits topic: a replay, never a live exit
    filtered: int = 0  # valid, but not what --host or --failed asked for

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def summary(self) -> str:
        parts = ", ".join(
            f"{getattr(self, f.name)} {f.name.replace('_', ' ')}" for f in fields(self)
        )
        return f"procmon subscribe: {parts}"


class RateLimitedLines:
    """At most ``burst`` stderr lines per ``period`` seconds; the rest are counted."""

    def __init__(self, burst: int = 10, period: float = 10.0) -> None:
        self._burst = burst
        self._period = period
        self._window_start = time.monotonic()
        self._printed = 0
        self._suppressed = 0

    def report(self, line: str) -> None:
        now = time.monotonic()
        if now - self._window_start >= self._period:
            self._window_start, self._printed = now, 0
        if self._printed >= self._burst:
            self._suppressed += 1
            return
        self._printed += 1
        if self._suppressed:
            line += f" ({self._suppressed} similar reports suppressed before this one)"
            self._suppressed = 0
        print(line, file=sys.stderr, flush=True)


class ExitConsumer:
    """Validates messages and writes accepted events, one line each, at each ``flush()``."""

    def __init__(
        self,
        out: BinaryIO,
        dedup: bool,
        dedup_window: int = DEDUP_WINDOW,
        max_payload: int = MAX_PACKET,
        fmt: TextFormat = "json",
        color: bool = False,
        host_glob: str | None = None,
        failed_only: bool = False,
        metrics: FleetMetrics | None = None,
    ) -> None:
        self.out = out
        self.counters = SubscribeCounters()
        self._dedup = dedup
        # Keys are "host/event_id" strings, not tuples: the garbage collector does not walk
        # strings, and a full window of tuples made each of its passes cost milliseconds.
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._dedup_window = dedup_window
        self._max_payload = max_payload
        self._problems = RateLimitedLines()
        self._fmt: TextFormat = fmt
        self._color = color
        self._host_match = re.compile(fnmatch.translate(host_glob)).match if host_glob else None
        self._failed_only = failed_only
        self._metrics = metrics
        self._pending: list[bytes] = []
        self._reported = self.counters.as_dict()

    def oversized(self, topic: str, size: int) -> None:
        """A message too large to hold, dropped before it was read whole."""
        self.counters.received += 1
        self.counters.oversized += 1
        self._problems.report(
            f"skipped: {size}-byte message on {topic} (over {self._max_payload} bytes)"
        )

    def handle(
        self,
        topic: str,
        payload: bytes | bytearray,
        schema_property: str | None = None,
        retained: bool = False,
    ) -> bool:
        """Returns True when the message was accepted: its line goes out at ``flush()``."""
        c = self.counters
        if len(payload) > self._max_payload:
            self.oversized(topic, len(payload))
            return False
        c.received += 1
        if retained:
            c.retained += 1
            self._problems.report(f"skipped: a retained message on {topic} (a replay)")
            return False
        if schema_property is not None and schema_property != SCHEMA_ID:
            c.wrong_schema += 1
            self._problems.report(f"skipped: message on {topic} has schema {schema_property!r}")
            return False
        try:
            event: ExitEvent = _validate_json(payload)
        except ValidationError as exc:
            self._reject(topic, len(payload), exc)
            return False
        host = topic_host(topic)
        if event.host != host:
            c.spoofed += 1
            self._problems.report(f"skipped: event on {topic} speaks for host {event.host!r}")
            return False
        if self._dedup and self._is_duplicate(f"{host}/{event.event_id}"):
            c.duplicates += 1
            return False
        if (self._host_match and not self._host_match(host)) or (
            self._failed_only and not failed(event)
        ):
            c.filtered += 1
            return False
        # Serialised again, not the payload's bytes: what goes out is exactly what was
        # validated (a payload could repeat a key, and readers disagree on which one wins).
        if self._fmt == "json":
            self._pending.append(_to_json(event) + b"\n")
        else:
            self._pending.append(render(event, self._fmt, self._color))
        if self._metrics is not None:
            self._metrics.exit(event)
        c.written += 1
        return True

    def bad_properties(self, topic: str) -> None:
        """MQTT 5 properties that did not decode: the message cannot be trusted."""
        self.counters.received += 1
        self.counters.invalid += 1
        self._problems.report(f"skipped: message on {topic} with malformed MQTT 5 properties")

    def flush(self) -> None:
        """Write the accepted lines and flush: shippers tail the file."""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self.out.write(data)
            self.out.flush()
        if self._metrics is not None:
            now = self.counters.as_dict()
            self._metrics.messages(now, self._reported)
            self._reported = now

    def _reject(self, topic: str, size: int, exc: ValidationError) -> None:
        first = exc.errors()[0]
        if first["loc"] == ("schema",) and first["type"] == "literal_error":
            self.counters.wrong_schema += 1
            what = f"schema {first.get('input')!r} is not {SCHEMA_ID}"
        else:
            self.counters.invalid += 1
            where = ".".join(str(p) for p in first["loc"]) or "message"
            more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            what = f"invalid event: {where}: {first['msg']}{more}"
        self._problems.report(f"skipped: {size}-byte message on {topic}: {what}")

    def _is_duplicate(self, key: str) -> bool:
        """Keyed by the topic's host too (a topic level has no "/"): another host cannot
        shadow this one's events."""
        seen = self._seen
        if key in seen:
            seen.move_to_end(key)
            return True
        seen[key] = None
        if len(seen) > self._dedup_window:
            seen.popitem(last=False)
        return False


@functools.lru_cache(maxsize=65536)  # one entry per host's topic
def topic_host(topic: str) -> str:
    """The host level of ``<prefix>/<host>/exits``: the one the broker's ACL vouches for."""
    rest, _, _ = topic.rpartition("/")
    _, sep, host = rest.rpartition("/")
    return host if sep else ""


# Room for a few thousand events in our kernel buffer: while this consumer is stalled (a busy
# host), the broker's copies wait there, not in broker memory that a broker crash would lose.
RECEIVE_BUFFER = 8 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; missing from typeshed


def _enlarge_receive_buffer(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    try:
        # SO_RCVBUFFORCE passes net.core.rmem_max for root (CAP_NET_ADMIN); else best effort.
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


def _schema_property(properties: WireProperties) -> str | None:
    pairs = properties.get(USER_PROPERTY)
    if isinstance(pairs, list):
        for key, value in pairs:
            if key == "schema":
                return str(value)
    return None


class _Subscriber:
    """The paho side: connect, (re)subscribe, hand messages to the consumer, stop on count."""

    def __init__(
        self,
        options: BrokerOptions,
        topic_filter: str,
        consumer: ExitConsumer,
        count: int | None,
        client_id: str | None,
        protocol: str,
        max_packet: int = MAX_PACKET,
        metrics: FleetMetrics | None = None,
    ) -> None:
        self.consumer = consumer
        self.count = count
        self.done = threading.Event()
        self.failed: str | None = None
        self._filter = topic_filter
        self._metrics = metrics
        # With metrics, the hosts' stats and retained status too (never shared: every
        # consumer of a $share group reports every host).
        self._side = side_filters(topic_filter) if metrics else []
        self._count_reached = False
        self._v5 = protocol == "5"
        self._reporter = ConnectionReporter(log, options.url, "retrying")
        self._reporter.warn_plain_credentials(options.username)
        self.client = BoundedClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or "",
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else client_id is None,
            # Ack only what was written: messages left unhandled at exit stay queued.
            manual_ack=True,
            max_packet=max_packet,
            on_oversized=lambda topic, size, retained: consumer.oversized(topic, size),
            on_publishes=self._on_publishes,
            after_batch=self._after_batch,
        )
        options.apply(self.client)
        self.client.reconnect_delay_set(1, 10)
        self.client.suppress_exceptions = True
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_socket_open = _enlarge_receive_buffer
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            # The broker drops what is larger for us (MQTT 3.1.1 has no such limit: there
            # BoundedClient drops it as it streams in).
            props.MaximumPacketSize = max_packet
            if client_id:  # a named consumer keeps its queue while away
                props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect_async(
            options.url.host,
            options.url.port,
            keepalive=30,
            clean_start=not client_id if self._v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._reporter.failed(describe_refusal(reason))
            return
        self._reporter.connected()
        # Always (re)subscribe: a broker restarted without persistence forgot the session.
        client.subscribe([(f, 1) for f in (self._filter, *self._side)])

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._reporter.failed(describe_connect_error(sys.exc_info()[1]))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self.done.is_set():
            self._reporter.lost(str(reason))

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            self.failed = f"broker refused the subscription to {self._filter!r}: {refused[0]}"
            self.done.set()
        else:
            log.info("subscribed to %s", self._filter)

    def _on_publishes(self, batch: Sequence[Publish]) -> int:
        """Handle a batch, write its lines, and return how many messages were consumed
        (acknowledged next): all of them, unless --count was reached or we are stopping."""
        consumer, metrics = self.consumer, self._metrics
        consumed = 0
        try:
            for message in batch:
                if self.done.is_set() or self._count_reached:
                    break  # not acked: a persistent session gets it again next time
                consumed += 1
                kind = message.topic.rpartition("/")[2]
                if metrics is not None and kind in ("stats", "status"):
                    metrics.side_message(topic_host(message.topic), kind, message.payload)
                    continue
                if message.properties is None:
                    consumer.bad_properties(message.topic)
                    continue
                consumer.handle(
                    message.topic,
                    message.payload,
                    _schema_property(message.properties),
                    message.retain,
                )
                if self.count is not None and consumer.counters.written >= self.count:
                    self._count_reached = True
        except Exception:
            log.exception("cannot handle a message on %s", batch[consumed - 1].topic)
            consumed -= 1  # that one and the rest stay unacknowledged
        try:
            consumer.flush()
        except BrokenPipeError:  # the reader went away (`| head`)
            self.done.set()
            return 0
        return consumed

    def _after_batch(self) -> None:
        if self._count_reached:  # the batch's PUBACKs are queued: disconnect() follows them
            self.done.set()


def run_subscribe(
    broker: str = "mqtt://127.0.0.1:1883",
    topic_filter: str = "procmon/+/exits",
    count: int | None = None,
    timeout: float | None = None,
    output: Path | None = None,
    dedup: bool = False,
    username: str | None = None,
    password_file: Path | None = None,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    client_id: str | None = None,
    protocol: str = "5",
    max_packet_size: int = MAX_PACKET,
    fmt: TextFormat = "json",
    color: ColorChoice = "auto",
    host_glob: str | None = None,
    failed_only: bool = False,
    metrics_listen: str | None = None,
) -> int:
    """Write validated events (``fmt`` lines) to ``output`` (appending) or stdout.

    Stops after ``count`` events, ``timeout`` seconds, SIGINT or SIGTERM. ``client_id`` makes
    a persistent session: the broker queues events while this consumer is away. Returns 0,
    1 when ``count`` was not reached in time, 2 for bad options or a refused subscription.
    """
    try:
        options = BrokerOptions.build(broker, username, password_file, ca_file, cert_file, key_file)
    except BrokerConfigError as exc:
        print(f"procmon subscribe: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        out: BinaryIO = open(output, "ab") if output else sys.stdout.buffer  # noqa: SIM115
    except OSError as exc:
        print(f"procmon subscribe: output {output}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    metrics: FleetMetrics | None = None
    if metrics_listen:
        metrics = FleetMetrics()
        try:
            metrics.serve(metrics_listen)
        except (ValueError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"procmon subscribe: --metrics {metrics_listen}: {reason}", file=sys.stderr)
            return EXIT_CONFIG
    consumer = ExitConsumer(
        out,
        dedup,
        max_payload=max_packet_size,
        fmt=fmt,
        color=use_color(color, out),
        host_glob=host_glob,
        failed_only=failed_only,
        metrics=metrics,
    )
    sub = _Subscriber(
        options, topic_filter, consumer, count, client_id, protocol, max_packet_size, metrics
    )
    # What is loaded now lives until exit: the collector need not walk it at every pass.
    gc.freeze()
    with Signals(on_stop=sub.done.set):
        sub.client.loop_start()
        try:
            sub.done.wait(timeout)
        finally:
            sub.done.set()
            sub.client.disconnect()
            sub.client.loop_stop()
            if output:
                out.close()
    print(consumer.counters.summary(), file=sys.stderr, flush=True)
    if sub.failed:
        print(f"procmon subscribe: {sub.failed}", file=sys.stderr)
        return EXIT_CONFIG
    if count is not None and consumer.counters.written < count:
        return EXIT_FAILURE  # fewer events than --count
    return EXIT_OK

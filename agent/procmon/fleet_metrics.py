"""`procmon subscribe --metrics HOST:PORT`: the fleet's Prometheus metrics, from the bus.

- ``procmon_fleet_exits_total{host, unit, outcome}``: exits this subscriber wrote (outcome is
  the event's ``exit_reason``: exit, error, killed, oom, crashed);
- ``procmon_fleet_agent_<counter>{host}``: each agent's own counters (drops, spool depth, ...)
  as its last ``<prefix>/<host>/stats`` message gave them;
- ``procmon_fleet_host_online{host}``: 1 or 0 from the retained ``<prefix>/<host>/status``
  (the agent's last will sets it offline when its link dies);
- ``procmon_fleet_messages_total{kind}``: this subscriber's own counters (received, written,
  invalid, ...).

Each consumer of a ``$share`` group counts the exits it got; add them up with ``sum``. Every
consumer sees every host's stats and status: use ``max`` across consumers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from procmon.event import ExitEvent

# The agent's stats counters exported per host (agent.py counters() and MqttSink.counters()).
AGENT_COUNTERS: dict[str, tuple[str, str]] = {
    "events_seen": ("counter", "exits the agent's probe saw"),
    "published": ("counter", "events the broker acknowledged"),
    "dropped_kernel": ("counter", "exits lost in the kernel ring buffer"),
    "dropped_queue": ("counter", "events lost because the spool could not be written"),
    "dropped_spool": ("counter", "events pushed out of a full spool"),
    "dropped_context_kernel": ("counter", "exec/cgroup records lost (exits still sent)"),
    "exec_cache_evicted": ("counter", "exec-cache entries pushed out by its bound"),
    "redact_errors": ("counter", "command lines replaced by <redacted> after a failure"),
    "bursts_deferred": ("counter", "bursts the agent yielded to"),
    "spool_depth": ("gauge", "events waiting in the spool"),
    "spool_bytes": ("gauge", "payload bytes waiting in the spool"),
}


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[::1]:PORT`` or a bare ``PORT`` (127.0.0.1); ValueError naming it."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9470")
    return host, int(port)


class _HostState(Collector):
    """The per-host gauges, built at each scrape from the last stats and status seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, dict[str, float]] = {}
        self._online: dict[str, bool] = {}

    def stats(self, host: str, values: dict[str, float]) -> None:
        with self._lock:
            self._stats[host] = values

    def status(self, host: str, online: bool) -> None:
        with self._lock:
            self._online[host] = online

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            stats = {h: dict(v) for h, v in self._stats.items()}
            online = dict(self._online)
        for key, (kind, text) in AGENT_COUNTERS.items():
            # Gauges of the agent's counters: an agent restart starts them again at 0, which
            # Prometheus's rate() and increase() read as a counter reset.
            family = GaugeMetricFamily(
                f"procmon_fleet_agent_{key}", f"{text} ({kind}, per agent)", labels=["host"]
            )
            for host, values in sorted(stats.items()):
                if key in values:
                    family.add_metric([host], values[key])
            yield family
        up = GaugeMetricFamily(
            "procmon_fleet_host_online",
            "1 when the host's retained status says online",
            labels=["host"],
        )
        for host, state in sorted(online.items()):
            up.add_metric([host], 1.0 if state else 0.0)
        yield up


class FleetMetrics:
    """Counts exits and keeps the hosts' stats and status for the HTTP endpoint."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._exits = Counter(
            "procmon_fleet_exits",
            "exits written by this subscriber",
            ["host", "unit", "outcome"],
            registry=self.registry,
        )
        self._messages = Counter(
            "procmon_fleet_messages",
            "messages this subscriber received, by what became of them",
            ["kind"],
            registry=self.registry,
        )
        self._hosts = _HostState()
        self.registry.register(self._hosts)

    def serve(self, listen: str) -> None:
        host, port = parse_listen(listen)
        start_http_server(port, addr=host, registry=self.registry)

    def exit(self, event: ExitEvent) -> None:
        outcome = event.exit_reason or ("exit" if event.exit_code == 0 else "error")
        self._exits.labels(event.host, event.unit or "", outcome).inc()

    def messages(self, counts: dict[str, int], before: dict[str, int]) -> None:
        for kind, value in counts.items():
            if value != before.get(kind, 0):
                self._messages.labels(kind).inc(value - before.get(kind, 0))

    def side_message(self, host: str, kind: str, payload: bytes) -> bool:
        """A ``stats`` or ``status`` message of ``host``; False when it is not usable."""
        try:
            body: Any = json.loads(payload)
        except ValueError:
            return False
        if not isinstance(body, dict):
            return False
        if kind == "status":
            state = body.get("state")
            if state not in ("online", "offline"):
                return False
            self._hosts.status(host, state == "online")
            return True
        values = {
            key: float(value)
            for key, value in body.items()
            if key in AGENT_COUNTERS
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        }
        self._hosts.stats(host, values)
        return True


def side_filters(exits_filter: str) -> list[str]:
    """The stats and status filters beside an exits filter: ``$share/g/procmon/+/exits`` gives
    ``procmon/+/stats`` and ``procmon/+/status`` (not shared: every consumer sees all hosts)."""
    levels = exits_filter.split("/")
    if levels[0] == "$share" and len(levels) > 2:
        levels = levels[2:]
    if len(levels) < 3 or levels[-1] != "exits":
        return []
    return ["/".join([*levels[:-1], kind]) for kind in ("stats", "status")]

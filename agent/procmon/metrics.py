"""The agent's own health as Prometheus metrics on the host (`[metrics]`): an HTTP endpoint
(prometheus_client's server, loopback by default) and/or a node_exporter textfile, written
atomically. The series are the numbers the agent publishes on `<prefix>/<host>/stats`, taken
from the same snapshot, named `procmon_agent_*`.

The pipeline's thread hands a new snapshot to ``update`` (a dict swapped whole); scrapes on the
server's thread only read the snapshot they find, so a scrape never touches the probe, the
spool or the MQTT sink.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from procmon.config import listen_address

log = logging.getLogger("procmon.metrics")

PREFIX = "procmon_agent_"

# stats key -> (series name without prefix and without _total, help). Counters: only grow.
COUNTERS: dict[str, tuple[str, str]] = {
    "events_seen": ("events", "Process exits read from the kernel and turned into events."),
    "published": ("published", "Events the MQTT broker acknowledged."),
    "bursts_deferred": ("bursts_deferred", "Bursts during which draining the ring was put off."),
    "burst_deferred_s": ("burst_deferred_seconds", "Time the ring was left to fill in bursts."),
    "exec_cache_evicted": ("exec_cache_evicted", "Exec records pushed out of the exec cache."),
    "redact_errors": ("redact_errors", "Command lines that failed to redact (sent redacted)."),
    "rejected": ("rejected", "Events the broker refused (PUBACK with an error code)."),
    "connects": ("connects", "Successful connections to the MQTT broker."),
    "spool_replayed": ("spool_replayed", "Events replayed from the spool after a restart."),
    "spool_corrupt_files": ("spool_corrupt_files", "Spool files found corrupt and set aside."),
}
# Every stats key starting with "dropped_" is a drop counter: procmon_agent_<key>_total.
DROP_HELP: dict[str, str] = {
    "dropped_kernel": "Exits the kernel ring had no room for.",
    "dropped_queue": "Events that could not be written to the spool.",
    "dropped_spool": "Oldest events dropped from a full spool (or a corrupt one).",
    "dropped_context_kernel": "Exec and cgroup records shed or lost in the kernel.",
}
GAUGES: dict[str, tuple[str, str]] = {
    "spool_depth": ("spool_depth", "Events in the spool, not yet acknowledged by the broker."),
    "spool_bytes": ("spool_bytes", "Payload bytes in the spool."),
    "inflight": ("inflight", "Events sent and not yet acknowledged."),
    "connected": ("connected", "1 while connected to the MQTT broker."),
    "uptime_s": ("uptime_seconds", "Seconds since the agent started."),
}


class StatsCollector(Collector):
    """Yields the series of the last snapshot."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        self._labels = dict(labels)
        self._stats: Mapping[str, Any] = {}
        self.running = True

    def update(self, stats: Mapping[str, Any]) -> None:
        self._stats = dict(stats)  # swapped whole: a scrape sees one snapshot or the next

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        info = GaugeMetricFamily(
            PREFIX + "info",
            "The agent's version, probe backend and host id.",
            labels=list(self._labels),
        )
        info.add_metric(list(self._labels.values()), 1)
        yield info
        yield GaugeMetricFamily(
            PREFIX + "running",
            "1 while the agent runs; 0 in the file left at stop.",
            value=int(self.running),
        )
        for key, (name, text) in COUNTERS.items():
            if key in stats:
                yield CounterMetricFamily(PREFIX + name, text, value=float(stats[key]))
        for key in sorted(k for k in stats if k.startswith("dropped_")):
            text = DROP_HELP.get(key, f"Dropped, as `{key}` in the stats messages.")
            yield CounterMetricFamily(PREFIX + key, text, value=float(stats[key]))
        for key, (name, text) in GAUGES.items():
            if key in stats:
                yield GaugeMetricFamily(PREFIX + name, text, value=float(stats[key]))


class AgentMetrics:
    """Serves and/or writes the agent's metrics; ``update`` is called from the agent's tick."""

    def __init__(
        self,
        listen: str | None,
        textfile: Path | None,
        labels: Mapping[str, str],
        textfile_interval_s: float,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = StatsCollector(labels)
        self.registry.register(self.collector)
        self.textfile = textfile
        self._textfile_interval_s = textfile_interval_s
        self._next_write = 0.0
        self._server: WSGIServer | None = None
        if textfile is not None and not textfile.parent.is_dir():
            raise OSError(f"metrics.textfile {textfile}: no directory {textfile.parent}")
        if listen is not None:
            host, port = listen_address(listen)
            try:
                self._server, _thread = start_http_server(port, host, self.registry)
            except OSError as exc:
                raise OSError(f"metrics.listen {listen}: cannot listen: {exc.strerror}") from exc
            shown = f"[{host}]" if ":" in host else host
            log.info("metrics on http://%s:%d/metrics", shown, port)

    def update(self, stats: Mapping[str, Any], final: bool = False) -> None:
        self.collector.update(stats)
        if final:
            self.collector.running = False
        now = time.monotonic()
        if self.textfile is not None and (final or now >= self._next_write):
            self._next_write = now + self._textfile_interval_s
            try:  # a temporary file in the same directory, then rename: never half a file
                write_to_textfile(str(self.textfile), self.registry)
            except OSError as exc:
                log.warning("metrics.textfile %s: cannot write: %s", self.textfile, exc)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

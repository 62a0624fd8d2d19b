"""The `procmon agent` daemon: builds the parts from the config (and rebuilds them on SIGHUP),
then lets the pipeline run them; its tick publishes the counters and pets the watchdog."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from procmon import __version__, sdnotify
from procmon.assemble import attach_context, attach_probe, burst_policy, event_builder
from procmon.config import AgentConfig, ConfigError, load_config
from procmon.exit_status import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from procmon.logs import setup_logging
from procmon.mqtt.broker_url import BrokerConfigError, BrokerOptions
from procmon.pipeline import Pipeline
from procmon.privilege import drop_after_seed
from procmon.signals import Signals
from procmon.sinks import Sink
from procmon.sinks.kmsg import KmsgSink
from procmon.sinks.mqtt import AgentIdentity, MqttSink, utc_now
from procmon.sinks.stdout import StdoutSink
from procmon.spool import Spool, SpoolError

if TYPE_CHECKING:
    from procmon.metrics import AgentMetrics

log = logging.getLogger("procmon.agent")

# How often the metrics' snapshot is refreshed (a scrape reads the last one).
METRICS_REFRESH_S = 1.0


def _broker_options(cfg: AgentConfig) -> BrokerOptions | None:
    m = cfg.mqtt
    if not cfg.sinks.mqtt:
        return None
    return BrokerOptions.build(
        m.broker_urls[0], m.username, m.password_file, m.ca_file, m.cert_file, m.key_file
    )


class Agent:
    """The parts built from one AgentConfig: probe, context, sinks and the pipeline running
    them. Reload rebuilds only the parts whose config changed."""

    def __init__(self, cfg: AgentConfig, signals: Signals, load: Callable[[], AgentConfig]):
        self.cfg = cfg
        self._signals = signals
        self._load = load
        self.started_at = utc_now()
        self._started = time.monotonic()
        self._evicted_before = 0  # exec-cache evictions of contexts replaced on reload
        self._watchdog = sdnotify.watchdog_interval()
        self._next_ping = time.monotonic()
        self._next_stats = self._next_ping + cfg.stats_interval_s
        # The last stats published (or, without MQTT, counted): what the stop line reports.
        self.last_stats: dict[str, Any] = {}
        self._next_metrics = self._next_ping
        with contextlib.ExitStack() as undo:  # on failure, release what was opened
            # Cheap, likely-to-fail checks first: credentials and spool before attaching.
            self._options = _broker_options(cfg)
            spool = _open_spool(cfg) if self._options else None
            if spool is not None:
                undo.callback(spool.close)
            probe = attach_probe(cfg.probe, cfg.enrich)
            undo.callback(probe.close)
            self.local_sinks = _open_local_sinks(cfg)
            for sink in self.local_sinks:
                undo.callback(sink.close)
            self.context = attach_context(cfg.enrich, probe)
            # Before any other thread starts: capabilities are per thread, new ones inherit.
            drop_after_seed()
            self.mqtt = self._open_mqtt(cfg, probe.backend, spool, self._options)
            if self.mqtt is not None:
                undo.callback(self.mqtt.close)
            self.metrics = self._open_metrics(cfg, probe.backend)
            undo.pop_all()
        self.pipeline = Pipeline(
            probe,
            event_builder(cfg.host_id, probe, self.context),
            self._sinks(),
            poll_interval_ms=cfg.probe.poll_interval_ms,
            burst=burst_policy(cfg.probe),
            tick=self._tick,
            wakeup_latency_ms=cfg.probe.wakeup_latency_ms,
        )
        if self.metrics is not None:  # a scrape before the first tick finds every series
            self.metrics.update(self.stats())

    def _open_mqtt(
        self, cfg: AgentConfig, backend: str, spool: Spool | None, options: BrokerOptions | None
    ) -> MqttSink | None:
        if spool is None or options is None:
            return None
        identity = AgentIdentity(
            host=cfg.host_id, version=__version__, probe=backend, started_at=self.started_at
        )
        try:
            return MqttSink(cfg.mqtt, identity, spool, options)
        except BaseException:
            spool.close()
            raise

    def _open_metrics(self, cfg: AgentConfig, backend: str) -> AgentMetrics | None:
        m = cfg.metrics
        if m.listen is None and m.textfile is None:
            return None
        from procmon.metrics import AgentMetrics  # prometheus_client only when asked for

        labels = {"host": cfg.host_id, "version": __version__, "probe": backend}
        return AgentMetrics(m.listen, m.textfile, labels, cfg.stats_interval_s)

    def close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def _sinks(self) -> list[Sink]:
        return ([self.mqtt] if self.mqtt else []) + self.local_sinks

    # --- counters ---------------------------------------------------------------------------

    @property
    def events_seen(self) -> int:
        return self.pipeline.counters.events_seen

    def counters(self) -> dict[str, int | float]:
        context = self.context
        return {
            **self.pipeline.counters.as_dict(),  # events_seen, bursts_deferred, ..._s
            "dropped_kernel": self.pipeline.kernel_drops(),
            # exec/cgroup records lost: those exits still arrive, with null context
            "dropped_context_kernel": self.pipeline.context_drops(),
            # exec-cache entries pushed out by its bound: those exits carry null exe/args
            "exec_cache_evicted": self._evicted_before + (context.execs.evicted if context else 0),
            "redact_errors": context.redact_errors if context else 0,
            "uptime_s": round(time.monotonic() - self._started, 3),
        }

    def stats(self) -> dict[str, Any]:
        """The numbers of a stats message, without publishing one (for the metrics)."""
        stats: dict[str, Any] = dict(self.counters())
        if self.mqtt is not None:
            stats.update(self.mqtt.counters())
            stats["connected"] = int(self.mqtt.connected)
        return stats

    # --- running ----------------------------------------------------------------------------

    def run(self) -> None:
        log.info(
            "running: host %s, probe %s, sinks %s",
            self.cfg.host_id,
            self.pipeline.probe.backend,
            ", ".join(type(s).__name__ for s in self.pipeline.sinks) or "none",
        )
        sdnotify.notify("READY=1")
        self.pipeline.run(self._signals)

    def _tick(self, final: bool) -> None:
        """Between wakeups: counters, the watchdog, a reload asked for by SIGHUP."""
        now = time.monotonic()
        if self.mqtt and (final or now >= self._next_stats):
            self.last_stats = self.mqtt.publish_stats(self.counters())
            self._next_stats = now + self.cfg.stats_interval_s
        if self.metrics is not None and (final or now >= self._next_metrics):
            self.metrics.update(self.stats(), final=final)
            self._next_metrics = now + METRICS_REFRESH_S
        if final:
            if self.mqtt is None:  # the counters after the last drain, for the stop line
                self.last_stats = dict(self.counters())
            return
        if self._watchdog is not None and now >= self._next_ping:
            sdnotify.notify("WATCHDOG=1")
            self._next_ping = now + self._watchdog
        if self._signals.reload:
            self._signals.reload = False
            sdnotify.notify("RELOADING=1")
            self.reload()
            sdnotify.notify("READY=1")
        if self._signals.stop:
            sdnotify.notify("STOPPING=1")

    # --- SIGHUP -----------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the config; a bad one is logged and the running one kept."""
        try:
            new = self._load()
            # Re-read credentials too: a rotated password file changes nothing in the config.
            options = _broker_options(new)
            if new == self.cfg and options == self._options:
                log.info("reload: configuration unchanged")
                return
        except (ConfigError, BrokerConfigError) as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        try:
            self._apply(new, options)
        except Exception as exc:
            log.error("reload failed part-way (%s); running with what could be applied", exc)
            return
        log.info("reload: configuration applied")

    def _apply(self, new: AgentConfig, options: BrokerOptions | None) -> None:
        old, self.cfg = self.cfg, new
        setup_logging(new.log_level)
        pipeline = self.pipeline
        pipeline.replace(
            poll_interval_ms=new.probe.poll_interval_ms,
            burst=burst_policy(new.probe),
            wakeup_latency_ms=new.probe.wakeup_latency_ms,
        )
        if (new.probe, new.enrich) != (old.probe, old.enrich):
            # The new probe is attached before the pipeline drops the old one.
            probe = attach_probe(new.probe, new.enrich)
            if new.enrich != old.enrich or probe.has_context != (self.context is not None):
                self._retire_context()
                self.context = attach_context(new.enrich, probe)  # new rules for all it holds
            pipeline.replace(probe=probe, builder=event_builder(new.host_id, probe, self.context))
        elif new.host_id != old.host_id:
            builder = event_builder(new.host_id, pipeline.probe, self.context)
            pipeline.replace(builder=builder)
        mqtt_changed = (new.host_id, new.mqtt, new.spool, options) != (
            old.host_id,
            old.mqtt,
            old.spool,
            self._options,
        )
        self._options = options
        if mqtt_changed or new.sinks != old.sinks:
            if self.mqtt is not None and (mqtt_changed or not new.sinks.mqtt):
                self.mqtt.on_stop(self.events_seen)
                self.mqtt.publish_stats(self.counters())
                pipeline.replace(sinks=self.local_sinks)  # closes it
                self.mqtt = None
            if self.mqtt is None and options is not None:
                self.mqtt = self._open_mqtt(new, pipeline.probe.backend, _open_spool(new), options)
            if new.sinks != old.sinks:
                self.local_sinks = _open_local_sinks(new)
            pipeline.replace(sinks=self._sinks())
        if (new.metrics, new.host_id) != (old.metrics, old.host_id):
            self.close_metrics()
            self.metrics = self._open_metrics(new, pipeline.probe.backend)
            if self.metrics is not None:  # no scrape of the new listener finds it empty
                self.metrics.update(self.stats())

    def _retire_context(self) -> None:
        if self.context is not None:
            self._evicted_before += self.context.execs.evicted


def _open_spool(cfg: AgentConfig) -> Spool:
    return Spool(cfg.spool.path, cfg.spool.max_events, cfg.spool.max_bytes)


def _open_local_sinks(cfg: AgentConfig) -> list[Sink]:
    sinks: list[Sink] = []
    if cfg.sinks.stdout != "off":
        sinks.append(StdoutSink(cfg.sinks.stdout, sys.stdout.buffer))
    if cfg.sinks.kmsg:
        sinks.append(KmsgSink())
    return sinks


def stop_line(stats: Mapping[str, Any], events_seen: int) -> str:
    """The one line logged at stop: exits seen, published, and every drop counter."""
    drops = ", ".join(
        f"{stats.get(key, 0)} {what}"
        for key, what in (
            ("dropped_kernel", "in the kernel ring"),
            ("dropped_queue", "unspoolable"),
            ("dropped_spool", "from a full spool"),
            ("dropped_context_kernel", "context records"),
        )
    )
    published = stats.get("published")
    sent = "no MQTT sink" if published is None else f"{published} published"
    return f"stopped: {events_seen} exits seen, {sent}; dropped: {drops}"


def run_agent(
    cfg: AgentConfig,
    config_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads ``load_config(config_path, overrides)``.

    Returns the process exit status: 0 after a clean stop, 1 when the probe or a sink cannot
    start, 2 for configuration problems (one line on stderr names the culprit).
    """
    setup_logging(cfg.log_level)
    with Signals(reload=True) as signals:
        try:
            agent = Agent(cfg, signals, lambda: load_config(config_path, overrides))
        except (ConfigError, BrokerConfigError, SpoolError) as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        except Exception as exc:  # probe attach, missing BPF object, ...
            log.error("cannot start: %s", exc)
            return EXIT_FAILURE
        try:
            agent.run()
        finally:
            agent.close_metrics()
    log.info("%s", stop_line(agent.last_stats, agent.events_seen))
    print(f"Total process exits monitored: {agent.events_seen}", flush=True)
    return EXIT_OK

"""The `procmon agent` daemon: probe -> ExitEvents -> sinks, plus stats, signals and sd_notify.

Signal handlers only set flags: Python runs them wherever the main thread is, including
inside the ctypes ring-buffer callback, where an exception would be swallowed.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from procmon import __version__, sdnotify
from procmon.broker_url import BrokerConfigError, BrokerOptions
from procmon.config import AgentConfig, ConfigError, load_config
from procmon.enrich.context import open_context
from procmon.event import EventBuilder
from procmon.pipeline import BurstPolicy, Pipeline, PipelineCounters
from procmon.probe import Probe, ProbeKnobs, open_probe
from procmon.sinks import Sink
from procmon.sinks.kmsg import KmsgSink
from procmon.sinks.mqtt import FLUSH_TIMEOUT_S, AgentIdentity, MqttSink, utc_now
from procmon.spool import Spool, SpoolError

log = logging.getLogger("procmon.agent")

EXIT_OK = 0
EXIT_FAILURE = 1  # the probe or a sink could not start
EXIT_CONFIG = 2  # bad configuration, credentials or TLS files


class _Flags:
    """Set by signal handlers, read by the main loop."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False

    def on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True

    def on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload = True


def _install_signals(flags: _Flags) -> Callable[[], None]:
    """Route SIGTERM/SIGINT/SIGHUP to flags; returns a function restoring the old handlers."""
    wanted = {
        signal.SIGTERM: flags.on_stop,
        signal.SIGINT: flags.on_stop,
        signal.SIGHUP: flags.on_reload,
    }
    try:
        previous = {signum: signal.signal(signum, handler) for signum, handler in wanted.items()}
    except ValueError:  # not the main thread (embedded use): the caller stops us
        return lambda: None

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def _setup_logging(level: str) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, format="procmon %(levelname)s %(name)s: %(message)s")
    logging.getLogger("procmon").setLevel(level.upper())


def _broker_options(cfg: AgentConfig) -> BrokerOptions:
    m = cfg.mqtt
    return BrokerOptions.build(
        m.broker, m.username, m.password_file, m.ca_file, m.cert_file, m.key_file
    )


class Agent:
    """The running parts, built from one AgentConfig and rebuilt in part on reload."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.started_at = utc_now()
        self._started = time.monotonic()
        self._pipeline_counters = PipelineCounters()  # kept across pipelines rebuilt on reload
        self._drops_before = 0  # kernel drops of probes replaced on reload
        # Cheap, likely-to-fail checks first: credentials and spool before attaching.
        options = _broker_options(cfg) if cfg.sinks.mqtt else None
        self._options = options
        spool = None
        if cfg.sinks.mqtt:
            spool = Spool(cfg.spool.path, cfg.spool.max_events, cfg.spool.max_bytes)
        try:
            self.probe: Probe = _open_probe(cfg)
        except BaseException:
            if spool is not None:
                spool.close()
            raise
        self._probe_live = True
        self._context_drops_before = 0
        self._evicted_before = 0  # exec-cache evictions of contexts replaced on reload
        self.builder = EventBuilder(
            cfg.host_id, _backend(self.probe), context=open_context(cfg.enrich, self.probe)
        )
        self.mqtt = self._open_mqtt(cfg, spool, options) if spool and options else None
        self.local_sinks = self._open_local_sinks(cfg)
        self.pipeline = self._new_pipeline()

    # --- building ---------------------------------------------------------------------------

    def _open_mqtt(self, cfg: AgentConfig, spool: Spool, options: BrokerOptions) -> MqttSink:
        identity = AgentIdentity(
            host=cfg.host_id,
            version=__version__,
            probe=self.probe.backend,
            started_at=self.started_at,
        )
        try:
            return MqttSink(cfg.mqtt, identity, spool, options)
        except BaseException:
            spool.close()
            raise

    @staticmethod
    def _open_local_sinks(cfg: AgentConfig) -> list[Sink]:
        sinks: list[Sink] = []
        if cfg.sinks.stdout != "off":
            from procmon.sinks.stdout import StdoutSink

            sinks.append(StdoutSink(cfg.sinks.stdout, sys.stdout.buffer))
        if cfg.sinks.kmsg:
            sinks.append(KmsgSink())
        return sinks

    def _new_pipeline(self) -> Pipeline:
        sinks: list[Sink] = [self.mqtt] if self.mqtt else []
        return Pipeline(
            self.probe,
            self.builder,
            sinks + self.local_sinks,
            poll_interval_ms=self.cfg.probe.poll_interval_ms,
            burst=BurstPolicy(
                rate=self.cfg.probe.burst_rate,
                max_s=self.cfg.probe.burst_max_ms / 1000,
                fill=self.cfg.probe.burst_fill_pct / 100,
            ),
            counters=self._pipeline_counters,
        )

    # --- counters ---------------------------------------------------------------------------

    @property
    def events_seen(self) -> int:
        return self._pipeline_counters.events_seen

    def counters(self) -> dict[str, int | float]:
        return {
            **self._pipeline_counters.as_dict(),  # events_seen, bursts_deferred, ..._s
            "dropped_kernel": self._drops_before
            + (self.probe.kernel_drops() if self._probe_live else 0),
            # exec/cgroup records lost: those exits still arrive, with null context
            "dropped_context_kernel": self._context_drops_before
            + (self.probe.context_drops() if self._probe_live else 0),
            # exec-cache entries pushed out by its bound: those exits carry null exe/args
            "exec_cache_evicted": self._evicted_before + self._exec_cache_evicted(),
            "redact_errors": self.builder.context.redact_errors if self.builder.context else 0,
            "uptime_s": round(time.monotonic() - self._started, 3),
        }

    def _exec_cache_evicted(self) -> int:
        context = self.builder.context
        return context.execs.evicted if context is not None else 0

    # --- running ----------------------------------------------------------------------------

    def run(self, flags: _Flags, reload: Callable[[], AgentConfig]) -> None:
        log.info(
            "running: host %s, probe %s, sinks %s",
            self.cfg.host_id,
            self.probe.backend,
            ", ".join(type(s).__name__ for s in self.pipeline.sinks) or "none",
        )
        sdnotify.notify("READY=1")
        watchdog = sdnotify.watchdog_interval()
        now = time.monotonic()
        next_stats = now + self.cfg.stats_interval_s
        next_ping = now
        while not flags.stop:
            self.pipeline.step()
            now = time.monotonic()
            if self.mqtt and now >= next_stats:
                self.mqtt.publish_stats(self.counters())
                next_stats = now + self.cfg.stats_interval_s
            if watchdog is not None and now >= next_ping:
                sdnotify.notify("WATCHDOG=1")
                next_ping = now + watchdog
            if flags.reload:
                flags.reload = False
                sdnotify.notify("RELOADING=1")
                self.reload(reload)
                sdnotify.notify("READY=1")
        sdnotify.notify("STOPPING=1")
        self.stop()

    def _drain_probe(self) -> None:
        """Detach, then deliver what the kernel had queued, then release the probe."""
        self.probe.detach()
        self.pipeline.step(timeout_ms=0)
        self._drops_before += self.probe.kernel_drops()
        self._context_drops_before += self.probe.context_drops()
        self._probe_live = False
        self.probe.close()

    def stop(self) -> None:
        self._drain_probe()
        self._close_mqtt()
        for sink in self.local_sinks:
            if isinstance(sink, KmsgSink):
                sink.write_total(self.events_seen)
            sink.close()

    def _close_mqtt(self) -> None:
        if self.mqtt is None:
            return
        self.mqtt.flush(FLUSH_TIMEOUT_S)
        self.mqtt.publish_stats(self.counters())
        self.mqtt.close()
        self.mqtt = None

    # --- SIGHUP -----------------------------------------------------------------------------

    def reload(self, load: Callable[[], AgentConfig]) -> None:
        """Re-read the config; a bad one is logged and the running one kept."""
        try:
            new = load()
            # Re-read credentials too: a rotated password file changes nothing in the config.
            options = _broker_options(new) if new.sinks.mqtt else None
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
        _setup_logging(new.log_level)
        probe_changed = (new.probe, new.enrich) != (old.probe, old.enrich)
        if probe_changed:
            # Attach the new probe before dropping the old one: a short overlap gives
            # duplicates (same event_id), a gap would lose exits.
            probe = _open_probe(new)
            self._drain_probe()
            self.probe = probe
            self._probe_live = True
        if probe_changed or new.host_id != old.host_id:
            context = self.builder.context
            if new.enrich != old.enrich or self.probe.has_context != (context is not None):
                self._evicted_before += self._exec_cache_evicted()
                context = open_context(new.enrich, self.probe)  # new rules apply to all it holds
            self.builder = EventBuilder(new.host_id, _backend(self.probe), context=context)
        mqtt_changed = (new.host_id, new.mqtt, new.spool, new.sinks.mqtt, options) != (
            old.host_id,
            old.mqtt,
            old.spool,
            old.sinks.mqtt,
            self._options,
        )
        self._options = options
        if mqtt_changed and (self.mqtt is not None or new.sinks.mqtt):
            self._close_mqtt()
            if new.sinks.mqtt and options is not None:
                spool = Spool(new.spool.path, new.spool.max_events, new.spool.max_bytes)
                self.mqtt = self._open_mqtt(new, spool, options)
        if new.sinks != old.sinks:
            for sink in self.local_sinks:
                sink.close()
            self.local_sinks = self._open_local_sinks(new)
        self.pipeline = self._new_pipeline()


def _open_probe(cfg: AgentConfig) -> Probe:
    knobs = ProbeKnobs.from_config(cfg.probe, cfg.enrich)
    return open_probe(cfg.probe.backend, knobs, cfg.probe.pin_dir)


def _backend(probe: Probe) -> Literal["core", "bcc"]:
    if probe.backend not in ("core", "bcc"):
        raise ValueError(f"unknown probe backend {probe.backend!r}")
    return "core" if probe.backend == "core" else "bcc"


def run_agent(
    cfg: AgentConfig,
    config_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads ``load_config(config_path, overrides)``.

    Returns the process exit status: 0 after a clean stop, 1 when the probe or a sink cannot
    start, 2 for configuration problems (one line on stderr names the culprit).
    """
    _setup_logging(cfg.log_level)
    flags = _Flags()
    restore = _install_signals(flags)
    try:
        try:
            agent = Agent(cfg)
        except (ConfigError, BrokerConfigError, SpoolError) as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        except Exception as exc:  # probe attach, missing BPF object, ...
            log.error("cannot start: %s", exc)
            return EXIT_FAILURE
        agent.run(flags, lambda: load_config(config_path, overrides))
    finally:
        restore()
    print(f"Total process exits monitored: {agent.events_seen}", flush=True)
    return EXIT_OK

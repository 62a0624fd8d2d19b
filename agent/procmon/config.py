"""Agent configuration: one validated object, read once at start (and on SIGHUP) and passed down.

Sources, highest priority first: explicit overrides (CLI flags), ``PROCMON_*`` environment
variables (nested keys with ``__``, e.g. ``PROCMON_MQTT__BROKER``), the TOML file, defaults.
They are read here and merged into one dict that the model validates: pydantic-settings did
the same, but its import (asyncio, dotenv, its CLI and cloud sources) cost the agent ~25 ms
of start-up and 0.7 MB (bench/startup_rss.md).
"""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from procmon.enrich.context import ContextSettings
from procmon.enrich.redact import Redactor
from procmon.mqtt.broker_url import BrokerConfigError, parse_broker_url

DEFAULT_CONFIG_PATH = Path("/etc/procmon/agent.toml")

# MQTT topic levels must not hold wildcards, separators or NUL; spaces break shell pipelines.
_TOPIC_LEVEL = re.compile(r"^[A-Za-z0-9._:@=-]{1,128}$")


class ConfigError(Exception):
    """A configuration problem, worded as one line naming the key."""


def check_topic_level(value: str, what: str) -> str:
    """Reject a host id or prefix that would break or widen an MQTT topic."""
    if not _TOPIC_LEVEL.match(value):
        raise ValueError(
            f"{what} {value!r} is not a safe MQTT topic level: use 1-128 of A-Z a-z 0-9 . _ : @ = -"
            " (no '+', '#', '/', spaces or NUL)"
        )
    return value


def listen_address(listen: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or a bare port (127.0.0.1); ValueError names the fault."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", listen
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"{listen!r}: no host before ':' (write 127.0.0.1:PORT, or just PORT)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{listen!r}: the port must be 1-65535")
    return host, int(port)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProbeConfig(_Section):
    """The eBPF probe: which backend, what it reports, and how its ring buffer is drained."""

    backend: Literal["auto", "core", "bcc"] = Field(
        default="auto",
        description="core: the CO-RE object (needs BTF); bcc: compiled on the host against its "
        "kernel headers; auto: core where /sys/kernel/btf/vmlinux exists, else bcc.",
    )
    per_thread: bool = Field(
        default=False, description="Report every thread exit too, not only process exits."
    )
    failed_only: bool = Field(
        default=False,
        description="Report only exits with a non-zero status or a signal (filtered in the "
        "kernel).",
    )
    pidns_scope: bool = Field(
        default=False,
        description="Report only processes in the agent's own pid namespace (container hosts "
        "sharing one kernel).",
    )
    exclude_self: bool = Field(default=True, description="Never report the agent's own exit.")
    ring_size_kb: int = Field(
        default=4096,
        ge=64,
        le=1 << 20,
        description="The kernel ring buffer, rounded up to a power of two. Size it for twice "
        "the peak exit rate times 200 bytes times the poll interval; overruns are counted "
        "(dropped_kernel).",
    )
    wakeup_bytes: int = Field(
        default=32768,
        ge=0,
        description="Wake the agent once this many bytes are queued in the ring (batched "
        "wakeups: a wakeup costs the exiting task microseconds). 0: every record.",
    )
    # Latency against CPU: each wakeup's fixed cost outweighs many exits' own (docs/design.md).
    wakeup_latency_ms: int = Field(
        default=40,
        ge=0,
        le=5000,
        description="The longest a record waits in the ring for a wakeup.",
    )
    poll_interval_ms: int = Field(
        default=100,
        ge=1,
        le=5000,
        description="How long the agent waits for a wakeup before draining anyway (and "
        "publishing stats, petting the watchdog).",
    )
    burst_rate: int = Field(
        default=10000,
        ge=0,
        description="Records a second that make a burst: records then wait in the ring so the "
        "workload keeps the CPU, until the burst ends, the ring is burst_fill_pct full or "
        "burst_max_ms passed. 0: off.",
    )
    burst_max_ms: int = Field(
        default=2000, ge=0, le=10000, description="The longest a burst's drain is put off."
    )
    burst_fill_pct: int = Field(
        default=90,
        ge=10,
        le=95,
        description="Drain a burst once the ring would be this full (percent).",
    )
    context_fill_pct: int = Field(
        default=50,
        ge=0,
        le=95,
        description="Exec and cgroup records enter the ring only while it is less than this "
        "full (percent); the rest is kept for exits, so a flood of execs costs context "
        "(dropped_context_kernel), never an exit. 0: off.",
    )
    capture_killer: bool = Field(
        default=True,
        description="Record who sent the signal a process died of, and OOM kills "
        "(signal_generate, mark_victim): killer, exit_reason, oom_killed.",
    )
    pin_dir: Path | None = Field(
        default=None,
        description="bpffs directory (e.g. /sys/fs/bpf/procmon) where the CO-RE probe stays "
        "attached across agent restarts, so exits during a restart wait in the ring. Unset: "
        "detach at exit.",
    )


class MqttConfig(_Section):
    """The MQTT sink: the broker, the topics, credentials and TLS."""

    broker: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="mqtt://HOST:PORT or mqtts://HOST:PORT (TLS); an IPv6 address in brackets "
        "(mqtt://[::1]:1883).",
    )
    brokers: tuple[str, ...] = Field(
        default=(),
        description="Failover: several broker URLs (same credentials and TLS files), tried in "
        "order; the agent moves to the next when one is unreachable. Environment: "
        "PROCMON_MQTT_BROKERS=URL,URL. Unset: [broker].",
    )
    prefix: str = Field(
        default="procmon",
        description="First topic level: `<prefix>/<host_id>/exits`, `.../status`, `.../stats`.",
    )
    protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description="The MQTT version spoken. A broker that refuses MQTT 5 gets one MQTT 3.1.1 "
        "attempt, kept if it works (with a warning naming this key).",
    )
    client_id: str | None = Field(
        default=None, description="MQTT client id. Unset: `procmon-<host_id>`."
    )
    username: str | None = Field(default=None, description="MQTT user name.")
    password_file: Path | None = Field(
        default=None,
        description="File holding the MQTT password (refused when others can read it).",
    )
    ca_file: Path | None = Field(
        default=None,
        description="CA certificate(s) to verify an mqtts:// broker. Unset: the system's.",
    )
    cert_file: Path | None = Field(default=None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(
        default=None,
        description="The client certificate's key (refused when others can read it).",
    )
    keepalive_s: int = Field(
        default=30, ge=5, le=3600, description="MQTT keepalive: a dead link is noticed after 1.5x."
    )
    message_expiry_s: int = Field(
        default=0,
        ge=0,
        description="MQTT 5 message expiry of each event: brokers drop events older than this "
        "for consumers that were away. 0: none.",
    )
    max_inflight: int = Field(
        default=256,
        ge=1,
        le=65535,
        description="Events sent and not yet acknowledged, at most (the broker may ask for fewer).",
    )
    reconnect_max_s: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="Reconnection backoff ceiling; events wait in the spool meanwhile.",
    )

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        try:
            parse_broker_url(value)
        except BrokerConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("brokers")
    @classmethod
    def _broker_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for url in value:
            try:
                canonical = str(parse_broker_url(url))
            except BrokerConfigError as exc:
                raise ValueError(str(exc)) from None
            if canonical in seen:
                raise ValueError(f"broker {url!r} is listed twice")
            seen.add(canonical)
        return value

    @model_validator(mode="after")
    def _one_broker_setting(self) -> MqttConfig:
        both = {"broker", "brokers"} <= self.model_fields_set
        if both and self.brokers and self.broker not in self.brokers:
            raise ValueError(
                f"mqtt.broker {self.broker!r} is not among mqtt.brokers: set only mqtt.brokers"
            )
        return self

    @property
    def broker_urls(self) -> tuple[str, ...]:
        """The brokers to try, in order."""
        return self.brokers or (self.broker,)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return check_topic_level(value, "prefix")


class SpoolConfig(_Section):
    """The durable queue between the probe and the broker: events leave it on PUBACK."""

    path: Path = Field(
        default=Path("/var/lib/procmon/spool.db"), description="The SQLite spool file."
    )
    max_events: int = Field(
        default=1_000_000,
        ge=100,
        description="Past this many events the oldest are dropped and counted (dropped_spool).",
    )
    # Payload bytes on disk, whatever the events' size (one can reach ~100 KB).
    max_bytes: int = Field(
        default=512 << 20,
        ge=1 << 20,
        description="Past this many payload bytes the oldest events are dropped and counted "
        "(dropped_spool).",
    )


class EnrichConfig(_Section):
    """Who exited: exe and args (captured at exec), cgroup path, unit and container."""

    enabled: bool = Field(
        default=True,
        description="Capture exec and cgroup context: exe, args, cgroup, unit, container_id.",
    )
    capture_args: bool = Field(
        default=True,
        description="Off: exec records carry no args at all; they never leave the kernel.",
    )
    redact: tuple[str, ...] = Field(
        default=ContextSettings.redact,
        description="Regexes applied to each argument before anything leaves the host; a "
        "named group `secret` limits the replacement to that part (procmon.enrich.redact). "
        "Replacing them drops the built-in ones: prefer redact_extra.",
    )
    redact_extra: tuple[str, ...] = Field(
        default=(),
        description="Patterns applied after `redact`: site-specific ones, without restating "
        "the defaults.",
    )
    redact_value_after: tuple[str, ...] = Field(
        default=ContextSettings.redact_value_after,
        description="An argument fully matching one of these makes the next argument secret "
        "(`--password VALUE`).",
    )
    exec_cache_size: int = Field(
        default=ContextSettings.exec_cache_size,
        ge=64,
        le=1 << 22,
        description="Live processes' exe and args kept for their exit; past it the oldest go "
        "(exec_cache_evicted) and their exits carry null exe/args.",
    )
    cgroup_cache_size: int = Field(
        default=ContextSettings.cgroup_cache_size,
        ge=64,
        le=1 << 22,
        description="cgroup ids resolved to paths, at most.",
    )
    cgroup_grace_s: float = Field(
        default=ContextSettings.cgroup_grace_s,
        ge=0,
        le=3600,
        description="How long a removed cgroup's path stays resolvable for exits still in flight.",
    )

    @field_validator("redact", "redact_extra", "redact_value_after")
    @classmethod
    def _compiles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        Redactor(value, ())  # raises ValueError naming the pattern that does not compile
        return value


class SinkConfig(_Section):
    """Where events go besides (or instead of) MQTT."""

    mqtt: bool = Field(default=True, description="Publish to the MQTT broker (through the spool).")
    stdout: Literal["off", "json", "human", "seed"] = Field(
        default="off", description="Also write each event to stdout in this format."
    )
    kmsg: bool = Field(
        default=False,
        description="Also write the seed module's PROCESS_MONITOR lines to /dev/kmsg.",
    )


class MetricsConfig(_Section):
    """The agent's own health for Prometheus: the numbers of the stats messages."""

    listen: str | None = Field(
        default=None,
        description="Serve `/metrics` on `HOST:PORT` (`[V6]:PORT`; a bare port means 127.0.0.1). "
        "Unset: off.",
    )
    textfile: Path | None = Field(
        default=None,
        description="Write the metrics to this `*.prom` file for node_exporter's textfile "
        "collector (atomically, every stats_interval_s and at stop). Unset: off.",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            listen_address(value)
        return value

    @field_validator("textfile")
    @classmethod
    def _textfile(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix != ".prom":
            raise ValueError(f"{value}: node_exporter reads only *.prom files")
        return value


class AgentConfig(BaseModel):
    """Everything `procmon agent` needs; frozen so no part can change it behind another's back."""

    # validate_default: the hostname default passes the host_id check too (as it did under
    # pydantic-settings, whose default this was).
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    host_id: str = Field(
        default_factory=socket.gethostname,
        description="This host's topic level and the events' `host`. Default: the hostname.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info",
        description="Log lines on stderr from this level up (`procmon --log-level` wins).",
    )
    stats_interval_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="How often the counters are published on `<prefix>/<host_id>/stats`.",
    )
    probe: ProbeConfig = ProbeConfig()
    mqtt: MqttConfig = MqttConfig()
    spool: SpoolConfig = SpoolConfig()
    sinks: SinkConfig = SinkConfig()
    enrich: EnrichConfig = EnrichConfig()
    metrics: MetricsConfig = MetricsConfig()

    @field_validator("host_id")
    @classmethod
    def _host_id(cls, value: str) -> str:
        return check_topic_level(value, "host_id")


def _first_error_line(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{origin}: {key}: {first['msg']}{more}"


ENV_PREFIX = "PROCMON_"
ENV_NESTED = "__"
# The failover list as one comma-separated variable (PROCMON_MQTT__BROKERS would take JSON).
BROKERS_ENV = "PROCMON_MQTT_BROKERS"


def _unknown_env_keys() -> list[str]:
    """PROCMON_* variables that name no setting: a misspelt PROCMON_STATS_INTERVAL (for
    ..._S) must not pass silently."""
    known = {name.upper() for name in AgentConfig.model_fields}
    unknown = []
    for name in os.environ:
        if not name.startswith(ENV_PREFIX) or name == BROKERS_ENV:
            continue
        first = name[len(ENV_PREFIX) :].split(ENV_NESTED, 1)[0]
        if first not in known:
            unknown.append(name)
    return sorted(unknown)


def _is_structured(annotation: Any) -> bool:
    """A list, table or section: its environment value is JSON (as pydantic-settings read it)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    origin = typing.get_origin(annotation)
    if origin in (tuple, list, dict, set, frozenset):
        return True
    return any(_is_structured(arg) for arg in typing.get_args(annotation) if origin is not Literal)


def _field_annotation(path: list[str]) -> Any:
    """The annotation of the key at path (section, key), or None when it names no field."""
    model: Any = AgentConfig
    annotation: Any = None
    for key in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        info = model.model_fields.get(key)
        if info is None:
            return None
        annotation = model = info.annotation
    return annotation


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """PROCMON_* variables as a nested dict: ``PROCMON_MQTT__BROKER`` -> mqtt.broker. Names
    are case-insensitive; lists, tables and sections are JSON, everything else a string that
    validation coerces (``"7"`` -> 7, ``"true"`` -> True)."""
    values: dict[str, Any] = {}
    prefix = ENV_PREFIX.lower()
    for name, raw in sorted(environ.items()):
        lowered = name.lower()
        if not lowered.startswith(prefix) or name.upper() == BROKERS_ENV:
            continue
        path = lowered[len(prefix) :].split(ENV_NESTED)
        if not all(path) or path[0] not in AgentConfig.model_fields:
            continue  # unknown upper-case names were refused already (_unknown_env_keys)
        value: Any = raw
        if raw and _is_structured(_field_annotation(path)):
            try:
                value = json.loads(raw)
            except ValueError as exc:
                raise ConfigError(
                    f"environment: {name}: not JSON ({exc}); lists and tables are JSON here,"
                    ' e.g. \'["a", "b"]\''
                ) from None
        target = values
        for key in path[:-1]:
            nested = target.setdefault(key, {})
            if not isinstance(nested, dict):
                break
            target = nested
        else:
            existing = target.get(path[-1])
            if isinstance(existing, dict) and isinstance(value, dict):
                value = _merged(value, existing)
            target[path[-1]] = value
    brokers_env = environ.get(BROKERS_ENV)
    if brokers_env is not None:  # comma-separated, as a list is typed in a unit file
        brokers = tuple(url.strip() for url in brokers_env.split(",") if url.strip())
        if not brokers:
            raise ConfigError(f"environment: {BROKERS_ENV}: no broker URL in {brokers_env!r}")
        values.setdefault("mqtt", {})["brokers"] = brokers
    return values


def _merged(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """high over low, tables merged key by key (a file's [mqtt] keeps keys the flags leave)."""
    out = dict(low)
    for key, value in high.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Read and validate the config; raise ConfigError with one line naming the culprit.

    ``path=None`` uses /etc/procmon/agent.toml when it exists, else defaults only. Overrides
    are nested dicts (``{"mqtt": {"broker": ...}}``) and win over everything else.
    """
    unknown = _unknown_env_keys()
    if unknown:
        raise ConfigError(
            f"environment: {unknown[0]}: no such setting (PROCMON_<KEY>, nested keys"
            " with __, e.g. PROCMON_MQTT__BROKER)"
        )
    explicit = path is not None
    toml_path = path if path is not None else DEFAULT_CONFIG_PATH
    if explicit and not toml_path.is_file():
        raise ConfigError(f"{toml_path}: config file not found")
    file_values: dict[str, Any] = {}
    if toml_path.exists():
        try:
            text = toml_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{toml_path}: cannot read config: {exc.strerror}") from exc
        try:
            file_values = tomllib.loads(text.decode())
        except (ValueError, UnicodeDecodeError) as exc:  # tomllib.TOMLDecodeError too
            raise ConfigError(f"{toml_path}: invalid TOML: {exc}") from exc
    values = _merged(_merged(file_values, _env_values(os.environ)), overrides or {})
    try:
        return AgentConfig.model_validate(values)
    except ValidationError as exc:
        origin = str(toml_path) if toml_path.exists() else "config (no file; environment, flags)"
        raise ConfigError(_first_error_line(exc, origin)) from exc

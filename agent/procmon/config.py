"""Agent configuration: one validated object, read once at start (and on SIGHUP) and passed down.

Sources, highest priority first: explicit overrides (CLI flags), ``PROCMON_*`` environment
variables (nested keys with ``__``, e.g. ``PROCMON_MQTT__BROKER``), the TOML file, defaults.
"""

from __future__ import annotations

import os
import re
import socket
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
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProbeConfig(_Section):
    backend: Literal["auto", "core", "bcc"] = "auto"
    per_thread: bool = False
    failed_only: bool = False
    # Report only processes in the agent's own pid namespace (container hosts sharing a kernel).
    pidns_scope: bool = False
    exclude_self: bool = True
    ring_size_kb: int = Field(default=4096, ge=64, le=1 << 20)
    wakeup_bytes: int = Field(default=32768, ge=0)
    # The longest a record waits in the ring for a wakeup: latency against CPU, as each
    # wakeup's fixed cost outweighs many exits' own (docs/design.md).
    wakeup_latency_ms: int = Field(default=40, ge=0, le=5000)
    poll_interval_ms: int = Field(default=100, ge=1, le=5000)
    # Above this many records a second, records wait in the ring so the workload keeps the
    # CPU, until the burst ends, the ring is burst_fill_pct full or burst_max_ms passed. 0: off.
    burst_rate: int = Field(default=10000, ge=0)
    burst_max_ms: int = Field(default=2000, ge=0, le=10000)
    burst_fill_pct: int = Field(default=90, ge=10, le=95)
    # Exec and cgroup records enter the ring only while it is less than this full; the rest
    # is kept for exits, so a flood of execs costs context (counted), never an exit. 0: off.
    context_fill_pct: int = Field(default=50, ge=0, le=95)
    # Who sent the signal a process died of, and OOM kills (signal_generate, mark_victim).
    capture_killer: bool = True
    # bpffs directory (e.g. /sys/fs/bpf/procmon) where the CO-RE probe stays attached across
    # agent restarts, so exits during a restart wait in the ring. None: detach on exit.
    pin_dir: Path | None = None


class MqttConfig(_Section):
    broker: str = "mqtt://127.0.0.1:1883"
    # Failover: tried in order, the next one when a broker is unreachable. Unset: [broker].
    brokers: tuple[str, ...] = ()
    prefix: str = "procmon"
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    message_expiry_s: int = Field(default=0, ge=0)
    max_inflight: int = Field(default=256, ge=1, le=65535)
    reconnect_max_s: int = Field(default=30, ge=1, le=3600)

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
    path: Path = Path("/var/lib/procmon/spool.db")
    max_events: int = Field(default=1_000_000, ge=100)
    # Payload bytes on disk, whatever the events' size (one can reach ~8 KB): past either
    # bound the oldest events are dropped and counted (dropped_spool).
    max_bytes: int = Field(default=512 << 20, ge=1 << 20)


class EnrichConfig(_Section):
    """Who exited: exe and args (captured at exec), cgroup path, unit and container."""

    enabled: bool = True
    # Off: exec records carry no args at all; they never leave the kernel.
    capture_args: bool = True
    # Regexes applied to each argument before anything leaves the host; a named group
    # `secret` limits the replacement to that part. See procmon.enrich.redact.
    redact: tuple[str, ...] = ContextSettings.redact
    # Patterns applied after `redact`: add site-specific ones without restating the defaults.
    redact_extra: tuple[str, ...] = ()
    # An argument fully matching one of these makes the next argument secret.
    redact_value_after: tuple[str, ...] = ContextSettings.redact_value_after
    exec_cache_size: int = Field(default=ContextSettings.exec_cache_size, ge=64, le=1 << 22)
    cgroup_cache_size: int = Field(default=ContextSettings.cgroup_cache_size, ge=64, le=1 << 22)
    # How long a removed cgroup's path stays resolvable for exits still in flight.
    cgroup_grace_s: float = Field(default=ContextSettings.cgroup_grace_s, ge=0, le=3600)

    @field_validator("redact", "redact_extra", "redact_value_after")
    @classmethod
    def _compiles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        Redactor(value, ())  # raises ValueError naming the pattern that does not compile
        return value


class SinkConfig(_Section):
    mqtt: bool = True
    stdout: Literal["off", "json", "human", "seed"] = "off"
    kmsg: bool = False


class AgentConfig(BaseSettings):
    """Everything `procmon agent` needs; frozen so no part can change it behind another's back."""

    model_config = SettingsConfigDict(
        env_prefix="PROCMON_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    host_id: str = Field(default_factory=socket.gethostname)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    stats_interval_s: float = Field(default=10.0, gt=0, le=3600)
    probe: ProbeConfig = ProbeConfig()
    mqtt: MqttConfig = MqttConfig()
    spool: SpoolConfig = SpoolConfig()
    sinks: SinkConfig = SinkConfig()
    enrich: EnrichConfig = EnrichConfig()

    @field_validator("host_id")
    @classmethod
    def _host_id(cls, value: str) -> str:
        return check_topic_level(value, "host_id")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def _first_error_line(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{origin}: {key}: {first['msg']}{more}"


# The failover list as one comma-separated variable (PROCMON_MQTT__BROKERS would take JSON).
BROKERS_ENV = "PROCMON_MQTT_BROKERS"


def _unknown_env_keys() -> list[str]:
    """PROCMON_* variables that name no setting: pydantic-settings would ignore them, and a
    misspelt PROCMON_STATS_INTERVAL (for ..._S) must not pass silently."""
    known = {name.upper() for name in AgentConfig.model_fields}
    unknown = []
    for name in os.environ:
        if not name.startswith("PROCMON_") or name == BROKERS_ENV:
            continue
        first = name[len("PROCMON_") :].split("__", 1)[0]
        if first not in known:
            unknown.append(name)
    return sorted(unknown)


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
    brokers_env = os.environ.get(BROKERS_ENV)
    if brokers_env is not None:
        brokers = tuple(url.strip() for url in brokers_env.split(",") if url.strip())
        if not brokers:
            raise ConfigError(f"environment: {BROKERS_ENV}: no broker URL in {brokers_env!r}")
        # Below the flags (overrides), above the file, like every PROCMON_* variable.
        overrides = dict(overrides or {})
        overrides["mqtt"] = {"brokers": brokers, **overrides.get("mqtt", {})}
    explicit = path is not None
    toml_path = path if path is not None else DEFAULT_CONFIG_PATH
    if explicit and not toml_path.is_file():
        raise ConfigError(f"{toml_path}: config file not found")
    if toml_path.exists():
        try:
            toml_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{toml_path}: cannot read config: {exc.strerror}") from exc
    settings_cls: type[AgentConfig] = type(
        "AgentConfig",
        (AgentConfig,),
        {"model_config": {**AgentConfig.model_config, "toml_file": toml_path}},
    )
    try:
        return settings_cls(**(overrides or {}))
    except ValidationError as exc:
        origin = str(toml_path) if toml_path.exists() else "config (no file; environment, flags)"
        raise ConfigError(_first_error_line(exc, origin)) from exc
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"{toml_path}: invalid TOML: {exc}") from exc

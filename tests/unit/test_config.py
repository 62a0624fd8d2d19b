"""Config: defaults, TOML, environment overrides, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from procmon.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_file_env_and_override_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'host_id = "from-file"\n[mqtt]\nbroker = "mqtt://file:1883"\n')
    monkeypatch.setenv("PROCMON_MQTT__PREFIX", "envprefix")
    cfg = load_config(path, {"mqtt": {"broker": "mqtts://cli:8883"}})
    assert cfg.host_id == "from-file"
    assert cfg.mqtt.prefix == "envprefix"
    assert cfg.mqtt.broker == "mqtts://cli:8883"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("nope = 1\n", "nope"),
        ('[probe]\nbackend = "ebpf"\n', "probe.backend"),
        ("[probe]\nring_size_kb = 1\n", "probe.ring_size_kb"),
        ('[mqtt]\nbroker = "http://x"\n', "mqtt.broker"),
        ('host_id = "a/b"\n', "host_id"),
        ('host_id = "a+"\n', "host_id"),
        ('[mqtt]\nprefix = "p#"\n', "mqtt.prefix"),
        ("stats_interval_s = 0\n", "stats_interval_s"),
        ('[enrich]\nredact = ["(unclosed"]\n', "enrich.redact"),
        ("[enrich]\ncapture_args = 3\n", "enrich.capture_args"),
        ("[enrich]\nexec_cache_size = 1\n", "enrich.exec_cache_size"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert "\n" not in message
    assert f": {key}:" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "host_id = \n"))


def test_bad_redact_pattern_names_the_pattern(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"redact pattern '\(unclosed'"):
        load_config(write(tmp_path, '[enrich]\nredact_value_after = ["(unclosed"]\n'))


def test_env_values_are_coerced_and_merged_per_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strings coerced by validation, lists as JSON, and a table's keys merged across the
    file, the environment and the flags (as pydantic-settings did before procmon read its
    own sources)."""
    path = write(tmp_path, '[probe]\nring_size_kb = 128\n[mqtt]\nprefix = "file"\n')
    monkeypatch.setenv("PROCMON_PROBE__PER_THREAD", "true")
    monkeypatch.setenv("PROCMON_PROBE__WAKEUP_LATENCY_MS", "7")
    monkeypatch.setenv("PROCMON_ENRICH__REDACT_EXTRA", '["tok=\\\\S+"]')
    monkeypatch.setenv("PROCMON_MQTT__USERNAME", "env-user")
    cfg = load_config(path, {"mqtt": {"broker": "mqtt://flag:1883"}})
    assert (cfg.probe.ring_size_kb, cfg.probe.per_thread, cfg.probe.wakeup_latency_ms) == (
        128,
        True,
        7,
    )
    assert cfg.enrich.redact_extra == ("tok=\\S+",)
    assert (cfg.mqtt.prefix, cfg.mqtt.username, cfg.mqtt.broker) == (
        "file",
        "env-user",
        "mqtt://flag:1883",
    )


def test_env_errors_name_the_variable_or_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "")
    monkeypatch.setenv("PROCMON_STATS_INTERVAL", "3")
    with pytest.raises(ConfigError, match=r"^environment: PROCMON_STATS_INTERVAL: no such setting"):
        load_config(path)
    monkeypatch.delenv("PROCMON_STATS_INTERVAL")
    monkeypatch.setenv("PROCMON_MQTT__NOPE", "1")
    with pytest.raises(ConfigError, match=r": mqtt\.nope: Extra inputs are not permitted"):
        load_config(path)
    monkeypatch.delenv("PROCMON_MQTT__NOPE")
    monkeypatch.setenv("PROCMON_ENRICH__REDACT_EXTRA", "tok=x")
    with pytest.raises(ConfigError, match=r"^environment: PROCMON_ENRICH__REDACT_EXTRA: not JSON"):
        load_config(path)
    monkeypatch.delenv("PROCMON_ENRICH__REDACT_EXTRA")
    monkeypatch.setenv("PROCMON_PROBE__RING_SIZE_KB", "lots")
    with pytest.raises(ConfigError, match=r": probe\.ring_size_kb: "):
        load_config(path)


def test_brokers_env_is_a_comma_list_below_the_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[mqtt]\nbrokers = ["mqtt://file:1883"]\n')
    monkeypatch.setenv("PROCMON_MQTT_BROKERS", "mqtt://a:1883, mqtt://b:1883")
    assert load_config(path).mqtt.broker_urls == ("mqtt://a:1883", "mqtt://b:1883")
    flags = {"mqtt": {"brokers": ("mqtt://c:1883",)}}
    assert load_config(path, flags).mqtt.broker_urls == ("mqtt://c:1883",)
    monkeypatch.setenv("PROCMON_MQTT_BROKERS", " , ")
    with pytest.raises(ConfigError, match="PROCMON_MQTT_BROKERS: no broker URL"):
        load_config(path)


def test_config_needs_no_pydantic_settings() -> None:
    """pydantic-settings cost ~25 ms of the agent's start-up (bench/startup_rss.md)."""
    import subprocess
    import sys

    code = "import sys, procmon.config; print('pydantic_settings' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

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

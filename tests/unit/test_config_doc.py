"""The configuration reference and the effective configuration, both from the model:
docs/config.md must be current (like the schema test), every key described, --print-config
read back to the same configuration with secrets masked, and the sample config valid."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from helpers.common import REPO
from procmon.config import AgentConfig, load_config
from procmon.config_doc import (
    MASK,
    config_reference,
    effective_toml,
    env_name,
    mask_secrets,
    missing_descriptions,
)

DOC = REPO / "docs/config.md"
SAMPLE = REPO / "docs/agent.sample.toml"
PROCMON = [sys.executable, "-m", "procmon.cli"]


def test_config_reference_is_current() -> None:
    assert DOC.read_text() == config_reference(), "docs/config.md is stale: run make config-doc"


def test_every_key_is_described() -> None:
    assert missing_descriptions() == [], "add Field(description=...) in procmon/config.py"


def test_every_key_and_env_name_is_in_the_reference() -> None:
    text = DOC.read_text()
    top: list[tuple[str, type[BaseModel]]] = [("", AgentConfig)]
    for table, section in top + _sections():
        for key in section.model_fields:
            if table == "" and key in dict(_sections()):
                continue
            name = f"{table}.{key}" if table else key
            assert f"| `{name}` |" in text, name
            assert f"`{env_name(table, key)}`" in text, name


def _sections() -> list[tuple[str, type[BaseModel]]]:
    return [
        (name, info.annotation)
        for name, info in AgentConfig.model_fields.items()
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
    ]


def test_the_env_names_are_the_ones_the_loader_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env_name("probe", "wakeup_latency_ms"), "7")
    monkeypatch.setenv(env_name("", "stats_interval_s"), "3")
    cfg = load_config(_empty(tmp_path))
    assert (cfg.probe.wakeup_latency_ms, cfg.stats_interval_s) == (7, 3.0)


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text("")
    return path


def test_effective_toml_reads_back_as_the_same_config(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'host_id = "h1"\nlog_level = "debug"\n[probe]\npin_dir = "/sys/fs/bpf/x"\n'
        'ring_size_kb = 128\n[mqtt]\nbroker = "mqtts://mq:8883"\nusername = "h1"\n'
        '[enrich]\nredact_extra = [\'(tok=)(?P<secret>\\S+)\', "quote\\"d\\u007f"]\n'
        '[metrics]\nlisten = "[::1]:9469"\n'
    )
    cfg = load_config(config)
    printed = tmp_path / "printed.toml"
    printed.write_text(effective_toml(cfg))
    assert load_config(printed).model_dump() == cfg.model_dump()
    tomllib.loads(printed.read_text())


def test_secrets_are_masked_and_paths_are_not() -> None:
    assert mask_secrets("password", "hunter2") == MASK
    assert mask_secrets("api_token", "abc") == MASK
    assert mask_secrets("password_file", "/etc/procmon/pw") == "/etc/procmon/pw"
    assert mask_secrets("key_file", "/etc/procmon/key.pem") == "/etc/procmon/key.pem"
    assert mask_secrets("broker", "mqtts://web1:hunter2@mq:8883") == f"mqtts://web1:{MASK}@mq:8883"
    assert mask_secrets("brokers", ["mqtt://a:b@h1:1", "mqtt://h2:1"]) == [
        f"mqtt://a:{MASK}@h1:1",
        "mqtt://h2:1",
    ]
    assert mask_secrets("broker", "mqtt://web1@mq:1883") == "mqtt://web1@mq:1883"


def test_print_config_shows_file_env_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('host_id = "from-file"\n[spool]\nmax_events = 500\n')
    env = {**os.environ, "PROCMON_MQTT__PREFIX": "from-env"}
    proc = subprocess.run(
        [
            *PROCMON,
            "--log-level",
            "error",
            "agent",
            "--config",
            str(config),
            "--print-config",
            "--broker",
            "mqtt://from-flag:1883",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    data = tomllib.loads(proc.stdout)
    assert data["host_id"] == "from-file" and data["log_level"] == "error"
    assert data["spool"]["max_events"] == 500
    assert data["mqtt"]["prefix"] == "from-env"
    assert data["mqtt"]["broker"] == "mqtt://from-flag:1883"
    assert "# password_file: unset" in proc.stdout


def test_schema_config_reference_prints_the_doc() -> None:
    proc = subprocess.run(
        [*PROCMON, "schema", "--config-reference"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout == DOC.read_text()


def test_sample_config_loads() -> None:
    cfg = load_config(SAMPLE)
    assert cfg.host_id == "web1"
    assert cfg.metrics.listen == "127.0.0.1:9469"
    assert cfg.mqtt.broker.startswith("mqtts://")
    assert cfg.enrich.redact_extra

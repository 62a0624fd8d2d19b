"""The procmon command as a user runs it: what needs no probe, broker or root (the rest, probe,
bcc check and broker check: tests/system/test_cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from procmon import __version__
from procmon.cli import _agent_overrides, build_parser
from procmon.config import load_config

PROCMON = [sys.executable, "-m", "procmon.cli"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROCMON, *args], capture_output=True, text=True, timeout=timeout)


def test_version() -> None:
    assert run("--version").stdout.strip() == f"procmon {__version__}"


def test_schema_command_prints_the_contract() -> None:
    schema = json.loads(run("schema").stdout)
    assert schema["$id"] == "procmon.exit/v1"


def test_bad_config_is_one_line(tmp_path: object) -> None:
    proc = run("agent", "--config", "/nonexistent/agent.toml", "--check-config")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "/nonexistent/agent.toml" in proc.stderr


def test_log_level_is_refused_where_nothing_logs() -> None:
    proc = run("--log-level", "info", "schema")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert (
        proc.stderr == "procmon: error: --log-level: `procmon schema` logs nothing; drop the flag\n"
    )


def test_log_level_overrides_the_agent_config(tmp_path: Path) -> None:
    """`procmon --log-level warning agent` kept the config's INFO level (issue 19)."""
    config = tmp_path / "agent.toml"
    config.write_text("log_level = 'info'\n")
    args = build_parser().parse_args(["--log-level", "warning", "agent", "--config", str(config)])
    assert load_config(config, _agent_overrides(args)).log_level == "warning"
    args = build_parser().parse_args(["agent", "--config", str(config)])
    assert load_config(config, _agent_overrides(args)).log_level == "info"

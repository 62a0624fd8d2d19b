"""The procmon command as a user runs it: what needs no probe, broker or root (the rest, probe,
bcc check and broker check: tests/system/test_cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from procmon import __version__

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

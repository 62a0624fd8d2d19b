"""The human format (used by `procmon tail` and `procmon subscribe`): time with its zone, host,
unit or container, comm, pid, how it ended, age, exe; colour only when asked or on a terminal,
NO_COLOR honoured; `--json` with another `--format` refused in one line."""

from __future__ import annotations

import io
import subprocess
from typing import Any

import pytest

from helpers.mqtt import PY, SLOW, sample_event
from procmon.event import SignalInfo
from procmon.sinks.stdout import age_text, human_line, local_time, render, use_color


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def test_human_line_has_zone_host_unit_comm_pid_reason_age_and_exe() -> None:
    event = sample_event(42, "web-1").model_copy(
        update={
            "time": "2026-01-01T10:11:12.345678901Z",
            "unit": "nginx.service",
            "exe": "/usr/sbin/nginx",
            "args": ("nginx", "-g", "daemon off;"),
            "age_ns": 75_000_000_000,
            "exit_code": 3,
            "exit_reason": "error",
        }
    )
    line = human_line(event)
    assert line == (
        "2026-01-01 10:11:12.345 UTC web-1 nginx.service sample pid=42 exit code 3 age=1m15s"
        " : /usr/sbin/nginx -g 'daemon off;'"
    )


def test_container_thread_and_unknown_exe() -> None:
    event = sample_event(7, "h").model_copy(
        update={"container_id": "a" * 64, "scope": "thread", "tid": 8, "exit_code": 0}
    )
    line = human_line(event)
    assert f" h container:{'a' * 12} sample pid=7 tid=8 exit code 0 age=0.000s" in line
    assert " : " not in line  # no exe, no args: nothing made up
    assert " - sample " in human_line(sample_event(7, "h"))  # neither unit nor container


def test_time_today_is_short_and_carries_its_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".250000000Z"
    shown = local_time(now)
    assert shown.endswith((".250 CET", ".250 CEST")) and len(shown) == len("00:00:00.250 CET") + (
        1 if shown.endswith("CEST") else 0
    )
    assert local_time("2026-01-01T00:00:00.000000000Z") == "2026-01-01 01:00:00.000 CET"


@pytest.mark.parametrize(
    ("ns", "text"),
    [(4_000_000, "0.004s"), (12_340_000_000, "12.3s"), (302 * 10**9, "5m02s"),
     (3 * 3600 * 10**9 + 7 * 60 * 10**9, "3h07m"), (52 * 3600 * 10**9, "2d04h")],
)  # fmt: skip
def test_age_text(ns: int, text: str) -> None:
    assert age_text(ns) == text


def test_failures_are_red_only_with_colour() -> None:
    killed = sample_event(1, "h").model_copy(
        update={"signal": SignalInfo(number=9, name="SIGKILL"), "exit_code": 0}
    )
    ok = sample_event(2, "h").model_copy(update={"exit_code": 0})
    assert "\x1b[31mkilled by SIGKILL\x1b[0m" in human_line(killed, color=True)
    assert "\x1b[31m" not in human_line(ok, color=True)
    assert "\x1b" not in human_line(killed)
    assert render(killed, "human", color=True).decode().count("\n") == 1


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_use_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color("auto", Tty()) and not use_color("auto", io.StringIO())
    assert use_color("always", io.StringIO()) and not use_color("never", Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color("auto", Tty())
    assert use_color("always", Tty())  # an explicit flag beats the environment
    monkeypatch.setenv("NO_COLOR", "")  # empty: not set (no-color.org)
    assert use_color("auto", Tty())


@pytest.mark.parametrize("command", ["tail", "subscribe"])
@pytest.mark.parametrize("fmt", ["human", "seed"])
def test_json_with_another_format_is_refused_in_one_line(command: str, fmt: str) -> None:
    proc = subprocess.run(
        [PY, "-m", "procmon.cli", command, "--json", "--format", fmt],
        capture_output=True,
        text=True,
        timeout=SLOW,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"procmon {command}: --json and --format {fmt} conflict: give one of them"
    )


def test_every_subscribe_flag_has_help_and_the_help_ends_with_examples() -> None:
    from procmon.cli import build_parser

    parser = build_parser()
    actions: Any = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    subscribe = actions["subscribe"]
    for action in subscribe._actions:
        assert action.help, f"subscribe {action.option_strings or action.dest} has no help"
    text = subscribe.format_help()
    assert text.rstrip().splitlines()[-1].startswith("      --password-file")
    assert "\nexamples:\n  procmon subscribe --format human" in text

"""`procmon subscribe` without a broker: the consumer's validation, counting of bad messages,
de-duplication and rate-limited reports, and one-line option errors (against a real mosquitto:
tests/system/test_subscribe.py)."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers.mqtt import PY, SLOW, sample_event
from procmon.subscribe import MAX_PACKET, ExitConsumer, RateLimitedLines


def event_json(n: int, host: str = "h1") -> bytes:
    return bytes(sample_event(n, host).model_dump_json(), "utf-8")


# --- the consumer alone --------------------------------------------------------------------


def written(consumer: ExitConsumer, out: io.BytesIO) -> bytes:
    """What reached the stream: lines go out at each flush (once per batch)."""
    consumer.flush()
    return out.getvalue()


def test_consumer_writes_valid_events_as_json_lines() -> None:
    out = io.BytesIO()
    consumer = ExitConsumer(out, dedup=False)
    assert consumer.handle("procmon/h1/exits", event_json(1))
    assert consumer.handle("procmon/h1/exits", event_json(2), "procmon.exit/v1")
    lines = written(consumer, out).splitlines()
    assert [json.loads(line)["pid"] for line in lines] == [1, 2]
    assert consumer.counters.written == 2


@pytest.mark.parametrize(
    ("payload", "schema_property", "counter"),
    [
        (b"not json", None, "invalid"),
        (b'{"schema":"procmon.exit/v1","pid":1}', None, "invalid"),
        (b'{"schema":"someone.else/v3","pid":1}', None, "wrong_schema"),
        (b"{}", "someone.else/v3", "wrong_schema"),
        (b"x" * (MAX_PACKET + 1), None, "oversized"),
    ],
)
def test_consumer_counts_and_skips_bad_messages(
    payload: bytes, schema_property: str | None, counter: str, capsys: Any
) -> None:
    out = io.BytesIO()
    consumer = ExitConsumer(out, dedup=False)
    assert not consumer.handle("procmon/h1/exits", payload, schema_property)
    assert getattr(consumer.counters, counter) == 1
    assert consumer.counters.written == 0
    assert written(consumer, out) == b""
    (line,) = capsys.readouterr().err.splitlines()  # one line naming topic and reason
    assert "procmon/h1/exits" in line


def test_consumer_dedup_window_is_bounded() -> None:
    out = io.BytesIO()
    consumer = ExitConsumer(out, dedup=True, dedup_window=3)
    for n in (1, 2, 1, 3, 4, 5):  # the second 1 is a duplicate; then 1 leaves the window
        consumer.handle("procmon/h1/exits", event_json(n))
    consumer.handle("procmon/h1/exits", event_json(1))
    assert consumer.counters.duplicates == 1
    assert [json.loads(x)["pid"] for x in written(consumer, out).splitlines()] == [1, 2, 3, 4, 5, 1]


def test_an_event_speaking_for_another_host_is_refused(capsys: Any) -> None:
    """What hostA's credentials let it publish (its own topic) cannot pass for hostB."""
    out = io.BytesIO()
    consumer = ExitConsumer(out, dedup=False)
    assert not consumer.handle("procmon/hostA/exits", event_json(1, host="hostB"))
    assert consumer.handle("procmon/hostB/exits", event_json(1, host="hostB"))
    assert (consumer.counters.spoofed, consumer.counters.written) == (1, 1)
    assert "procmon/hostA/exits speaks for host 'hostB'" in capsys.readouterr().err


def test_dedup_is_keyed_by_the_topic_host() -> None:
    """hostA replaying hostB's event_id on its own topic is refused as a spoof, and cannot
    make hostB's real event a duplicate: the key holds the topic's host."""
    out = io.BytesIO()
    consumer = ExitConsumer(out, dedup=True)
    forged = sample_event(1, "hostB").model_copy(update={"exit_code": 0})
    consumer.handle("procmon/hostA/exits", forged.model_dump_json().encode())
    real = sample_event(1, "hostB").model_copy(update={"exit_code": 139})
    assert consumer.handle("procmon/hostB/exits", real.model_dump_json().encode())
    assert [json.loads(x)["exit_code"] for x in written(consumer, out).splitlines()] == [139]
    assert (consumer.counters.spoofed, consumer.counters.duplicates) == (1, 0)


def test_retained_messages_are_replays_and_skipped() -> None:
    out = io.BytesIO()
    consumer = ExitConsumer(out, dedup=False)
    assert not consumer.handle("procmon/h1/exits", event_json(1), retained=True)
    assert (consumer.counters.retained, consumer.counters.written) == (1, 0)


def test_problem_reports_are_rate_limited(capsys: Any) -> None:
    lines = RateLimitedLines(burst=3, period=3600)
    for i in range(10):
        lines.report(f"problem {i}")
    assert capsys.readouterr().err.splitlines() == ["problem 0", "problem 1", "problem 2"]


# --- the command's options ---------------------------------------------------------------------


def test_bad_options_are_one_line(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    secret.chmod(0o644)
    cmd = [PY, "-m", "procmon.cli", "subscribe", "--broker", "mqtt://127.0.0.1:1"]
    cmd += ["--username", "u", "--password-file", str(secret)]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=SLOW,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "readable by everyone" in line and str(secret) in line
    assert "hunter2" not in proc.stderr + proc.stdout

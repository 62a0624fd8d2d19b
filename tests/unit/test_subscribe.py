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


# --- filters, formats and metrics ----------------------------------------------------------


def test_host_glob_and_failed_filters() -> None:
    out = io.BytesIO()
    consumer = ExitConsumer(out, dedup=False, host_glob="web-*", failed_only=True)
    for host, n in (("web-1", 3), ("web-2", 256), ("db-1", 5)):  # pid 256: exit code 0
        consumer.handle(f"procmon/{host}/exits", event_json(n, host))
    assert [json.loads(x)["host"] for x in written(consumer, out).splitlines()] == ["web-1"]
    assert (consumer.counters.filtered, consumer.counters.written) == (2, 1)


def test_human_format_lines() -> None:
    out = io.BytesIO()
    consumer = ExitConsumer(out, dedup=False, fmt="human")
    consumer.handle("procmon/h1/exits", event_json(3))
    (line,) = written(consumer, out).decode().splitlines()
    assert " h1 - sample pid=3 exit code 3 " in line


def test_side_filters_follow_the_exits_filter() -> None:
    from procmon.fleet_metrics import side_filters

    assert side_filters("procmon/+/exits") == ["procmon/+/stats", "procmon/+/status"]
    assert side_filters("$share/g/site/a/+/exits") == ["site/a/+/stats", "site/a/+/status"]
    assert side_filters("procmon/#") == []


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("9470", ("127.0.0.1", 9470)), ("0.0.0.0:1", ("0.0.0.0", 1)), ("[::1]:9", ("::1", 9))],
)
def test_metrics_listen_address(text: str, parsed: tuple[str, int]) -> None:
    from procmon.fleet_metrics import parse_listen

    assert parse_listen(text) == parsed


def test_metrics_from_exits_stats_and_status() -> None:
    from prometheus_client import generate_latest

    from procmon.fleet_metrics import FleetMetrics

    metrics = FleetMetrics()
    consumer = ExitConsumer(io.BytesIO(), dedup=False, metrics=metrics)
    consumer.handle("procmon/h1/exits", event_json(3))
    consumer.handle("procmon/h1/exits", b"junk")
    consumer.flush()
    assert metrics.side_message("h1", "stats", b'{"dropped_kernel": 7, "published": 1.5}')
    assert metrics.side_message("h1", "status", b'{"state": "offline"}')
    assert not metrics.side_message("h1", "status", b"[]")
    text = generate_latest(metrics.registry).decode()
    assert 'procmon_fleet_exits_total{host="h1",outcome="error",unit=""} 1.0' in text
    assert 'procmon_fleet_agent_dropped_kernel{host="h1"} 7.0' in text
    assert 'procmon_fleet_host_online{host="h1"} 0.0' in text
    assert 'procmon_fleet_messages_total{kind="invalid"} 1.0' in text


# --- the client's bulk read path -----------------------------------------------------------


def _publish_packet(topic: str, payload: bytes, mid: int, props: bytes = b"\x00") -> bytes:
    body = len(topic).to_bytes(2, "big") + topic.encode() + mid.to_bytes(2, "big") + props
    body += payload
    length, size = b"", len(body)
    while True:
        byte, size = size & 0x7F, size >> 7
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            break
    return b"\x32" + length + body


def test_publishes_are_cut_from_the_buffer_and_acked_in_one_write() -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from procmon.bounded_client import BoundedClient, Publish

    got: list[Publish] = []

    def take(batch: Any) -> int:
        got.extend(batch)
        return len(batch) - 1  # the last one is not consumed: not acknowledged

    client = BoundedClient(
        CallbackAPIVersion.VERSION2,
        protocol=mqtt.MQTTv5,
        manual_ack=True,
        max_packet=1 << 20,
        on_oversized=lambda *a: None,
        on_publishes=take,
    )
    schema = b"\x26" + b"\x00\x06schema" + b"\x00\x0fprocmon.exit/v1"
    props = bytes([len(schema)]) + schema
    packets = [_publish_packet(f"procmon/h{i}/exits", b"x" * (200 * i), i, props) for i in (1, 2)]
    packets.append(_publish_packet("procmon/h3/exits", b"y", 3))
    stream = b"".join(packets)
    client._rbuf, client._rpos, client._rsock = stream + b"\x32\x7f", 0, None
    client._sock = None
    client._cut_publishes()
    assert client._rpos == len(stream)  # the partial packet stays for paho's path
    client._deliver()
    assert [(p.topic, len(p.payload), p.mid) for p in got] == [
        ("procmon/h1/exits", 200, 1), ("procmon/h2/exits", 400, 2), ("procmon/h3/exits", 1, 3)
    ]  # fmt: skip
    assert got[0].properties == {0x26: [("schema", "procmon.exit/v1")]}
    (queued,) = client._out_packet
    assert queued["packet"] == b"\x40\x02\x00\x01\x40\x02\x00\x02"  # PUBACKs 1 and 2, one write


def test_grafana_dashboard_queries_only_metrics_the_subscriber_exports() -> None:
    """docs/grafana-procmon.json: valid JSON, and every procmon_fleet_* name in its queries is
    one `procmon subscribe --metrics` serves."""
    import re

    from prometheus_client import generate_latest

    from helpers.common import REPO
    from procmon.fleet_metrics import AGENT_COUNTERS, FleetMetrics

    metrics = FleetMetrics()
    metrics.exit(sample_event(1, "h"))
    metrics.messages({"written": 1}, {})
    metrics.side_message("h", "status", b'{"state": "online"}')
    stats = {key: 0 for key in AGENT_COUNTERS}
    metrics.side_message("h", "stats", json.dumps(stats).encode())
    exported = set(
        re.findall(r"^(procmon_fleet_\w+)", generate_latest(metrics.registry).decode(), re.M)
    )
    dashboard = json.loads((REPO / "docs/grafana-procmon.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"procmon_fleet_\w+", expr)}
    assert used and used <= exported, used - exported

"""`procmon subscribe` against a real mosquitto: validation, counting of bad messages,
de-duplication, count/timeout, a persistent consumer and the CLI (the consumer logic alone:
tests/unit/test_subscribe.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers.mosquitto import Mosquitto
from helpers.mqtt import PY, SLOW, SubscriberProcess, publish_raw, sample_event, wait_until


def event_json(n: int, host: str = "h1") -> bytes:
    return bytes(sample_event(n, host).model_dump_json(), "utf-8")


# --- against a broker ----------------------------------------------------------------------


def test_subscriber_validates_counts_and_keeps_going(
    broker: Mosquitto, subscribers: Any, tmp_path: Path
) -> None:
    sub: SubscriberProcess = subscribers("s1", broker.url, topic_filter="procmon/+/exits")
    publish_raw(
        broker,
        [
            ("procmon/h1/exits", event_json(1), {"schema": "procmon.exit/v1"}),
            ("procmon/h1/exits", b"{broken", None),
            ("procmon/h1/exits", b"{}", {"schema": "procmon.exit/v2"}),
            ("procmon/h1/exits", event_json(3, "h2"), None),  # h1 speaking for h2
            ("procmon/h2/exits", event_json(2, "h2"), None),
            ("procmon/h1/exits", event_json(1), None),  # a re-delivery: kept without dedup
        ],
    )
    wait_until(lambda: len(sub.events()) == 3, SLOW, "three valid events")
    assert sub.stop() == 0
    assert [e["pid"] for e in sub.events()] == [1, 2, 1]
    err = sub.stderr()
    assert err.count("skipped:") == 3
    assert "0 duplicates, 1 invalid, 0 oversized, 1 wrong schema, 1 spoofed" in err
    assert "6 received, 3 written" in err


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_huge_messages_never_reach_memory(
    protocol: str, broker: Mosquitto, subscribers: Any
) -> None:
    """Two 250 MB messages on an exits topic, then a valid event. MQTT 5: the broker drops
    them for a subscriber that sent Maximum Packet Size. MQTT 3.1.1 has no such limit: the
    subscriber drops them as they stream in, and counts them. Its peak RSS stays flat."""
    sub = subscribers("big", broker.url, topic_filter="procmon/+/exits", protocol=protocol)
    huge = b"y" * (250 << 20)
    publish_raw(broker, [("procmon/h1/exits", huge, None)] * 2)
    publish_raw(broker, [("procmon/h1/exits", event_json(1), None)])
    wait_until(lambda: len(sub.events()) == 1, 120, "the event after the huge messages")
    peak_kb = _peak_rss_kb(sub.proc.pid)
    assert sub.stop() == 0
    oversized = 2 if protocol == "3.1.1" else 0
    assert f" {oversized} oversized" in sub.stderr()
    assert peak_kb < 150_000, f"peak RSS {peak_kb} kB"


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_retained_spoof_is_not_replayed_to_new_subscribers(
    broker: Mosquitto, subscribers: Any
) -> None:
    """A retained message on an exits topic would reach every new subscriber: it is skipped."""
    publish_raw(broker, [("procmon/h1/exits", event_json(1), None)], retain=True)
    sub = subscribers("late", broker.url, topic_filter="procmon/+/exits")
    publish_raw(broker, [("procmon/h1/exits", event_json(2), None)])
    wait_until(lambda: len(sub.events()) == 1, SLOW, "the live event")
    assert sub.stop() == 0
    assert [e["pid"] for e in sub.events()] == [2]
    assert "1 retained" in sub.stderr()


def test_dedup_count_and_exit_status(broker: Mosquitto, subscribers: Any) -> None:
    sub = subscribers("s2", broker.url, topic_filter="procmon/+/exits", dedup=True, count=3)
    publish_raw(broker, [("procmon/h1/exits", event_json(n), None) for n in (1, 1, 2, 2, 3)])
    assert sub.proc.wait(timeout=SLOW) == 0  # stopped by itself at count=3
    assert [e["pid"] for e in sub.events()] == [1, 2, 3]
    assert "2 duplicates" in sub.stderr()


def test_timeout_before_count_is_exit_status_1(broker: Mosquitto, subscribers: Any) -> None:
    sub = subscribers("s3", broker.url, count=5, timeout=2)
    assert sub.proc.wait(timeout=SLOW) == 1
    assert "0 written" in sub.stderr()


def test_persistent_consumer_gets_what_it_missed(broker: Mosquitto, subscribers: Any) -> None:
    """A named consumer (client_id) keeps its queue on the broker while it is away."""
    first = subscribers("p1", broker.url, client_id="procmon-test-consumer")
    assert first.stop() == 0
    publish_raw(broker, [("procmon/h1/exits", event_json(n), None) for n in (7, 8)])
    again = subscribers("p2", broker.url, client_id="procmon-test-consumer", count=2)
    assert again.proc.wait(timeout=SLOW) == 0
    assert [e["pid"] for e in again.events()] == [7, 8]


def test_cli_subscribe_writes_to_stdout(broker: Mosquitto, mosquitto_ready: None) -> None:
    proc = subprocess.Popen(
        [PY, "-m", "procmon.cli", "subscribe", "--broker", broker.url, "--count", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # No "subscribed" line at the CLI's default log level: publish until it is seen.
        def publish_and_check() -> bool:
            publish_raw(broker, [("procmon/h9/exits", event_json(9, "h9"), None)])
            return proc.poll() is not None

        wait_until(publish_and_check, SLOW, "the CLI subscriber to take one event")
        out, err = proc.communicate(timeout=SLOW)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[0])["host"] == "h9"
    assert b"1 written" in err


def test_count_acknowledges_only_what_was_written(broker: Mosquitto, subscribers: Any) -> None:
    """Messages arrive and are acknowledged in batches: with --count, the batch's messages
    after the count are not acknowledged, so the persistent session gives them to the next
    run. Nothing lost, nothing twice."""
    first = subscribers("b0", broker.url, client_id="procmon-batch-consumer")
    assert first.stop() == 0
    publish_raw(broker, [("procmon/h1/exits", event_json(n), None) for n in range(1, 201)])
    some = subscribers("b1", broker.url, client_id="procmon-batch-consumer", count=30)
    assert some.proc.wait(timeout=SLOW) == 0
    rest = subscribers("b2", broker.url, client_id="procmon-batch-consumer", count=170)
    assert rest.proc.wait(timeout=SLOW) == 0
    assert [e["pid"] for e in some.events()] == list(range(1, 31))
    assert [e["pid"] for e in rest.events()] == list(range(31, 201))


def test_cli_human_format_with_host_and_failed_filters(
    broker: Mosquitto, mosquitto_ready: None
) -> None:
    cmd = [PY, "-m", "procmon.cli", "subscribe", "--broker", broker.url, "--format", "human"]
    cmd += ["--host", "web-*", "--failed", "--count", "1", "--color", "always"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:

        def publish_and_check() -> bool:
            publish_raw(
                broker,
                [
                    ("procmon/db-1/exits", event_json(3, "db-1"), None),  # another host
                    ("procmon/web-1/exits", event_json(256, "web-1"), None),  # exit code 0
                    ("procmon/web-1/exits", event_json(7, "web-1"), None),
                ],
            )
            return proc.poll() is not None

        wait_until(publish_and_check, SLOW, "the CLI subscriber to take one event")
        out, err = proc.communicate(timeout=SLOW)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    (line,) = out.decode().splitlines()
    assert " web-1 - sample pid=7 \x1b[31mexit code 7\x1b[0m age=" in line
    assert b"1 written" in err and b" filtered" in err

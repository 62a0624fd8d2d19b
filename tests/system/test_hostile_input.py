"""Hostile and bad input where it needs root or a broker: a password file the agent's user cannot
read, and a subscriber process fed garbage through mosquitto (the rest, without either:
tests/unit/test_hostile_input.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from helpers.common import REPO, require
from helpers.garbage import GARBAGE
from helpers.mosquitto import Mosquitto
from helpers.mqtt import SLOW, SubscriberProcess, publish_raw, sample_event, wait_until

# --- secrets that cannot be read --------------------------------------------------------------


def test_password_file_unreadable_for_the_agent_user_stops_it_with_one_line(
    tmp_path: Path,
) -> None:
    """The agent as an unprivileged user, the password file root's own (0600): exit 2."""
    require(os.geteuid() == 0, "needs root to switch to another user")
    secret = tmp_path / "password"
    secret.write_text("hunter2\n")
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chown(spool, 65534, 65534)
    env = {
        **os.environ,
        "PROCMON_MQTT__USERNAME": "agent",
        "PROCMON_MQTT__PASSWORD_FILE": str(secret),
        "PROCMON_SPOOL__PATH": str(spool / "spool.db"),
    }
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         str(REPO / ".venv/bin/procmon"), "agent", "--broker", "mqtt://127.0.0.1:1"],
        capture_output=True, text=True, timeout=SLOW, env=env, cwd="/",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert f"password file {secret}: Permission denied" in line
    assert "hunter2" not in proc.stderr + proc.stdout


# --- the subscriber fed garbage ---------------------------------------------------------------


def _event_bytes(n: int) -> bytes:
    return sample_event(n, "h1").model_dump_json().encode()


def test_subscriber_process_survives_garbage_from_the_broker(
    broker: Mosquitto, subscribers: Any
) -> None:
    # MQTT 3.1.1: the broker relays the 10 MiB message (MQTT 5 would have it dropped there), so
    # the subscriber's own bound is what counts it.
    sub: SubscriberProcess = subscribers(
        "garbage", broker.url, topic_filter="procmon/+/exits", protocol="3.1.1"
    )
    messages: list[tuple[str, bytes, dict[str, str] | None]] = [
        ("procmon/h1/exits", payload, None) for _, payload, _ in GARBAGE
    ]
    messages.append(("procmon/h1/exits", _event_bytes(1), {"schema": "procmon.exit/v1"}))
    publish_raw(broker, messages)
    wait_until(lambda: len(sub.events()) == 1, SLOW, "the valid event after the garbage")
    assert sub.proc.poll() is None  # still running
    assert sub.stop() == 0
    counts = {c: sum(1 for _, _, k in GARBAGE if k == c) for c in ("invalid", "oversized")}
    wrong = sum(1 for _, _, k in GARBAGE if k == "wrong_schema")
    summary = sub.stderr()
    assert f"{len(GARBAGE) + 1} received, 1 written" in summary, summary
    assert (
        f"{counts['invalid']} invalid, {counts['oversized']} oversized, {wrong} wrong schema"
        in summary
    ), summary

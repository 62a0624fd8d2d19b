"""Hostile and bad input: task names of every kind of byte, topic levels that would widen a
subscription, each wrong config key/type/range (TOML and environment), unreadable secrets, and
a consumer fed garbage. Nothing crashes, every output stays valid, every error is one line
naming the culprit. The cases that need root or a broker (a password file the agent's user
cannot read, a subscriber process fed garbage through mosquitto):
tests/system/test_hostile_input.py.

Already covered elsewhere (not repeated here): a missing config file and invalid TOML
(test_config.py), a world-readable password file (test_mqtt_agent.py, test_subscribe.py), a
subscriber's invalid JSON, wrong schema property and 1 MiB + 10 payload (test_subscribe.py).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from helpers.common import REPO
from helpers.garbage import GARBAGE
from helpers.mqtt import PY, SLOW, sample_event
from procmon.config import ConfigError, load_config
from procmon.enrich.context import ProcessContext
from procmon.event import EventBuilder, ExitEvent
from procmon.mqtt.broker_url import BrokerConfigError, BrokerOptions
from procmon.probe.record import (
    EXEC_ARGS_TRUNCATED,
    EXEC_HEADER,
    FLAG_GROUP_DEAD,
    FLAG_THREAD,
    KIND_CGROUP_MKDIR,
    KIND_EXEC,
    RawExit,
    decode,
    encode_exit,
)
from procmon.sinks.stdout import SEED_PREFIX, TextFormat, render
from procmon.subscribe import ExitConsumer

SCHEMA = json.loads((REPO / "schemas/exit-event.v1.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
BOOT_ID = "0f6d1f9e-3c1a-4d8b-9a57-1b2c3d4e5f60"

# --- task names: the decoder, the builder and all three text formats -------------------------

# What a process can put in its comm with prctl(PR_SET_NAME): any 1-15 bytes but NUL.
comm_bytes = st.one_of(
    st.binary(min_size=0, max_size=15).map(lambda b: b.replace(b"\0", b"\x01")),
    st.binary(min_size=15, max_size=15).map(lambda b: b.replace(b"\0", b"\xff")),
    st.sampled_from(
        [
            b'"',
            b'"};{"pid":1',
            b"\\",
            b"\\u0000",
            b"a\nb",
            b"\r\n\r\n",
            b"\x1b[31mred",
            b"\x7f\x08\x07",
            b"\t\v\f",
            b"\xff\xfe",
            b"\xc3",  # a cut UTF-8 sequence
            b"\xe2\x80\xa8",  # U+2028, a JavaScript line separator
            b"\xed\xa0\x80",  # an encoded surrogate: not UTF-8
            "ünïcødé✓".encode()[:15],
            b"PROCESS_MONITOR",
            b"x\nPROCESS_MON",
        ]
    ),
)


def record(comm: bytes, thread: bool, pid: int, status: int) -> bytes:
    """A ring-buffer record as the probe writes it, comms NUL-padded to 16 bytes."""
    fields = (
        5_000_000_000, 4_000_000_000, 8_000_000, 4_000_000, 15_000_000, 100, 42,
        pid, pid, 1, 1000, 1000, status, 4026531836, pid,
        FLAG_THREAD if thread else FLAG_GROUP_DEAD,
    )  # fmt: skip
    return encode_exit(RawExit(*fields, comm, comm))


@settings(max_examples=400, deadline=None)
@given(
    comm=comm_bytes,
    thread=st.booleans(),
    pid=st.integers(1, 4_194_304),
    status=st.integers(0, 0xFFFF),
)
@example(comm=b"a\nPROCESS_MONITOR: forged", thread=False, pid=1, status=0)
def test_any_task_name_gives_valid_output_in_every_format(
    comm: bytes, thread: bool, pid: int, status: int
) -> None:
    comm = comm[:15]
    raw = decode(record(comm, thread, pid, status))
    assert isinstance(raw, RawExit)
    assert raw.comm == raw.parent_comm == comm  # the decoder keeps the bytes up to the NUL
    event = EventBuilder("host-a", "core", boot_id=BOOT_ID).build(raw)
    event.comm.encode("utf-8")  # a str without lone surrogates

    line = render(event, "json")
    assert line.endswith(b"\n") and b"\n" not in line[:-1]  # one JSON line, always
    document = json.loads(line)
    VALIDATOR.validate(document)  # the published contract holds
    assert ExitEvent.model_validate(document) == event
    assert ExitEvent.model_validate_json(line) == event
    if comm.isascii() and comm.isalnum():
        assert document["comm"] == comm.decode()

    formats: tuple[tuple[TextFormat, int], ...] = (("human", 1), ("seed", 3))
    for fmt, lines in formats:
        text = render(event, fmt).decode("utf-8")  # valid UTF-8, always
        assert text.endswith("\n")
        body = text[:-1].split("\n")
        assert len(body) == lines, (fmt, text)  # a name cannot add or forge lines
        for part in body:
            assert part.isprintable(), (fmt, part)  # no raw control characters
        if fmt == "seed":
            assert all(part.startswith(SEED_PREFIX) for part in body)


def exec_bytes(filename: bytes, argv: list[bytes], truncated: bool) -> bytes:
    """A ring-buffer exec record as the probe writes it (args NUL-separated, trimmed)."""
    blob = b"".join(a + b"\0" for a in argv)[:1024]
    header = EXEC_HEADER.pack(
        KIND_EXEC, EXEC_ARGS_TRUNCATED if truncated else 0, 1, 4_000_000_000, 4242,
        len(blob), len(blob), 1, 0, filename[:255].ljust(256, b"\0"),
    )  # fmt: skip
    return header + blob


@settings(max_examples=300, deadline=None)
@given(
    filename=st.binary(max_size=255).map(lambda b: b.replace(b"\0", b"/")),
    argv=st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\0", b" ")), max_size=12),
    truncated=st.booleans(),
    cgroup=st.binary(min_size=1, max_size=400).map(lambda b: b"/" + b.replace(b"\0", b"_")),
)
@example(
    filename=b"/usr/bin/\xff\n",
    argv=[b"a\nPROCESS_MONITOR: forged", b'"},{"pid":1', b"--password=\xffsecret"],
    truncated=True,
    cgroup=b"/system.slice/docker-" + b"a" * 64 + b".scope",
)
def test_any_exec_and_cgroup_bytes_give_a_valid_event(
    filename: bytes, argv: list[bytes], truncated: bool, cgroup: bytes
) -> None:
    context = ProcessContext()
    path = cgroup + b"\0"
    context.observe(decode(exec_bytes(filename, argv, truncated)))  # type: ignore[arg-type]
    mkdir = struct.pack("<IIQQ", KIND_CGROUP_MKDIR, len(path), 42, 1) + path
    context.observe(decode(mkdir))  # type: ignore[arg-type]
    exit_record = decode(record(b"app", False, 4242, 0))
    assert isinstance(exit_record, RawExit)
    raw = exit_record._replace(start_boot_ns=4_000_000_000, cgroup_id=42)
    event = EventBuilder("host-a", "core", boot_id=BOOT_ID, context=context).build(raw)
    assert event.exec_source == "exec" and event.exe is not None
    line = render(event, "json")
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    document = json.loads(line)
    VALIDATOR.validate(document)
    assert ExitEvent.model_validate_json(line) == event
    human = render(event, "human").decode("utf-8")
    assert human.count("\n") == 1 and human[:-1].isprintable()


# --- host ids and prefixes --------------------------------------------------------------------

BAD_LEVELS = ["a+b", "+", "a#", "#", "a/b", "/", "a\0b", "a b", " ", "", "\n", "x" * 129, "é"]


LEVEL_CASES = [
    (source, key, value)
    for source in ("toml", "env", "override")
    for key in ("host_id", "mqtt.prefix")
    for value in BAD_LEVELS
    if not (source == "env" and "\0" in value)  # an environment variable cannot hold NUL
]


@pytest.mark.parametrize(("source", "key", "value"), LEVEL_CASES, ids=repr)
def test_unsafe_topic_levels_are_one_line_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, key: str, value: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("")
    overrides: dict[str, Any] = {}
    section, _, leaf = key.rpartition(".")
    if source == "toml":
        quoted = json.dumps(value)  # a JSON string is a valid TOML basic string
        path.write_text(f"[{section}]\n{leaf} = {quoted}\n" if section else f"{leaf} = {quoted}\n")
    elif source == "env":
        monkeypatch.setenv("PROCMON_" + key.upper().replace(".", "__"), value)
    else:
        overrides = {section: {leaf: value}} if section else {leaf: value}
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    message = str(err.value)
    assert "\n" not in message and "\0" not in message
    assert f": {key}:" in message


def test_longest_safe_host_id_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'host_id = "{"h" * 128}"\n[mqtt]\nprefix = "a.b_c:d@e=f-g"\n')
    assert load_config(path).host_id == "h" * 128


def test_cli_host_id_with_a_wildcard_is_one_line() -> None:
    proc = subprocess.run(
        [PY, "-m", "procmon.cli", "agent", "--check-config", "--host-id", "evil/#"],
        capture_output=True,
        text=True,
        timeout=SLOW,
        env={**os.environ, "PROCMON_SPOOL__PATH": "/nonexistent/spool.db"},
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "host_id" in line and "evil/#" in line


# --- every key, type and range ----------------------------------------------------------------

# (key, TOML value, environment value): each is wrong in exactly one way.
BAD_CONFIG = [
    ("nope", "1", None),  # see test_unknown_top_level_env_variable_is_refused
    ("log_level", '"loud"', "loud"),
    ("log_level", "3", None),
    ("stats_interval_s", "0", "0"),
    ("stats_interval_s", "3601", "3601"),
    ("stats_interval_s", '"often"', "often"),
    ("probe.nope", "1", "1"),
    ("probe.backend", '"ebpf"', "ebpf"),
    ("probe.per_thread", '"maybe"', "maybe"),
    ("probe.failed_only", "2", "2"),
    ("probe.pidns_scope", "[]", "[]"),
    ("probe.exclude_self", '"nah"', "nah"),
    ("probe.ring_size_kb", "63", "63"),
    ("probe.ring_size_kb", "1048577", "1048577"),
    ("probe.ring_size_kb", '"big"', "big"),
    ("probe.wakeup_bytes", "-1", "-1"),
    ("probe.wakeup_latency_ms", "5001", "5001"),
    ("probe.wakeup_latency_ms", "-1", "-1"),
    ("probe.poll_interval_ms", "0", "0"),
    ("probe.poll_interval_ms", "5001", "5001"),
    ("mqtt.nope", "1", "1"),
    ("mqtt.broker", '"http://x"', "http://x"),
    ("mqtt.broker", '"mqtt://a b"', "mqtt://a b"),
    ("mqtt.broker", '"mqtt://host/#"', "mqtt://host/#"),
    ("mqtt.broker", "1883", None),
    ("mqtt.protocol", '"4"', "4"),
    ("mqtt.keepalive_s", "4", "4"),
    ("mqtt.keepalive_s", "3601", "3601"),
    ("mqtt.message_expiry_s", "-1", "-1"),
    ("mqtt.max_inflight", "0", "0"),
    ("mqtt.max_inflight", "65536", "65536"),
    ("mqtt.reconnect_max_s", "0", "0"),
    ("mqtt.reconnect_max_s", "3601", "3601"),
    ("mqtt.password_file", "5", None),
    ("spool.nope", "1", "1"),
    ("spool.max_events", "99", "99"),
    ("spool.max_events", '"many"', "many"),
    ("sinks.nope", "1", "1"),
    ("sinks.mqtt", '"perhaps"', "perhaps"),
    ("sinks.stdout", '"xml"', "xml"),
    ("sinks.kmsg", "{}", "{}"),
]


def _assert_one_line_naming(err: pytest.ExceptionInfo[ConfigError], key: str) -> None:
    message = str(err.value)
    assert "\n" not in message, message
    assert f": {key}:" in message, message


@pytest.mark.parametrize(
    ("key", "toml", "env"), BAD_CONFIG, ids=[f"{k}={t}" for k, t, _ in BAD_CONFIG]
)
def test_each_bad_key_type_or_range_in_toml(
    tmp_path: Path, key: str, toml: str, env: str | None
) -> None:
    section, _, leaf = key.rpartition(".")
    path = tmp_path / "agent.toml"
    path.write_text(f"[{section}]\n{leaf} = {toml}\n" if section else f"{leaf} = {toml}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    _assert_one_line_naming(err, key)


ENV_CASES = [(k, e) for k, _, e in BAD_CONFIG if e is not None]


@pytest.mark.parametrize(("key", "env"), ENV_CASES, ids=[f"{k}={e}" for k, e in ENV_CASES])
def test_each_bad_key_type_or_range_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, env: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("")
    monkeypatch.setenv("PROCMON_" + key.upper().replace(".", "__"), env)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    _assert_one_line_naming(err, key)


def test_unknown_top_level_env_variable_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("")
    monkeypatch.setenv("PROCMON_STATS_INTERVAL", "5")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "\n" not in str(err.value)
    assert "PROCMON_STATS_INTERVAL: no such setting" in str(err.value)


# --- secrets that cannot be read --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "not-utf8"])
def test_unusable_password_file_is_one_line_naming_it(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "password"
    if kind == "directory":
        path.mkdir(mode=0o700)
    elif kind == "empty":
        path.write_text("\n")
        path.chmod(0o600)
    elif kind == "not-utf8":
        path.write_bytes(b"\xff\xfehunter2\n")
        path.chmod(0o600)
    with pytest.raises(BrokerConfigError) as err:
        BrokerOptions.build("mqtt://127.0.0.1", "agent", path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "hunter2" not in message


# --- the subscriber fed garbage ---------------------------------------------------------------


def _event_bytes(n: int) -> bytes:
    return sample_event(n, "h1").model_dump_json().encode()


@pytest.mark.parametrize(("name", "payload", "counter"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_consumer_counts_each_kind_of_garbage(
    name: str, payload: bytes, counter: str, capsys: Any
) -> None:
    out = io.BytesIO()
    consumer = ExitConsumer(out, dedup=False)
    assert not consumer.handle("procmon/h1/exits", payload)
    assert getattr(consumer.counters, counter) == 1, consumer.counters
    assert consumer.handle("procmon/h1/exits", _event_bytes(1))  # and it keeps going
    assert consumer.counters.written == 1 and consumer.counters.received == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert len(line) < 1000  # the report never echoes the payload

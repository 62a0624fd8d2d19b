"""The agent's pieces that need no broker, probe or root: broker URLs, password-file rules and
sd_notify (the agent on the bus against a real mosquitto: tests/system/test_mqtt_agent.py)."""

from __future__ import annotations

import logging
import socket
import uuid
from pathlib import Path

import pytest

from procmon import sdnotify
from procmon.mqtt.broker_url import (
    BrokerConfigError,
    BrokerOptions,
    ConnectionReporter,
    parse_broker_url,
)


def test_broker_url_parsing() -> None:
    assert str(parse_broker_url("mqtt://broker")) == "mqtt://broker:1883"
    assert str(parse_broker_url("mqtts://b.example:9999/")) == "mqtts://b.example:9999"
    for bad in ("tcp://x", "mqtt://", "mqtt://a:b", "mqtt://host:70000", "mqtt://h/x"):
        with pytest.raises(BrokerConfigError, match="broker"):
            parse_broker_url(bad)


def test_password_file_rules(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\nignored\n")
    pw.chmod(0o640)
    options = BrokerOptions.build("mqtt://h", "user", pw)
    assert options.password == "s3cret"
    assert "s3cret" not in repr(options)
    pw.chmod(0o644)
    with pytest.raises(BrokerConfigError, match="readable by everyone"):
        BrokerOptions.build("mqtt://h", "user", pw)
    with pytest.raises(BrokerConfigError, match="needs a username"):
        BrokerOptions.build("mqtt://h", None, pw)
    with pytest.raises(BrokerConfigError, match="use mqtts://"):
        BrokerOptions.build("mqtt://h", ca_file=pw)
    with pytest.raises(BrokerConfigError, match="does not exist"):
        BrokerOptions.build("mqtts://h", ca_file=tmp_path / "missing.crt")


def test_client_key_must_not_be_readable_by_everyone(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("cert")
    key.write_text("key")
    key.chmod(0o644)
    with pytest.raises(BrokerConfigError, match=r"client key .*k.pem is readable by everyone"):
        BrokerOptions.build("mqtts://h", cert_file=cert, key_file=key)
    key.chmod(0o600)
    assert BrokerOptions.build("mqtts://h", cert_file=cert, key_file=key).key_file == key


def test_credentials_over_plain_mqtt_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("procmon.test")
    ConnectionReporter(log, parse_broker_url("mqtts://h"), "").warn_plain_credentials("u")
    assert not caplog.records
    ConnectionReporter(log, parse_broker_url("mqtt://h"), "").warn_plain_credentials("u")
    assert "credentials of user 'u' go over the network unencrypted" in caplog.text


def test_a_link_closed_at_once_names_the_likely_refusal_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reporter = ConnectionReporter(
        logging.getLogger("procmon.test"), parse_broker_url("mqtt://h"), ""
    )
    reporter.lost("connection reset by peer", after_s=0.2)
    reporter.lost("connection reset by peer", after_s=0.2)
    reporter.lost("keepalive", after_s=600)
    assert caplog.text.count("likely an ACL refusal") == 1
    assert "host_id must equal mqtt.username" in caplog.text


@pytest.mark.parametrize("abstract", [True, False])
def test_sd_notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"procmon-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        sock.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    with sock:
        assert sdnotify.notify("READY=1")
        assert sock.recv(100) == b"READY=1"
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    assert sdnotify.watchdog_interval() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", "1")  # someone else's watchdog
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("READY=1")

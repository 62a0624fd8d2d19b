"""The agent's pieces that need no broker, probe or root: broker URLs, password-file rules and
sd_notify (the agent on the bus against a real mosquitto: tests/system/test_mqtt_agent.py)."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from procmon import sdnotify
from procmon.broker_url import BrokerConfigError, BrokerOptions, parse_broker_url


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

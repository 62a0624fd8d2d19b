"""`procmon check --broker`: can this host reach the broker with these credentials?"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from procmon.mqtt.broker_url import (
    BrokerConfigError,
    BrokerOptions,
    describe_connect_error,
    describe_refusal,
)
from procmon.preflight import CheckLine

CONNECT_TIMEOUT_S = 10.0


def broker_line(
    broker: str,
    username: str | None = None,
    password_file: Path | None = None,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> CheckLine:
    """Connect once (MQTT v5), wait for CONNACK, disconnect; one line either way."""
    item = f"broker {broker}"
    try:
        options = BrokerOptions.build(broker, username, password_file, ca_file, cert_file, key_file)
    except BrokerConfigError as exc:
        return CheckLine(item, False, str(exc))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    answered = threading.Event()
    outcome: list[str] = []

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if not reason.is_failure:
            outcome.append("")
        else:
            outcome.append(describe_refusal(reason))
        answered.set()

    client.on_connect = on_connect
    try:
        options.apply(client)
        client.connect(options.url.host, options.url.port, keepalive=10)
    except BrokerConfigError as exc:
        return CheckLine(item, False, str(exc))
    except OSError as exc:
        return CheckLine(item, False, describe_connect_error(exc))
    client.loop_start()
    try:
        if not answered.wait(CONNECT_TIMEOUT_S):
            return CheckLine(item, False, f"no CONNACK within {CONNECT_TIMEOUT_S:.0f} s")
    finally:
        client.disconnect()
        client.loop_stop()
    if outcome[0]:
        return CheckLine(item, False, outcome[0])
    who = f" as {options.username}" if options.username else ""
    return CheckLine(item, True, f"connected{who}")

"""`procmon check --broker`: can this host reach the broker with these credentials?

It connects with the agent's own client (procmon.mqtt.conn), every TLS option included, MQTT 5
first and then, as the agent does, once with MQTT 3.1.1 if the broker does not speak 5.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from procmon.mqtt.broker_url import BrokerConfigError, BrokerOptions
from procmon.mqtt.conn import CONNECT_TIMEOUT_S, Interrupted, say_goodbye
from procmon.mqtt.connector import Connector, WillTerms
from procmon.mqtt.wire import PROTOCOL_5, encode_connect, encode_disconnect
from procmon.preflight import CheckLine


def broker_line(
    broker: str,
    username: str | None = None,
    password_file: Path | None = None,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
) -> CheckLine:
    """Connect once, wait for CONNACK, disconnect; one line either way."""
    item = f"broker {broker}"
    try:
        options = BrokerOptions.build(broker, username, password_file, ca_file, cert_file, key_file)
    except BrokerConfigError as exc:
        return CheckLine(item, False, str(exc))
    stop_fd = os.eventfd(0, os.EFD_CLOEXEC)  # never written: nothing interrupts a check
    try:
        connector = Connector([options], PROTOCOL_5, stop_fd, timeout=timeout)

        def packet(protocol: int, options: BrokerOptions, _will: WillTerms) -> bytes:
            return encode_connect(
                protocol=protocol,
                client_id=f"procmon-check-{os.getpid()}",
                keepalive=10,
                username=options.username,
                password=options.password,
            )

        connected = connector.connect(packet)
        if connected is None:
            return CheckLine(item, False, connector.last_problem)
        link, _ = connected
        with contextlib.suppress(OSError):
            say_goodbye(link, encode_disconnect(connector.protocol), 1.0)
        link.close()
    except BrokerConfigError as exc:  # the TLS files, loaded by the connector
        return CheckLine(item, False, str(exc))
    except Interrupted:  # pragma: no cover - stop_fd is never written
        return CheckLine(item, False, "interrupted")
    finally:
        os.close(stop_fd)
    who = f" as {options.username}" if options.username else ""
    if connector.protocol == PROTOCOL_5:
        return CheckLine(item, True, f"connected{who} (MQTT 5)")
    return CheckLine(item, True, f'connected{who} (MQTT 3.1.1 only: set mqtt.protocol = "3.1.1")')

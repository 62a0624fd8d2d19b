"""`procmon check --broker`: can this host reach the broker with these credentials?

It connects with the agent's own client (procmon.mqtt.conn), every TLS option included, MQTT 5
first and then, as the agent does, once with MQTT 3.1.1 if the broker does not speak 5.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from pathlib import Path

from procmon.mqtt.broker_url import (
    BrokerConfigError,
    BrokerOptions,
    describe_connect_error,
    describe_refusal,
)
from procmon.mqtt.conn import (
    ClosedBeforeConnAck,
    Interrupted,
    Link,
    NoConnAck,
    connack_reason,
    open_link,
    refused,
    say_goodbye,
    tls_context,
)
from procmon.mqtt.wire import (
    PROTOCOL_5,
    PROTOCOL_311,
    ConnAck,
    ProtocolError,
    encode_connect,
    encode_disconnect,
)
from procmon.preflight import CheckLine

CONNECT_TIMEOUT_S = 10.0
_VERSION_REFUSALS = (0x01, 0x84)


def _attempt(
    options: BrokerOptions,
    tls: ssl.SSLContext | None,
    protocol: int,
    stop_fd: int,
    timeout: float,
) -> tuple[Link, ConnAck] | str:
    packet = encode_connect(
        protocol=protocol,
        client_id=f"procmon-check-{os.getpid()}",
        keepalive=10,
        username=options.username,
        password=options.password,
    )
    try:
        return open_link(options.url, tls, packet, protocol, stop_fd, timeout)
    except (ClosedBeforeConnAck, NoConnAck) as exc:
        return exc.strerror or str(exc)
    except ProtocolError as exc:
        return f"protocol error ({exc})"
    except OSError as exc:
        return describe_connect_error(exc)


def _mismatch(outcome: tuple[Link, ConnAck] | str) -> bool:
    if isinstance(outcome, str):
        return "before any CONNACK" in outcome or outcome.startswith("no CONNACK")
    return outcome[1].reason_code in _VERSION_REFUSALS


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
        tls = tls_context(options)
    except BrokerConfigError as exc:
        return CheckLine(item, False, str(exc))
    stop_fd = os.eventfd(0, os.EFD_CLOEXEC)  # never written: nothing interrupts a check
    try:
        protocol = PROTOCOL_5
        outcome = _attempt(options, tls, protocol, stop_fd, timeout)
        note = "MQTT 5"
        if _mismatch(outcome):
            first = outcome if isinstance(outcome, str) else "refused: unsupported protocol"
            if not isinstance(outcome, str):
                outcome[0].close()
            protocol = PROTOCOL_311
            outcome = _attempt(options, tls, protocol, stop_fd, timeout)
            if isinstance(outcome, str) or refused(outcome[1]):
                why = outcome if isinstance(outcome, str) else _refusal(outcome[1], protocol)
                if not isinstance(outcome, str):
                    outcome[0].close()
                return CheckLine(
                    item, False, f'MQTT 5: {first}; MQTT 3.1.1: {why} (mqtt.protocol = "5")'
                )
            note = 'MQTT 3.1.1 only: set mqtt.protocol = "3.1.1"'
        if isinstance(outcome, str):
            return CheckLine(item, False, outcome)
        link, connack = outcome
        if refused(connack):
            link.close()
            return CheckLine(item, False, _refusal(connack, protocol))
        with contextlib.suppress(OSError):
            say_goodbye(link, encode_disconnect(protocol), 1.0)
        link.close()
    except Interrupted:  # pragma: no cover - stop_fd is never written
        return CheckLine(item, False, "interrupted")
    finally:
        os.close(stop_fd)
    who = f" as {options.username}" if options.username else ""
    return CheckLine(item, True, f"connected{who} ({note})")


def _refusal(connack: ConnAck, protocol: int) -> str:
    return describe_refusal(connack_reason(connack, protocol))

"""Moved to procmon.mqtt.broker_url; kept so `procmon subscribe` (another module's owner) still
imports it from here."""

from procmon.mqtt.broker_url import (
    DEFAULT_PORTS,
    BrokerConfigError,
    BrokerOptions,
    BrokerUrl,
    ConnectionReporter,
    describe_connect_error,
    describe_refusal,
    parse_broker_url,
    read_password_file,
)

__all__ = [
    "DEFAULT_PORTS",
    "BrokerConfigError",
    "BrokerOptions",
    "BrokerUrl",
    "ConnectionReporter",
    "describe_connect_error",
    "describe_refusal",
    "parse_broker_url",
    "read_password_file",
]

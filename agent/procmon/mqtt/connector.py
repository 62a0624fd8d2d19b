"""Reaching one of the brokers: failover in order, one MQTT 3.1.1 attempt for a broker that does
not speak MQTT 5, a will the broker takes, and each failure worded as one line.

Used by the sink's network thread (with a logger: failures are reported, collapsed when they
repeat) and by `procmon check --broker` (without one: it reads ``last_problem``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from procmon.mqtt.broker_url import (
    BrokerOptions,
    ConnectionReporter,
    describe_connect_error,
    describe_refusal,
)
from procmon.mqtt.conn import (
    CONNECT_TIMEOUT_S,
    ClosedBeforeConnAck,
    Link,
    NoConnAck,
    connack_reason,
    open_link,
    refused,
    tls_context,
)
from procmon.mqtt.wire import PROTOCOL_5, PROTOCOL_311, REASON_STRING, ConnAck, ProtocolError

if TYPE_CHECKING:
    import ssl  # for mqtts:// only, imported by conn.tls_context

# CONNACK reason codes that mean "not this protocol version": aedes answers an MQTT 5 CONNECT
# with the 3.1.1 code 0x01; 0x84 is MQTT 5's own.
VERSION_REFUSALS = (0x01, 0x84)
RETAIN_NOT_SUPPORTED = 0x9A
QOS_NOT_SUPPORTED = 0x9B
FALLBACK_WARNING = (
    'broker %s speaks MQTT 3.1.1 only: using it; set mqtt.protocol = "3.1.1" to say so'
)


@dataclass
class WillTerms:
    """What the will may ask for: an MQTT 5 broker refuses a CONNECT whose will asks for more
    than its Retain Available or Maximum QoS; the next attempt then asks less."""

    retain: bool = True
    qos: int = 1


# (protocol, broker, will terms) -> the CONNECT packet
PacketMaker = Callable[[int, BrokerOptions, WillTerms], bytes]
Outcome = tuple[Link, ConnAck] | str


def version_mismatch(outcome: Outcome) -> bool:
    """What a broker that does not speak MQTT 5 does with an MQTT 5 CONNECT: refuse it with a
    version code, close the link before any CONNACK (RabbitMQ), or never answer (amqtt)."""
    if isinstance(outcome, str):
        return "before any CONNACK" in outcome or outcome.startswith("no CONNACK")
    return outcome[1].reason_code in VERSION_REFUSALS


def describe_outcome(outcome: Outcome, protocol: int) -> str:
    """A failed attempt in words."""
    if isinstance(outcome, str):
        return outcome
    connack = outcome[1]
    if connack.reason_code == 0x01 and protocol == PROTOCOL_5:
        return "refused: Unsupported protocol version (a 3.1.1 CONNACK, code 0x01)"
    problem = describe_refusal(connack_reason(connack, protocol))
    if connack.reason_code in VERSION_REFUSALS and protocol == PROTOCOL_311:
        problem += ' (mqtt.protocol = "3.1.1")'
    text = connack.properties.get(REASON_STRING)
    return problem + (f' ("{text}")' if isinstance(text, str) else "")


class Connector:
    """Connects to the broker in use, else to each other one in turn (failover)."""

    def __init__(
        self,
        brokers: Sequence[BrokerOptions],
        protocol: int,
        stop_fd: int,
        log: logging.Logger | None = None,
        what: str = "",
        timeout: float | None = None,  # CONNECT_TIMEOUT_S
    ) -> None:
        self.brokers = list(brokers)
        self.tls: list[ssl.SSLContext | None] = [tls_context(o) for o in self.brokers]
        self.protocol = protocol  # MQTT 3.1.1 for good once a broker refused 5 and took 3.1.1
        self.current = 0  # the broker in use, or tried first next time
        self.will = WillTerms()
        self.last_problem = ""
        self._stop_fd = stop_fd
        self._log = log
        self._timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
        self.reporters = [
            ConnectionReporter(log or logging.getLogger("procmon.mqtt.quiet"), o.url, what)
            for o in self.brokers
        ]

    @property
    def options(self) -> BrokerOptions:
        return self.brokers[self.current]

    @property
    def reporter(self) -> ConnectionReporter:
        return self.reporters[self.current]

    def connect(self, make_packet: PacketMaker) -> tuple[Link, ConnAck] | None:
        """A link to the first broker that accepts us, from the one in use; None when none
        did (each failure reported; the last in ``last_problem``). Raises Interrupted."""
        for step in range(len(self.brokers)):
            index = (self.current + step) % len(self.brokers)
            connected = self._connect(index, make_packet)
            if connected is not None:
                if index != self.current and self._log is not None:
                    self._log.warning(
                        "MQTT failover: publishing to %s (%s unreachable)",
                        self.brokers[index].url,
                        self.brokers[self.current].url,
                    )
                self.current = index
                return connected
        return None

    def _attempt(self, index: int, protocol: int, make_packet: PacketMaker) -> Outcome:
        options = self.brokers[index]
        packet = make_packet(protocol, options, self.will)
        try:
            return open_link(
                options.url, self.tls[index], packet, protocol, self._stop_fd, self._timeout
            )
        except ProtocolError as exc:
            return f"protocol error ({exc})"
        except (ClosedBeforeConnAck, NoConnAck) as exc:
            return exc.strerror or str(exc)
        except OSError as exc:
            return describe_connect_error(exc)

    def _failed(self, index: int, problem: str) -> None:
        self.last_problem = problem
        if self._log is not None:
            self.reporters[index].failed(problem)

    def _connect(self, index: int, make_packet: PacketMaker) -> tuple[Link, ConnAck] | None:
        protocol = self.protocol
        outcome = self._attempt(index, protocol, make_packet)
        if protocol == PROTOCOL_5 and version_mismatch(outcome):
            first_problem = describe_outcome(outcome, protocol)
            if not isinstance(outcome, str):
                outcome[0].close()  # refused: the broker closes it too
            outcome = self._attempt(index, PROTOCOL_311, make_packet)  # once, the older one
            if isinstance(outcome, str) or refused(outcome[1]):
                if not isinstance(outcome, str):
                    outcome[0].close()
                self._failed(
                    index,
                    f"MQTT 5: {first_problem}; MQTT 3.1.1: "
                    f'{describe_outcome(outcome, PROTOCOL_311)} (mqtt.protocol = "5" was '
                    'tried first; a 3.1.1-only broker needs mqtt.protocol = "3.1.1")',
                )
                return None
            self.protocol = protocol = PROTOCOL_311
            if self._log is not None:
                self._log.warning(FALLBACK_WARNING, self.brokers[index].url)
        if isinstance(outcome, str):
            self._failed(index, outcome)
            return None
        link, connack = outcome
        if not refused(connack):
            if self._log is not None:
                self.reporters[index].connected()
            return link, connack
        link.close()
        if connack.reason_code == RETAIN_NOT_SUPPORTED and self.will.retain:
            self.will.retain = False
            self._failed(index, "refused: Retain not supported; the will goes unretained")
            return self._connect(index, make_packet)
        if connack.reason_code == QOS_NOT_SUPPORTED and self.will.qos:
            self.will.qos = 0
            self._failed(index, "refused: QoS not supported; the will goes with QoS 0")
            return self._connect(index, make_packet)
        self._failed(index, describe_outcome(outcome, protocol))
        return None

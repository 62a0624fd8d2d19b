"""What the wire-codec tests share: the properties the sink attaches to each event, and a reader's
view of decoded packets."""

from __future__ import annotations

from typing import Any

from procmon.mqtt import wire
from procmon.mqtt.wire import PubAck, PubAcks

EXIT_PROPS: list[tuple[int, Any]] = [
    (wire.PAYLOAD_FORMAT_INDICATOR, 1),
    (wire.MESSAGE_EXPIRY_INTERVAL, 3600),
    (wire.CONTENT_TYPE, "application/json"),
    (wire.USER_PROPERTY, ("schema", "procmon.exit/v1")),
]


def flat(packets: list[Any]) -> list[Any]:
    """PubAcks spelt out as the PubAck packets they stand for."""
    out: list[Any] = []
    for p in packets:
        out += [PubAck(i, 0) for i in p.packet_ids] if isinstance(p, PubAcks) else [p]
    return out

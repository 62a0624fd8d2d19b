"""Sinks: where ExitEvents go (MQTT through the spool, stdout, kmsg). Sinks never reach upstream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from procmon.event import ExitEvent


class Sink(Protocol):
    def emit(self, events: Sequence[ExitEvent]) -> None:
        """Take a batch; must not block the probe loop for long."""
        ...

    def close(self) -> None:
        """Flush what can be flushed and release resources."""
        ...

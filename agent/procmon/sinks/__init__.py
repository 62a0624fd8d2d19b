"""Sinks: where ExitEvents go (MQTT through the spool, stdout, kmsg). Sinks never reach upstream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from procmon.event import ExitEvent


class Sink(Protocol):
    def emit(self, events: Sequence[ExitEvent]) -> None:
        """Take a batch; must not block the probe loop for long."""
        ...

    def on_stop(self, total: int) -> None:
        """The monitor stops after ``total`` events: write a final line, flush what waits."""
        ...

    def close(self) -> None:
        """Release resources (also when replaced on reload, without on_stop)."""
        ...

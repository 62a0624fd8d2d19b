"""A CO-RE probe attached in the test process, with its records turned into events as the
agent's pipeline does (context records feed a ProcessContext)."""

from __future__ import annotations

import time
from collections.abc import Callable

from procmon.assemble import context_settings
from procmon.config import EnrichConfig
from procmon.enrich.context import ProcessContext
from procmon.event import EventBuilder, ExitEvent
from procmon.probe import ProbeKnobs, RawExit, RawRecord
from procmon.probe.core import CoreProbe


class Collector:
    """Owns an attached probe; collects events until a condition holds or time runs out.
    Context records go to a ProcessContext, as in the agent's pipeline."""

    def __init__(self, knobs: ProbeKnobs, enrich: EnrichConfig | None = None) -> None:
        self.probe = CoreProbe(knobs)
        settings = context_settings(enrich or EnrichConfig())
        self.context = ProcessContext(settings) if self.probe.has_context else None
        self.builder = EventBuilder("test-host", "core", context=self.context)
        self.events: list[ExitEvent] = []

    def _ingest(self, records: list[RawRecord]) -> None:
        for r in records:
            if isinstance(r, RawExit):
                self.events.append(self.builder.build(r))
            elif self.context is not None:
                self.context.observe(r)

    def poll_until(self, done: Callable[[list[ExitEvent]], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.events) and time.monotonic() < deadline:
            self._ingest(self.probe.poll(50))
        # One more short poll: a condition like "exactly one" must also hold a moment later.
        self._ingest(self.probe.poll(100))

    def of_pid(self, pid: int) -> list[ExitEvent]:
        return [e for e in self.events if e.pid == pid]

    def close(self) -> None:
        self.probe.detach()
        self.probe.close()

"""The probe loop: drain the ring buffer, build events once, hand each batch to every sink."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from procmon.event import EventBuilder, ExitEvent
from procmon.probe import Probe, RawExit
from procmon.sinks import Sink

log = logging.getLogger("procmon.pipeline")

# Re-anchor boot-time stamps to wall time about once a minute (NTP may slew the clock).
_RESYNC_EVERY_POLLS = 600
# A backlog of tens of thousands of records becomes events in slices, so memory stays flat.
CHUNK = 512


@dataclass
class PipelineCounters:
    events_seen: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"events_seen": self.events_seen}


class Pipeline:
    def __init__(
        self,
        probe: Probe,
        builder: EventBuilder,
        sinks: Sequence[Sink],
        poll_interval_ms: int = 100,
        max_events: int | None = None,
    ) -> None:
        self.probe = probe
        self.builder = builder
        self.sinks = list(sinks)
        self.poll_interval_ms = poll_interval_ms
        self.max_events = max_events
        self.counters = PipelineCounters()
        self.final_kernel_drops = 0
        self._polls = 0

    def step(self, timeout_ms: int | None = None) -> int:
        """One poll: returns how many events were delivered to the sinks."""
        raws = self.probe.poll(self.poll_interval_ms if timeout_ms is None else timeout_ms)
        self._polls += 1
        if self._polls % _RESYNC_EVERY_POLLS == 0:
            self.builder.resync_clock()
        if not raws:
            return 0
        build = self.builder.build
        context = self.builder.context
        events: list[ExitEvent] = []
        delivered = 0
        # Ring order is kept: an exec or cgroup record is known before the exits after it.
        for raw in raws:
            if isinstance(raw, RawExit):
                if self.max_events is not None and (
                    self.counters.events_seen + len(events) >= self.max_events
                ):
                    break
                events.append(build(raw))
                if len(events) == CHUNK:
                    delivered += self._deliver(events)
                    events = []
            elif context is not None:
                context.observe(raw)
        return delivered + self._deliver(events)

    def _deliver(self, events: list[ExitEvent]) -> int:
        if events:
            self.counters.events_seen += len(events)
            for sink in self.sinks:
                sink.emit(events)
        return len(events)

    def done(self) -> bool:
        return self.max_events is not None and self.counters.events_seen >= self.max_events

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Poll until should_stop() or max_events have been delivered; then drain and close."""
        try:
            while not should_stop() and not self.done():
                self.step()
        finally:
            self.shutdown()

    def kernel_drops(self) -> int:
        return self.probe.kernel_drops()

    def shutdown(self) -> None:
        """Detach first, then deliver what the kernel had already queued."""
        self.probe.detach()
        self.step(timeout_ms=0)
        self.final_kernel_drops = self.probe.kernel_drops()
        self.probe.close()
        for sink in self.sinks:
            sink.close()

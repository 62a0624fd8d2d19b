"""The probe loop: drain the ring, build events once, hand each batch to every sink; and the
probe's life from attach to close (drop totals across reloads, the final drain, on_stop)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from procmon.event import EventBuilder, ExitEvent
from procmon.probe import Probe, RawExit, RawRecord
from procmon.probe.record import EXIT_RECORD_SIZE, MAX_BATCH
from procmon.sinks import Sink

log = logging.getLogger("procmon.pipeline")

# Re-anchor boot-time stamps to wall time about once a minute (NTP may slew the clock).
_RESYNC_EVERY_POLLS = 600
# A backlog of tens of thousands of records becomes events in slices, so memory stays flat.
CHUNK = 512


# How often a deferred drain looks at the ring's fill; each look is two loads from memory.
_BURST_CHECK_S = 0.02
# An exit record as the ring stores it: the record and its 8-byte header.
_EXIT_RING_BYTES = EXIT_RECORD_SIZE + 8


@dataclass(frozen=True)
class BurstPolicy:
    """When to leave records queued in the ring during a burst of exits (probe.burst_*)."""

    rate: int  # records a second that make a burst; 0: never defer
    max_s: float  # the longest a drain is put off
    fill: float  # drain anyway once the ring is this full (0..1)


@dataclass
class PipelineCounters:
    events_seen: int = 0
    bursts_deferred: int = 0
    burst_deferred_s: float = 0.0

    def as_dict(self) -> dict[str, int | float]:
        return {
            "events_seen": self.events_seen,
            "bursts_deferred": self.bursts_deferred,
            "burst_deferred_s": round(self.burst_deferred_s, 3),
        }


# Called after every wakeup with final=False, and once with final=True after the last drain,
# when every sink has had on_stop and none is closed yet.
Tick = Callable[[bool], None]


class Pipeline:
    """Owns the probe from attach to close: drains it into events for the sinks, keeps the
    drop totals across probes replaced on reload, and calls ``tick`` between wakeups."""

    def __init__(
        self,
        probe: Probe,
        builder: EventBuilder,
        sinks: Sequence[Sink],
        poll_interval_ms: int = 100,
        max_events: int | None = None,
        burst: BurstPolicy | None = None,
        tick: Tick | None = None,
        accept: Callable[[ExitEvent], bool] | None = None,
    ) -> None:
        self.probe = probe
        # Userspace filters (`procmon tail --comm/--uid/...`): events it refuses reach no sink
        # and do not count towards max_events; they are counted in filtered_out.
        self.accept = accept
        self.filtered_out = 0
        self.builder = builder
        self.sinks = list(sinks)
        self.poll_interval_ms = poll_interval_ms
        self.max_events = max_events
        self.tick = tick
        self.counters = PipelineCounters()
        self._probe_open = True
        self._retired_kernel_drops = 0  # of probes replaced on reload
        self._retired_context_drops = 0
        self._polls = 0
        self._burst_policy = burst
        self.burst = self._burst_for(probe)
        self._last_poll = time.monotonic()

    def _burst_for(self, probe: Probe) -> BurstPolicy | None:
        burst = self._burst_policy
        return burst if burst is not None and burst.rate > 0 and probe.ring_fill else None

    # --- drops ------------------------------------------------------------------------------

    def kernel_drops(self) -> int:
        """Exits the kernel could not queue, over every probe this pipeline has run."""
        live = self.probe.kernel_drops() if self._probe_open else 0
        return self._retired_kernel_drops + live

    def context_drops(self) -> int:
        """Exec and cgroup records shed or lost in the kernel (those exits carry null context)."""
        live = self.probe.context_drops() if self._probe_open else 0
        return self._retired_context_drops + live

    def step(self, timeout_ms: int | None = None) -> int:
        """One wakeup: drain the ring in batches of at most MAX_BATCH records, then hold off
        if that was a burst; returns how many events were delivered to the sinks."""
        raws = self.probe.poll(self.poll_interval_ms if timeout_ms is None else timeout_ms)
        polled = time.monotonic()
        window, self._last_poll = polled - self._last_poll, polled  # what raws arrived within
        self._polls += 1
        if self._polls % _RESYNC_EVERY_POLLS == 0:
            self.builder.resync_clock()
        if not raws:
            return 0
        delivered = taken = 0
        while True:  # full batches until the ring is drained: memory stays at one batch
            delivered += self._process(raws)
            taken += len(raws)
            if len(raws) < MAX_BATCH or self.done():
                break
            raws = self.probe.poll(0)
        burst = self.burst
        # Not on a final drain (timeout 0); the ring is empty now, so a deferral starts with
        # all of it free.
        if burst and timeout_ms is None and taken >= burst.rate * max(window, _BURST_CHECK_S):
            self._defer_while_bursting(burst)
        return delivered

    def _defer_while_bursting(self, burst: BurstPolicy) -> None:
        """Sleep while the ring fills at a burst's rate: the workload keeps the CPU, and the
        records are drained in one go once the burst ends (or the ring is ``burst.fill`` full,
        or ``burst.max_s`` passed). Records wait in the kernel, so nothing is lost unless the
        ring overflows, which the fill bound keeps away from and the probe counts. A burst
        with execs in it ends the wait as soon as the probe sheds a context record: the ring
        is past its context share, and waiting longer would lose more context."""
        ring = self.probe.ring_fill
        assert ring is not None
        start = last_t = time.monotonic()
        limit = ring.capacity * burst.fill
        burst_bytes_per_s = burst.rate * _EXIT_RING_BYTES
        last = ring.queued()
        context_drops = self.probe.context_drops()
        while True:
            time.sleep(_BURST_CHECK_S)
            now = time.monotonic()
            queued = ring.queued()
            rate = (queued - last) / (now - last_t)
            last, last_t = queued, now
            # Drain before the next two looks could take the ring past the limit: a faster
            # burst (a bigger machine) is drained earlier, and one waking late still has room.
            if (
                queued + 2 * _BURST_CHECK_S * rate >= limit
                or now - start >= burst.max_s
                or rate < burst_bytes_per_s
                or self.probe.context_drops() != context_drops
            ):
                break
        self.counters.bursts_deferred += 1
        self.counters.burst_deferred_s += now - start

    def _process(self, raws: Sequence[RawRecord]) -> int:
        build, observe = self.builder.build, self.builder.observe
        events: list[ExitEvent] = []
        delivered = 0
        # Ring order is kept: an exec or cgroup record is known before the exits after it.
        for raw in raws:
            if isinstance(raw, RawExit):
                if self.max_events is not None and (
                    self.counters.events_seen + len(events) >= self.max_events
                ):
                    break
                event = build(raw)
                if self.accept is not None and not self.accept(event):
                    self.filtered_out += 1
                    continue
                events.append(event)
                if len(events) == CHUNK:
                    delivered += self._deliver(events)
                    events = []
            else:
                observe(raw)
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
        """Poll until should_stop() or max_events have been delivered; then shut down."""
        try:
            while not should_stop() and not self.done():
                self.step()
                if self.tick is not None:
                    self.tick(False)
        finally:
            self.shutdown()

    def replace(
        self,
        probe: Probe | None = None,
        builder: EventBuilder | None = None,
        sinks: Sequence[Sink] | None = None,
        poll_interval_ms: int | None = None,
        burst: BurstPolicy | None = None,
    ) -> None:
        """Reload: take new parts. A new probe must already be attached: the old one is then
        detached and drained with the old builder (an overlap gives duplicates with the same
        event_id; a gap would lose exits). Replaced sinks are closed, without on_stop."""
        if poll_interval_ms is not None:
            self.poll_interval_ms = poll_interval_ms
        if burst is not None:
            self._burst_policy = burst
            self.burst = self._burst_for(self.probe)
        if probe is not None:
            self._retire_probe()
            self.probe, self._probe_open = probe, True
            self.burst = self._burst_for(probe)
        if builder is not None:
            self.builder = builder
        if sinks is not None:
            old, self.sinks = self.sinks, list(sinks)
            for sink in old:
                if sink not in self.sinks:
                    sink.close()

    def _retire_probe(self) -> None:
        """Detach first, then deliver what the kernel had already queued, then close."""
        if not self._probe_open:
            return
        try:
            self.probe.detach()
            self.step(timeout_ms=0)
        finally:
            self._retired_kernel_drops += self.probe.kernel_drops()
            self._retired_context_drops += self.probe.context_drops()
            self._probe_open = False
            self.probe.close()

    def _stop_sink(self, sink: Sink) -> None:
        sink.on_stop(self.counters.events_seen)  # read now: after the last drain

    def shutdown(self) -> None:
        """The last drain, then each sink's on_stop, the final tick, and close. Every step
        runs even when one fails (a reader gone from a pipe must not cost the kmsg total)."""
        with contextlib.ExitStack() as steps:  # run last-in, first-out
            for sink in reversed(self.sinks):
                steps.callback(sink.close)
            if self.tick is not None:
                steps.callback(self.tick, True)
            for sink in reversed(self.sinks):
                steps.callback(self._stop_sink, sink)
            self._retire_probe()

"""The probe loop: drain the ring, build events once, hand each batch to every sink; and the
probe's life from attach to close (drop totals across reloads, the final drain, on_stop)."""

from __future__ import annotations

import contextlib
import logging
import select
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


class KernelWakeups:
    """The probe's wakeups, edge-triggered: ``wait`` returns when the kernel wakes the
    consumer (the probe's batching rule: ``probe.wakeup_bytes`` queued, or the oldest record
    ``probe.wakeup_latency_ms`` old), not whenever a record is queued.

    The probe's own poll is level-triggered: it returns at once while any record is queued.
    Records keep arriving while a batch is built and sent, so the next poll found a few and
    the agent woke again at once: at 1k exits/s twice per kernel wakeup, at 5k/s about 180
    times a second with 5 records each, each wakeup paying its fixed cost (a spool
    transaction, two socket calls, cold caches). Waiting on the same epoll file registered
    edge-triggered in an epoll of our own sees only new kernel wakeups.
    """

    def __init__(self, fd: int) -> None:
        self._epoll = select.epoll()
        try:
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLET)
        except BaseException:
            self._epoll.close()
            raise

    def wait(self, timeout_s: float) -> bool:
        """Until the kernel's next wakeup (True) or timeout_s passed (False). A signal is seen
        once the wait ends: Python resumes an interrupted wait (PEP 475)."""
        return bool(self._epoll.poll(timeout_s))

    def close(self) -> None:
        self._epoll.close()


def kernel_wakeups(probe: Probe) -> KernelWakeups | None:
    """Edge-triggered wakeups for a probe that exposes its epoll file (CO-RE); None for the
    others, which keep their level-triggered poll."""
    fileno = getattr(probe, "fileno", None)
    if fileno is None:
        return None
    try:
        return KernelWakeups(int(fileno()))
    except (OSError, TypeError, ValueError) as exc:
        log.info("no edge-triggered wakeups (%s): polling the ring as it fills", exc)
        return None


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
        wakeup_latency_ms: int | None = None,
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
        # probe.wakeup_latency_ms: with it, the pipeline waits for the kernel's wakeups
        # (KernelWakeups) and drains records left from the last drain within this bound.
        self.wakeup_latency_ms = wakeup_latency_ms
        self._wakeups = self._wakeups_for(probe)
        self._took = False  # the last drain took records

    def _wakeups_for(self, probe: Probe) -> KernelWakeups | None:
        return kernel_wakeups(probe) if self.wakeup_latency_ms is not None else None

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
        if timeout_ms is None and self._wakeups is not None:
            self._wakeups.wait(self._wait_s())
            raws = self.probe.poll(0)
        else:
            raws = self.probe.poll(self.poll_interval_ms if timeout_ms is None else timeout_ms)
        polled = time.monotonic()
        window, self._last_poll = polled - self._last_poll, polled  # what raws arrived within
        self._polls += 1
        if self._polls % _RESYNC_EVERY_POLLS == 0:
            self.builder.resync_clock()
        self._took = bool(raws)
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

    def _wait_s(self) -> float:
        """How long to wait for the kernel's next wakeup. Records that came in while the last
        drain ran had their wakeup already (or none: the kernel wakes at most once per
        wakeup_latency_ms): they are drained by then, measured from that drain. Otherwise up
        to poll_interval_ms, as the level-triggered poll waits."""
        wait = self.poll_interval_ms / 1000
        ring = self.probe.ring_fill
        left = ring.queued() > 0 if ring is not None else self._took
        if left and self.wakeup_latency_ms is not None:
            due = self._last_poll + self.wakeup_latency_ms / 1000 - time.monotonic()
            wait = max(0.0, min(wait, due))
        return wait

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
        wakeup_latency_ms: int | None = None,
    ) -> None:
        """Reload: take new parts. A new probe must already be attached: the old one is then
        detached and drained with the old builder (an overlap gives duplicates with the same
        event_id; a gap would lose exits). Replaced sinks are closed, without on_stop."""
        if poll_interval_ms is not None:
            self.poll_interval_ms = poll_interval_ms
        if wakeup_latency_ms is not None:
            self.wakeup_latency_ms = wakeup_latency_ms
        if burst is not None:
            self._burst_policy = burst
            self.burst = self._burst_for(self.probe)
        if probe is not None:
            self._retire_probe()
            self.probe, self._probe_open = probe, True
            self.burst = self._burst_for(probe)
            self._wakeups = self._wakeups_for(probe)
        elif wakeup_latency_ms is not None and self._wakeups is None and self._probe_open:
            self._wakeups = self._wakeups_for(self.probe)
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
            if self._wakeups is not None:
                self._wakeups.close()
                self._wakeups = None
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

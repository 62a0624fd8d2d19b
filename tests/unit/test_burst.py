"""Burst deferral: during a burst of exits the agent leaves records queued in the ring, so the
workload keeps the CPU, and drains them once the burst ends, the ring fills or time is up. Here
the policy on a scripted ring and clock; on a real ring and agent: tests/system/test_burst.py."""

from __future__ import annotations

from typing import Any

import pytest

from procmon import pipeline as pipeline_module
from procmon.event import EventBuilder, ExitEvent
from procmon.pipeline import BurstPolicy, Pipeline
from procmon.probe import RawExit, RawRecord

BOOT_ID = "84cdf6fb-7a18-468e-8c21-482c78e94260"
BURST = BurstPolicy(rate=10_000, max_s=2.0, fill=0.9)
EXIT_BYTES = 152  # an exit record and its ring header
CHECK_BYTES_AT_BURST_RATE = BURST.rate * EXIT_BYTES * 0.02  # what one 20 ms look sees


# --- the policy, on a scripted ring and clock ---------------------------------------------


class FakeClock:
    """Stands in for the pipeline's ``time``: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class ScriptedRing:
    """A ring whose backlog at each look is scripted (the last value repeats)."""

    def __init__(self, levels: list[float], capacity: int = 4 << 20) -> None:
        self.levels = [int(x) for x in levels]
        self.capacity = capacity
        self.looks = 0

    def queued(self) -> int:
        self.looks += 1
        return self.levels.pop(0) if len(self.levels) > 1 else self.levels[0]


class ScriptedProbe:
    backend = "core"
    attach_seconds = 0.0
    has_context = False

    def __init__(self, batches: list[int], ring: ScriptedRing | None) -> None:
        self.batches = batches
        self.ring_fill: Any = ring  # duck-typed RingFill: queued() and capacity

    def poll(self, timeout_ms: int) -> list[RawRecord]:
        n = self.batches.pop(0) if self.batches else 0
        return [raw_exit(pid) for pid in range(1, n + 1)]

    def kernel_drops(self) -> int:
        return 0

    def context_drops(self) -> int:
        return 0

    def detach(self) -> None:
        pass

    def close(self) -> None:
        pass


class ListSink:
    def __init__(self) -> None:
        self.events: list[ExitEvent] = []

    def emit(self, events: Any) -> None:
        self.events += events

    def on_stop(self, total: int) -> None:
        pass

    def close(self) -> None:
        pass


def raw_exit(pid: int) -> RawExit:
    return RawExit(10**12, 10**12 - 5000, 0, 0, 0, 0, 1, pid, pid, 1, 0, 0, 0, 1, pid, 0, b"x")


def scripted_pipeline(
    monkeypatch: pytest.MonkeyPatch, batches: list[int], ring: ScriptedRing | None
) -> tuple[Pipeline, ListSink, FakeClock]:
    clock = FakeClock()
    monkeypatch.setattr(pipeline_module, "time", clock)
    sink = ListSink()
    probe = ScriptedProbe(batches, ring)
    builder = EventBuilder("burst-host", "core", boot_id=BOOT_ID)
    return Pipeline(probe, builder, [sink], burst=BURST), sink, clock


def test_a_burst_is_held_until_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = 3 * CHECK_BYTES_AT_BURST_RATE
    ring = ScriptedRing([0, fast, 2 * fast, 2 * fast + 100])  # then the burst is over
    pipe, sink, _ = scripted_pipeline(monkeypatch, [500], ring)
    assert pipe.step() == 500
    assert len(sink.events) == 500  # what was polled is delivered before the pause
    assert pipe.counters.bursts_deferred == 1
    assert pipe.counters.burst_deferred_s == pytest.approx(0.06)


def test_the_hold_ends_before_the_ring_would_pass_the_fill_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    step = 100_000  # per 20 ms look: 5 MB/s
    ring = ScriptedRing([step * i for i in range(40)], capacity=1_000_000)
    pipe, _, _ = scripted_pipeline(monkeypatch, [500], ring)
    pipe.step()
    # Drained once the backlog plus two more looks' growth reaches 90 %: at 700 kB.
    assert ring.looks == 1 + 7
    assert pipe.counters.burst_deferred_s == pytest.approx(0.14)


def test_the_hold_never_lasts_longer_than_max(monkeypatch: pytest.MonkeyPatch) -> None:
    step = 2 * CHECK_BYTES_AT_BURST_RATE
    ring = ScriptedRing([step * i for i in range(1000)], capacity=1 << 40)
    pipe, _, _ = scripted_pipeline(monkeypatch, [500], ring)
    pipe.step()
    assert pipe.counters.burst_deferred_s == pytest.approx(BURST.max_s, abs=0.021)


def test_a_trickle_is_not_held(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = ScriptedRing([0])
    pipe, sink, clock = scripted_pipeline(monkeypatch, [10, 150], ring)
    clock.sleep(1.0)  # 10 records in a second
    pipe.step()
    clock.sleep(0.1)  # 150 records in 100 ms: 1,500/s
    pipe.step()
    assert len(sink.events) == 160
    assert pipe.counters.bursts_deferred == 0
    assert ring.looks == 0


def test_no_hold_without_a_readable_ring_or_when_off(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe, sink, _ = scripted_pipeline(monkeypatch, [5000], None)
    pipe.step()
    assert pipe.burst is None and pipe.counters.bursts_deferred == 0
    off = Pipeline(
        ScriptedProbe([5000], ScriptedRing([0])),
        EventBuilder("burst-host", "core", boot_id=BOOT_ID),
        [sink],
        burst=BurstPolicy(rate=0, max_s=2.0, fill=0.9),
    )
    off.step()
    assert off.burst is None and off.counters.bursts_deferred == 0


def test_a_final_drain_is_never_held(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = ScriptedRing([0, 10**6, 2 * 10**6])
    pipe, sink, _ = scripted_pipeline(monkeypatch, [5000], ring)
    pipe.step(timeout_ms=0)  # shutdown's drain
    assert len(sink.events) == 5000
    assert pipe.counters.bursts_deferred == 0

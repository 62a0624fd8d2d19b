"""The pipeline owns the probe's life: drain, detach, the final drain, close, the drop totals
across probes replaced on reload, each sink's on_stop and the final tick."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import pytest

from procmon.event import EventBuilder, ExitEvent
from procmon.pipeline import Pipeline
from procmon.probe import RawExit, RawRecord
from procmon.probe.ring_fill import RingFill

BOOT_ID = "84cdf6fb-7a18-468e-8c21-482c78e94260"


def raw_exit(pid: int) -> RawExit:
    return RawExit(10**12, 10**12 - 5000, 0, 0, 0, 0, 1, pid, pid, 1, 0, 0, 0, 1, pid, 0, b"x")


class FakeProbe:
    """Records what is done to it; each poll returns the next batch of pids."""

    backend = "core"
    attach_seconds = 0.0
    has_context = False

    def __init__(self, name: str, log: list[str], batches: list[list[int]], drops: int) -> None:
        self.name, self.log, self.batches, self.drops = name, log, batches, drops
        self.detached = self.closed = False
        self.timeouts: list[int] = []
        self.ring_fill: RingFill | None = None

    def poll(self, timeout_ms: int) -> list[RawRecord]:
        self.timeouts.append(timeout_ms)
        pids = self.batches.pop(0) if self.batches else []
        if pids:
            self.log.append(f"{self.name} poll {pids}")
        return [raw_exit(pid) for pid in pids]

    def kernel_drops(self) -> int:
        assert not self.closed, "drops read from a closed probe"
        return self.drops

    def context_drops(self) -> int:
        assert not self.closed
        return self.drops * 10

    def detach(self) -> None:
        self.log.append(f"{self.name} detach")
        self.detached = True

    def close(self) -> None:
        self.log.append(f"{self.name} close")
        self.closed = True


class RecordingSink:
    def __init__(self, name: str, log: list[str], fail_on_stop: bool = False) -> None:
        self.name, self.log, self.fail_on_stop = name, log, fail_on_stop
        self.pids: list[int] = []

    def emit(self, events: Sequence[ExitEvent]) -> None:
        self.pids += [e.pid for e in events]

    def on_stop(self, total: int) -> None:
        self.log.append(f"{self.name} on_stop {total}")
        if self.fail_on_stop:
            raise BrokenPipeError("reader gone")

    def close(self) -> None:
        self.log.append(f"{self.name} close")


def pipeline(probe: FakeProbe, sinks: list[Any], log: list[str]) -> Pipeline:
    builder = EventBuilder("h", "core", boot_id=BOOT_ID)
    return Pipeline(probe, builder, sinks, tick=lambda final: log.append(f"tick {final}"))


def test_run_ticks_between_wakeups_then_drains_after_detach_and_stops_sinks_in_order() -> None:
    log: list[str] = []
    probe = FakeProbe("p", log, [[1], [2], [3]], drops=0)
    sink = RecordingSink("s", log)
    pipe = pipeline(probe, [sink], log)
    polls = iter([False, True])
    pipe.run(lambda: next(polls))
    assert log == [
        "p poll [1]",
        "tick False",
        "p detach",
        "p poll [2]",  # queued before the detach: still delivered
        "p close",
        "s on_stop 2",
        "tick True",  # the agent's last counters: after on_stop (the MQTT flush)
        "s close",
    ]
    assert sink.pids == [1, 2]


def test_a_replaced_probe_is_drained_and_its_drops_carried_over() -> None:
    log: list[str] = []
    old = FakeProbe("old", log, [[1], [2]], drops=3)
    new = FakeProbe("new", log, [[3]], drops=4)
    sink = RecordingSink("s", log)
    pipe = pipeline(old, [sink], log)
    pipe.step()
    pipe.replace(probe=new)
    assert log[-3:] == ["old detach", "old poll [2]", "old close"]
    assert (pipe.kernel_drops(), pipe.context_drops()) == (7, 70)
    pipe.step()
    pipe.shutdown()
    assert sink.pids == [1, 2, 3]
    assert (pipe.kernel_drops(), pipe.context_drops()) == (7, 70)  # read after close too


def test_replaced_sinks_are_closed_without_on_stop() -> None:
    log: list[str] = []
    kept, dropped = RecordingSink("kept", log), RecordingSink("dropped", log)
    pipe = pipeline(FakeProbe("p", log, [], drops=0), [kept, dropped], log)
    pipe.replace(sinks=[kept])
    assert log == ["dropped close"]


def test_every_stop_step_runs_when_a_sink_fails() -> None:
    log: list[str] = []
    gone = RecordingSink("stdout", log, fail_on_stop=True)
    kmsg = RecordingSink("kmsg", log)
    pipe = pipeline(FakeProbe("p", log, [[1]], drops=0), [gone, kmsg], log)
    with pytest.raises(BrokenPipeError):
        pipe.shutdown()
    assert log[-5:] == [
        "stdout on_stop 1",
        "kmsg on_stop 1",
        "tick True",
        "stdout close",
        "kmsg close",
    ]


def test_a_reload_retunes_the_poll_interval() -> None:
    log: list[str] = []
    probe = FakeProbe("p", log, [], drops=0)
    pipe = pipeline(probe, [], log)
    pipe.step()
    pipe.replace(poll_interval_ms=25)
    pipe.step()
    assert probe.timeouts == [100, 25]


class StubFill:
    """RingFill's one reading the pipeline makes: bytes still queued."""

    def __init__(self) -> None:
        self.bytes = 0

    def queued(self) -> int:
        return self.bytes


class WakingProbe(FakeProbe):
    """A probe with an epoll file, as CoreProbe: an eventfd stands for the ring, and a write
    to it for the kernel's wakeup. Its own poll is level-triggered, like libbpf's."""

    def __init__(self, log: list[str], batches: list[list[int]]) -> None:
        super().__init__("p", log, batches, drops=0)
        self.fd = os.eventfd(0, os.EFD_NONBLOCK)
        self.fill = StubFill()
        self.ring_fill = self.fill  # type: ignore[assignment]

    def fileno(self) -> int:
        return self.fd

    def wake(self) -> None:
        os.eventfd_write(self.fd, 1)

    def close(self) -> None:
        super().close()
        os.close(self.fd)


def waking_pipeline(probe: WakingProbe, sink: RecordingSink, latency_ms: int) -> Pipeline:
    builder = EventBuilder("h", "core", boot_id=BOOT_ID)
    return Pipeline(probe, builder, [sink], poll_interval_ms=300, wakeup_latency_ms=latency_ms)


def timed_step(pipe: Pipeline) -> float:
    started = time.monotonic()
    pipe.step()
    return time.monotonic() - started


def test_with_a_wakeup_latency_the_pipeline_waits_for_the_kernels_wakeup_not_for_data() -> None:
    """Records queued while a batch is sent do not wake the agent again at once (the probe's
    level-triggered poll did: a wakeup per few records); each kernel wakeup does."""
    log: list[str] = []
    probe = WakingProbe(log, [[1], [2], [3]])
    sink = RecordingSink("s", log)
    pipe = waking_pipeline(probe, sink, latency_ms=5000)
    probe.wake()
    assert timed_step(pipe) < 0.2 and sink.pids == [1]  # woken: drained at once
    probe.wake()
    probe.wake()  # more data, no new wakeup since it was read: one drain
    assert timed_step(pipe) < 0.2 and sink.pids == [1, 2]
    assert timed_step(pipe) >= 0.25  # no wakeup: up to poll_interval_ms, as before
    assert probe.timeouts == [0, 0, 0]  # the probe itself is only drained, never waited on
    pipe.shutdown()
    assert sink.pids == [1, 2, 3]


def test_records_left_by_a_drain_are_drained_within_the_wakeup_latency() -> None:
    """The kernel wakes at most once per wakeup latency: records that arrived while the last
    batch was built had theirs already, so the pipeline drains them by that latency."""
    log: list[str] = []
    probe = WakingProbe(log, [[1], [2]])
    sink = RecordingSink("s", log)
    pipe = waking_pipeline(probe, sink, latency_ms=60)
    probe.wake()
    pipe.step()
    probe.fill.bytes = 184  # one record came in during the drain, with no wakeup
    waited = timed_step(pipe)
    assert 0.03 <= waited < 0.2 and sink.pids == [1, 2]
    pipe.shutdown()


def test_a_probe_without_an_epoll_file_keeps_its_own_poll() -> None:
    log: list[str] = []
    probe = FakeProbe("p", log, [[1]], drops=0)
    builder = EventBuilder("h", "core", boot_id=BOOT_ID)
    pipe = Pipeline(probe, builder, [], poll_interval_ms=30, wakeup_latency_ms=40)
    pipe.step()
    assert probe.timeouts == [30]


def test_a_replaced_probe_gets_its_own_wakeups() -> None:
    log: list[str] = []
    old, new = WakingProbe(log, [[1], [2]]), WakingProbe(log, [[3]])
    sink = RecordingSink("s", log)
    pipe = waking_pipeline(old, sink, latency_ms=5000)
    pipe.replace(probe=new)  # the old one is drained and closed
    new.wake()
    assert timed_step(pipe) < 0.2 and sink.pids == [1, 3]
    pipe.shutdown()

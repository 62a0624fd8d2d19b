"""The pipeline owns the probe's life: drain, detach, the final drain, close, the drop totals
across probes replaced on reload, each sink's on_stop and the final tick."""

from __future__ import annotations

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

#!/usr/bin/env python3
"""`procmon` with CPU timers around each part of a wakeup (bench/wakeup_cost.py --timers).

Runs the procmon CLI (argv as `procmon`'s) with thread-CPU timers wrapped around the probe's
poll, the pipeline's build and delivery, the MQTT sink's emit, spool and socket calls; at exit
writes, to $WAKEUP_TIMERS_OUT, one row per pipeline step (monotonic start, events, thread CPU
ns, CPU ns per part) and the totals per thread. Parts missing from the code under test (an older
commit) are skipped. The timers cost about a microsecond each: compare arms timed alike.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from procmon import agent, pipeline, spool
from procmon.mqtt import conn
from procmon.probe import core
from procmon.sinks import mqtt

_cpu_ns = time.thread_time_ns
_totals: collections.defaultdict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
_steps: list[tuple[float, int, int, dict[str, int]]] = []
_current: dict[str, int] = {}

PARTS: list[tuple[type, str]] = [
    (core.CoreProbe, "poll"),
    (pipeline.Pipeline, "_process"),
    (pipeline.Pipeline, "_deliver"),
    (mqtt.MqttSink, "emit"),
    (mqtt.MqttSink, "_pump_locked"),
    (mqtt.MqttSink, "_fill_locked"),
    (mqtt.MqttSink, "_delete_acked_locked"),
    (mqtt.MqttSink, "_keep_fresh_locked"),
    (spool.Spool, "append_ids"),
    (spool.Spool, "ack"),
    (spool.Spool, "read_after"),
    (conn.Link, "read"),
    (conn.Link, "flush"),
    (agent.Agent, "_tick"),
]


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = _cpu_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = _cpu_ns() - start
            main = threading.current_thread() is threading.main_thread()
            total = _totals[f"{'main' if main else 'network'}:{label}"]
            total[0] += spent
            total[1] += 1
            if main:
                _current[label] = _current.get(label, 0) + spent

    return timed


def install() -> None:
    for cls, name in PARTS:
        fn = getattr(cls, name, None)
        if fn is not None:
            setattr(cls, name, _timed(f"{cls.__name__}.{name}", fn))
    step = pipeline.Pipeline.step

    def timed_step(self: pipeline.Pipeline, timeout_ms: int | None = None) -> int:
        _current.clear()
        started, cpu = time.monotonic(), _cpu_ns()
        events = step(self, timeout_ms)
        _steps.append((started, events, _cpu_ns() - cpu, dict(_current)))
        return events

    pipeline.Pipeline.step = timed_step  # type: ignore[method-assign]


def dump() -> None:
    out = os.environ.get("WAKEUP_TIMERS_OUT")
    if out:
        with open(out, "w") as f:
            json.dump({"totals": dict(_totals), "steps": _steps}, f)


if __name__ == "__main__":
    install()
    atexit.register(dump)
    from procmon.cli import main

    sys.exit(main(sys.argv[1:]))

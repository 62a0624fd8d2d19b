"""Burst deferral on a real ring and agent: the ring's fill read from an attached probe, one batch
per poll, and a storm deferred then delivered whole (the policy on a scripted ring and clock:
tests/unit/test_burst.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers.mosquitto import Mosquitto
from helpers.mqtt import SLOW, Collector, Storm, unique_host, wait_until
from procmon.probe import ProbeKnobs
from procmon.probe.core import CoreProbe
from procmon.probe.record import MAX_BATCH

EXIT_BYTES = 152  # an exit record and its ring header


# --- the ring's fill, read from a real probe ----------------------------------------------


def test_ring_fill_counts_queued_records_and_empties_on_poll(bpf_ready: None) -> None:
    probe = CoreProbe(ProbeKnobs(self_tgid=0, capture_exec=False))
    try:
        fill = probe.ring_fill
        assert fill is not None
        assert fill.capacity == 4 << 20
        probe.poll(0)
        before = fill.queued()
        for _ in range(20):
            subprocess.run(["true"], check=True)
        # At least our 20 exits, each an exit record and its 8-byte header.
        assert fill.queued() - before >= 20 * EXIT_BYTES
        probe.poll(0)
        assert fill.queued() < 20 * EXIT_BYTES  # only what exited since
    finally:
        probe.detach()
        probe.close()


def test_a_poll_hands_over_at_most_one_batch(bpf_ready: None, forkstorm: Path) -> None:
    probe = CoreProbe(ProbeKnobs(self_tgid=0, capture_exec=False))
    try:
        probe.poll(0)
        subprocess.run([str(forkstorm), str(MAX_BATCH + 1000), "1", "0"], check=True)
        batches = [probe.poll(0)]
        while len(batches[-1]) >= MAX_BATCH:
            batches.append(probe.poll(0))
        assert len(batches[0]) == MAX_BATCH  # the rest stayed in the ring
        assert sum(map(len, batches)) >= MAX_BATCH + 1000
    finally:
        probe.detach()
        probe.close()


# --- the agent under a real storm ---------------------------------------------------------


@pytest.mark.timeout(600)
def test_storm_is_deferred_then_delivered_whole(
    agent_ready: None, broker: Mosquitto, agents: Any, forkstorm: Path, tmp_path: Path
) -> None:
    total = 20_000
    host = unique_host()
    collector = Collector(broker, [f"procmon/{host}/exits", f"procmon/{host}/stats"])
    # A low burst rate: the storm is a burst on a slow or busy machine too.
    agent = agents(
        broker.url,
        host_id=host,
        own_pid_namespace=True,
        env={"PROCMON_PROBE__BURST_RATE": "2000"},
    ).start()
    storm = Storm(forkstorm, tmp_path / "bin").start(total, pid_namespace_of=agent.pid)

    def exits() -> list[dict[str, Any]]:
        return [m.json() for m in collector.on(f"procmon/{host}/exits")]

    wait_until(lambda: len(storm.children(exits())) >= total, 300, f"all {total} exits")
    assert len(storm.children(exits())) == total

    def stats() -> dict[str, Any]:
        return collector.last_json(f"procmon/{host}/stats") or {}

    wait_until(lambda: stats().get("events_seen", 0) >= total, SLOW, "stats after the storm")
    final = stats()
    print(
        f"storm of {total}: {final['bursts_deferred']} deferrals, "
        f"{final['burst_deferred_s']} s held, dropped_kernel {final['dropped_kernel']}"
    )
    assert final["bursts_deferred"] >= 1
    assert final["dropped_kernel"] == 0
    collector.close()

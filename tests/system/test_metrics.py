"""The agent's `[metrics]` with a real Prometheus scraping it and promtool checking its
node_exporter textfile: the counters of the stats messages, exact for a known set of exits.

The agent runs in its own pid namespace with probe.pidns_scope, and the children run in that
namespace (nsenter), so the shared machine's other exits stay out of the counts."""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.mosquitto import Mosquitto, free_port
from helpers.mqtt import AgentProcess, wait_until
from helpers.prometheus import PrometheusServer, promtool_check_metrics

pytestmark = [pytest.mark.bpf, pytest.mark.mqtt, pytest.mark.usefixtures("agent_ready")]

CHILDREN = 25


def _value(prom: PrometheusServer, promql: str) -> float:
    (series,) = prom.wait_for(promql)
    return float(series["value"][1])


def _run_children_in(agent: AgentProcess, n: int) -> None:
    """n exits of /bin/true and one of the shell that ran them, in the agent's namespace."""
    loop = f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"
    subprocess.run(
        ["nsenter", "--target", str(agent.pid), "--pid", "--", "sh", "-c", loop],
        check=True,
        timeout=120,
    )


def test_prometheus_scrapes_the_agent(
    agents: Callable[..., AgentProcess], broker: Mosquitto, tmp_path: Path
) -> None:
    port = free_port()
    textfile = tmp_path / "textfile" / "procmon.prom"
    textfile.parent.mkdir()
    agent = agents(
        broker.url,
        own_pid_namespace=True,
        config=f"[metrics]\nlisten = '127.0.0.1:{port}'\ntextfile = '{textfile}'\n",
    ).start()
    with PrometheusServer([f"127.0.0.1:{port}"], tmp_path / "prometheus") as prom:
        before = _value(prom, "procmon_agent_events_total")
        _run_children_in(agent, CHILDREN)
        expected = before + CHILDREN + 1
        _value(prom, f"procmon_agent_events_total == {expected}")
        # Every event reached the broker: published catches up, nothing dropped, connected.
        _value(prom, f"procmon_agent_published_total == {expected}")
        assert _value(prom, "procmon_agent_connected") == 1
        assert _value(prom, "procmon_agent_spool_depth") == 0
        for drop in ("kernel", "queue", "spool", "context_kernel"):
            assert _value(prom, f"procmon_agent_dropped_{drop}_total") == 0, drop
        assert _value(prom, "procmon_agent_bursts_deferred_total") >= 0
        (info,) = prom.wait_for("procmon_agent_info")
        assert info["metric"]["host"] == agent.host_id
        assert info["metric"]["probe"] == "core"
        assert info["metric"]["job"] == "procmon"

    # The textfile: valid for node_exporter, current, and left with the final counts at stop.
    wait_until(
        lambda: f"procmon_agent_events_total {expected}" in textfile.read_text(),
        what="the textfile's next write",
    )
    promtool_check_metrics(textfile.read_text())
    assert agent.terminate() == 0
    final = textfile.read_text()
    promtool_check_metrics(final)
    assert "procmon_agent_running 0.0" in final
    assert f"procmon_agent_events_total {expected}" in final
    assert [p.name for p in textfile.parent.iterdir()] == ["procmon.prom"], "a temporary left"


def test_metrics_listen_in_use_is_one_line(
    agents: Callable[..., AgentProcess], broker: Mosquitto
) -> None:
    port = free_port()
    first = agents(broker.url, config=f"[metrics]\nlisten = '{port}'\n").start()
    second = agents(broker.url, config=f"[metrics]\nlisten = '127.0.0.1:{port}'\n")
    second.start(wait_ready=False)
    assert second.proc is not None
    assert second.proc.wait(timeout=120) == 1
    lines = second.stderr().strip().splitlines()
    assert lines[-1].endswith(
        f"metrics.listen 127.0.0.1:{port}: cannot listen: Address already in use"
    ), lines
    assert first.proc is not None and first.proc.poll() is None


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def test_reload_moves_the_listener(agents: Callable[..., AgentProcess], broker: Mosquitto) -> None:
    """SIGHUP with a new metrics.listen: the old port closes, the new one serves."""
    old, new = free_port(), free_port()
    agent = agents(broker.url, config=f"log_level = 'info'\n[metrics]\nlisten = '{old}'\n").start()
    assert "procmon_agent_running 1.0" in (_scrape(old) or "")
    agent.config.write_text(f"log_level = 'info'\n[metrics]\nlisten = '{new}'\n")
    agent.signal(signal.SIGHUP)
    wait_until(lambda: "configuration applied" in agent.stderr(), what="the applied reload")
    assert "procmon_agent_events_total" in (_scrape(new) or "")
    assert _scrape(old) is None
    assert agent.terminate() == 0

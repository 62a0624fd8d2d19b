"""The agent's metrics without an agent: series from a stats snapshot, the textfile written
whole, `[metrics]` values checked at load (a real Prometheus scrapes the real agent in
tests/system/test_metrics.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from procmon.config import ConfigError, listen_address, load_config
from procmon.metrics import AgentMetrics

STATS = {
    "events_seen": 12,
    "published": 10,
    "dropped_kernel": 1,
    "dropped_queue": 0,
    "dropped_spool": 2,
    "dropped_context_kernel": 3,
    "dropped_oversize": 4,  # a drop counter added later is exported as it is named
    "spool_depth": 2,
    "connected": 1,
    "bursts_deferred": 5,
    "burst_deferred_s": 1.5,
    "uptime_s": 9.0,
    "time": "2026-01-01T00:00:00Z",  # not a number: not a series
}
LABELS = {"host": "h1", "version": "1.0", "probe": "core"}


def _text(metrics: AgentMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_series_from_the_stats_snapshot() -> None:
    metrics = AgentMetrics(None, None, LABELS, 10.0)
    metrics.update(STATS)
    lines = set(_text(metrics).splitlines())
    for expected in (
        "procmon_agent_events_total 12.0",
        "procmon_agent_published_total 10.0",
        "procmon_agent_dropped_kernel_total 1.0",
        "procmon_agent_dropped_spool_total 2.0",
        "procmon_agent_dropped_context_kernel_total 3.0",
        "procmon_agent_dropped_oversize_total 4.0",
        "procmon_agent_spool_depth 2.0",
        "procmon_agent_connected 1.0",
        "procmon_agent_bursts_deferred_total 5.0",
        "procmon_agent_burst_deferred_seconds_total 1.5",
        "procmon_agent_running 1.0",
        'procmon_agent_info{host="h1",probe="core",version="1.0"} 1.0',
    ):
        assert expected in lines, expected


def test_textfile_is_written_at_once_and_marked_at_stop(tmp_path: Path) -> None:
    path = tmp_path / "procmon.prom"
    metrics = AgentMetrics(None, path, LABELS, 3600.0)
    metrics.update(STATS)
    assert "procmon_agent_events_total 12.0" in path.read_text()
    metrics.update({**STATS, "events_seen": 13})  # not due yet
    assert "procmon_agent_events_total 12.0" in path.read_text()
    metrics.update({**STATS, "events_seen": 14}, final=True)
    text = path.read_text()
    assert "procmon_agent_events_total 14.0" in text and "procmon_agent_running 0.0" in text
    assert [p.name for p in tmp_path.iterdir()] == ["procmon.prom"]


def test_textfile_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"^metrics.textfile .*: no directory "):
        AgentMetrics(None, tmp_path / "no" / "procmon.prom", LABELS, 10.0)


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("9469", ("127.0.0.1", 9469)),
        ("0.0.0.0:9469", ("0.0.0.0", 9469)),
        ("[::1]:9469", ("::1", 9469)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_listen_address(listen: str, address: tuple[str, int]) -> None:
    assert listen_address(listen) == address


@pytest.mark.parametrize("listen", [":9469", "host:", "host:0", "host:70000", "x"])
def test_bad_listen_address(listen: str) -> None:
    with pytest.raises(ValueError, match=repr(listen)):
        listen_address(listen)


def test_metrics_config_errors_are_one_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[metrics]\nlisten = 'host:'\n")
    with pytest.raises(ConfigError, match=r"agent.toml: metrics.listen: .*no port|the port"):
        load_config(config)
    config.write_text("[metrics]\ntextfile = '/var/lib/node_exporter/procmon.txt'\n")
    with pytest.raises(ConfigError, match=r"metrics.textfile: .*only \*\.prom files"):
        load_config(config)
    config.write_text("[metrics]\nlisten = '9469'\ntextfile = '/tmp/procmon.prom'\n")
    assert load_config(config).metrics.listen == "9469"

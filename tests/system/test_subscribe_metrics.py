"""`procmon subscribe --metrics`: a real Prometheus (Debian's server) scrapes the subscriber
while events, an agent's stats and retained statuses arrive through a real mosquitto, and
PromQL gives the expected answers. promtool checks the exposition text."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from helpers.common import require
from helpers.mosquitto import Mosquitto, free_port
from helpers.mqtt import SubscriberProcess, publish_raw, sample_event, wait_until
from helpers.prometheus import PROMETHEUS, PrometheusServer, promtool_check_metrics


@pytest.fixture
def prometheus_ready() -> None:
    require(Path(PROMETHEUS).exists(), "needs Debian's prometheus (apt install prometheus)")


def event(n: int, host: str, unit: str | None, code: int) -> bytes:
    ev = sample_event(n, host).model_copy(update={"unit": unit, "exit_code": code})
    return ev.model_dump_json().encode()


def test_prometheus_scrapes_exits_drops_and_hosts_online(
    broker: Mosquitto, subscribers: Any, tmp_path: Path, prometheus_ready: None
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    sub: SubscriberProcess = subscribers("metrics", broker.url, metrics_listen=listen)
    publish_raw(
        broker,
        [
            ("procmon/web-1/status", json.dumps({"state": "online"}).encode(), None),
            ("procmon/db-1/status", json.dumps({"state": "offline"}).encode(), None),
        ],
        retain=True,
    )
    publish_raw(
        broker,
        [
            ("procmon/web-1/exits", event(1, "web-1", "nginx.service", 1), None),
            ("procmon/web-1/exits", event(2, "web-1", "nginx.service", 2), None),
            ("procmon/web-1/exits", event(3, "web-1", "cron.service", 0), None),
            ("procmon/db-1/exits", event(4, "db-1", None, 0), None),
            ("procmon/web-1/stats", b'{"dropped_kernel": 5, "dropped_spool": 0, "x": 1}', None),
        ],
    )
    wait_until(lambda: len(sub.events()) == 4, 30, "four events written")
    text = urllib.request.urlopen(f"http://{listen}/metrics", timeout=10).read().decode()
    promtool_check_metrics(text)
    with PrometheusServer([listen], tmp_path / "prometheus") as prom:
        failures = prom.wait_for(
            'sum by (host, unit) (procmon_fleet_exits_total{outcome="error"}) == 2'
        )
        assert [r["metric"] for r in failures] == [{"host": "web-1", "unit": "nginx.service"}]
        drops = prom.wait_for('procmon_fleet_agent_dropped_kernel{host="web-1"}')
        assert drops[0]["value"][1] == "5"
        online = prom.wait_for("sum(procmon_fleet_host_online)")
        assert online[0]["value"][1] == "1"  # web-1 online, db-1 offline
        hosts = prom.query("count(procmon_fleet_host_online)")
        assert hosts[0]["value"][1] == "2"
    assert sub.stop() == 0

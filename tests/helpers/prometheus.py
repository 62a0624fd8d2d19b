"""A real Prometheus for tests: Debian's server scraping the given targets every second, and
`promtool check metrics` for text-format files.

    with PrometheusServer(["127.0.0.1:9469"], tmp_path) as prom:
        prom.wait_for('procmon_agent_events_total > 0')
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from helpers.mosquitto import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


class PrometheusServer:
    """Its own config and TSDB under `workdir`, on a free 127.0.0.1 port; stopped on exit."""

    def __init__(
        self, targets: Sequence[str], workdir: Path, scrape_interval_s: float = 1.0
    ) -> None:
        self.targets = list(targets)
        self.workdir = workdir
        self.scrape_interval_s = scrape_interval_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        interval = f"{int(self.scrape_interval_s * 1000)}ms"
        config.write_text(
            json.dumps(  # JSON is YAML: no quoting to get wrong
                {
                    "global": {"scrape_interval": interval, "evaluation_interval": interval},
                    "scrape_configs": [
                        {"job_name": "procmon", "static_configs": [{"targets": self.targets}]}
                    ],
                }
            )
        )
        log = (self.workdir / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_ready()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready in {timeout_s} s: {self.log()}")

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant query's `result` list (one dict per series: `metric`, `value`)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, promql: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Polls until the query returns at least one series (a filter such as `x > 5` makes
        this wait for a value)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(promql)
            if result or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if not result:
            raise AssertionError(
                f"no result for {promql!r} within {timeout_s} s; targets: {self._targets_health()}"
            )
        return result

    def _targets_health(self) -> str:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as response:
            body = json.load(response)
        return "; ".join(
            f"{t['scrapeUrl']} {t['health']} {t.get('lastError', '')}"
            for t in body["data"]["activeTargets"]
        )


def promtool_check_metrics(text: str) -> None:
    """Fails with promtool's own words when `text` is not valid exposition format."""
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    if done.returncode != 0:
        raise AssertionError(
            f"promtool check metrics: {done.stdout.decode()}{done.stderr.decode()}"
        )

"""The monitors under test. Each is started, counted by comm from its own output, and stopped.

Every monitor writes what it sees to a file (on tmpfs when the harness can): the harness counts
the lines that name a load's unique comm. procmon's full pipeline is counted at the far end, from
what a subscriber received from the broker.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")
READ_CHUNK = 16 << 20
MAX_CHUNKS_PER_REFRESH = 64  # 1 GiB: far above any run's output


def cpu_seconds(pid: int | None) -> float | None:
    """user+sys CPU time of a live process, from /proc/<pid>/stat."""
    if pid is None:
        return None
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_kb(pid: int | None) -> int | None:
    """VmHWM of a live process, in kB."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Proc:
    """A child in its own session; stop() signals its group and always reaps it."""

    def __init__(
        self, argv: list[str], stdout: Path | None, stderr: Path, env: dict[str, str] | None = None
    ) -> None:
        self.argv = argv
        self.stderr = stderr
        self.started = time.monotonic()
        self.started_wall = time.time()
        out: IO[bytes]
        with (
            open(stdout, "wb") if stdout else open(os.devnull, "wb") as out,
            open(stderr, "wb") as err,
        ):
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                env=env,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode

    def stderr_tail(self, limit: int = 600) -> str:
        try:
            return self.stderr.read_bytes()[-limit:].decode(errors="replace").strip()
        except OSError:
            return ""


class OutputCounter:
    """Counts, per tracked comm, occurrences of its token in a growing output file.

    Comms are unique fixed-length names, so a token never matches anything else. Only
    complete lines are counted; the partial last line waits for the next refresh.
    """

    def __init__(self, path: Path, template: bytes = b"%s") -> None:
        self.path = path
        self.template = template
        self.offset = 0
        self.tokens: dict[str, bytes] = {}
        self.counts: dict[str, int] = {}
        self.line_hooks: list[tuple[bytes, list[bytes]]] = []  # (token, collected lines)

    def track(self, comm: str) -> None:
        self.tokens[comm] = self.template % comm.encode()
        self.counts.setdefault(comm, 0)

    def collect_lines(self, comm: str) -> list[bytes]:
        """Also keep every line naming comm (for latency)."""
        return self.collect_token(self.template % comm.encode())

    def collect_token(self, token: bytes) -> list[bytes]:
        """Keep every line holding token; the caller may clear the list."""
        lines: list[bytes] = []
        self.line_hooks.append((token, lines))
        return lines

    def refresh(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            for _ in range(MAX_CHUNKS_PER_REFRESH):
                f.seek(self.offset)
                data = f.read(READ_CHUNK)
                end = data.rfind(b"\n") + 1
                if end == 0:
                    return
                data = data[:end]
                self.offset += end
                for comm, token in self.tokens.items():
                    self.counts[comm] += data.count(token)
                for token, lines in self.line_hooks:
                    if token in data:
                        lines.extend(line for line in data.split(b"\n") if token in line)

    def count(self, comm: str) -> int:
        self.refresh()
        return self.counts.get(comm, 0)


class Monitor:
    """No monitor at all: the baseline."""

    key = "none"
    label = "no monitor"
    counted = False
    # SIGSTOP the monitor while a storm runs (bench/run.py's *-frozen configurations).
    frozen_in_storms = False

    def start(self, workdir: Path) -> None:
        pass

    def track(self, comm: str) -> None:
        pass

    def count(self, comm: str) -> int:
        return 0

    def pid(self) -> int | None:
        """The process whose CPU and RSS are reported."""
        return None

    def other_pids(self) -> dict[str, int]:
        """Helpers whose CPU is reported separately (broker, subscriber)."""
        return {}

    def alive(self) -> bool:
        return True

    def failure(self) -> str:
        return ""

    def stop(self) -> None:
        pass


class CommandMonitor(Monitor):
    """A tool started as one command, writing one line per exit to a file."""

    counted = True
    stop_signal = signal.SIGINT

    def __init__(self, key: str, label: str, argv: list[str], template: bytes = b"%s") -> None:
        self.key = key
        self.label = label
        self.argv = argv
        self.template = template
        self.proc: Proc | None = None
        self.counter: OutputCounter | None = None
        self._tracked: list[str] = []

    def start(self, workdir: Path) -> None:
        out = workdir / f"{self.key}.out"
        self.counter = OutputCounter(out, self.template)
        for comm in self._tracked:
            self.counter.track(comm)
        self.proc = Proc(self.argv, out, workdir / f"{self.key}.err")

    def track(self, comm: str) -> None:
        self._tracked.append(comm)
        if self.counter:
            self.counter.track(comm)

    def count(self, comm: str) -> int:
        return self.counter.count(comm) if self.counter else 0

    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def failure(self) -> str:
        return self.proc.stderr_tail() if self.proc else "not started"

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(self.stop_signal)
        if self.counter:
            with contextlib.suppress(OSError):
                self.counter.path.unlink()


def rfc3339_ns(text: str, _cache: dict[str, int] = {}) -> int:  # noqa: B006 - a deliberate cache
    """'2024-01-02T03:04:05.123456789Z' -> epoch nanoseconds."""
    head = text[:19]
    seconds = _cache.get(head)
    if seconds is None:
        seconds = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
        if len(_cache) > 4096:
            _cache.clear()
        _cache[head] = seconds
    return seconds * 1_000_000_000 + int(text[20:29])


class PipelineMonitor(Monitor):
    """procmon agent -> the harness's mosquitto -> mosquitto_sub (C, QoS 1) writing
    '<receive time> <topic> <payload>' lines. The subscriber is started and proven subscribed
    before the agent, so the agent's retained `online` status arrives live."""

    key = "full"
    label = "procmon full pipeline"
    counted = True

    def __init__(
        self,
        procmon: str,
        port: int,
        prefix: str = "procmon",
        options: dict[str, dict[str, str]] | None = None,
        key: str = "full",
        label: str = "procmon full pipeline",
    ) -> None:
        self.key = key
        self.label = label
        self.procmon = procmon
        self.options = options or {}
        self.port = port
        self.prefix = prefix
        self.agent: Proc | None = None
        self.sub: Proc | None = None
        self.counter: OutputCounter | None = None
        self._tracked: list[str] = []
        self._latency_lines: dict[str, list[bytes]] = {}
        self.host_id = ""
        self.online_after_s: float | None = None
        self.broker_pid: int | None = None
        # The agent's last stats message (its final counters once stopped): events_seen,
        # published, dropped_kernel, ... say where events went when the subscriber's count
        # falls short.
        self.final_stats: dict[str, object] = {}
        self._stats_lines: list[bytes] = []

    def track(self, comm: str) -> None:
        self._tracked.append(comm)

    def track_latency(self, comm: str) -> None:
        self._latency_lines[comm] = []

    def start(self, workdir: Path) -> None:
        self.host_id = f"bench-{workdir.name}"
        sub_out = workdir / "full-sub.out"
        self.counter = OutputCounter(sub_out, b'"comm":"%s"')
        for comm in self._tracked:
            self.counter.track(comm)
        for comm in self._latency_lines:
            self._latency_lines[comm] = self.counter.collect_lines(comm)
        status_token = f" {self.prefix}/{self.host_id}/status ".encode()
        self._status_lines = self.counter.collect_token(status_token)
        self._stats_lines = self.counter.collect_token(
            f" {self.prefix}/{self.host_id}/stats ".encode()
        )
        base = f"{self.prefix}/{self.host_id}"
        self.sub = Proc(
            [
                "mosquitto_sub",
                *("-h", "127.0.0.1", "-p", str(self.port), "-q", "1", "-V", "5"),
                *("-t", f"{base}/#", "-F", "%U %t %p"),
            ],
            sub_out,
            workdir / "full-sub.err",
        )
        self._wait_subscribed(base)
        config = workdir / "agent.toml"
        config.write_text(self.agent_toml(workdir))
        self.agent = Proc(
            [self.procmon, "agent", "--config", str(config)], None, workdir / "agent.err"
        )

    def agent_toml(self, workdir: Path) -> str:
        """The agent's config: this broker, a spool in the session's directory, and any
        --agent-option settings (TOML values, by table)."""
        tables: dict[str, dict[str, str]] = {
            "": {
                "host_id": json.dumps(self.host_id),
                "log_level": '"warning"',
                "stats_interval_s": "10.0",
            },
            "mqtt": {
                "broker": json.dumps(f"mqtt://127.0.0.1:{self.port}"),
                "prefix": json.dumps(self.prefix),
            },
            "spool": {"path": json.dumps(str(workdir / "spool.db"))},
        }
        for table, values in self.options.items():
            tables.setdefault(table, {}).update(values)
        text = ""
        for table, values in tables.items():
            text += f"\n[{table}]\n" if table else ""
            text += "".join(f"{key} = {value}\n" for key, value in values.items())
        return text

    def _wait_subscribed(self, base: str) -> None:
        """Publish pings until the subscriber prints one (bounded)."""
        assert self.counter is not None
        ping = b" " + f"{base}/bench-ping".encode() + b" "
        lines = self.counter.collect_token(ping)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            subprocess.run(
                [
                    *("mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-q", "1"),
                    *("-t", f"{base}/bench-ping", "-m", "ping"),
                ],
                check=False,
                timeout=10,
                capture_output=True,
            )
            self.counter.refresh()
            if lines:
                self.counter.line_hooks.pop()
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto_sub did not receive its ping within 10 s")

    def count(self, comm: str) -> int:
        if not self.counter:
            return 0
        n = self.counter.count(comm)
        if self.online_after_s is None and self.agent:
            for line in self._status_lines:
                parts = line.split(b" ", 2)
                if len(parts) == 3 and b'"online"' in parts[2]:
                    self.online_after_s = float(parts[0]) - self.agent.started_wall
                    break
        return n

    def latencies_ms(self, comm: str) -> list[float]:
        """Exit time (the event's `time`) to subscriber receive time, per event of comm."""
        out: list[float] = []
        for line in self._latency_lines.get(comm, []):
            parts = line.split(b" ", 2)
            if len(parts) != 3:
                continue
            received_ns = int(parts[0].replace(b".", b""))
            try:
                doc = json.loads(parts[2])
            except ValueError:
                continue
            events = doc if isinstance(doc, list) else [doc]
            for ev in events:
                if isinstance(ev, dict) and ev.get("comm") == comm:
                    out.append((received_ns - rfc3339_ns(ev["time"])) / 1e6)
        return out

    def _read_final_stats(self) -> None:
        if not self.counter:
            return
        self.counter.refresh()
        for line in reversed(self._stats_lines):
            parts = line.split(b" ", 2)
            with contextlib.suppress(ValueError):
                if len(parts) == 3 and isinstance(doc := json.loads(parts[2]), dict):
                    self.final_stats = doc
                    return

    def pid(self) -> int | None:
        return self.agent.pid if self.agent else None

    def other_pids(self) -> dict[str, int]:
        pids = {"subscriber": self.sub.pid} if self.sub else {}
        if self.broker_pid:
            pids["broker"] = self.broker_pid
        return pids

    def alive(self) -> bool:
        return all(p is not None and p.alive() for p in (self.agent, self.sub))

    def failure(self) -> str:
        parts = [p.stderr_tail() for p in (self.agent, self.sub) if p is not None]
        return " | ".join(p for p in parts if p)

    def stop(self) -> None:
        try:
            if self.agent:
                self.agent.stop(signal.SIGTERM, timeout=20)
                time.sleep(0.5)  # the final stats, published on the way out
                self._read_final_stats()
        finally:
            if self.sub:
                self.sub.stop(signal.SIGTERM)
            if self.counter:
                with contextlib.suppress(OSError):
                    self.counter.path.unlink()

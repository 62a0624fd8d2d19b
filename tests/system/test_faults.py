"""Faults survived: a real mosquitto, a real `procmon agent`, a real fork storm, real faults.

The agent runs in its own pid namespace with probe.pidns_scope=true and the storm runs in that
namespace too (as the broker-restart test in test_mqtt_agent.py does), so the agent sees the
storm's exits and nothing else: every count below is exact. Each case counts what arrived by
event_id at a subscriber that was connected with a persistent session before the load began.

Figures for docs/reliability.md are printed as ``FIGURE name: ...`` lines (``pytest -s``).
PMTEST_FAULT_OUTAGE_S lengthens the broker outage (60 s by default).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.common import REPO, require
from helpers.mosquitto import Mosquitto
from helpers.mqtt import PY, SLOW, Storm, unique_host, wait_until
from helpers.netns import DelayProxy, NetPair, NsMosquitto, netns_possible, nft_available, tmpfs
from procmon.spool import DEPTH_SQL, Spool

pytestmark = pytest.mark.faults

PROCMON = str(REPO / ".venv/bin/procmon")
OUTAGE_S = float(os.environ.get("PMTEST_FAULT_OUTAGE_S", "60"))


def figure(name: str, **values: Any) -> None:
    print(f"FIGURE {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)


# --- the subscriber -------------------------------------------------------------------------------

_RECORDER = r"""
import json, socket, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

host, port, topic, client_id, out = sys.argv[1:6]
port = int(port)
f = open(out, "ab")

def on_message(c, u, m):
    line = {"t": time.time(), "topic": m.topic, "retain": bool(m.retain),
            "payload": m.payload.decode("utf-8", "replace")}
    f.write(json.dumps(line).encode() + b"\n")
    f.flush()  # on disk before paho acknowledges it

def on_connect(c, u, flags, reason, props):
    if not reason.is_failure:
        c.subscribe(topic, qos=1)

def on_socket_open(c, u, sock):
    sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE

c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
c.on_message = on_message
c.on_connect = on_connect
c.on_socket_open = on_socket_open
c.on_subscribe = lambda *a: print("subscribed", flush=True)
c.reconnect_delay_set(1, 2)
props = Properties(PacketTypes.CONNECT)
props.SessionExpiryInterval = 3600  # the broker queues for us across its own restarts
c.connect_async(host, port, clean_start=False, properties=props)
c.loop_forever(retry_first_connection=True)
"""


class Recorder:
    """Every message on ``procmon/<host>/#``, with a persistent session, as JSON lines."""

    def __init__(
        self, workdir: Path, host: str, addr: str, port: int, prefix: list[str] | None = None
    ) -> None:
        self.host = host
        self.path = workdir / f"recorder-{uuid.uuid4().hex[:6]}.jsonl"
        self.proc = subprocess.Popen(
            [*(prefix or []), PY, "-c", _RECORDER, addr, str(port), f"procmon/{host}/#",
             f"rec-{uuid.uuid4().hex[:10]}", str(self.path)],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )  # fmt: skip
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == b"subscribed", "recorder did not subscribe"

    def _lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        raw = self.path.read_bytes().split(b"\n")[:-1]  # the last one may be partial
        return [json.loads(x) for x in raw]

    def on(self, leaf: str) -> list[dict[str, Any]]:
        topic = f"procmon/{self.host}/{leaf}"
        return [json.loads(m["payload"]) for m in self._lines() if m["topic"] == topic]

    def exits(self) -> dict[str, dict[str, Any]]:
        return {e["event_id"]: e for e in self.on("exits")}

    def exit_messages(self) -> int:
        return len(self.on("exits"))

    def stats(self) -> dict[str, Any]:
        stats = self.on("stats")
        return stats[-1] if stats else {}

    def status(self) -> dict[str, Any]:
        statuses = self.on("status")
        return statuses[-1] if statuses else {}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=60)


# --- the agent ------------------------------------------------------------------------------------


class FaultAgent:
    """`.venv/bin/procmon agent` as pid 1 of its own pid namespace, optionally inside a network
    namespace; sd_notify over a socket file (abstract sockets do not cross network namespaces).
    """

    def __init__(
        self,
        workdir: Path,
        broker_url: str,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
        spool: Path | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.host = unique_host()
        self.workdir = workdir
        self.stderr_path = workdir / "agent.stderr"
        self.notify_path = workdir / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.setblocking(False)
        self.notices: list[str] = []
        config = workdir / "agent.toml"
        config.write_text("")
        self.spool = spool or workdir / "spool" / "spool.db"
        env = {
            **os.environ,
            "PROCMON_SPOOL__PATH": str(self.spool),
            "PROCMON_PROBE__PIDNS_SCOPE": "true",
            "PROCMON_STATS_INTERVAL_S": "1",
            "PROCMON_MQTT__RECONNECT_MAX_S": "2",
            "NOTIFY_SOCKET": str(self.notify_path),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        cmd = [*(prefix or []), "unshare", "--pid", "--fork", "--kill-child=SIGKILL"]
        cmd += [PROCMON, "agent", "--config", str(config), "--broker", broker_url]
        cmd += ["--host-id", self.host]
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=REPO
            )
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        wait_until(
            lambda: self.proc.poll() is not None or children.read_text().strip() != "",
            SLOW,
            "unshare's child",
        )
        assert self.proc.poll() is None, self.stderr()
        self.pid = int(children.read_text().split()[0])  # the agent, as the host sees it
        wait_until(
            lambda: "READY=1" in self._poll() or self.proc.poll() is not None,
            SLOW,
            "the agent's READY=1",
        )
        assert self.proc.poll() is None, f"agent exited at start:\n{self.stderr()}"

    def _poll(self) -> list[str]:
        while True:
            try:
                self.notices.append(self.notify.recv(4096).decode())
            except BlockingIOError:
                return self.notices

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def terminate(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        return self.proc.wait(timeout=SLOW)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(timeout=SLOW)
        self.notify.close()


@pytest.fixture
def netns_ready(agent_ready: None) -> None:
    require(netns_possible(), "needs root and iproute2 for network namespaces")


@pytest.fixture
def cleanup() -> Iterator[Callable[[Callable[[], object]], None]]:
    """Register finalizers; they run in reverse order, each even if another fails."""
    todo: list[Callable[[], object]] = []
    yield todo.append
    errors = []
    for fn in reversed(todo):
        try:
            fn()
        except Exception as exc:  # pragma: no cover - best effort
            errors.append(exc)
    assert not errors, errors


def storm_exits(recorder: Recorder, storm: Storm) -> set[str]:
    """Event ids of the storm's exits: its children, its worker and its main process."""
    return {i for i, e in recorder.exits().items() if e["comm"] == storm.comm}


def wait_all(recorder: Recorder, storm: Storm, total: int, timeout: float = 300) -> None:
    wait_until(
        lambda: len(storm_exits(recorder, storm)) >= total, timeout, f"all {total} storm exits"
    )


def wait_settled(recorder: Recorder, agent: FaultAgent, timeout: float = SLOW) -> dict[str, Any]:
    """Stats once everything the agent saw is accounted for (published or dropped)."""

    def settled() -> bool:
        s = recorder.stats()
        return (
            bool(s)
            and s["spool_depth"] == 0
            and s["events_seen"] == (s["published"] + s["dropped_queue"] + s["dropped_spool"])
        )

    wait_until(settled, timeout, "the agent's stats to settle")
    return recorder.stats()


# --- broker down, restarted -----------------------------------------------------------------------


def _loopback_setup(tmp_path: Path, cleanup: Any) -> tuple[Mosquitto, FaultAgent, Recorder]:
    """A persistent broker on loopback, an agent publishing to it and a recorder of its topics,
    each stopped by the test's cleanup."""
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()
    cleanup(broker.kill)
    agent = FaultAgent(tmp_path / "agent", broker.url)
    cleanup(agent.close)
    recorder = Recorder(tmp_path, agent.host, "127.0.0.1", broker.port)
    cleanup(recorder.close)
    return broker, agent, recorder


@pytest.mark.timeout(max(600, int(OUTAGE_S * 3 + 300)))
def test_broker_down_for_a_while_then_everything_is_replayed(
    agent_ready: None, forkstorm: Path, tmp_path: Path, cleanup: Any
) -> None:
    rate = 200
    broker, agent, recorder = _loopback_setup(tmp_path, cleanup)
    n = int(rate * (OUTAGE_S + 10))
    storm = Storm(forkstorm, tmp_path / "bin").start(n, rate=rate, pid_namespace_of=agent.pid)
    cleanup(storm.kill)
    wait_until(lambda: len(storm_exits(recorder, storm)) >= 200, SLOW, "the stream")
    broker.stop()
    down_at = time.monotonic()
    before = len(storm_exits(recorder, storm))
    while time.monotonic() - down_at < OUTAGE_S:
        assert agent.alive, agent.stderr()
        time.sleep(0.5)
    outage = time.monotonic() - down_at
    broker.start()
    back_at = time.monotonic()
    storm.wait(timeout=OUTAGE_S + 300)
    wait_all(recorder, storm, n + 2)
    replay_s = time.monotonic() - back_at
    got = storm_exits(recorder, storm)
    stats = wait_settled(recorder, agent)
    figure(
        "outage",
        outage_s=round(outage, 1),
        rate=rate,
        generated=n + 2,
        delivered_before_outage=before,
        delivered=len(got),
        lost=n + 2 - len(got),
        duplicates=recorder.exit_messages() - len(recorder.exits()),
        replay_done_after_return_s=round(replay_s, 1),
        spool_depth_max=max(s["spool_depth"] for s in recorder.on("stats")),
    )
    assert len(got) == n + 2
    assert stats["events_seen"] == n + 2 and stats["dropped_kernel"] == 0
    assert stats["dropped_queue"] == stats["dropped_spool"] == 0
    assert agent.terminate() == 0


@pytest.mark.timeout(600)
def test_broker_restarted_five_times_in_a_minute(
    agent_ready: None, forkstorm: Path, tmp_path: Path, cleanup: Any
) -> None:
    rate = 300
    broker, agent, recorder = _loopback_setup(tmp_path, cleanup)
    n = rate * 60
    storm = Storm(forkstorm, tmp_path / "bin").start(n, rate=rate, pid_namespace_of=agent.pid)
    cleanup(storm.kill)
    wait_until(lambda: len(storm_exits(recorder, storm)) >= 200, SLOW, "the stream")
    first = time.monotonic()
    for i in range(5):
        if i:
            time.sleep(8)  # about 10 s between restarts: five fit in a minute
        broker.stop()  # as `systemctl restart mosquitto`: SIGTERM, then start again
        time.sleep(1)
        broker.start()
        assert agent.alive, agent.stderr()
    restarts_s = time.monotonic() - first
    storm.wait(timeout=SLOW * 3)
    wait_all(recorder, storm, n + 2)
    got = storm_exits(recorder, storm)
    stats = wait_settled(recorder, agent)
    figure(
        "restarts",
        restarts=5,
        within_s=round(restarts_s, 1),
        generated=n + 2,
        delivered=len(got),
        lost=n + 2 - len(got),
        duplicates=recorder.exit_messages() - len(recorder.exits()),
        connects=stats["connects"],
    )
    assert len(got) == n + 2
    assert stats["connects"] >= 6
    assert agent.terminate() == 0


# --- the network between agent and broker ---------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fault", ["link-down", "blackhole"])
def test_network_cut_then_restored_loses_nothing(
    netns_ready: None, forkstorm: Path, tmp_path: Path, cleanup: Any, fault: str
) -> None:
    if fault == "blackhole":
        require(nft_available(), "needs nftables for the black-hole (apt install nftables)")
    pair = NetPair.create()
    cleanup(pair.close)
    broker = NsMosquitto(tmp_path / "broker", pair)
    broker.start()
    cleanup(broker.kill)
    agent = FaultAgent(
        tmp_path / "agent",
        broker.url,
        env={"PROCMON_MQTT__KEEPALIVE_S": "5"},
        prefix=pair.run_in("agent"),
    )
    cleanup(agent.close)
    recorder = Recorder(tmp_path, agent.host, broker.url[7:].split(":")[0], broker.port,
                        prefix=pair.run_in("broker"))  # fmt: skip
    cleanup(recorder.close)
    wait_until(lambda: recorder.status().get("state") == "online", SLOW, "online")
    rate, seconds = 300, 40
    n = rate * seconds
    storm = Storm(forkstorm, tmp_path / "bin").start(n, rate=rate, pid_namespace_of=agent.pid)
    cleanup(storm.kill)
    wait_until(lambda: len(storm_exits(recorder, storm)) >= 300, SLOW, "the stream")
    lost_lines = agent.stderr().count("connection lost")
    if fault == "link-down":
        pair.cut()
    else:
        pair.blackhole()
    cut_at = time.monotonic()
    wait_until(
        lambda: agent.stderr().count("connection lost") > lost_lines, 120, "the agent to notice"
    )
    detected_s = time.monotonic() - cut_at
    # The broker's side: the agent's will (offline) once 1.5 keepalives passed in silence.
    wait_until(lambda: recorder.status().get("state") == "offline", 120, "the will")
    will_s = time.monotonic() - cut_at
    while time.monotonic() - cut_at < 15:
        time.sleep(0.2)
    during = len(storm_exits(recorder, storm))
    if fault == "link-down":
        pair.heal()
    else:
        pair.unblackhole()
    healed_at = time.monotonic()
    wait_until(lambda: recorder.status().get("state") == "online", SLOW, "online again")
    reconnect_s = time.monotonic() - healed_at
    storm.wait(timeout=SLOW * 3)
    wait_all(recorder, storm, n + 2)
    got = storm_exits(recorder, storm)
    stats = wait_settled(recorder, agent)
    figure(
        f"network-{fault}",
        keepalive_s=5,
        cut_s=round(healed_at - cut_at, 1),
        agent_detected_s=round(detected_s, 1),
        broker_will_s=round(will_s, 1),
        reconnected_after_restore_s=round(reconnect_s, 1),
        delivered_while_cut=during,
        generated=n + 2,
        delivered=len(got),
        lost=n + 2 - len(got),
        duplicates=recorder.exit_messages() - len(recorder.exits()),
    )
    assert len(got) == n + 2
    assert stats["events_seen"] == n + 2
    assert agent.terminate() == 0


# --- the kernel ring buffer -----------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_ring_overrun_drop_count_is_exact(
    agent_ready: None, forkstorm: Path, tmp_path: Path, cleanup: Any
) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    cleanup(broker.kill)
    agent = FaultAgent(
        tmp_path / "agent",
        broker.url,
        env={
            "PROCMON_PROBE__RING_SIZE_KB": "64",  # the minimum: about 540 records
            "PROCMON_PROBE__POLL_INTERVAL_MS": "5000",
            "PROCMON_PROBE__WAKEUP_BYTES": str(1 << 30),  # never woken by volume...
            "PROCMON_PROBE__WAKEUP_LATENCY_MS": "5000",  # ...and by age only every 5 s
        },
    )
    cleanup(agent.close)
    recorder = Recorder(tmp_path, agent.host, "127.0.0.1", broker.port)
    cleanup(recorder.close)
    n = 20000
    storm = Storm(forkstorm, tmp_path / "bin").start(n, pid_namespace_of=agent.pid)
    cleanup(storm.kill)
    storm.wait(timeout=SLOW * 3)
    generated = n + 2

    def accounted() -> bool:
        s = recorder.stats()
        return (
            bool(s)
            and s["events_seen"] + s["dropped_kernel"] == generated
            and (s["spool_depth"] == 0 and s["published"] == s["events_seen"])
        )

    wait_until(accounted, SLOW, "every exit seen or counted as a kernel drop")
    stats = recorder.stats()
    wait_until(lambda: len(recorder.exits()) >= stats["published"], SLOW, "every publish")
    delivered = len(storm_exits(recorder, storm))
    figure(
        "ring-overrun",
        ring_kb=64,
        generated=generated,
        delivered=delivered,
        dropped_kernel=stats["dropped_kernel"],
        generated_minus_delivered=generated - delivered,
    )
    assert len(recorder.exits()) == delivered  # nothing but the storm in the namespace
    assert stats["dropped_kernel"] > 0
    assert stats["dropped_kernel"] == generated - delivered
    assert agent.terminate() == 0


# --- the spool's disk -----------------------------------------------------------------------------


def test_spool_on_a_full_disk_frees_it_once_everything_is_acked(
    tmp_path: Path, cleanup: Any
) -> None:
    """The spool alone: a full disk refuses appends and also the deletes of acked rows; once
    every stored row is acked the spool starts a fresh file, and ids keep increasing."""
    require(os.geteuid() == 0, "needs root to mount a tmpfs")
    stack = contextlib.ExitStack()
    cleanup(stack.close)
    disk = stack.enter_context(tmpfs(tmp_path / "disk", "256k"))
    spool = Spool(disk / "spool.db", 1_000_000)
    cleanup(spool.close)
    for _ in range(1000):
        spool.append([b"x" * 600])
    assert spool.counters.dropped_error > 0  # the disk filled up
    stored = spool.depth
    assert stored + spool.counters.dropped_error == 1000
    rows = spool.read_after(0, stored)
    assert len(rows) == stored  # everything stored is still readable
    for start in range(0, stored, 128):  # acked in the sink's batches
        spool.ack([row for row, _ in rows[start : start + 128]])
    assert spool.depth == 0
    assert spool.append([b"after"]) == 0 and spool.counters.dropped_error < 1000 - stored + 1
    (after,) = spool.read_after(rows[-1][0], 10)
    assert after == (rows[-1][0] + 1, b"after")  # the publisher's cursor stays valid


@pytest.mark.timeout(600)
def test_spool_disk_full_keeps_running_counts_and_recovers(
    agent_ready: None, forkstorm: Path, tmp_path: Path, cleanup: Any
) -> None:
    require(os.geteuid() == 0, "needs root to mount a tmpfs")
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()
    cleanup(broker.kill)
    disk = tmp_path / "disk"
    stack = contextlib.ExitStack()
    cleanup(stack.close)
    stack.enter_context(tmpfs(disk, "4m"))
    agent = FaultAgent(tmp_path / "agent", broker.url, spool=disk / "spool.db")
    cleanup(agent.close)
    recorder = Recorder(tmp_path, agent.host, "127.0.0.1", broker.port)
    cleanup(recorder.close)
    wait_until(lambda: recorder.status().get("state") == "online", SLOW, "online")
    broker.stop()
    n = 10000  # about 8 MB in the spool: twice the disk
    storm = Storm(forkstorm, tmp_path / "bin").start(n, rate=1000, pid_namespace_of=agent.pid)
    cleanup(storm.kill)
    storm.wait(timeout=SLOW * 3)
    wait_until(lambda: "cannot store" in agent.stderr(), SLOW, "the disk to fill up")
    assert agent.alive, agent.stderr()
    time.sleep(2)  # the agent's last poll of the storm
    broker.start()
    wait_until(
        lambda: wait_settled(recorder, agent)["events_seen"] == n + 2, SLOW, "the whole storm"
    )
    stats = recorder.stats()
    status = recorder.status()
    first = storm_exits(recorder, storm)
    # Live events again once the broker is back: a second storm arrives whole.
    again = Storm(forkstorm, tmp_path / "bin2").start(500, rate=500, pid_namespace_of=agent.pid)
    cleanup(again.kill)
    again.wait(timeout=SLOW)
    wait_all(recorder, again, 502)
    final = wait_settled(recorder, agent)
    figure(
        "spool-disk-full",
        disk="4 MiB tmpfs",
        generated=n + 2,
        delivered=len(first),
        dropped_queue=stats["dropped_queue"],
        status_dropped_queue=status.get("dropped_queue"),
        second_storm_delivered=len(storm_exits(recorder, again)),
    )
    assert stats["events_seen"] == n + 2
    assert stats["dropped_queue"] > 0  # the disk really filled
    assert len(first) == n + 2 - stats["dropped_queue"] - stats["dropped_spool"]  # exact
    assert status["dropped_queue"] == stats["dropped_queue"]  # the retained status says so
    assert len(storm_exits(recorder, again)) == 502
    assert final["dropped_queue"] == stats["dropped_queue"]  # no new losses once back
    assert agent.alive and agent.terminate() == 0


def _spool_rows(path: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return int(db.execute(DEPTH_SQL).fetchone()[0])  # a row holds a run of events
    except sqlite3.Error:
        return -1


@pytest.mark.timeout(600)
def test_spool_scribbled_while_running_is_replaced_counted_and_live_again(
    agent_ready: None, forkstorm: Path, tmp_path: Path, cleanup: Any
) -> None:
    """The spool file, its WAL and its shared-memory index overwritten with random bytes while
    the agent runs (the start-up case is test_spool.py's garbage and truncated files)."""
    broker, agent, recorder = _loopback_setup(tmp_path, cleanup)
    warmup = Storm(forkstorm, tmp_path / "bin0").start(100, pid_namespace_of=agent.pid)
    wait_all(recorder, warmup, 102)  # the publisher's cursor is past row 100 now
    broker.stop()
    lost = Storm(forkstorm, tmp_path / "bin1").start(300, pid_namespace_of=agent.pid)
    lost.wait(timeout=SLOW)
    wait_until(lambda: _spool_rows(agent.spool) == 302, SLOW, "302 events in the spool")
    for suffix in ("", "-wal", "-shm"):
        target = Path(f"{agent.spool}{suffix}")
        with open(target, "r+b") as f:  # same size: a truncated -shm would be SIGBUS
            f.write(os.urandom(target.stat().st_size))
    live = Storm(forkstorm, tmp_path / "bin2").start(200, pid_namespace_of=agent.pid)
    live.wait(timeout=SLOW)
    broker.start()
    wait_all(recorder, live, 202)
    stats = wait_settled(recorder, agent)
    status = recorder.status()
    figure(
        "spool-corrupt-while-running",
        spooled_when_scribbled=302,
        dropped_spool=stats["dropped_spool"],
        spool_corrupt_files=stats["spool_corrupt_files"],
        later_delivered=len(storm_exits(recorder, live)),
        scribbled_delivered=len(storm_exits(recorder, lost)),
    )
    assert stats["spool_corrupt_files"] == 1
    assert stats["dropped_spool"] == 302 == status["dropped_spool"]  # counted, and reported
    assert len(storm_exits(recorder, lost)) == 0
    assert stats["events_seen"] == 606 == stats["published"] + stats["dropped_spool"]
    assert list(agent.spool.parent.glob("spool.db.corrupt-*"))  # kept for a post-mortem
    assert agent.alive and agent.terminate() == 0


# --- a slow broker --------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_slow_broker_keeps_agent_memory_bounded(
    netns_ready: None, forkstorm: Path, tmp_path: Path, cleanup: Any
) -> None:
    pair = NetPair.create()
    cleanup(pair.close)
    broker = NsMosquitto(tmp_path / "broker", pair)
    broker.start()
    cleanup(broker.kill)
    proxy = DelayProxy(pair, 1884, 1880, delay=0.3)
    cleanup(proxy.close)
    agent = FaultAgent(tmp_path / "agent", proxy.url, prefix=pair.run_in("agent"))
    cleanup(agent.close)
    recorder = Recorder(tmp_path, agent.host, "169.254.77.1", broker.port,
                        prefix=pair.run_in("broker"))  # fmt: skip
    cleanup(recorder.close)
    wait_until(lambda: recorder.status().get("state") == "online", SLOW, "online")
    rss_start = agent.rss_kb()
    n = 20000
    storm = Storm(forkstorm, tmp_path / "bin").start(n, rate=2000, pid_namespace_of=agent.pid)
    cleanup(storm.kill)
    samples: list[int] = []
    depth = 0
    started = time.monotonic()
    deadline = started + 400
    while len(storm_exits(recorder, storm)) < n + 2 and time.monotonic() < deadline:
        samples.append(agent.rss_kb())
        depth = max(depth, recorder.stats().get("spool_depth", 0))
        time.sleep(0.5)
    drain_s = time.monotonic() - started
    got = storm_exits(recorder, storm)
    figure(
        "slow-broker",
        ack_delay_ms=300,
        generated=n + 2,
        delivered=len(got),
        lost=n + 2 - len(got),
        spool_depth_max=depth,
        rss_start_mb=round(rss_start / 1024, 1),
        rss_max_mb=round(max(samples) / 1024, 1),
        rss_samples=len(samples),
        all_delivered_after_s=round(drain_s, 1),
    )
    assert len(got) == n + 2
    assert depth > 1000  # the broker really was the bottleneck
    assert max(samples) < 150 * 1024
    assert agent.terminate() == 0

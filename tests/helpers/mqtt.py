"""Helpers for the MQTT tests: the agent as a subprocess, subscribers (paho in-process, or
`run_subscribe` in a subprocess), load, sample events and polling helpers.

The fixtures built on them (``broker``, ``agents``, ``subscribers``, ...) are in conftest.py.
Everything waits by polling with generous deadlines: the test machines are shared and slow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from helpers.common import REPO
from helpers.mosquitto import Mosquitto

if TYPE_CHECKING:
    from helpers.brokers import Broker
    from procmon.event import ExitEvent

PY = sys.executable
SLOW = 120.0  # default deadline for anything that should take a second on a quiet machine


def wait_until(
    condition: Callable[[], bool], timeout: float = SLOW, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    if not condition():
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_until_steady(
    value: Callable[[], int], quiet: float = 2.0, timeout: float = SLOW, what: str = "value"
) -> int:
    """Wait until value() has not changed for ``quiet`` seconds; return it."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return last
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} to settle")


def unique_host() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


# --- sd_notify ------------------------------------------------------------------------------


class NotifySocket:
    """Receives sd_notify datagrams on an abstract socket, as systemd would."""

    def __init__(self) -> None:
        self.name = f"@procmon-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(0.2)
        self.received: list[str] = []

    def poll(self) -> list[str]:
        try:
            while True:
                self.received.append(self.sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            pass
        return self.received

    def close(self) -> None:
        self.sock.close()


# --- the agent -----------------------------------------------------------------------------


class AgentProcess:
    """`python -m procmon.cli agent` with its own spool, config file and notify socket."""

    def __init__(
        self,
        workdir: Path,
        broker_url: str,
        host_id: str | None = None,
        env: dict[str, str] | None = None,
        config: str = "",
        own_pid_namespace: bool = False,
        global_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.global_args = global_args  # procmon's own flags, before `agent` (--log-level)
        # In its own pid namespace with probe.pidns_scope, the agent reports only what runs
        # there (see Storm.start): the shared machine's other exits stay out of the test.
        self.own_pid_namespace = own_pid_namespace
        self.pid = 0  # the agent's own (host) pid
        workdir.mkdir(parents=True, exist_ok=True)
        self.host_id = host_id or unique_host()
        self.broker_url = broker_url
        self.spool = workdir / "spool" / "spool.db"
        self.config = workdir / "agent.toml"
        self.config.write_text(config)
        self.stdout_path = workdir / "agent.stdout"
        self.stderr_path = workdir / "agent.stderr"
        self.notify = NotifySocket()
        self.env = {
            **os.environ,
            "PROCMON_SPOOL__PATH": str(self.spool),
            "PROCMON_STATS_INTERVAL_S": "1",
            "PROCMON_MQTT__RECONNECT_MAX_S": "2",
            "PROCMON_PROBE__EXCLUDE_SELF": "true",
            "NOTIFY_SOCKET": self.notify.name,
            "PYTHONUNBUFFERED": "1",
            **({"PROCMON_PROBE__PIDNS_SCOPE": "true"} if own_pid_namespace else {}),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> AgentProcess:
        cmd = [PY, "-m", "procmon.cli", *self.global_args, "agent", "--config", str(self.config)]
        cmd += ["--broker", self.broker_url, "--host-id", self.host_id]
        if self.own_pid_namespace:  # unshare forks the agent as pid 1 of a new namespace
            cmd = ["unshare", "--pid", "--fork", "--kill-child=SIGKILL", *cmd]
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=self.env, cwd=REPO)
        self.pid = self.proc.pid
        if self.own_pid_namespace:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            wait_until(lambda: children.read_text().strip() != "", SLOW, "unshare's child")
            self.pid = int(children.read_text().split()[0])
        if wait_ready:
            wait_until(self._ready_or_dead, SLOW, "the agent's READY=1")
            assert self.proc.poll() is None, f"agent exited at start:\n{self.stderr()}"
        return self

    def _ready_or_dead(self) -> bool:
        assert self.proc is not None
        return "READY=1" in self.notify.poll() or self.proc.poll() is not None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """To the agent itself (not to unshare, which would not pass it on)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self, timeout: float = SLOW) -> int:
        assert self.proc is not None
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)  # unshare exits with the agent's status

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(timeout=SLOW)

    def close(self) -> None:
        self.kill()
        self.notify.close()


# --- subscribers ---------------------------------------------------------------------------


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Any

    def json(self) -> Any:
        return json.loads(self.payload)

    def user_properties(self) -> dict[str, str]:
        return dict(getattr(self.properties, "UserProperty", None) or [])


class Collector:
    """An in-process MQTT v5 subscriber (or 3.1.1: ``protocol=``) keeping every message
    (retained ones included)."""

    def __init__(
        self,
        broker: Mosquitto | Broker,
        topics: list[str],
        tls: bool = False,
        session: str | None = None,
        login: tuple[str, str] | None = None,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    ) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        v5 = protocol == MQTTProtocolVersion.MQTTv5
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=session or "",
            protocol=protocol,
            clean_session=None if v5 else session is None,  # MQTT 3.1.1's persistent session
        )
        if tls:
            assert broker.tls is not None
            self.client.tls_set(
                ca_certs=str(broker.tls.ca_cert),
                certfile=str(broker.tls.client_cert),
                keyfile=str(broker.tls.client_key),
            )
        if login:
            self.client.username_pw_set(*login)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        props = None
        if session and v5:  # persistent: the broker queues for us while we or it are away
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
        if v5:
            self.client.connect_async(
                "127.0.0.1", broker.port, clean_start=session is None, properties=props
            )
        else:
            self.client.connect_async("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(SLOW), "collector did not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(
                Received(msg.topic, bytes(msg.payload), msg.retain, msg.properties)
            )

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def last_json(self, topic: str) -> Any:
        msgs = self.on(topic)
        return msgs[-1].json() if msgs else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


_SUBSCRIBER = """
import json, logging, sys
from pathlib import Path
from procmon.subscribe import run_subscribe
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
kw = json.loads(sys.argv[1])
for key in ("output", "password_file", "ca_file", "cert_file", "key_file"):
    if kw.get(key):
        kw[key] = Path(kw[key])
sys.exit(run_subscribe(**kw))
"""


class SubscriberProcess:
    """`run_subscribe` in its own process, writing JSON lines to a file we poll."""

    def __init__(self, workdir: Path, name: str, broker_url: str, **kwargs: Any) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.output = workdir / f"{name}.jsonl"
        self.stderr_path = workdir / f"{name}.stderr"
        kwargs = {"broker": broker_url, "output": str(self.output), **kwargs}
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [PY, "-c", _SUBSCRIBER, json.dumps(kwargs, default=str)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=REPO,
            )
        wait_until(
            lambda: "subscribed to" in self.stderr() or self.proc.poll() is not None,
            SLOW,
            f"subscriber {name} to subscribe",
        )
        # It may also be done already (count reached from a persistent session's queue).
        assert "subscribed to" in self.stderr() or self.proc.returncode == 0, self.stderr()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        if not self.output.exists():
            return []
        lines = self.output.read_bytes().split(b"\n")
        return [json.loads(line) for line in lines[:-1]]  # the last one may be partial

    def stop(self, timeout: float = SLOW) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


# --- load ----------------------------------------------------------------------------------


class Storm:
    """bench/forkstorm under a unique name: its exits are recognisable by comm alone."""

    def __init__(self, forkstorm: Path, workdir: Path) -> None:
        self.comm = f"fs{uuid.uuid4().hex[:10]}"  # under 16 bytes: the kernel's comm limit
        self.binary = workdir / self.comm
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(forkstorm, self.binary)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, n: int, rate: float = 0, pid_namespace_of: int = 0) -> Storm:
        """Fork n children (paced to rate/s if > 0), in the pid namespace of a process."""
        cmd = [str(self.binary), str(n), "1", str(rate)]
        if pid_namespace_of:
            cmd = ["nsenter", "--target", str(pid_namespace_of), "--pid", "--", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        return self

    def children(
        self, events: list[dict[str, Any]], context: list[dict[str, Any]] | None = None
    ) -> dict[str, dict[str, Any]]:
        """The storm's forked children, by event_id: its exits that forked nothing (the main
        process and its worker are the parents of others, as seen in ``context``)."""
        ours = [e for e in events if e["comm"] == self.comm]
        parents = {e["ppid"] for e in (context or events) if e["comm"] == self.comm}
        return {e["event_id"]: e for e in ours if e["pid"] not in parents}

    def main_seen(self, events: list[dict[str, Any]]) -> bool:
        """The main process exits last: once seen, every exit of the storm has been seen."""
        assert self.proc is not None
        return any(e["pid"] == self.proc.pid and e["comm"] == self.comm for e in events)

    def wait(self, timeout: float = SLOW) -> None:
        assert self.proc is not None
        self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Kill the storm's main process if it was started (a finalizer: safe at any time)."""
        if self.proc is not None:
            self.proc.kill()


# --- events and raw publishing -------------------------------------------------------------

BOOT_ID = "0123abcd-0000-4000-8000-00000000beef"


def sample_event(n: int, host: str = "sample-host") -> ExitEvent:
    """A valid ExitEvent numbered n (pid n), for tests that need no probe."""
    from procmon.event import ExitEvent

    return ExitEvent(
        event_id=f"{BOOT_ID}:{n}:{1000 + n}",
        scope="process",
        host=host,
        boot_id=BOOT_ID,
        probe="core",
        time="2026-01-01T00:00:00.000000000Z",
        pid=n,
        tid=n,
        ppid=1,
        comm="sample",
        uid=0,
        gid=0,
        exit_code=n % 256,
        signal=None,
        core_dumped=False,
        utime_ns=0,
        stime_ns=0,
        start_time="2026-01-01T00:00:00.000000000Z",
        age_ns=0,
        max_rss_kb=0,
        cgroup_id=0,
        pidns_inode=0,
        ns_pid=n,
    )


def publish_raw(
    broker: Mosquitto,
    messages: list[tuple[str, bytes, dict[str, str] | None]],
    retain: bool = False,
) -> None:
    """Publish (topic, payload, user properties) with QoS 1 and wait for every PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        infos = []
        for topic, payload, user in messages:
            props = None
            if user:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.UserProperty = list(user.items())
            infos.append(client.publish(topic, payload, qos=1, retain=retain, properties=props))
        for info in infos:
            info.wait_for_publish(SLOW)
    finally:
        client.disconnect()
        client.loop_stop()

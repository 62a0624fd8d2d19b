"""Real MQTT brokers for tests, each on free 127.0.0.1 ports with its files under a workdir:
mosquitto 2.0 (through helpers.mosquitto), RabbitMQ 3.10 with rabbitmq_mqtt (apt), aedes 1.2
(npm, in build/aedes) and amqtt 0.12 (PyPI, in build/amqtt); `make brokers` installs the last two.

    with make_broker("rabbitmq", tmp_path / "rabbit") as broker:  # started; closed at the end
        broker.stop(); broker.start()   # same port; sessions survive where keeps_sessions

``agent_protocol`` is what the agent is told to speak (``mqtt.protocol``) in the conformance
suite: "3.1.1" for brokers that speak nothing else, where MQTT 5 is the version-mismatch case.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Literal

from helpers.common import REPO
from helpers.mosquitto import Mosquitto, TlsFiles, free_port, mosquitto_available

BROKERS = ("mosquitto-3.1.1", "mosquitto-5", "rabbitmq", "aedes", "amqtt")

AEDES_MODULES = REPO / "build/aedes/node_modules"
AEDES_SCRIPT = REPO / "tests/brokers/aedes-broker.mjs"
AMQTT = REPO / "build/amqtt/bin/amqtt"
RABBITMQ_SBIN = Path("/usr/lib/rabbitmq/bin")  # the real scripts: /usr/sbin's su to rabbitmq
START_S = 60.0  # RabbitMQ takes about 11 s on a quiet machine


def _listening(port: int) -> bool:
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=1),
    ):
        return True
    return False


class Broker:
    """One broker: ``start()``, ``stop()`` (clean), ``kill()`` (SIGKILL), ``start()`` again on
    the same port; ``close()`` stops it and anything it left behind. A context manager."""

    name: str = ""
    version: str = ""
    agent_protocol: Literal["5", "3.1.1"] = "3.1.1"
    speaks_v5 = False
    # Subscriptions and queued QoS 1 messages of a persistent session survive a restart.
    keeps_sessions = False
    tls: TlsFiles | None = None  # plain TCP only (what paho's Collector looks at)

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self, timeout: float = START_S) -> None:
        assert not self.running, f"{self.name} already running"
        with open(self.log_path, "ab") as log:
            # A session of its own: kill() takes the whole group (RabbitMQ's beam and helpers).
            self.proc = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_text()[-3000:]}")
            if _listening(self.port):
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.name} did not listen on {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        """A clean stop: the broker saves what it keeps (SIGTERM unless it has a better way)."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_group()

    def kill(self) -> None:
        """SIGKILL to the broker's process group: nothing saved."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def _reap_group(self) -> None:
        """Children the broker left in its group (none, normally) go with it."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        self.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MosquittoBroker(Broker):
    """helpers.mosquitto's broker, persistent, with the protocol the agent is told to use."""

    version = "2.0"
    speaks_v5 = True
    keeps_sessions = True

    def __init__(self, workdir: Path, agent_protocol: Literal["5", "3.1.1"]) -> None:
        self.name = f"mosquitto-{agent_protocol}"
        self.agent_protocol = agent_protocol
        super().__init__(workdir)
        self.server = Mosquitto(workdir, persistence=True, port=self.port)
        self.log_path = self.server.log_path

    @property
    def running(self) -> bool:
        return self.server.running

    def start(self, timeout: float = START_S) -> None:
        self.server.start(timeout)

    def stop(self) -> None:
        self.server.stop()

    def kill(self) -> None:
        self.server.kill()


class RabbitMQ(Broker):
    """Debian's RabbitMQ 3.10 with rabbitmq_mqtt, run by hand (no systemd): its own node name,
    config, plugins file, mnesia and log dirs, HOME (the Erlang cookie) and epmd on its own port,
    so that parallel runs do not meet. MQTT 3.1.1 only; QoS 1 subscriptions of a persistent
    session are durable queues that survive a restart."""

    name = "rabbitmq"
    version = "3.10"
    keeps_sessions = True

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.node = f"procmon-{uuid.uuid4().hex[:8]}@localhost"
        self.epmd_port = free_port()
        self.epmd: subprocess.Popen[bytes] | None = None
        config = workdir / "rabbitmq.conf"
        config.write_text(
            f"listeners.tcp.default = 127.0.0.1:{free_port()}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
        )
        (workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        self.env = {
            **os.environ,
            "HOME": str(workdir),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(workdir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(workdir / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
        }

    def _command(self) -> list[str]:
        return [str(RABBITMQ_SBIN / "rabbitmq-server")]

    def _env(self) -> dict[str, str]:
        return self.env

    def start(self, timeout: float = START_S) -> None:
        if self.epmd is None or self.epmd.poll() is not None:
            # Ours, on its own port: the node registers there, and close() stops it by pid.
            self.epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        super().start(timeout)

    def stop(self) -> None:
        """`rabbitmqctl stop`: durable queues and their persistent messages are kept."""
        if self.running:
            assert self.proc is not None
            subprocess.run(
                [str(RABBITMQ_SBIN / "rabbitmqctl"), "-n", self.node, "stop"],
                env=self.env,
                capture_output=True,
                timeout=60,
            )
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_group()

    def close(self) -> None:
        self.kill()
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.kill()
            self.epmd.wait(timeout=30)

    def log_text(self) -> str:
        logs = [self.log_path, self.workdir / "log" / f"{self.node}.log"]
        return "".join(p.read_text(errors="replace") for p in logs if p.exists())


class AedesBroker(Broker):
    """aedes 1.2 on Node (tests/brokers/aedes-broker.mjs): MQTT 3.1.1, refuses MQTT 5 with a
    3.1.1 CONNACK 0x01. Its persistence is in memory: a restart forgets every session."""

    name = "aedes"
    version = "1.2.0"

    def _command(self) -> list[str]:
        node = shutil.which("node") or "/usr/bin/node"
        return [node, str(AEDES_SCRIPT), str(AEDES_MODULES), str(self.port)]


class Amqtt(Broker):
    """amqtt 0.12 (its CLI, with a YAML config): MQTT 3.1.1, sessions in memory. On each
    CONNECT it sends the client retained messages of other clients' subscriptions."""

    name = "amqtt"
    version = "0.12.1"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.config = workdir / "amqtt.yaml"
        self.config.write_text(
            "listeners:\n"
            "  default:\n"
            "    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )

    def _command(self) -> list[str]:
        return [str(AMQTT), "-c", str(self.config)]


def make_broker(name: str, workdir: Path) -> Broker:
    """A broker of BROKERS by name, not started (``with`` starts it)."""
    if name == "mosquitto-3.1.1":
        return MosquittoBroker(workdir, "3.1.1")
    if name == "mosquitto-5":
        return MosquittoBroker(workdir, "5")
    if name == "rabbitmq":
        return RabbitMQ(workdir)
    if name == "aedes":
        return AedesBroker(workdir)
    if name == "amqtt":
        return Amqtt(workdir)
    raise ValueError(f"unknown broker {name!r}: expected one of {', '.join(BROKERS)}")


def missing(name: str) -> str | None:
    """Why broker ``name`` cannot run here (for helpers.common.require), or None."""
    if name.startswith("mosquitto"):
        return None if mosquitto_available() else "needs mosquitto 2.0 (apt install mosquitto)"
    if name == "rabbitmq":
        ok = os.access(RABBITMQ_SBIN / "rabbitmq-server", os.X_OK) and shutil.which("epmd")
        return None if ok else "needs RabbitMQ (apt install rabbitmq-server)"
    if name == "aedes":
        ok = (AEDES_MODULES / "aedes").is_dir() and shutil.which("node")
        return None if ok else "needs node and aedes in build/aedes (make brokers)"
    if name == "amqtt":
        return None if os.access(AMQTT, os.X_OK) else "needs amqtt in build/amqtt (make brokers)"
    raise ValueError(f"unknown broker {name!r}: expected one of {', '.join(BROKERS)}")

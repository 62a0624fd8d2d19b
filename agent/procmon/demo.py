"""`make demo`: a local mosquitto, the agent publishing this machine's exits, and a subscriber
printing them in the human format. Once the agent is online it runs three sample exits (a
failing command, a killed one, a crash), so each kind shows within seconds even on a quiet
machine. Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MOSQUITTO = "/usr/sbin/mosquitto"
ONLINE_TIMEOUT_S = 60
# The samples: what each shows, and the command that shows it.
SAMPLES = (
    ("a failing command", ["sh", "-c", "exit 3"]),
    ("a crash", [sys.executable, "-c", "import ctypes; ctypes.string_at(0)"]),
)


def free_port(preferred: int = 1883) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free TCP port on 127.0.0.1")


def wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{port}")


def _broker_user() -> str:
    for name in ("mosquitto", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    return "root"  # no unprivileged user at all: mosquitto warns, and runs


def wait_online(port: int, started: list[subprocess.Popen[bytes]]) -> bool:
    """Until the agent's retained status says online (its probe is attached)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    online = False

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        nonlocal online
        online = online or b'"online"' in message.payload

    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("procmon/+/status", qos=1)
    deadline = time.monotonic() + ONLINE_TIMEOUT_S
    try:
        while not online:
            client.loop(0.2)
            if any(p.poll() is not None for p in started):
                return False  # a part died on its own: its error is above
            if time.monotonic() > deadline:
                print(
                    f"demo: the agent was not online within {ONLINE_TIMEOUT_S} s", file=sys.stderr
                )
                return False
    finally:
        client.disconnect()
    time.sleep(0.5)  # the subscriber connected before the agent: it is subscribed by now
    return True


def run_samples() -> None:
    """A failing command, a crash, and a sleep killed by SIGKILL: one line of each kind."""
    print(
        "demo: three sample exits: a failing command (sh -c 'exit 3'), a crash (python3 "
        "reading address 0: SIGSEGV), a killed one (sleep 30, sent SIGKILL by this demo)",
        file=sys.stderr,
        flush=True,
    )
    for _, cmd in SAMPLES:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    victim = subprocess.Popen(["sleep", "30"])
    time.sleep(0.2)
    victim.kill()
    victim.wait()


def main() -> int:
    if not Path(MOSQUITTO).exists():
        print(f"demo: {MOSQUITTO} missing: run `make setup`", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="procmon-demo-"))
    # 1883 when it is free; DEMO_BROKER_PORT=0 asks for any free port (the tests do).
    port = free_port(int(os.environ.get("DEMO_BROKER_PORT", "1883")))
    conf = workdir / "mosquitto.conf"
    # Loopback only, anonymous, no persistence: a demo broker, not a production one.
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "log_dest stderr\nlog_type error\n"
        # mosquitto drops root for this user once its listener is open (and does not warn).
        f"user {_broker_user()}\n"
        # mosquitto's defaults cap MQTT 5 clients at 20 unacknowledged messages and drop
        # queued messages past 1000: both throttle or lose a busy agent's stream.
        "max_inflight_messages 0\nmax_queued_messages 0\n"
    )
    broker_url = f"mqtt://127.0.0.1:{port}"
    procmon = [sys.executable, "-m", "procmon.cli"]
    env = {**os.environ, "PROCMON_SPOOL__PATH": str(workdir / "spool.db")}
    started: list[subprocess.Popen[bytes]] = []
    try:
        # Own sessions: Ctrl-C reaches only this script, which then stops the parts in
        # reverse order, so the agent can still publish its offline status to the broker.
        started.append(subprocess.Popen([MOSQUITTO, "-c", str(conf)], start_new_session=True))
        wait_for_port(port)
        print(f"demo: mosquitto on {broker_url}; agent and subscriber starting", file=sys.stderr)
        agent = [*procmon, "agent", "--broker", broker_url]
        started.append(subprocess.Popen(agent, env=env, start_new_session=True))
        subscribe = [*procmon, "subscribe", "procmon/+/exits", "--broker", broker_url]
        subscribe += ["--format", "human"]
        started.append(subprocess.Popen(subscribe, start_new_session=True))
        if not wait_online(port, started):
            return 1
        print("demo: live exits below; Ctrl-C stops everything", file=sys.stderr)
        run_samples()
        print(
            "demo: try your own in another terminal, e.g. sh -c 'exit 3' or sleep 60 & kill -9 $!",
            file=sys.stderr,
            flush=True,
        )
        while all(p.poll() is None for p in started):
            time.sleep(0.5)
        return 1  # a part died on its own: its error is above
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in reversed(started):  # subscriber, agent, broker: one after the other
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: a local mosquitto, the agent publishing this machine's exits, and a subscriber
printing them. Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MOSQUITTO = "/usr/sbin/mosquitto"


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


def main() -> int:
    if not Path(MOSQUITTO).exists():
        print(f"demo: {MOSQUITTO} missing: run `make setup`", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="procmon-demo-"))
    port = free_port()
    conf = workdir / "mosquitto.conf"
    # Loopback only, anonymous, no persistence: a demo broker, not a production one.
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "log_dest stderr\nlog_type error\nuser root\n"
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
        started.append(subprocess.Popen(subscribe, start_new_session=True))
        print("demo: live exits below; Ctrl-C stops everything", file=sys.stderr)
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

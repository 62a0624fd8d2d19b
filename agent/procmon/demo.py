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
        started.append(subprocess.Popen([MOSQUITTO, "-c", str(conf)]))
        wait_for_port(port)
        print(f"demo: mosquitto on {broker_url}; agent and subscriber starting", file=sys.stderr)
        started.append(subprocess.Popen([*procmon, "agent", "--broker", broker_url], env=env))
        started.append(
            subprocess.Popen([*procmon, "subscribe", "procmon/+/exits", "--broker", broker_url])
        )
        print("demo: live exits below; Ctrl-C stops everything", file=sys.stderr)
        while all(p.poll() is None for p in started):
            time.sleep(0.5)
        return 1  # a part died on its own: its error is above
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(started):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""A real mosquitto 2.0 for tests: its own config on a free 127.0.0.1 port, kill and restart,
optional TLS (certificates made here with the openssl CLI) and a password file.

    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start(); broker.kill(); broker.start()   # same port, same saved state
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def mosquitto_available() -> bool:
    return os.access(MOSQUITTO, os.X_OK)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls_files(directory: Path) -> TlsFiles:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=procmon test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    for name, cn, ext in (
        ("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "procmon-agent", "extendedKeyUsage=clientAuth\n"),
    ):
        (directory / f"{name}.ext").write_text(ext)
        _openssl(
            "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
            cwd=directory,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
            cwd=directory,
        )  # fmt: skip
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return TlsFiles(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


class Mosquitto:
    """One broker process; ``start()`` after ``kill()``/``stop()`` reuses port and state."""

    def __init__(
        self,
        workdir: Path,
        *,
        tls: TlsFiles | None = None,
        passwords: dict[str, str] | None = None,
        persistence: bool = False,
        port: int | None = None,
        host: str = "127.0.0.1",
        extra: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.host = host  # "::1" for an IPv6 listener
        self.extra = list(extra)  # more mosquitto.conf lines, e.g. "max_packet_size 1024"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        self.password_file: Path | None = None
        if passwords:
            self.password_file = workdir / "passwords"
            for i, (user, password) in enumerate(passwords.items()):
                create = ["-c"] if i == 0 else []
                subprocess.run(
                    [MOSQUITTO_PASSWD, *create, "-b", str(self.password_file), user, password],
                    check=True,
                    capture_output=True,
                )
        self.conf_path.write_text(self._config())

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def _config(self) -> str:
        lines = [
            # Stay root: the test's tmp dir is not readable by the mosquitto user.
            "user root",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            # Save every second: a SIGKILL then loses at most the last second's sessions.
            "autosave_interval 1",
            # Queue without limit for offline persistent sessions (the default drops at 1000).
            "max_queued_messages 0",
            # No in-flight cap (default 20, also sent to MQTT 5 clients as Receive Maximum):
            # publishers keep a full window in flight, and messages go straight to each
            # subscriber's socket instead of waiting in broker memory that a SIGKILL loses.
            "max_inflight_messages 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"listener {self.port} {self.host}",
            *self.extra,
        ]
        if self.tls:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                "require_certificate true",
            ]
        if self.password_file:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf_path)], stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start:\n{self.log_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=1),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, nothing saved since the last autosave."""
        self._signal(signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP: the broker reads, acknowledges and saves nothing until killed or thawed."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        self.proc.send_signal(signal.SIGSTOP)

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file and exits."""
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
            if signum != signal.SIGKILL:  # a frozen broker must run to act on the signal
                self.proc.send_signal(signal.SIGCONT)
            self.proc.wait(timeout=30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

"""Where and how to reach the MQTT broker: URL, credentials and TLS files, shared by the agent's
MQTT sink and `procmon subscribe`. Problems are reported as one line naming the culprit."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
import stat
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # paho is imported only where a paho client is used (config needs none)
    import paho.mqtt.client as mqtt
    from paho.mqtt.reasoncodes import ReasonCode

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerConfigError(Exception):
    """A broker URL, password file or TLS file that cannot work, worded as one line."""


@dataclass(frozen=True)
class BrokerUrl:
    host: str  # an IPv6 address without its brackets
    port: int
    tls: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


_FORM = "mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (an IPv6 address in brackets)"


def parse_broker_url(url: str) -> BrokerUrl:
    """``mqtt://HOST[:PORT]`` (1883) or ``mqtts://HOST[:PORT]`` (8883, TLS); HOST may be
    ``[IPv6]``. Parsed by urllib, then held to what a broker address can be."""
    text = url.strip()
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as exc:
        if text.count(":") > 2 and "[" not in text:
            raise BrokerConfigError(
                f"broker {url!r}: an IPv6 address goes in brackets (mqtt://[::1]:1883)"
            ) from None
        raise BrokerConfigError(f"broker {url!r}: {exc}") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or "//" not in text:
        raise BrokerConfigError(f"broker {url!r} is not {_FORM}")
    if parts.path not in ("", "/") or "?" in text or "#" in text:
        raise BrokerConfigError(f"broker {url!r}: nothing may follow HOST[:PORT] (found a path)")
    if parts.username is not None or parts.password is not None:
        raise BrokerConfigError(
            f"broker {url!r}: credentials do not belong in the URL: use mqtt.username and"
            " mqtt.password_file"
        )
    netloc = parts.netloc
    bracketed = netloc.startswith("[")
    host = parts.hostname if bracketed else netloc.rsplit(":", 1)[0] if ":" in netloc else netloc
    if bracketed:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise BrokerConfigError(f"broker {url!r}: [{host}] is not an IPv6 address") from None
    elif not host or any(c.isspace() or c in "[]@" for c in host):
        raise BrokerConfigError(f"broker {url!r} is not {_FORM}")
    if port == 0:
        raise BrokerConfigError(f"broker {url!r}: port 0 is out of range")
    return BrokerUrl(
        host=host, port=port or DEFAULT_PORTS[parts.scheme], tls=parts.scheme == "mqtts"
    )


def _not_world_readable(path: Path, what: str) -> None:
    mode = path.stat().st_mode
    if mode & stat.S_IROTH:
        raise BrokerConfigError(
            f"{what} {path} is readable by everyone (mode {stat.S_IMODE(mode):04o}):"
            f" chmod o-rwx {path}"
        )


def read_password_file(path: Path) -> str:
    """The first line of the file; the file must not be world-readable."""
    try:
        _not_world_readable(path, "password file")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BrokerConfigError(f"password file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise BrokerConfigError(f"password file {path} is not UTF-8 text") from None
    password = text.split("\n", 1)[0].rstrip("\r")
    if not password:
        raise BrokerConfigError(f"password file {path} is empty")
    return password


def _readable(path: Path | None, what: str) -> Path | None:
    if path is not None and not os.access(path, os.R_OK):
        reason = "does not exist" if not path.exists() else "is not readable"
        raise BrokerConfigError(f"{what} {path} {reason}")
    return path


def _private_key(path: Path | None) -> Path | None:
    """A client key, like a password, must not be readable by everyone."""
    _readable(path, "client key")
    if path is not None:
        try:
            _not_world_readable(path, "client key")
        except OSError as exc:
            raise BrokerConfigError(f"client key {path}: {exc.strerror}") from exc
    return path


@dataclass(frozen=True)
class BrokerOptions:
    """Everything needed to connect, validated up front so failures show at start."""

    url: BrokerUrl
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def build(
        cls,
        broker: str,
        username: str | None = None,
        password_file: Path | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> BrokerOptions:
        url = parse_broker_url(broker)
        if password_file is not None and not username:
            raise BrokerConfigError("a password file needs a username (mqtt.username)")
        if not url.tls and (ca_file or cert_file or key_file):
            raise BrokerConfigError(f"TLS files are set but broker {url} is plain: use mqtts://")
        if key_file is not None and cert_file is None:
            raise BrokerConfigError("a client key file needs a client certificate (cert_file)")
        return cls(
            url=url,
            username=username,
            password=read_password_file(password_file) if password_file else None,
            ca_file=_readable(ca_file, "CA file"),
            cert_file=_readable(cert_file, "client certificate"),
            key_file=_private_key(key_file),
        )

    def apply(self, client: mqtt.Client) -> None:
        """Set credentials and TLS on a paho client before it connects."""
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.url.tls:
            try:
                client.tls_set(
                    ca_certs=str(self.ca_file) if self.ca_file else None,
                    certfile=str(self.cert_file) if self.cert_file else None,
                    keyfile=str(self.key_file) if self.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (ssl.SSLError, OSError) as exc:
                raise BrokerConfigError(f"TLS files for {self.url}: {exc}") from exc


def describe_connect_error(exc: BaseException | None) -> str:
    """A short reason for a failed TCP/TLS connect."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: server certificate rejected ({exc.verify_message}); check the CA file"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc}); check the CA, certificate and key"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the broker host ({exc.strerror})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return (
            exc.strerror if exc.strerror and "CONNACK" in exc.strerror else "connection timed out"
        )
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return "connection failed"


def describe_refusal(reason: ReasonCode | int) -> str:
    """A CONNACK refusal in words, with a hint where the fix is obvious."""
    text = str(reason)
    value = reason if isinstance(reason, int) else reason.value
    # 4/5 are MQTT 3.1.1 codes; 0x86/0x87 the MQTT 5 ones.
    if value in (4, 0x86):
        return f"refused: {text} (check mqtt.username and the password file)"
    if value in (5, 0x87):  # mosquitto answers a wrong password with this one too
        return f"refused: {text} (check mqtt.username and the password file, or the broker's ACL)"
    return f"refused: {text}"


# A link the broker closes this soon after accepting it was most likely refused, not lost.
QUICK_CLOSE_S = 2.0


# Identical lines within this many seconds are counted, not repeated.
REPEAT_WINDOW_S = 60.0
_MAX_REMEMBERED_LINES = 64


class RepeatedLines:
    """Logs a line, then counts its repeats for ``window_s`` seconds: the first one after the
    window says how many were held back, e.g. "... (repeated 12 times in 60 s)"."""

    def __init__(
        self,
        log: logging.Logger,
        window_s: float = REPEAT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._window_s = window_s
        self._clock = clock
        self._seen: dict[str, list[float]] = {}  # line -> [logged at, repeats since]

    def log(self, level: int, text: str) -> None:
        now = self._clock()
        entry = self._seen.get(text)
        if entry is not None and now - entry[0] < self._window_s:
            entry[1] += 1
            return
        if len(self._seen) >= _MAX_REMEMBERED_LINES:
            self._seen.clear()
        self._seen[text] = [now, 0]
        if entry is not None and entry[1]:
            text += f" (repeated {entry[1]:.0f} times in {now - entry[0]:.0f} s)"
        self._log.log(level, text)


class ConnectionReporter:
    """Logs a connection problem once, not on every retry, and the recovery once; a line that
    comes back within a minute is counted, not repeated (RepeatedLines)."""

    def __init__(self, log: logging.Logger, url: BrokerUrl, what: str) -> None:
        self._log = log
        self._lines = RepeatedLines(log)
        self._url = url
        self._what = what
        self._last_problem: str | None = None
        self._failures = 0
        self._hinted = False  # the likely cause of a link closed at once, said once

    def warn_plain_credentials(self, username: str | None) -> None:
        if username and not self._url.tls:
            self._log.warning(
                "MQTT broker %s: the credentials of user %r go over the network unencrypted:"
                " use mqtts://",
                self._url,
                username,
            )

    def failed(self, problem: str) -> None:
        self._failures += 1
        if problem != self._last_problem:
            self._last_problem = problem
            self._lines.log(logging.ERROR, f"MQTT broker {self._url}: {problem}; {self._what}")

    def warning(self, text: str) -> None:
        """Any other line about this broker, collapsed when it repeats."""
        self._lines.log(logging.WARNING, f"MQTT broker {self._url}: {text}")

    def connected(self) -> None:
        if self._failures:
            self._lines.log(
                logging.WARNING,
                f"MQTT broker {self._url}: connected after {self._failures} failed attempts",
            )
        else:
            self._lines.log(logging.INFO, f"MQTT broker {self._url}: connected")
        self._last_problem = None
        self._failures = 0

    def lost(self, reason: str, after_s: float | None = None) -> None:
        self._lines.log(
            logging.WARNING, f"MQTT broker {self._url}: connection lost ({reason}); reconnecting"
        )
        if after_s is not None and after_s < QUICK_CLOSE_S and not self._hinted:
            self._hinted = True
            self._log.warning(
                "MQTT broker %s closed the link %.1f s after accepting it: likely an ACL "
                "refusal (with the procmon.procmon.broker role a user may publish only under its "
                "own host's topics: host_id must equal mqtt.username), or another client with the "
                "same client id (with use_username_as_clientid, one connection per user)",
                self._url,
                after_s,
            )

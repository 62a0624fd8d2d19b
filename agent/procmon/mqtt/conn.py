"""Reaching the broker: TLS, the non-blocking connect handshake, a Link's I/O, backoff and
reason codes (worded as paho named them, which ``describe_refusal`` relies on).

A connect in progress ends as soon as ``stop_fd`` is readable; an established ``Link`` never
blocks, so the sink may use it from whichever thread holds its lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import sys
import time
from typing import TYPE_CHECKING, cast

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from procmon.mqtt.broker_url import BrokerConfigError, BrokerOptions, BrokerUrl
from procmon.mqtt.wire import PROTOCOL_311, ConnAck, Decoder, Packet, ProtocolError

if TYPE_CHECKING:
    import ssl

# TCP connect, TLS handshake and CONNACK together.
CONNECT_TIMEOUT_S = 10.0
RECV_SIZE = 65536
# Larger writes are split: a TLS retry must offer the same bytes, so chunks only ever grow.
SEND_CHUNK = 1 << 18

# MQTT 3.1.1 CONNACK return codes, named as paho named them for its callbacks.
_RETURN_CODE_NAMES = {
    1: "Unsupported protocol version",
    2: "Client identifier not valid",
    3: "Server unavailable",
    4: "Bad user name or password",
    5: "Not authorized",
}


class Interrupted(Exception):
    """The sink is closing: a connect in progress gave up."""


class ConnectionClosed(ConnectionError):
    """The broker closed the connection (EOF)."""

    def __init__(self) -> None:
        super().__init__("closed by the broker")


class NoConnAck(TimeoutError):
    """CONNECT went out, and no CONNACK came back in time."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(errno.ETIMEDOUT, f"no CONNACK within {timeout_s:g} s")


class ClosedBeforeConnAck(ConnectionError):
    """The broker closed or reset the link after our CONNECT, before any CONNACK: what a broker
    that does not speak our MQTT version (RabbitMQ and MQTT 5) does."""

    def __init__(self, how: str) -> None:
        super().__init__(errno.ECONNRESET, f"the link was {how} before any CONNACK")


class _NotTls(OSError):
    """Stands in for ssl's classes until a TLS link binds them: nothing raises it."""


class _NotTlsSocket(socket.socket):
    """Stands in for ssl.SSLSocket until a TLS link binds it: no socket is one."""


class _Tls:
    """ssl's classes the links name in except clauses. ssl is imported only for mqtts://
    (_bind_ssl): on a plain mqtt:// agent it would cost ~3 MB of RSS and a few ms of start-up
    (bench/startup_rss.md). Before binding, the stand-ins catch nothing, which is right: a
    plain socket raises none of ssl's errors."""

    error: type[OSError] = _NotTls
    want_read: type[OSError] = _NotTls
    want_write: type[OSError] = _NotTls
    zero_return: type[OSError] = _NotTls
    eof: type[OSError] = _NotTls
    socket: type[socket.socket] = _NotTlsSocket


def _bind_ssl() -> None:
    import ssl

    _Tls.error, _Tls.want_read, _Tls.want_write = (
        ssl.SSLError,
        ssl.SSLWantReadError,
        ssl.SSLWantWriteError,
    )
    _Tls.zero_return, _Tls.eof, _Tls.socket = ssl.SSLZeroReturnError, ssl.SSLEOFError, ssl.SSLSocket


def tls_context(options: BrokerOptions) -> ssl.SSLContext | None:
    """The client TLS context for an mqtts:// broker (None for mqtt://): certificate and host
    name checked, the CA file or the system's CAs, a client certificate for mTLS."""
    if not options.url.tls:
        return None
    import ssl

    _bind_ssl()
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
        if options.ca_file is not None:
            context.load_verify_locations(cafile=str(options.ca_file))
        else:
            context.load_default_certs()
        if options.cert_file is not None:
            key = str(options.key_file) if options.key_file is not None else None
            context.load_cert_chain(str(options.cert_file), key)
    except (ssl.SSLError, OSError) as exc:
        raise BrokerConfigError(f"TLS files for {options.url}: {exc}") from exc
    return context


class Backoff:
    """Capped exponential delays between connection attempts: first, 2 x first, ... cap."""

    def __init__(self, first_s: float, cap_s: float) -> None:
        self._first = first_s
        self._cap = max(cap_s, first_s)
        self._delay = first_s

    def next(self) -> float:
        delay = self._delay
        self._delay = min(delay * 2, self._cap)
        return delay

    def reset(self) -> None:
        self._delay = self._first


class _Code(int):
    """A reason code paho has no name for."""

    def __str__(self) -> str:
        return f"reason code {int(self):#04x}"


def reason(packet_type: int, code: int) -> ReasonCode | int:
    """An MQTT 5 reason code of a CONNACK, PUBACK or DISCONNECT, printable as words."""
    try:
        return ReasonCode(packet_type, identifier=code)
    except (KeyError, ValueError):
        return _Code(code)


def puback_reason(code: int) -> ReasonCode | int:
    return reason(PacketTypes.PUBACK, code)


def disconnect_reason(code: int) -> ReasonCode | int:
    return reason(PacketTypes.DISCONNECT, code)


def connack_reason(connack: ConnAck, protocol: int) -> ReasonCode | int:
    """The refusal of a CONNACK; 3.1.1 return codes get the names of the MQTT 5 codes."""
    if protocol == PROTOCOL_311:
        name = _RETURN_CODE_NAMES.get(connack.reason_code, "Unspecified error")
        return ReasonCode(PacketTypes.CONNACK, name)
    return reason(PacketTypes.CONNACK, connack.reason_code)


def refused(connack: ConnAck) -> bool:
    # 3.1.1: any non-zero return code; 5: reason codes from 0x80 (CONNACK has no other success).
    return connack.reason_code != 0


def describe_io_error(exc: BaseException) -> str:
    """Why an established connection ended, for the "connection lost" line."""
    if isinstance(exc, ProtocolError):
        return f"protocol error: {exc}"
    if isinstance(exc, _Tls.error):
        return f"TLS: {getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


class Link:
    """One established connection: a non-blocking socket (plain or TLS), the decoder for what
    the broker sends, and the bytes waiting to be sent."""

    def __init__(self, sock: socket.socket, protocol: int) -> None:
        self.sock = sock
        self.decoder = Decoder(protocol)
        self.out = bytearray()
        self.backlog: list[Packet] = []  # arrived with the CONNACK
        # A TLS write can need a read first (renegotiation): then waiting for "writable" spins.
        self.write_needs_read = False
        self.broken: str | None = None  # why the link is done, noticed by another thread
        if "ssl" in sys.modules:  # a TLS socket exists only once ssl is imported
            _bind_ssl()
        self._tls = isinstance(sock, _Tls.socket)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[Packet] | None:
        """Every packet completed by what the socket has now (perhaps none); None if no byte
        arrived. Raises ConnectionClosed at EOF, OSError or ProtocolError on a broken link."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, _Tls.want_read, _Tls.want_write):
            return None
        except _Tls.zero_return:
            raise ConnectionClosed() from None
        if not data:
            raise ConnectionClosed()
        if self._tls:
            tls_sock = cast("ssl.SSLSocket", self.sock)
            while tls_sock.pending():  # decrypted already: the selector will not report it
                data += tls_sock.recv(RECV_SIZE)
        self.write_needs_read = False
        return self.decoder.feed(data)

    def flush(self) -> bool:
        """Send what the socket takes now; True once nothing is left."""
        out = self.out
        while out:
            try:
                with memoryview(out) as view, view[:SEND_CHUNK] as chunk:
                    sent = self.sock.send(chunk)
            except (BlockingIOError, _Tls.want_write):
                return False
            except _Tls.want_read:
                self.write_needs_read = True
                return False
            del out[:sent]
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _wait(sock: socket.socket, events: int, deadline: float, stop_fd: int) -> None:
    """Until sock is ready for events; Interrupted when stop_fd is readable, TimeoutError
    at the deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(errno.ETIMEDOUT, "timed out")
    poller = select.poll()
    poller.register(sock, events)
    poller.register(stop_fd, select.POLLIN)
    ready = poller.poll(remaining * 1000)
    if any(fd == stop_fd for fd, _ in ready):
        raise Interrupted()
    if not ready:
        raise TimeoutError(errno.ETIMEDOUT, "timed out")


def _tcp_connect(url: BrokerUrl, deadline: float, stop_fd: int) -> socket.socket:
    last: OSError | None = None
    for family, kind, proto, _, addr in socket.getaddrinfo(
        url.host, url.port, type=socket.SOCK_STREAM
    ):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            if err == errno.EINPROGRESS:
                _wait(sock, select.POLLOUT, deadline, stop_fd)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))  # ECONNREFUSED: ConnectionRefusedError
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        # We batch our own writes: Nagle would only hold them back for the broker's ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise last or OSError(errno.EHOSTUNREACH, "no address for the broker")


def open_link(
    url: BrokerUrl,
    tls: ssl.SSLContext | None,
    connect_packet: bytes,
    protocol: int,
    stop_fd: int,
    timeout: float = CONNECT_TIMEOUT_S,
) -> tuple[Link, ConnAck]:
    """Connect, shake hands (TLS), send CONNECT and wait for the CONNACK, accepted or not.

    Raises OSError (ssl.SSLError, socket.gaierror, TimeoutError, ...) or ProtocolError when no
    CONNACK comes, Interrupted when stop_fd becomes readable.
    """
    deadline = time.monotonic() + timeout
    sock = _tcp_connect(url, deadline, stop_fd)
    try:
        if tls is not None:
            _bind_ssl()
            tls_sock = tls.wrap_socket(
                sock, server_hostname=url.host, do_handshake_on_connect=False
            )
            sock = tls_sock
            while True:
                try:
                    tls_sock.do_handshake()
                    break
                except _Tls.want_read:
                    _wait(sock, select.POLLIN, deadline, stop_fd)
                except _Tls.want_write:
                    _wait(sock, select.POLLOUT, deadline, stop_fd)
        link = Link(sock, protocol)
        link.out += connect_packet
        try:
            while not link.flush():
                _wait(sock, select.POLLOUT, deadline, stop_fd)
            while True:
                _wait(sock, select.POLLIN, deadline, stop_fd)
                packets = link.read()
                if packets:
                    break
        except ConnectionClosed:
            raise ClosedBeforeConnAck("closed by the broker") from None
        except (ConnectionResetError, BrokenPipeError, _Tls.eof):
            raise ClosedBeforeConnAck("reset by the broker") from None
        except TimeoutError:
            raise NoConnAck(timeout) from None
        first, *rest = packets
        if not isinstance(first, ConnAck):
            raise ProtocolError(f"expected CONNACK, got {type(first).__name__}")
        link.backlog = rest
        return link, first
    except BaseException:
        sock.close()
        raise


def say_goodbye(link: Link, disconnect_packet: bytes, timeout: float) -> None:
    """Send DISCONNECT and wait until the broker closes its end, so our close cannot reset
    the connection (a reset may lose what the broker has not read yet, and publish the will)."""
    deadline = time.monotonic() + timeout
    link.out += disconnect_packet
    try:
        while not link.flush():
            if not _ready(link.sock, select.POLLOUT, deadline):
                return
        while _ready(link.sock, select.POLLIN, deadline):
            try:
                if not link.sock.recv(RECV_SIZE):
                    return
            except (BlockingIOError, _Tls.want_read, _Tls.want_write):
                continue
    except OSError:  # ssl.SSLEOFError and resets included: the broker is gone either way
        return


def _ready(sock: socket.socket, events: int, deadline: float) -> bool:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    poller = select.poll()
    poller.register(sock, events)
    return bool(poller.poll(remaining * 1000))

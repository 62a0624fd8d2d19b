"""A socket-level broker that follows a script, for the hostile cases a real broker does not
produce (accept then disconnect, never acknowledge, no CONNACK, unsolicited PUBLISH, ...).

Each accepted connection runs ``script(conn, n)`` in its own thread (n counts connections from
0); helpers below read the client's CONNECT and answer it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Sequence
from types import TracebackType

from procmon.mqtt.wire import MAXIMUM_PACKET_SIZE, encode_properties, encode_varint

Script = Callable[[socket.socket, int], None]


def read_packet(conn: socket.socket) -> tuple[int, bytes]:
    """One whole packet from the client: (first byte, body). EOF raises ConnectionError."""

    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client closed")
            data += chunk
        return data

    first = exact(1)[0]
    length = shift = 0
    while True:
        byte = exact(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, exact(length)


def connect_level(body: bytes) -> int:
    """The protocol level of a CONNECT body (4: MQTT 3.1.1, 5: MQTT 5)."""
    return body[6]


def connack(
    level: int, code: int = 0, max_packet_size: int = 0, props: Sequence[tuple[int, int]] = ()
) -> bytes:
    """A CONNACK for a client of this protocol level, with MQTT 5 properties."""
    if level == 5:
        limits = [(MAXIMUM_PACKET_SIZE, max_packet_size)] if max_packet_size else []
        body = bytes((0, code)) + encode_properties([*limits, *props])
    else:
        body = bytes((0, code))
    return b"\x20" + encode_varint(len(body)) + body


def puback(packet_id: int) -> bytes:
    return bytes((0x40, 2, packet_id >> 8, packet_id & 0xFF))


def serve_publishes(conn: socket.socket, ack: bool = True) -> None:
    """Answer PINGREQ, and PUBLISH (QoS 1) with PUBACK when ``ack``, until the client leaves."""
    while True:
        first, body = read_packet(conn)
        kind = first & 0xF0
        if kind == 0xC0:
            conn.sendall(b"\xd0\x00")
        elif kind == 0x30 and ack and (first >> 1) & 3:
            topic_end = 2 + int.from_bytes(body[:2], "big")
            conn.sendall(puback(int.from_bytes(body[topic_end : topic_end + 2], "big")))
        elif kind == 0xE0:
            return


class ScriptedBroker:
    """Context manager: listens on a free 127.0.0.1 port, runs ``script`` per connection."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port: int = self._server.getsockname()[1]
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.connections = 0
        self.errors: list[BaseException] = []
        self._conns: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            n = self.connections
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._run, args=(conn, n), daemon=True).start()

    def _run(self, conn: socket.socket, n: int) -> None:
        try:
            self._script(conn, n)
        except (ConnectionError, OSError):
            pass  # the client left, or the test ended
        except BaseException as exc:  # surfaced by the test through .errors
            self.errors.append(exc)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def __enter__(self) -> ScriptedBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)

"""Network test-beds for the fault tests: two network namespaces joined by a veth pair.

    pair = NetPair.create()            # agent side 169.254.77.2/30, broker side 169.254.77.1/30
    broker = NsMosquitto(dir, pair)    # mosquitto inside the broker namespace
    pair.cut() / pair.heal()           # clean cut: the agent's end of the veth goes down
    pair.blackhole() / pair.unblackhole()  # nft drops every packet on the broker's end
    pair.close()                       # deletes both namespaces (the veth goes with them)

Only link-local addresses (169.254.77.0/30) are used, and only inside namespaces this module
creates: nothing reaches the host's network. Processes started in a namespace are prefixed with
``pair.run_in(side)`` (``ip netns exec NAME``). The kernels of these test machines lack netem,
so delay comes from ``DelayProxy`` (a user-space TCP relay holding every broker->agent segment
for a fixed time) and the black-hole from nftables.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from helpers.mosquitto import MOSQUITTO, Mosquitto

AGENT_ADDR = "169.254.77.2"
BROKER_ADDR = "169.254.77.1"
PREFIX_LEN = 30
NFT_TABLE = "procmon_blackhole"


def ip_available() -> bool:
    return shutil.which("ip") is not None


def nft_available() -> bool:
    return shutil.which("nft") is not None


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


@dataclass
class NetPair:
    agent_ns: str
    broker_ns: str
    agent_if: str
    broker_if: str
    blackholed: bool = False

    @classmethod
    def create(cls) -> NetPair:
        tag = uuid.uuid4().hex[:8]
        pair = cls(f"pm-{tag}-agent", f"pm-{tag}-broker", f"pm{tag}a", f"pm{tag}b")
        try:
            pair._build()
        except BaseException:
            pair.close()
            raise
        return pair

    def _build(self) -> None:
        _run("ip", "netns", "add", self.agent_ns)
        _run("ip", "netns", "add", self.broker_ns)
        # Created directly in the namespaces: the host's own namespace never holds them.
        _run(
            "ip", "link", "add", self.agent_if, "netns", self.agent_ns,
            "type", "veth", "peer", "name", self.broker_if, "netns", self.broker_ns,
        )  # fmt: skip
        for ns, dev, addr in (
            (self.agent_ns, self.agent_if, AGENT_ADDR),
            (self.broker_ns, self.broker_if, BROKER_ADDR),
        ):
            _run("ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")

    def run_in(self, side: str) -> list[str]:
        """The command prefix that runs a program in the agent's or the broker's namespace."""
        return ["ip", "netns", "exec", self.agent_ns if side == "agent" else self.broker_ns]

    # --- faults ---------------------------------------------------------------------------

    def cut(self) -> None:
        """A clean cut: the agent's end of the cable is unplugged (link down)."""
        _run("ip", "-n", self.agent_ns, "link", "set", self.agent_if, "down")

    def heal(self) -> None:
        _run("ip", "-n", self.agent_ns, "link", "set", self.agent_if, "up")

    def blackhole(self) -> None:
        """Every packet to and from the broker's end is dropped silently: no RST, no ICMP."""
        rules = (
            f"table inet {NFT_TABLE} {{\n"
            f" chain input {{ type filter hook input priority -10; policy accept;"
            f" iifname {self.broker_if} drop; }}\n"
            f" chain output {{ type filter hook output priority -10; policy accept;"
            f" oifname {self.broker_if} drop; }}\n"
            "}\n"
        )
        subprocess.run(
            [*self.run_in("broker"), "nft", "-f", "-"],
            input=rules.encode(),
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.blackholed = True

    def unblackhole(self) -> None:
        _run(*self.run_in("broker"), "nft", "delete", "table", "inet", NFT_TABLE)
        self.blackholed = False

    def close(self) -> None:
        """Delete both namespaces; their veth ends and nft tables go with them."""
        for ns in (self.agent_ns, self.broker_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=60)


class NsMosquitto(Mosquitto):
    """mosquitto inside the broker namespace, on BROKER_ADDR (and on the namespace's loopback,
    where a DelayProxy can reach it)."""

    def __init__(self, workdir: Path, pair: NetPair, *, persistence: bool = True) -> None:
        self.pair = pair
        super().__init__(workdir, persistence=persistence, port=1883)

    @property
    def url(self) -> str:
        return f"mqtt://{BROKER_ADDR}:{self.port}"

    def _config(self) -> str:
        lines = super()._config().splitlines()
        out = [x for x in lines if not x.startswith("listener ")]
        out += [f"listener {self.port} {BROKER_ADDR}", "listener 1880 127.0.0.1"]
        return "\n".join(out) + "\n"

    def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [*self.pair.run_in("broker"), MOSQUITTO, "-c", str(self.conf_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start:\n{self.log_text()}")
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                if b" running" in f.read():  # "mosquitto version 2.0.11 running"
                    return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start within {timeout} s:\n{self.log_text()}")


_PROXY = r"""
import asyncio, sys
listen_host, listen_port = sys.argv[1], int(sys.argv[2])
target_port, delay = int(sys.argv[3]), float(sys.argv[4])

async def relay(reader, writer, hold):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def sender():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(sender())
    try:
        while data := await reader.read(65536):
            await queue.put((loop.time() + hold, data))
    except ConnectionError:
        pass
    await queue.put((0.0, None))
    try:
        await task
    except ConnectionError:
        pass

async def client(reader, writer):
    up_r, up_w = await asyncio.open_connection("127.0.0.1", target_port)
    # agent -> broker at once; broker -> agent (PUBACKs, CONNACK, PINGRESP) held for `delay`.
    await asyncio.gather(relay(reader, up_w, 0.0), relay(up_r, writer, delay))

async def main():
    server = await asyncio.start_server(client, listen_host, listen_port)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


class DelayProxy:
    """A TCP relay in the broker namespace: BROKER_ADDR:port -> mosquitto's loopback listener,
    every broker->agent segment held for ``delay`` seconds (netem's delay, in user space)."""

    def __init__(self, pair: NetPair, port: int, target_port: int, delay: float) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [*pair.run_in("broker"), sys.executable, "-c", _PROXY, BROKER_ADDR, str(port),
             str(target_port), str(delay)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == b"listening", f"delay proxy did not start: {line!r}"

    @property
    def url(self) -> str:
        return f"mqtt://{BROKER_ADDR}:{self.port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=60)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` for the life of the block (a disk that fills up)."""
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "procmon-test", str(path))
    try:
        yield path
    finally:
        # Lazy: a process that still holds a file there must not leave the mount behind.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60)


def netns_possible() -> bool:
    return os.geteuid() == 0 and ip_available()

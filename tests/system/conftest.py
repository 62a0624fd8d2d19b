"""Shared fixtures, defined once: root/eBPF, mosquitto and agent requirements that fail loudly
in CI and skip elsewhere (helpers.common.require), a broker, agent and subscriber factories, and a
probe attached in the test process."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.cgroups import remove_cgroup
from helpers.common import REPO, require
from helpers.mosquitto import Mosquitto, mosquitto_available
from helpers.mqtt import AgentProcess, SubscriberProcess
from helpers.probe_collector import Collector
from procmon.config import EnrichConfig
from procmon.enrich.cgroup_cache import cgroup2_mount
from procmon.probe import ProbeKnobs

# --- root and eBPF ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bpf_ready() -> None:
    require(os.geteuid() == 0, "needs root to load eBPF")
    require(os.path.exists("/sys/kernel/btf/vmlinux"), "needs a kernel with BTF")
    obj = REPO / "agent/procmon/probe/bpf/exit.bpf.o"
    require(obj.is_file(), f"{obj} not built (make bpf)")


@pytest.fixture(scope="session")
def cc() -> str:
    compiler = shutil.which("cc") or shutil.which("gcc")
    require(compiler is not None, "needs a C compiler for the load generators")
    assert compiler
    return compiler


@pytest.fixture(scope="session")
def forkstorm(cc: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bench's fork-storm generator, compiled once per session."""
    out = tmp_path_factory.mktemp("bin") / "forkstorm"
    subprocess.run([cc, "-O2", "-o", str(out), str(REPO / "bench/forkstorm.c")], check=True)
    yield out


# --- mosquitto, the agent and subscribers ------------------------------------------------


@pytest.fixture(scope="session")
def mosquitto_ready() -> None:
    require(mosquitto_available(), "needs mosquitto 2.0 (apt install mosquitto)")


@pytest.fixture(scope="session")
def agent_ready(mosquitto_ready: None, bpf_ready: None) -> None:
    """The agent subprocess needs root, BTF and the built BPF object, plus a broker."""


@pytest.fixture
def broker(tmp_path: Path, mosquitto_ready: None) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker")
    b.start()
    yield b
    b.kill()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Factory: ``agents(broker_url, env=..., config=...)``; every agent is killed at the end."""
    started: list[AgentProcess] = []

    def make(broker_url: str, **kw: Any) -> AgentProcess:
        agent = AgentProcess(tmp_path / f"agent{len(started)}", broker_url, **kw)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.close()


@pytest.fixture
def subscribers(tmp_path: Path) -> Iterator[Callable[..., SubscriberProcess]]:
    started: list[SubscriberProcess] = []

    def make(name: str, broker_url: str, **kw: Any) -> SubscriberProcess:
        sub = SubscriberProcess(tmp_path / "subscribers", name, broker_url, **kw)
        started.append(sub)
        return sub

    yield make
    for sub in started:
        if sub.proc.poll() is None:
            sub.proc.kill()
            sub.proc.wait()


# --- a probe in the test process ------------------------------------------------------------


@pytest.fixture
def collect() -> Iterator[Callable[..., Collector]]:
    made: list[Collector] = []

    def make(enrich: EnrichConfig | None = None, **knobs: Any) -> Collector:
        knobs.setdefault("self_tgid", 0)
        c = Collector(ProbeKnobs(**knobs), enrich)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


# --- scratch cgroups ------------------------------------------------------------------------


@pytest.fixture
def cgroup_root() -> Path:
    root = cgroup2_mount()
    if root is None:
        pytest.fail("no cgroup v2 hierarchy mounted")
    return Path(root)


@pytest.fixture
def scratch_cgroups(cgroup_root: Path) -> Iterator[Callable[[str], Path]]:
    """Make cgroup directories (nested paths allowed); whatever is left is removed."""
    made: list[Path] = []

    def make(rel: str) -> Path:
        path = cgroup_root / rel
        path.mkdir(parents=True)
        for parent in [path, *path.parents]:
            if parent == cgroup_root:
                break
            made.append(parent)
        return path

    yield make
    for path in sorted(set(made), key=lambda p: len(p.parts), reverse=True):
        remove_cgroup(path)

"""Shared fixtures: root/eBPF requirements that fail loudly in CI and skip elsewhere."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent


def require(condition: bool, reason: str) -> None:
    """Skip with a reason outside CI; in CI a missing requirement is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


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
    import subprocess

    out = tmp_path_factory.mktemp("bin") / "forkstorm"
    subprocess.run([cc, "-O2", "-o", str(out), str(REPO / "bench/forkstorm.c")], check=True)
    yield out

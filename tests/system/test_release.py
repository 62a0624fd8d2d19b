"""`make deb collection`: what the release artifacts hold, read from the files themselves.

The wheel and the sdist carry the CO-RE object and its sha256; the .deb holds a relocated venv
under /opt/procmon (no trace of the staging path, shebangs and bytecode for the final paths),
/usr/bin/procmon, the unit, Debian dependencies python3 and libbpf1 only, and bcc through a .pth.
Installing the .deb on hosts without PyPI is the fleet test's job (tests/system/test_fleet.py).

Needs make, clang, bpftool and dpkg-deb (make setup), and an index for the dependencies.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.common import REPO, require
from helpers.release import Release, build_release

BPF = "procmon/probe/bpf/exit.bpf.o"


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    for tool in ("make", "clang", "bpftool", "dpkg-deb"):
        require(shutil.which(tool) is not None, f"{tool} not installed (make setup)")
    require(Path("/sys/kernel/btf/vmlinux").exists(), "make bpf needs kernel BTF")
    yield build_release(tmp_path_factory.mktemp("dist"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_wheel_and_sdist_carry_the_core_object_and_its_sha256(release: Release) -> None:
    with zipfile.ZipFile(release.wheel) as wheel:
        obj = wheel.read(BPF)
        recorded = wheel.read(f"{BPF}.sha256").decode()
    assert obj[:4] == b"\x7fELF"
    assert recorded == f"{_sha256(obj)}  exit.bpf.o\n"
    assert (release.dist / "exit.bpf.o.sha256").read_text() == recorded
    with tarfile.open(release.sdist) as sdist:
        member = sdist.extractfile(f"{release.sdist.name[: -len('.tar.gz')]}/agent/{BPF}")
        assert member is not None and member.read() == obj
    for artifact in (release.wheel, release.sdist, release.deb, release.collection):
        assert release.sha256(artifact.name) == _sha256(artifact.read_bytes()), artifact


def _deb_field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_deb_is_a_relocated_venv_with_every_dependency(release: Release, tmp_path: Path) -> None:
    depends = _deb_field(release.deb, "Depends")
    assert depends.startswith("python3 (>= 3.11), python3 (<< 3.12), libbpf1"), depends
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(release.deb), str(root)], check=True)
    venv = root / "opt/procmon"
    assert (root / "usr/bin/procmon").readlink() == Path("/opt/procmon/bin/procmon")
    assert (venv / "bin/procmon").read_text().startswith("#!/opt/procmon/bin/python\n")
    assert (venv / "bin/python3").readlink() == Path("/usr/bin/python3")
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    unit = (root / "lib/systemd/system/procmon-agent.service").read_text()
    assert "ExecStart=/opt/procmon/bin/procmon agent --config /etc/procmon/agent.toml" in unit
    site = venv / "lib/python3.11/site-packages"
    # Every dependency pyproject.toml names is inside (build-deb.sh also imports each one).
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in ["procmon", *project["dependencies"]]:
        name = re.split(r"[ ;<>=!~\[]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "_", name).lower() in installed, (requirement, installed)
    assert (site / "procmon-system-bcc.pth").read_text() == "/opt/procmon/lib/system-bcc\n"
    assert (venv / "lib/system-bcc/bcc").readlink() == Path("/usr/lib/python3/dist-packages/bcc")
    # Nothing names the build machine's staging directory.
    staged = subprocess.run(
        ["grep", "-rlI", "procmon-deb.", str(venv)], capture_output=True, text=True, check=False
    )
    assert staged.stdout == "", staged.stdout
    obj = (site / BPF).read_bytes()
    assert (site / f"{BPF}.sha256").read_text().startswith(_sha256(obj))
    assert _sha256(obj) in _deb_field(release.deb, "Description")


def test_collection_tarball_holds_roles_and_playbook_only(release: Release) -> None:
    with tarfile.open(release.collection) as tar:
        names = set(tar.getnames())
    for needed in (
        "MANIFEST.json",
        "roles/agent/tasks/install_deb.yml",
        "roles/broker/tasks/main.yml",
        "playbooks/deploy.yml",
        "meta/runtime.yml",
    ):
        assert needed in names, needed
    assert not any(n.startswith(("inventory", "ansible.cfg", ".ansible")) for n in names), names

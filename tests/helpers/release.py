"""The release as a user gets it: `make deb collection` into a directory, the collection installed
with `ansible-galaxy collection install` into a collections path, and the playbook run from it.

Shared by the fleet test and the bcc VM test, which both deploy with procmon.procmon.deploy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers.common import REPO

BIN = Path(sys.executable).parent
PLAYBOOK = "procmon.procmon.deploy"


@dataclass(frozen=True)
class Release:
    dist: Path
    wheel: Path
    sdist: Path
    deb: Path
    collection: Path

    def sha256(self, name: str) -> str:
        """An artifact's sha256 from the release's SHA256SUMS."""
        for line in (self.dist / "SHA256SUMS").read_text().splitlines():
            digest, _, file = line.partition("  ")
            if file == name:
                return digest
        raise KeyError(f"{name} is not in {self.dist / 'SHA256SUMS'}")


def _one(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    assert len(found) == 1, f"{dist}: expected one {pattern}, found {found}"
    return found[0]


def build_release(dist: Path, timeout: float = 600) -> Release:
    """`make deb collection DIST=dist`: wheel, sdist, .deb, SHA256SUMS and the collection."""
    proc = subprocess.run(
        ["make", "-C", str(REPO), "deb", "collection", f"DIST={dist}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"make deb collection failed:\n{proc.stdout[-3000:]}{proc.stderr}"
    return Release(
        dist=dist,
        wheel=_one(dist, "procmon-*-py3-none-any.whl"),
        sdist=_one(dist, "procmon-[0-9]*.tar.gz"),
        deb=_one(dist, "procmon_*.deb"),
        collection=_one(dist, "procmon-procmon-*.tar.gz"),
    )


def install_collection(release: Release, collections: Path) -> None:
    """`ansible-galaxy collection install` of the built tarball into a collections path."""
    proc = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "install", "--force", "-p", str(collections),
         str(release.collection)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"collection install failed:\n{proc.stdout}{proc.stderr}"
    installed = collections / "ansible_collections" / "procmon" / "procmon"
    assert (installed / "roles" / "agent" / "tasks" / "main.yml").is_file(), proc.stdout
    assert (installed / "playbooks" / "deploy.yml").is_file(), proc.stdout


def playbook_command(inventory: Path, *extra: str) -> list[str]:
    return [str(BIN / "ansible-playbook"), "-i", str(inventory), PLAYBOOK, *extra]


def playbook_env(collections: Path) -> dict[str, str]:
    """Only the installed collection on the path (not the repository's ansible/), no ansible.cfg
    from the repository (callers run from another directory), pipelining as ansible.cfg has it."""
    return {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORKS": "20",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
    }

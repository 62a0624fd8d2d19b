"""The bcc offset guard on this host: the running kernel's BTF, and the real refusal of Debian's
6.1 headers (the guard's parsing and comparison without a kernel: tests/unit/test_bcc_guard.py).

The real case: this machine runs a 6.18 kernel with BTF; Debian's 6.1 headers (a merged tree of
linux-headers-*-common and -amd64 passed as BCC_KERNEL_SOURCE) compile and attach but would
read task_struct at the wrong offsets. The guard must refuse with one line naming the field and
both offsets, before anything is attached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.common import REPO, require
from procmon import preflight
from procmon.probe import ProbeKnobs, bcc_guard
from procmon.probe.bcc import BccProbe
from procmon.probe.bcc_guard import GuardError
from procmon.probe.btf import BTF_PATH, Btf

BCC_SOURCE = REPO / "bpf/exit.bcc.c"


def test_running_kernel_btf_has_every_field() -> None:
    require(BTF_PATH.exists(), f"needs {BTF_PATH}")
    btf = Btf.from_file()
    missing = [f for f in bcc_guard.FIELDS if btf.offset(f) is None]
    assert missing == []
    assert btf.offset("sizeof upid") == 16
    # The probe copies the bitfield from a window that starts at signal_struct.flags.
    flags = btf.offset(bcc_guard.WINDOW_START)
    assert flags is not None
    assert 0 <= (btf.offset(bcc_guard.WINDOW_BITFIELD) or -1) - 8 * flags < 8 * 32


# --- the real refusal: Debian 6.1 headers on this host's kernel -----------------------------


def _debian_61_headers() -> tuple[Path, Path] | None:
    for common in sorted(Path("/usr/src").glob("linux-headers-6.1.*-common"), reverse=True):
        arch = common.with_name(common.name.replace("-common", "-amd64"))
        if arch.is_dir():
            return common, arch
    return None


@pytest.fixture(scope="module")
def foreign_headers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A merged 6.1 tree (symlinks, so it costs nothing) for a kernel that is not 6.1."""
    require(os.geteuid() == 0, "needs root to compile and load with bcc")
    require(BTF_PATH.exists(), "needs a kernel with BTF")
    require(not os.uname().release.startswith("6.1."), "needs a kernel other than 6.1")
    try:
        import bcc  # noqa: F401
    except ImportError:
        require(False, "needs python3-bpfcc (import bcc)")
    found = _debian_61_headers()
    require(found is not None, "needs Debian's 6.1 headers (apt-get install linux-headers-amd64)")
    assert found is not None
    merged = tmp_path_factory.mktemp("headers-6.1")
    for tree in found:
        subprocess.run(["cp", "-rsf", f"{tree}/.", f"{merged}/"], check=True)
    yield merged
    shutil.rmtree(merged, ignore_errors=True)


def test_guard_refuses_foreign_headers(
    foreign_headers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(foreign_headers))
    release = bcc_guard.uts_release(foreign_headers)
    assert release and release.startswith("6.1.")
    with pytest.raises(GuardError) as err:
        BccProbe(ProbeKnobs(), source=BCC_SOURCE)
    message = str(err.value)
    assert "\n" not in message
    # The first field the probe reads, with the headers' and the kernel's offsets.
    kernel_tgid = Btf.from_file().offset("task_struct.tgid")
    assert "task_struct.tgid: offset " in message
    assert f"in the headers, {kernel_tgid} in the running kernel" in message
    assert f"{foreign_headers} ({release})" in message
    assert os.uname().release in message
    # Refused before attaching: no procmon program is left in the kernel.
    progs = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True)
    assert "procmon_exit" not in progs.stdout


def test_foreign_headers_give_the_bitfield_offset_from_bytecode(
    foreign_headers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bit offset read from clang's code for the 6.1 headers, against this kernel's BTF:
    signal_struct is laid out alike up to the bitfield in both (checked through flags), so
    they must agree. The VM test checks it against 6.1's own BTF."""
    from bcc import BPF

    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(foreign_headers))
    module = BPF(
        text=(BCC_SOURCE.read_text() + bcc_guard.offset_functions()).encode(),
        cflags=[f"-I{BCC_SOURCE.parent}", "-DPROCMON_OFFSETS_ONLY"],
    )
    try:
        headers = bcc_guard.header_offsets(module.dump_func)
    finally:
        module.cleanup()
    btf = Btf.from_file()
    assert headers[bcc_guard.WINDOW_MACRO] == 32
    require(
        headers[bcc_guard.WINDOW_START] == btf.offset(bcc_guard.WINDOW_START),
        "signal_struct.flags moved between 6.1 and this kernel: nothing to compare with",
    )
    assert headers[bcc_guard.WINDOW_BITFIELD] == btf.offset(bcc_guard.WINDOW_BITFIELD)
    problems = bcc_guard.compare(headers, btf)
    assert not [p for p in problems if p.startswith(bcc_guard.WINDOW_BITFIELD)]


def test_check_lines_report_the_refusal(
    foreign_headers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(foreign_headers))
    lines = preflight.bcc_lines(source=BCC_SOURCE)
    items = {line.item: (line.ok, line.detail) for line in lines}
    assert items["bcc python module"][0]
    release = bcc_guard.uts_release(foreign_headers)
    assert items["kernel headers"] == (
        True,
        f"{foreign_headers} via BCC_KERNEL_SOURCE (UTS_RELEASE {release})",
    )
    ok, detail = items["bcc offset guard"]
    assert not ok
    assert "task_struct.tgid: offset" in detail


@pytest.mark.parametrize(
    "knobs",
    [ProbeKnobs(), ProbeKnobs(target_tgid=1234, target_cgroup=5678, target_cgroup_level=2)],
    ids=["no filter", "tail --pid --cgroup"],
)
def test_tail_filters_compile_and_pass_the_verifier(
    foreign_headers: Path, monkeypatch: pytest.MonkeyPatch, knobs: ProbeKnobs
) -> None:
    """The bcc mirror of `procmon tail --pid/--cgroup` (-D macros): compiled against real
    headers and loaded by this kernel's verifier (not attached: the offsets are 6.1's)."""
    from bcc import BPF

    from procmon.probe.bcc import cflags

    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(foreign_headers))
    flags = cflags(knobs, BCC_SOURCE.parent, group_dead=True)
    assert f"-DPROCMON_TARGET_CGROUP={knobs.target_cgroup}ULL" in flags
    module = BPF(text=BCC_SOURCE.read_text().encode(), cflags=flags)
    try:
        module.load_func(b"procmon_exit_raw", BPF.RAW_TRACEPOINT)
    finally:
        module.cleanup()

"""The context joined to exits, without a kernel: records, caches, /proc and cgroupfs seeds."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

from procmon.assemble import context_settings
from procmon.config import EnrichConfig
from procmon.enrich.cgroup_cache import CgroupCache, cgroup2_mount
from procmon.enrich.context import ProcessContext
from procmon.enrich.exec_cache import ExecCache
from procmon.probe.record import (
    EXEC_ARGS_TRUNCATED,
    EXEC_HEADER,
    EXEC_NO_ARGS,
    FLAG_GROUP_DEAD,
    KIND_CGROUP_MKDIR,
    KIND_CGROUP_RMDIR,
    KIND_EXEC,
    RawCgroup,
    RawExec,
    RawExit,
    decode,
)

HZ = os.sysconf("SC_CLK_TCK")


def exec_record(
    pid: int, start: int, args: bytes, flags: int = 0, filename: bytes = b"/x"
) -> bytes:
    header = EXEC_HEADER.pack(KIND_EXEC, flags, 1, start, pid, len(args), len(args), 3, 0, filename)
    return header + args


def exit_of(
    pid: int, start: int, image_pid: int = 0, image_start: int = 0, image_exec_id: int = 0
) -> RawExit:
    return RawExit(
        5, start, 0, 0, 0, 0, 7, pid, pid, 1, 0, 0, 0, 1, pid, FLAG_GROUP_DEAD, b"c", b"p",
        image_pid, image_start, image_exec_id,
    )  # fmt: skip


def test_exec_record_decoding() -> None:
    raw = decode(exec_record(10, 99, b"ls\0-l\0a b\0"))
    assert raw == RawExec(1, 99, 10, b"/x", b"ls\0-l\0a b", False, 3)
    cut = decode(exec_record(10, 99, b"ls\0-l\0ab", EXEC_ARGS_TRUNCATED))
    assert isinstance(cut, RawExec) and cut.args == b"ls\0-l\0ab" and cut.args_truncated
    off = decode(exec_record(10, 99, b"", EXEC_NO_ARGS))
    assert isinstance(off, RawExec) and off.args is None


def test_cgroup_record_decoding() -> None:
    path = b"/system.slice/a.service\0"
    made = decode(struct.pack("<IIQQ", KIND_CGROUP_MKDIR, len(path), 42, 9) + path)
    assert made == RawCgroup(False, 42, 9, b"/system.slice/a.service")
    full = decode(struct.pack("<IIQQ", KIND_CGROUP_MKDIR, 512, 43, 9) + b"a" * 511 + b"\0")
    assert full == RawCgroup(False, 43, 9, None)  # it may have been cut: unknown, not wrong
    removed = decode(struct.pack("<IIQQ", KIND_CGROUP_RMDIR, 0, 42, 9))
    assert removed == RawCgroup(True, 42, 9, None)


def test_cgroup_created_in_a_namespace_is_named_under_its_parent() -> None:
    """An agent in a cgroup namespace sees /system.slice where the host path is longer."""
    cache = CgroupCache(100, 60)
    cache.on_mkdir(1, "/")
    cache.on_mkdir(5, "/system.slice")
    host = "/machine.slice/nspawn@h1.service/payload/system.slice/app.service"
    cache.on_created(6, 5, host)
    info = cache.get(6)
    assert info is not None and info.path == "/system.slice/app.service"
    cache.on_created(7, 999, "/elsewhere/x.scope")  # parent unknown: the host path, as given
    assert (cache.get(7) or info).path == "/elsewhere/x.scope"


def test_exit_takes_own_entry_then_forgets_it() -> None:
    ctx = ProcessContext()
    ctx.observe(RawExec(1, 100, 10, b"/bin/app", b"app\0--password=x", False))
    fields = ctx.for_exit(exit_of(10, 100))
    assert fields["exe"] == "/bin/app" and fields["args"] == ("app", "--password=<redacted>")
    assert ctx.for_exit(exit_of(10, 100))["exe"] is None  # gone with the process


def test_extra_redact_patterns_add_to_the_defaults() -> None:
    ctx = ProcessContext(context_settings(EnrichConfig(redact_extra=(r"--pin=(?P<secret>\d+)",))))
    ctx.observe(RawExec(1, 100, 10, b"/bin/app", b"app\0--pin=1234\0--token=t", False))
    assert ctx.for_exit(exit_of(10, 100))["args"] == (
        "app",
        "--pin=<redacted>",
        "--token=<redacted>",
    )


def test_reused_pid_is_not_confused_with_the_old_process() -> None:
    cache = ExecCache(16, lambda blob: tuple(blob.decode().split("\0")))
    cache.on_exec(RawExec(1, 100, 10, b"/bin/old", b"old", False))
    assert cache.for_exit(exit_of(10, 200), last=True) is None


def test_fork_without_exec_takes_the_image_owner() -> None:
    cache = ExecCache(16, lambda blob: tuple(blob.decode().split("\0")))
    cache.on_exec(RawExec(1, 100, 10, b"/bin/srv", b"srv", False))
    info = cache.for_exit(exit_of(12, 300, image_pid=10, image_start=100), last=True)
    assert info is not None and (info.exe, info.source) == ("/bin/srv", "fork")
    assert cache.for_exit(exit_of(13, 300, image_pid=10, image_start=999), last=True) is None
    assert cache.for_exit(exit_of(14, 300), last=True) is None  # owner unknown: no guess


def test_exec_cache_is_bounded() -> None:
    cache = ExecCache(64, lambda args: ())
    for pid in range(1000):
        cache.on_exec(RawExec(1, pid, pid, b"/x", b"", False))
    assert len(cache) == 64 and cache.evicted == 936


def fake_proc(root: Path, pid: int, comm: str, start_ticks: int, cmdline: bytes) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    rest = " ".join(["S"] + ["0"] * 18 + [str(start_ticks)] + ["0"] * 10)
    (d / "stat").write_text(f"{pid} ({comm}) {rest}\n")
    (d / "cmdline").write_bytes(cmdline)
    (d / "exe").symlink_to("/usr/bin/thing")


def test_proc_seed_matches_start_ticks_and_cuts_long_command_lines(tmp_path: Path) -> None:
    fake_proc(tmp_path, 50, "we (ird) name", 1234, b"thing\0--token=abc\0")
    fake_proc(tmp_path, 51, "long", 99, b"x" * 5000 + b"\0")
    fake_proc(tmp_path, 52, "sshd", 7, b"sshd: [net]" + b"\0" * 40)
    (tmp_path / "self").mkdir()
    ctx = ProcessContext()
    ctx.seed(proc=str(tmp_path), cgroup_root=str(tmp_path / "none"))
    start_ns = 1234 * 1_000_000_000 // HZ
    fields = ctx.for_exit(exit_of(50, start_ns))
    assert fields["exe"] == "/usr/bin/thing" and fields["exec_source"] == "proc"
    assert fields["args"] == ("thing", "--token=<redacted>")
    long = ctx.for_exit(exit_of(51, 99 * 1_000_000_000 // HZ))
    assert long["args_truncated"] is True and len(long["args"][0]) == 1024
    retitled = ctx.for_exit(exit_of(52, 7 * 1_000_000_000 // HZ))
    assert retitled["args"] == ("sshd: [net]",)  # setproctitle's padding is not arguments


def test_capture_args_off_holds_for_proc_seeds(tmp_path: Path) -> None:
    """A process running before the agent started must not send what capture_args = false
    keeps in the kernel for every later exec (one run sent a raw -pSECRET this way)."""
    fake_proc(tmp_path, 60, "mysql", 55, b"mysql\0-pSECRET\0")
    (tmp_path / "self").mkdir()
    ctx = ProcessContext(context_settings(EnrichConfig(capture_args=False)))
    ctx.seed(proc=str(tmp_path), cgroup_root=str(tmp_path / "none"))
    fields = ctx.for_exit(exit_of(60, 55 * 1_000_000_000 // HZ))
    assert fields["exe"] == "/usr/bin/thing" and fields["args"] is None


def test_entry_of_an_earlier_exec_is_not_taken_for_a_lost_one() -> None:
    """The record of a process's second exec was lost (shed by a flood): its exit names the
    second exec (image_exec_id 2), so the first exec's args must not be reported."""
    cache = ExecCache(16, lambda blob: tuple(blob.decode().split("\0")))
    cache.on_exec(RawExec(1, 100, 10, b"/bin/bash", b"bash", False, 1))
    assert cache.for_exit(exit_of(10, 100, 10, 100, image_exec_id=2), last=True) is None
    assert len(cache) == 0  # the process is gone: its stale entry too
    cache.on_exec(RawExec(1, 100, 10, b"/bin/bash", b"bash", False, 1))
    info = cache.for_exit(exit_of(10, 100, 10, 100, image_exec_id=1), last=True)
    assert info is not None and info.exe == "/bin/bash"
    # a child forked after the parent's lost exec: same rule for the image owner
    cache.on_exec(RawExec(1, 100, 10, b"/bin/bash", b"bash", False, 1))
    assert cache.for_exit(exit_of(12, 300, 10, 100, image_exec_id=2), last=True) is None


def test_same_command_line_is_shaped_once() -> None:
    ctx = ProcessContext()
    calls: list[Sequence[str]] = []
    redact = ctx._redactor.redact

    def counting(args: Sequence[str]) -> tuple[list[str], bool]:
        calls.append(args)
        return redact(args)

    ctx._redactor.redact = counting  # type: ignore[method-assign]
    for pid in range(10, 20):
        ctx.observe(RawExec(1, 100, pid, b"/bin/app", b"app\0--token=t\0x", False, 1))
    assert len(calls) == 1
    assert ctx.for_exit(exit_of(15, 100))["args"] == ("app", "--token=<redacted>", "x")
    ctx.observe(RawExec(1, 100, 30, b"/bin/app", b"", False, 1))
    assert ctx.for_exit(exit_of(30, 100))["args"] == ()


def test_removed_cgroup_resolves_for_the_grace_period_only() -> None:
    now = [0.0]
    cache = CgroupCache(1000, grace_s=60, clock=lambda: now[0])
    cache.on_mkdir(7, "/system.slice/docker-" + "a" * 64 + ".scope")
    cache.on_rmdir(7)
    info = cache.get(7)
    assert info is not None and info.context.container_id == "a" * 64
    now[0] = 61
    cache.on_rmdir(8)  # any later removal sweeps the expired ones
    assert cache.get(7) is None


def test_full_cgroup_cache_keeps_live_ones() -> None:
    cache = CgroupCache(64, grace_s=60, clock=lambda: 0.0)
    for i in range(64):
        cache.on_mkdir(i, f"/c{i}")
    cache.on_mkdir(999, "/new")
    assert cache.get(999) is None and cache.get(0) is not None
    cache.on_rmdir(0)
    cache.on_mkdir(999, "/new")  # a removed one makes room
    assert cache.get(999) is not None


def test_cgroup_seed_uses_directory_inodes(tmp_path: Path) -> None:
    (tmp_path / "a.slice" / "b.service").mkdir(parents=True)
    cache = CgroupCache(100, 60)
    assert cache.seed(str(tmp_path)) == 3
    info = cache.get((tmp_path / "a.slice" / "b.service").stat().st_ino)
    assert info is not None and info.path == "/a.slice/b.service"
    assert info.context.unit == "b.service"


def test_cgroup2_mount_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "30 24 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "35 30 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"
    )
    assert cgroup2_mount(str(info)) == "/sys/fs/cgroup/unified"
    info.write_text("30 24 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")
    assert cgroup2_mount(str(info)) is None


def test_a_failing_redaction_rule_costs_neither_the_event_nor_a_secret() -> None:
    ctx = ProcessContext()

    def broken(args: Sequence[str]) -> tuple[list[str], bool]:
        raise ValueError("a rule's bug")

    ctx._redactor.redact = broken  # type: ignore[method-assign]
    ctx.observe(RawExec(1, 100, 10, b"/bin/app", b"app\0-pSECRET", False, 1))
    fields = ctx.for_exit(exit_of(10, 100))
    assert fields["exe"] == "/bin/app" and fields["args"] == ("<redacted>",)
    assert ctx.redact_errors == 1

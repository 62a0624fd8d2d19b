"""The bcc offset guard without a kernel: BTF parsing, bytecode constants, comparison, the check
lines without headers, and BccProbe's context programs with bcc replaced by a recorder. The
running kernel's BTF and the real refusal of Debian's 6.1 headers: tests/system/test_bcc_guard.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from helpers.common import REPO
from procmon import preflight
from procmon.probe import ProbeKnobs, bcc_guard
from procmon.probe.bcc import BccProbe
from procmon.probe.bcc_guard import GuardError
from procmon.probe.btf import Btf, BtfError

BCC_SOURCE = REPO / "bpf/exit.bcc.c"

# --- a tiny BTF blob built by hand ----------------------------------------------------------


def _btf_blob() -> bytes:
    """struct outer { int a; struct { long b; }; const inner_t in; } and
    struct inner { int x; int y; }, with a typedef and a const in the way, like vmlinux's."""
    strings = b"\0int\0long\0outer\0a\0b\0in\0inner\0x\0y\0inner_t\0"

    def off(name: bytes) -> int:
        return strings.index(b"\0" + name + b"\0") + 1

    def t(name: int, kind: int, vlen: int, size_or_type: int, kflag: int = 0) -> bytes:
        return struct.pack("<3I", name, kflag << 31 | kind << 24 | vlen, size_or_type)

    def member(name: int, type_id: int, bits: int) -> bytes:
        return struct.pack("<3I", name, type_id, bits)

    types = b"".join(
        [
            t(off(b"int"), 1, 0, 4) + struct.pack("<I", 32),  # 1: int
            t(off(b"long"), 1, 0, 8) + struct.pack("<I", 64),  # 2: long
            t(0, 4, 1, 8) + member(off(b"b"), 2, 0),  # 3: anonymous struct { long b; }
            t(off(b"inner"), 4, 2, 8)  # 4: struct inner
            + member(off(b"x"), 1, 0)
            + member(off(b"y"), 1, 32),
            t(off(b"inner_t"), 8, 0, 4),  # 5: typedef struct inner inner_t
            t(0, 10, 0, 5),  # 6: const inner_t
            t(off(b"outer"), 4, 3, 32)  # 7: struct outer
            + member(off(b"a"), 1, 0)
            + member(0, 3, 64)
            + member(off(b"in"), 6, 128),
        ]
    )
    header = struct.pack("<HBBI4I", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_btf_offsets_through_anonymous_members_and_typedefs() -> None:
    btf = Btf(_btf_blob())
    assert btf.offset("outer.a") == 0
    assert btf.offset("outer.b") == 8  # inside the anonymous struct
    assert btf.offset("outer.in") == 16
    assert btf.offset("outer.in.y") == 20  # through const and typedef
    assert btf.offset("sizeof inner") == 8
    assert btf.offset("outer.nosuch") is None
    assert btf.offset("nosuch.a") is None


def _btf_bitfield_blob() -> bytes:
    """struct flags { int a; unsigned f:1, g:1; int z; }, bitfields encoded as vmlinux does:
    kflag set, each member's offset word is bit size << 24 | bit offset."""
    strings = b"\0int\0flags\0a\0f\0g\0z\0"

    def off(name: bytes) -> int:
        return strings.index(b"\0" + name + b"\0") + 1

    member = struct.Struct("<3I")
    types = b"".join(
        [
            struct.pack("<3I", off(b"int"), 1 << 24, 4) + struct.pack("<I", 32),  # 1: int
            struct.pack("<3I", off(b"flags"), 1 << 31 | 4 << 24 | 4, 12)  # 2: struct flags
            + member.pack(off(b"a"), 1, 0)
            + member.pack(off(b"f"), 1, 1 << 24 | 32)
            + member.pack(off(b"g"), 1, 1 << 24 | 33)
            + member.pack(off(b"z"), 1, 64),
        ]
    )
    header = struct.pack("<HBBI4I", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_btf_bit_offsets_of_bitfields() -> None:
    btf = Btf(_btf_bitfield_blob())
    assert btf.offset("bit flags.f") == 32
    assert btf.offset("bit flags.g") == 33
    assert btf.offset("flags.g") == 4  # the byte it starts in
    assert btf.offset("flags.z") == 8
    assert btf.offset("bit flags.nosuch") is None


def test_btf_bad_magic_names_the_file() -> None:
    with pytest.raises(BtfError, match=r"^/x/vmlinux: not a BTF blob"):
        Btf(b"\0" * 32, "/x/vmlinux")


# --- bytecode constants and comparison ------------------------------------------------------


def _insn(op: int, regs: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", op, regs, 0, imm)


def test_return_constant_reads_mov64_and_mov32() -> None:
    assert bcc_guard._return_constant(_insn(0xB7, imm=1164) + _insn(0x95), "f") == 1164
    assert bcc_guard._return_constant(_insn(0xB4, imm=8) + _insn(0x95), "f") == 8
    with pytest.raises(GuardError, match="cannot read the constant of f"):
        bcc_guard._return_constant(_insn(0x79) + _insn(0x95), "f")


def test_bitfield_offset_from_load_and_shifts() -> None:
    def ldx(size_op: int, off: int, src: int = 1) -> bytes:
        return struct.pack("<BBhi", size_op, src << 4, off, 0)

    read = bcc_guard._bitfield_offset
    # return s->f: a byte load and a mask (bit 0), or a shift first (bit 1)
    assert read(ldx(0x71, 128) + _insn(0x57, imm=1) + _insn(0x95), "f") == 1024
    assert read(ldx(0x71, 128) + _insn(0x77, imm=1) + _insn(0x57, imm=1) + _insn(0x95), "f") == 1025
    # or a wider load, shifted left then right: the field starts R - L bits in
    assert read(ldx(0x61, 124) + _insn(0x67, imm=30) + _insn(0x77, imm=63) + _insn(0x95), "f") == (
        124 * 8 + 33
    )
    with pytest.raises(GuardError, match="cannot read the bit offset of f"):
        read(ldx(0x71, 128, src=2) + _insn(0x95), "f")  # not a load from the argument
    with pytest.raises(GuardError, match="cannot read the bit offset of f"):
        read(ldx(0x71, 128) + _insn(0x85, imm=113) + _insn(0x95), "f")  # a helper call


class _FakeBtf(Btf):
    def __init__(self, offsets: dict[str, int]) -> None:
        self._offsets = offsets

    def offset(self, field: str) -> int | None:
        return self._offsets.get(field)


def test_compare_refuses_a_bitfield_outside_the_copied_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fields = (bcc_guard.WINDOW_START, bcc_guard.WINDOW_BITFIELD)
    monkeypatch.setattr(bcc_guard, "FIELDS", fields)
    inside = {fields[0]: 116, fields[1]: 1024, bcc_guard.WINDOW_MACRO: 32}
    assert bcc_guard.compare(inside, _FakeBtf(inside)) == []
    outside = {**inside, fields[1]: (116 + 32) * 8}
    assert bcc_guard.compare(outside, _FakeBtf(outside)) == [
        "bit signal_struct.is_child_subreaper: bit offset 1184 in the headers lies outside "
        "the 32 bytes exit.bcc.c copies from signal_struct.flags"
    ]
    moved = {**inside, fields[1]: 1025}
    assert bcc_guard.compare(moved, _FakeBtf(inside)) == [
        "bit signal_struct.is_child_subreaper: bit offset 1025 in the headers, 1024 in the "
        "running kernel"
    ]


def test_compare_names_field_and_both_offsets() -> None:
    btf = Btf(_btf_blob())
    saved = bcc_guard.FIELDS
    try:
        bcc_guard.FIELDS = ("outer.a", "outer.in.y", "outer.gone")
        problems = bcc_guard.compare({"outer.a": 0, "outer.in.y": 24, "outer.gone": 4}, btf)
    finally:
        bcc_guard.FIELDS = saved
    assert problems == [
        "outer.in.y: offset 24 in the headers, 20 in the running kernel",
        "outer.gone: in the headers at 4, absent from BTF",
    ]


def test_release_check_without_btf(tmp_path: Path) -> None:
    (tmp_path / "include/generated").mkdir(parents=True)
    (tmp_path / "include/generated/utsrelease.h").write_text(
        '#define UTS_RELEASE "6.1.0-50-amd64"\n'
    )
    headers = bcc_guard.Headers(tmp_path, "BCC_KERNEL_SOURCE", bcc_guard.uts_release(tmp_path))
    assert "6.1.0-50-amd64" in bcc_guard.check_release(headers, "6.1.0-50-amd64")
    with pytest.raises(GuardError) as err:
        bcc_guard.check_release(headers, "6.18.44")
    assert str(err.value) == (
        f"bcc guard: kernel headers in {tmp_path} are for 6.1.0-50-amd64, the running kernel "
        "is 6.18.44; install linux-headers-6.18.44"
    )
    unknown = bcc_guard.Headers(tmp_path / "none", "BCC_KERNEL_SOURCE", None)
    with pytest.raises(GuardError, match="cannot tell whether these headers match"):
        bcc_guard.check_release(unknown, "6.18.44")


def test_offset_functions_cover_every_field() -> None:
    text = bcc_guard.offset_functions()
    assert text.count("int procmon_off_") == len(bcc_guard.FIELDS) + 1  # + the window
    assert "__builtin_offsetof(struct task_struct, se.sum_exec_runtime)" in text
    assert "sizeof(struct upid)" in text
    # a bitfield has no offsetof: it is read through the argument, and the window returned
    assert "(struct signal_struct *s) { return s->is_child_subreaper; }" in text
    assert "int procmon_off_window(void *ctx) { return PROCMON_SIG_WINDOW; }" in text


def test_every_guarded_field_is_read_by_the_probe() -> None:
    """FIELDS and the READs in exit.bcc.c must not drift apart."""
    source = BCC_SOURCE.read_text()
    for field in bcc_guard.FIELDS:
        if field.startswith("sizeof "):
            continue
        last = field.split(".")[-1]
        assert f"{last}" in source, f"{field} is guarded but exit.bcc.c never reads it"


# --- the check lines without headers ----------------------------------------------------------


def test_check_lines_without_headers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path / "missing"))
    lines = preflight.bcc_lines(source=BCC_SOURCE)
    items = {line.item: (line.ok, line.detail) for line in lines}
    assert items["kernel headers"][0] is False
    assert items["bcc offset guard"] == (False, "not run: needs bcc and kernel headers")


# --- BccProbe's context programs, with bcc replaced by a recorder ---------------------------


class _FakeTable:
    def open_ring_buffer(self, callback: object) -> None:
        pass


class _FakeBpf:
    """Records attach and detach calls; attaching to `refuse` fails as bcc does (Exception)."""

    def __init__(self, refuse: str = "") -> None:
        self.refuse = refuse
        self.attached: list[str] = []

    def attach_raw_tracepoint(self, tp: bytes, fn_name: bytes) -> None:
        if tp.decode() == self.refuse:
            raise Exception(f"Failed to attach BPF to raw tracepoint {tp.decode()}")
        self.attached.append(tp.decode())

    def detach_raw_tracepoint(self, tp: bytes) -> None:
        self.attached.remove(tp.decode())

    def dump_func(self, name: bytes) -> bytes:
        return b""  # the guard is replaced in these tests

    def __getitem__(self, name: str) -> _FakeTable:
        return _FakeTable()

    def cleanup(self) -> None:
        pass


def _fake_probe(
    monkeypatch: pytest.MonkeyPatch, fake: _FakeBpf, **knobs: bool
) -> tuple[BccProbe, list[str]]:
    from procmon.probe import bcc

    flags: list[str] = []

    def compile_module(source: Path, cflags: list[str]) -> _FakeBpf:
        flags.extend(cflags)
        return fake

    monkeypatch.setattr(bcc, "compile_module", compile_module)
    monkeypatch.setattr(bcc, "tracepoint_has_group_dead", lambda: False)
    monkeypatch.setattr(bcc, "mark_victim_has_task_arg", lambda: False)
    monkeypatch.setattr(bcc_guard, "guard", lambda dump_func: "fake guard")
    return bcc.BccProbe(ProbeKnobs(**knobs), source=BCC_SOURCE), flags


def test_context_programs_attach_and_detach_with_the_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _FakeBpf()
    probe, flags = _fake_probe(monkeypatch, fake, capture_args=False)
    assert "-DPROCMON_CAPTURE_EXEC=1" in flags and "-DPROCMON_CAPTURE_ARGS=0" in flags
    assert probe.has_context is True and probe.has_killer is True
    assert fake.attached == [
        "sched_process_exit",
        "sched_process_exec",
        "cgroup_mkdir",
        "cgroup_rmdir",
        "signal_generate",
        "mark_victim",
    ]
    probe.detach()
    assert fake.attached == []


def test_a_refused_context_program_costs_the_context_not_the_exits(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = _FakeBpf(refuse="cgroup_mkdir")
    probe, _ = _fake_probe(monkeypatch, fake, capture_killer=False)
    assert probe.has_context is False
    assert fake.attached == ["sched_process_exit"]  # the exec program was detached again
    assert "exec and cgroup context unavailable (procmon_cgroup_mkdir_raw" in caplog.text


def test_no_context_programs_without_capture_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeBpf()
    probe, flags = _fake_probe(monkeypatch, fake, capture_exec=False, capture_args=False)
    assert "-DPROCMON_CAPTURE_EXEC=0" in flags
    assert probe.has_context is False
    assert fake.attached == ["sched_process_exit", "signal_generate", "mark_victim"]


def test_a_refused_killer_program_costs_the_killer_not_the_rest(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = _FakeBpf(refuse="mark_victim")
    probe, flags = _fake_probe(monkeypatch, fake)
    assert "-DPROCMON_CAPTURE_KILLER=1" in flags
    assert (probe.has_context, probe.has_killer) == (True, False)
    assert "signal_generate" not in fake.attached  # detached again
    assert "killer attribution unavailable (procmon_oom_raw" in caplog.text

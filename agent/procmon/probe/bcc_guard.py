"""Refuse to run the bcc probe when the kernel headers do not describe the running kernel.

Headers from another build make every ``task->field`` read land on the wrong offset and return
silent garbage. Where the kernel has BTF, the offsets bcc's clang computed for every field the
probe reads are compared with BTF's; without BTF, the headers' UTS_RELEASE must equal
``uname -r``. The header offsets are read back from the same compilation as the probe
(``offset_functions``), so nothing is loaded into the kernel.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from procmon.probe.btf import BTF_PATH, Btf, BtfError

# Every field exit.bcc.c reads, as "struct.member[.member...]"; "sizeof struct" for the one
# array stride it uses; "bit struct.member" for a bitfield, compared by bit offset. Keep in step
# with the READ()s in bpf/exit.bcc.c.
FIELDS: tuple[str, ...] = (
    "task_struct.tgid",
    "task_struct.pid",
    "task_struct.group_leader",
    "task_struct.signal",
    "task_struct.real_parent",
    "task_struct.real_cred",
    "task_struct.exit_code",
    "task_struct.utime",
    "task_struct.stime",
    "task_struct.se.sum_exec_runtime",
    "task_struct.start_boottime",
    "task_struct.mm",
    "task_struct.thread_pid",
    "task_struct.self_exec_id",
    "task_struct.parent_exec_id",
    "task_struct.comm",
    "task_struct.sighand",
    "sighand_struct.action",
    "k_sigaction.sa.sa_handler",
    "sizeof k_sigaction",
    "kernel_siginfo.si_code",
    "signal_struct.live",
    "signal_struct.flags",
    "signal_struct.group_exit_code",
    "signal_struct.utime",
    "signal_struct.stime",
    "signal_struct.sum_sched_runtime",
    "signal_struct.maxrss",
    "bit signal_struct.is_child_subreaper",
    "mm_struct.hiwater_rss",
    "mm_struct.arg_start",
    "mm_struct.arg_end",
    "linux_binprm.filename",
    "cgroup.kn",
    "cgroup.root",
    "cgroup.self",
    "cgroup.self.parent",
    "cgroup_root.hierarchy_id",
    "kernfs_node.id",
    "cred.uid",
    "cred.gid",
    "pid.level",
    "pid.numbers",
    "upid.nr",
    "upid.ns",
    "pid_namespace.ns.inum",
    "sizeof upid",
)

_FN_PREFIX = "procmon_off_"

# exit.bcc.c reads is_child_subreaper from a copy of the PROCMON_SIG_WINDOW bytes that start at
# signal_struct.flags (a bitfield has no address to read from): the bit must lie inside.
WINDOW_BITFIELD = "bit signal_struct.is_child_subreaper"
WINDOW_START = "signal_struct.flags"
WINDOW_MACRO = "PROCMON_SIG_WINDOW"


class GuardError(RuntimeError):
    """The headers do not match the running kernel; the message is one line naming why."""


# --- the header side ------------------------------------------------------------------------


def _function(i: int, field: str) -> str:
    name = f"{_FN_PREFIX}{i}"
    if field.startswith("sizeof "):
        return f"int {name}(void *ctx) {{ return sizeof(struct {field.split()[1]}); }}"
    if field.startswith("bit "):
        struct_name, member = field.split()[1].split(".", 1)
        # Compiled to a load at the storage unit's offset, then shifts and a mask.
        return f"int {name}(struct {struct_name} *s) {{ return s->{member}; }}"
    struct_name, member = field.split(".", 1)
    return f"int {name}(void *ctx) {{ return __builtin_offsetof(struct {struct_name}, {member}); }}"


def offset_functions() -> str:
    """C text: one function per field returning its offset as the headers define it, and one
    returning the size of the window the bitfield is read from."""
    text = "".join(f"\n{_function(i, f)}" for i, f in enumerate(FIELDS))
    return text + f"\nint {_FN_PREFIX}window(void *ctx) {{ return {WINDOW_MACRO}; }}"


def _return_constant(code: bytes, name: str) -> int:
    """The constant of a compiled ``return K;``: ``r0 = K`` (64- or 32-bit mov) then exit."""
    if len(code) < 16 or code[0] not in (0xB7, 0xB4) or code[1] & 0x0F != 0 or code[8] != 0x95:
        raise GuardError(f"bcc guard: cannot read the constant of {name} from its bytecode")
    return int(struct.unpack_from("<i", code, 4)[0])


_LDX_MEM = (0x61, 0x69, 0x71, 0x79)  # r = *(u32|u16|u8|u64 *)(src + off)
_RSH_K, _LSH_K, _AND_K, _MOV_X = (0x77, 0x74), (0x67, 0x64), (0x57, 0x54), (0xBF, 0xBC)


def _bitfield_offset(code: bytes, name: str) -> int:
    """The bit offset a compiled ``return s->bitfield;`` extracts, little-endian: one load from
    the argument at byte offset O, then either ``>> R`` and a mask or ``<< L`` and ``>> R``;
    the field starts R - L bits into the loaded value, so at bit 8 * O + R - L."""
    load: int | None = None
    rsh = lsh = 0
    for pos in range(0, len(code) - len(code) % 8, 8):
        op, regs, off, imm = struct.unpack_from("<BBhi", code, pos)
        if op in _LDX_MEM and load is None and regs >> 4 == 1:
            load = off
        elif op in _RSH_K:
            rsh += imm
        elif op in _LSH_K:
            lsh += imm
        elif op == 0x95:
            break
        elif op not in _AND_K + _MOV_X:
            load = None
            break
    if load is None:
        raise GuardError(f"bcc guard: cannot read the bit offset of {name} from its bytecode")
    return 8 * load + rsh - lsh


def header_offsets(dump_func: Callable[[bytes], bytes]) -> dict[str, int]:
    """Offsets (bit offsets for "bit" fields) from a bcc module compiled with
    offset_functions() appended, and the bitfield window's size under WINDOW_MACRO."""
    out = {}
    for i, field in enumerate(FIELDS):
        name = f"{_FN_PREFIX}{i}"
        code = dump_func(name.encode())
        if field.startswith("bit "):
            out[field] = _bitfield_offset(code, f"{name} ({field})")
        else:
            out[field] = _return_constant(code, name)
    name = f"{_FN_PREFIX}window"
    out[WINDOW_MACRO] = _return_constant(dump_func(name.encode()), name)
    return out


# --- the comparison -------------------------------------------------------------------------


def compare(headers: dict[str, int], btf: Btf) -> list[str]:
    """One line per field whose header offset differs from the running kernel's BTF."""
    problems = []
    for field in FIELDS:
        kernel = btf.offset(field)
        if kernel is None:
            problems.append(f"{field}: in the headers at {headers[field]}, absent from BTF")
        elif kernel != headers[field]:
            what = {"sizeof": "size", "bit": "bit offset"}.get(field.split()[0], "offset")
            problems.append(
                f"{field}: {what} {headers[field]} in the headers, {kernel} in the running kernel"
            )
    if WINDOW_BITFIELD in FIELDS and WINDOW_MACRO in headers:
        start = 8 * headers[WINDOW_START]
        if not start <= headers[WINDOW_BITFIELD] < start + 8 * headers[WINDOW_MACRO]:
            problems.append(
                f"{WINDOW_BITFIELD}: bit offset {headers[WINDOW_BITFIELD]} in the headers lies "
                f"outside the {headers[WINDOW_MACRO]} bytes exit.bcc.c copies from {WINDOW_START}"
            )
    return problems


def check_offsets(headers: dict[str, int], btf_path: Path = BTF_PATH) -> str:
    """Raise GuardError naming the first mismatching field; return a one-line summary."""
    try:
        problems = compare(headers, Btf.from_file(btf_path))
    except BtfError as exc:
        raise GuardError(f"bcc guard: {exc}") from exc
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        found = find_headers()
        which = f" {found.path} ({found.release or 'version unknown'})" if found else ""
        raise GuardError(
            f"bcc guard: kernel headers{which} do not match the running kernel "
            f"{os.uname().release}: {problems[0]}{more}; install linux-headers-$(uname -r) "
            "or use the CO-RE backend"
        )
    return f"{len(FIELDS)} field offsets match {btf_path}"


# --- finding the headers (as bcc does) ------------------------------------------------------


@dataclass(frozen=True)
class Headers:
    path: Path
    how: str  # where bcc would take them from
    release: str | None  # UTS_RELEASE, when the tree has it


def find_headers(release: str | None = None) -> Headers | None:
    """The header tree bcc will compile against, in bcc's own order of preference."""
    release = release or os.uname().release
    candidates = []
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        candidates.append((Path(env), "BCC_KERNEL_SOURCE"))
    else:
        candidates.append((Path(f"/lib/modules/{release}/build"), f"/lib/modules/{release}/build"))
        # CONFIG_IKHEADERS: bcc unpacks the kernel's own headers, which always match.
        candidates.append((Path("/sys/kernel/kheaders.tar.xz"), "kheaders"))
    for path, how in candidates:
        if path.exists():
            return Headers(path, how, None if how == "kheaders" else uts_release(path))
    return None


_UTS = re.compile(r'#define\s+UTS_RELEASE\s+"([^"]+)"')


def uts_release(tree: Path) -> str | None:
    for rel in ("include/generated/utsrelease.h", "include/linux/utsrelease.h"):
        try:
            match = _UTS.search((tree / rel).read_text())
        except OSError:
            continue
        if match:
            return match.group(1)
    return None


def check_release(headers: Headers, release: str | None = None) -> str:
    """Without BTF: the headers must come from this exact kernel build."""
    release = release or os.uname().release
    if headers.how == "kheaders":
        return "kernel's own headers (kheaders): they match by construction"
    if headers.release is None:
        raise GuardError(
            f"bcc guard: no BTF and no UTS_RELEASE in {headers.path}/include/generated/"
            "utsrelease.h: cannot tell whether these headers match the running kernel"
        )
    if headers.release != release:
        raise GuardError(
            f"bcc guard: kernel headers in {headers.path} are for {headers.release}, "
            f"the running kernel is {release}; install linux-headers-{release}"
        )
    return f"no BTF; headers {headers.path} are for {release}, the running kernel"


def guard(dump_func: Callable[[bytes], bytes], btf_path: Path = BTF_PATH) -> str:
    """The start-up check: BTF offsets where BTF exists, else the headers' version."""
    if btf_path.exists():
        return check_offsets(header_offsets(dump_func), btf_path)
    headers = find_headers()
    if headers is None:
        raise GuardError(f"bcc guard: no kernel headers for {os.uname().release}")
    return check_release(headers)

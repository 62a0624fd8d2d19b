"""Refuse to run the bcc probe when the kernel headers do not describe the running kernel.

bcc compiles the probe against kernel headers. Headers from another build make every
``task->field`` read land on the wrong offset and return silent garbage (measured: Debian 6.1
headers on a 6.18 kernel gave ppid 0, a wrong tgid and exit code 0). So, before attaching:

- where the kernel has BTF, the offsets bcc's clang computed from the headers for every field
  the probe reads are compared with the offsets in /sys/kernel/btf/vmlinux;
- where it has none, the headers' UTS_RELEASE must equal ``uname -r``.

The header offsets come from the same compilation as the probe: ``offset_functions()`` appends
one ``return offsetof(...)`` function per field, and ``header_offsets()`` reads each constant
back from the compiled bytecode (``BPF.dump_func``), so nothing is loaded into the kernel.
"""

from __future__ import annotations

import importlib.util
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BTF_PATH = Path("/sys/kernel/btf/vmlinux")

# Every field exit.bcc.c reads, as "struct.member[.member...]"; "sizeof struct" for the one
# array stride it uses. Keep in step with the READ()s in bpf/exit.bcc.c.
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
    "signal_struct.live",
    "signal_struct.flags",
    "signal_struct.group_exit_code",
    "signal_struct.utime",
    "signal_struct.stime",
    "signal_struct.sum_sched_runtime",
    "signal_struct.maxrss",
    "mm_struct.hiwater_rss",
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


class GuardError(RuntimeError):
    """The headers do not match the running kernel; the message is one line naming why."""


# --- the header side ------------------------------------------------------------------------


def _c_expr(field: str) -> str:
    if field.startswith("sizeof "):
        return f"sizeof(struct {field.split()[1]})"
    struct_name, member = field.split(".", 1)
    return f"__builtin_offsetof(struct {struct_name}, {member})"


def offset_functions() -> str:
    """C text: one function per field returning its offset as the headers define it."""
    return "".join(
        f"\nint {_FN_PREFIX}{i}(void *ctx) {{ return {_c_expr(f)}; }}" for i, f in enumerate(FIELDS)
    )


def _return_constant(code: bytes, name: str) -> int:
    """The constant of a compiled ``return K;``: ``r0 = K`` (64- or 32-bit mov) then exit."""
    if len(code) < 16 or code[0] not in (0xB7, 0xB4) or code[1] & 0x0F != 0 or code[8] != 0x95:
        raise GuardError(f"bcc guard: cannot read the constant of {name} from its bytecode")
    return int(struct.unpack_from("<i", code, 4)[0])


def header_offsets(dump_func: Callable[[bytes], bytes]) -> dict[str, int]:
    """Offsets from a bcc module compiled with offset_functions() appended."""
    out = {}
    for i, field in enumerate(FIELDS):
        name = f"{_FN_PREFIX}{i}"
        out[field] = _return_constant(dump_func(name.encode()), name)
    return out


# --- the BTF side ---------------------------------------------------------------------------

_KIND_STRUCT, _KIND_UNION = 4, 5
_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT, _KIND_TYPE_TAG = 8, 9, 10, 11, 18
# Bytes after the 12-byte common header: fixed, and per vlen item.
_EXTRA: dict[int, tuple[int, int]] = {
    1: (4, 0),  # INT
    3: (12, 0),  # ARRAY
    4: (0, 12),  # STRUCT
    5: (0, 12),  # UNION
    6: (0, 8),  # ENUM
    13: (0, 8),  # FUNC_PROTO
    14: (4, 0),  # VAR
    15: (0, 12),  # DATASEC
    17: (4, 0),  # DECL_TAG
    19: (0, 12),  # ENUM64
}


@dataclass(frozen=True)
class _Type:
    kind: int
    name_off: int
    size_or_type: int
    pos: int  # where its members start in the type section
    vlen: int
    kflag: int


class Btf:
    """The few things the guard needs from a BTF blob: struct layouts by name.

    vmlinux has over 100k types; only the header of each is decoded up front, members and
    names on demand, which keeps start-up short on slow (emulated) machines.
    """

    def __init__(self, data: bytes, origin: str = "BTF") -> None:
        if len(data) < 24 or struct.unpack_from("<H", data)[0] != 0xEB9F:
            raise GuardError(f"{origin}: not a BTF blob (bad magic)")
        hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<5I", data, 4)
        self._types_blob = data[hdr_len + type_off : hdr_len + type_off + type_len]
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self._pos = [-1]  # where each type starts; type ids start at 1
        self._structs: dict[str, int] = {}
        types, unpack, extra, starts = self._types_blob, struct.unpack_from, _EXTRA, self._pos
        pos, end = 0, len(types)
        while pos < end:
            name_off, info = unpack("<2I", types, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            starts.append(pos)
            if kind == _KIND_STRUCT and name_off:
                self._structs.setdefault(self._name(name_off), len(starts) - 1)
            fixed, per_item = extra.get(kind, (0, 0))
            pos += 12 + fixed + per_item * vlen

    def _type(self, type_id: int) -> _Type | None:
        if not 0 < type_id < len(self._pos):
            return None
        pos = self._pos[type_id]
        name_off, info, size_or_type = struct.unpack_from("<3I", self._types_blob, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        return _Type(kind, name_off, size_or_type, pos + 12, vlen, info >> 31)

    def _name(self, off: int) -> str:
        return self._strings[off : self._strings.index(b"\0", off)].decode()

    def _members(self, t: _Type) -> list[tuple[str, int, int]]:
        """(name, type id, bit offset) of a struct or union's members."""
        out = []
        for i in range(t.vlen):
            m_name, m_type, m_off = struct.unpack_from("<3I", self._types_blob, t.pos + 12 * i)
            out.append((self._name(m_name), m_type, m_off & 0xFFFFFF if t.kflag else m_off))
        return out

    @classmethod
    def from_file(cls, path: Path = BTF_PATH) -> Btf:
        return cls(path.read_bytes(), str(path))

    def _resolve(self, type_id: int) -> _Type:
        t = self._type(type_id)
        while t is not None and t.kind in (
            _KIND_TYPEDEF,
            _KIND_VOLATILE,
            _KIND_CONST,
            _KIND_RESTRICT,
            _KIND_TYPE_TAG,
        ):
            t = self._type(t.size_or_type)
        if t is None:
            raise GuardError(f"BTF: type {type_id} does not resolve")
        return t

    def _member(self, t: _Type, name: str) -> tuple[int, int] | None:
        """(type id, bit offset) of a member, looking inside anonymous structs and unions."""
        for m_name, m_type, m_off in self._members(t):
            if m_name == name:
                return m_type, m_off
            if not m_name:
                inner = self._member(self._resolve(m_type), name)
                if inner is not None:
                    return inner[0], m_off + inner[1]
        return None

    def offset(self, field: str) -> int | None:
        """Byte offset of "struct.member[.member...]", or the size for "sizeof struct"."""
        if field.startswith("sizeof "):
            sid = self._structs.get(field.split()[1])
            return None if sid is None else self._resolve(sid).size_or_type
        struct_name, *path = field.split(".")
        sid = self._structs.get(struct_name)
        if sid is None:
            return None
        t, bits = self._resolve(sid), 0
        for part in path:
            found = self._member(t, part)
            if found is None:
                return None
            t, bits = self._resolve(found[0]), bits + found[1]
        return bits // 8


# --- the comparison -------------------------------------------------------------------------


def compare(headers: dict[str, int], btf: Btf) -> list[str]:
    """One line per field whose header offset differs from the running kernel's BTF."""
    problems = []
    for field in FIELDS:
        kernel = btf.offset(field)
        if kernel is None:
            problems.append(f"{field}: in the headers at {headers[field]}, absent from BTF")
        elif kernel != headers[field]:
            what = "size" if field.startswith("sizeof ") else "offset"
            problems.append(
                f"{field}: {what} {headers[field]} in the headers, {kernel} in the running kernel"
            )
    return problems


def check_offsets(headers: dict[str, int], btf_path: Path = BTF_PATH) -> str:
    """Raise GuardError naming the first mismatching field; return a one-line summary."""
    problems = compare(headers, Btf.from_file(btf_path))
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


# --- procmon check --------------------------------------------------------------------------


def bcc_check_lines(source: Path | None = None) -> list[tuple[str, bool, str]]:
    """(item, ok, detail) for `procmon check`: does bcc import, are headers found, does the
    guard pass. The guard compiles the probe's headers with bcc (a few seconds; root)."""
    from procmon.probe import bcc  # here, not at the top: bcc.py imports this module

    lines: list[tuple[str, bool, str]] = []
    try:
        bpf_cls = bcc.import_bcc()
        spec = importlib.util.find_spec("bcc")
        where = Path(str(spec.origin if spec else "?")).parent
        lines.append(("bcc python module", True, f"imported from {where}"))
    except ImportError as exc:
        bpf_cls = None
        lines.append(("bcc python module", False, str(exc)))

    headers = find_headers()
    if headers is None:
        release = os.uname().release
        detail = f"none for {release}: install linux-headers-{release} or set BCC_KERNEL_SOURCE"
        lines.append(("kernel headers", False, detail))
    else:
        version = f" (UTS_RELEASE {headers.release})" if headers.release else ""
        lines.append(("kernel headers", True, f"{headers.path} via {headers.how}{version}"))

    if bpf_cls is None or headers is None:
        lines.append(("bcc offset guard", False, "not run: needs bcc and kernel headers"))
        return lines
    try:
        src = source or bcc.bundled_source()
        module = bpf_cls(
            text=(src.read_text() + offset_functions()).encode(),
            cflags=[f"-I{src.parent}", "-DPROCMON_OFFSETS_ONLY"],
        )
        try:
            lines.append(("bcc offset guard", True, guard(module.dump_func)))
        finally:
            module.cleanup()
    except GuardError as exc:
        lines.append(("bcc offset guard", False, str(exc)))
    except Exception as exc:  # bcc raises bare Exceptions; clang's errors went to stderr
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        lines.append(("bcc offset guard", False, f"could not compile the headers: {first}"))
    return lines

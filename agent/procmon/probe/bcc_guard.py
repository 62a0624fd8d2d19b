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
    name: str
    size_or_type: int
    members: tuple[tuple[str, int, int], ...]  # (name, type id, bit offset)


class Btf:
    """The few things the guard needs from a BTF blob: struct layouts by name."""

    def __init__(self, data: bytes, origin: str = "BTF") -> None:
        if len(data) < 24 or struct.unpack_from("<H", data)[0] != 0xEB9F:
            raise GuardError(f"{origin}: not a BTF blob (bad magic)")
        hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<5I", data, 4)
        types = data[hdr_len + type_off : hdr_len + type_off + type_len]
        strings = data[hdr_len + str_off : hdr_len + str_off + str_len]

        def name_at(off: int) -> str:
            return strings[off : strings.index(b"\0", off)].decode()

        self.types: list[_Type | None] = [None]  # type ids start at 1
        self._structs: dict[str, int] = {}
        pos = 0
        while pos < len(types):
            name_off, info, size_or_type = struct.unpack_from("<3I", types, pos)
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            pos += 12
            fixed, per_item = _EXTRA.get(kind, (0, 0))
            members: list[tuple[str, int, int]] = []
            if kind in (_KIND_STRUCT, _KIND_UNION):
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<3I", types, pos + 12 * i)
                    members.append((name_at(m_name), m_type, m_off & 0xFFFFFF if kflag else m_off))
            name = name_at(name_off)
            self.types.append(_Type(kind, name, size_or_type, tuple(members)))
            if kind == _KIND_STRUCT and name:
                self._structs.setdefault(name, len(self.types) - 1)
            pos += fixed + per_item * vlen

    @classmethod
    def from_file(cls, path: Path = BTF_PATH) -> Btf:
        return cls(path.read_bytes(), str(path))

    def _resolve(self, type_id: int) -> _Type:
        t = self.types[type_id]
        while t is not None and t.kind in (
            _KIND_TYPEDEF,
            _KIND_VOLATILE,
            _KIND_CONST,
            _KIND_RESTRICT,
            _KIND_TYPE_TAG,
        ):
            t = self.types[t.size_or_type]
        if t is None:
            raise GuardError(f"BTF: type {type_id} does not resolve")
        return t

    def _member(self, t: _Type, name: str) -> tuple[int, int] | None:
        """(type id, bit offset) of a member, looking inside anonymous structs and unions."""
        for m_name, m_type, m_off in t.members:
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
        raise GuardError(
            f"bcc guard: kernel headers do not match the running kernel {os.uname().release}: "
            f"{problems[0]}{more}; install the headers of this kernel "
            "(linux-headers-$(uname -r)) or use the CO-RE backend"
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

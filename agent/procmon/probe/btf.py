"""Struct layouts from a kernel's BTF blob (/sys/kernel/btf/vmlinux), decoded in pure Python."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

BTF_PATH = Path("/sys/kernel/btf/vmlinux")


class BtfError(RuntimeError):
    """A BTF blob that cannot be read as one, worded as one line."""


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
    """Struct layouts by name. Only each type's header is decoded up front, members and names
    on demand: vmlinux has over 100k types, and start-up must stay short on slow machines."""

    def __init__(self, data: bytes, origin: str = "BTF") -> None:
        if len(data) < 24 or struct.unpack_from("<H", data)[0] != 0xEB9F:
            raise BtfError(f"{origin}: not a BTF blob (bad magic)")
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
            raise BtfError(f"BTF: type {type_id} does not resolve")
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
        """Byte offset of "struct.member[.member...]", the size for "sizeof struct", the bit
        offset for "bit struct.member"."""
        if field.startswith("sizeof "):
            sid = self._structs.get(field.split()[1])
            return None if sid is None else self._resolve(sid).size_or_type
        bits_wanted = field.startswith("bit ")
        struct_name, *path = field.removeprefix("bit ").split(".")
        sid = self._structs.get(struct_name)
        if sid is None:
            return None
        t, bits = self._resolve(sid), 0
        for part in path:
            found = self._member(t, part)
            if found is None:
                return None
            t, bits = self._resolve(found[0]), bits + found[1]
        return bits if bits_wanted else bits // 8

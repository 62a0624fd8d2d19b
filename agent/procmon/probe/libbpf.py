"""ctypes bindings for the few libbpf 1.x functions procmon uses (Debian's libbpf.so.1).

No compiled extension: hosts need only the libbpf1 package. Every function that returns a
pointer gets ``restype = c_void_p``, or ctypes would truncate it to an int.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_char_p,
    c_int,
    c_size_t,
    c_uint32,
    c_void_p,
)
from typing import Any

log = logging.getLogger("procmon.libbpf")

# Callback types. Objects of these types must stay referenced while libbpf may call them.
RING_SAMPLE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)

LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2
BTF_KIND_VAR, BTF_KIND_DATASEC = 14, 15


class LibbpfError(OSError):
    """A libbpf call failed; the message names the call and the cause."""


class ObjectOpenOpts(ctypes.Structure):
    """The leading fields of struct bpf_object_open_opts (libbpf >= 1.0); sz tells libbpf
    how much of the struct we know, the rest counts as zero."""

    _fields_ = (
        ("sz", c_size_t),
        ("object_name", c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", c_char_p),
        ("_removed_attach_prog_fd", c_uint32),
        ("kconfig", c_char_p),
        ("btf_custom_path", c_char_p),
    )


class BtfType(ctypes.Structure):
    _fields_ = (("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32))


class BtfVarSecinfo(ctypes.Structure):
    _fields_ = (("type", c_uint32), ("offset", c_uint32), ("size", c_uint32))


_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "bpf_object__open_file": (c_void_p, [c_char_p, POINTER(ObjectOpenOpts)]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__btf": (c_void_p, [c_void_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, POINTER(c_size_t)]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64]),
    "bpf_map__pin": (c_int, [c_void_p, c_char_p]),
    "bpf_link__pin": (c_int, [c_void_p, c_char_p]),
    "bpf_obj_get": (c_int, [c_char_p]),
    "bpf_program__set_autoload": (c_int, [c_void_p, ctypes.c_bool]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_link__destroy": (c_int, [c_void_p]),
    "bpf_link__fd": (c_int, [c_void_p]),
    "btf__find_by_name_kind": (c_int, [c_void_p, c_char_p, c_uint32]),
    "btf__type_by_id": (c_void_p, [c_void_p, c_uint32]),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_uint32]),
    "ring_buffer__new": (c_void_p, [c_int, RING_SAMPLE_FN, c_void_p, c_void_p]),
    "ring_buffer__poll": (c_int, [c_void_p, c_int]),
    "ring_buffer__consume": (c_int, [c_void_p]),
    "ring_buffer__epoll_fd": (c_int, [c_void_p]),
    "ring_buffer__free": (None, [c_void_p]),
    "libbpf_num_possible_cpus": (c_int, []),
    "libbpf_set_print": (c_void_p, [PRINT_FN]),
    "libbpf_get_error": (ctypes.c_long, [c_void_p]),
}

_lib: ctypes.CDLL | None = None
_print_cb: Any = None  # keeps the log callback alive for the life of the process


def lib() -> ctypes.CDLL:
    """Load libbpf.so.1 once, declare signatures and route its log into Python logging."""
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            handle = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise LibbpfError(
                f"cannot load libbpf ({name}): {exc}; install it with 'apt-get install libbpf1'"
            ) from exc
        for func, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(handle, func)
            fn.restype = restype
            fn.argtypes = argtypes
        _lib = handle
        _route_log(handle)
    return _lib


def _route_log(handle: ctypes.CDLL) -> None:
    global _print_cb
    libc = ctypes.CDLL(None)
    vsnprintf = libc.vsnprintf
    vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
    vsnprintf.restype = c_int
    # libbpf's warnings on a refused load are misleading (it suggests RLIMIT_MEMLOCK when the
    # cause is capabilities), so they go to INFO; procmon raises one clear error instead.
    levels = {LIBBPF_WARN: logging.INFO, LIBBPF_INFO: logging.DEBUG, LIBBPF_DEBUG: logging.DEBUG}
    buf = ctypes.create_string_buffer(1 << 16)  # verifier logs are long

    def _print(level: int, fmt: bytes, args: int) -> int:
        try:
            py_level = levels.get(level, logging.DEBUG)
            if log.isEnabledFor(py_level):
                vsnprintf(buf, len(buf), fmt, args)
                log.log(py_level, "%s", buf.value.decode(errors="replace").rstrip())
        except Exception:  # an exception must never cross into C
            pass
        return 0

    _print_cb = PRINT_FN(_print)
    handle.libbpf_set_print(_print_cb)


def check_ptr(ptr: int | None, call: str) -> int:
    """Turn a NULL (errno set) or an ERR_PTR from libbpf into a LibbpfError."""
    if not ptr:
        err = ctypes.get_errno()
        raise LibbpfError(err, f"{call} failed: {os.strerror(err) if err else 'unknown error'}")
    err = lib().libbpf_get_error(ptr)
    if err:
        raise LibbpfError(-err, f"{call} failed: {os.strerror(-err)}")
    return ptr


def check_rc(rc: int, call: str) -> int:
    if rc < 0:
        raise LibbpfError(-rc, f"{call} failed: {os.strerror(-rc)}")
    return rc


def datasec_offsets(obj: int, section: bytes) -> dict[str, tuple[int, int]]:
    """Map each variable in a data section (e.g. .rodata) to (offset, size) using the BTF."""
    bpf = lib()
    btf = bpf.bpf_object__btf(obj)
    if not btf:
        raise LibbpfError(0, "BPF object carries no BTF")
    sec_id = bpf.btf__find_by_name_kind(btf, section, BTF_KIND_DATASEC)
    check_rc(sec_id, f"btf__find_by_name_kind({section.decode()})")
    sec = BtfType.from_address(bpf.btf__type_by_id(btf, sec_id))
    vlen = sec.info & 0xFFFF
    infos = (BtfVarSecinfo * vlen).from_address(
        bpf.btf__type_by_id(btf, sec_id) + ctypes.sizeof(BtfType)
    )
    out: dict[str, tuple[int, int]] = {}
    for info in infos:
        var = BtfType.from_address(bpf.btf__type_by_id(btf, info.type))
        out[bpf.btf__name_by_offset(btf, var.name_off).decode()] = (info.offset, info.size)
    return out

"""Give up capabilities the agent needs only at start.

CAP_SYS_PTRACE lets the /proc seed read /proc/<pid>/exe of other users' processes. Kept, it
would also let the agent's uid write into any process's memory (process_vm_writev), so it is
dropped from the effective, permitted and inheritable sets (the ambient set follows) once the
seed is done. Nothing gets it back: permitted never grows without an exec of a file with
capabilities, which the unit's NoNewPrivileges forbids.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("procmon.privilege")

CAP_SYS_PTRACE = 19
_VERSION_3 = 0x20080522  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    # The running program's own symbols, glibc's among them. Not ctypes.util.find_library:
    # it runs ldconfig, and the agent's own children would show up as exits.
    return ctypes.CDLL(None, use_errno=True)


def _sets() -> tuple[_Header, ctypes.Array[_Data]]:
    header = _Header(_VERSION_3, 0)
    data = (_Data * 2)()
    if _libc().capget(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capget: {os.strerror(err)}")
    return header, data


def has_capability(cap: int) -> bool:
    """In the permitted set: it could be used (or is, if effective)."""
    _, data = _sets()
    return bool(data[cap // 32].permitted >> (cap % 32) & 1)


def drop_capability(cap: int) -> bool:
    """Remove ``cap`` from every set of this process; False when it held none of it."""
    header, data = _sets()
    word, bit = data[cap // 32], 1 << (cap % 32)
    if not (word.effective | word.permitted | word.inheritable) & bit:
        return False
    word.effective &= ~bit
    word.permitted &= ~bit
    word.inheritable &= ~bit
    if _libc().capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    return True


def drop_after_seed() -> None:
    """The agent's start-up work that needed CAP_SYS_PTRACE is done: give it up."""
    try:
        if drop_capability(CAP_SYS_PTRACE):
            log.info("CAP_SYS_PTRACE dropped after the /proc seed")
    except OSError as exc:  # not fatal, but the operator should know the agent kept it
        log.warning("could not drop CAP_SYS_PTRACE after the /proc seed: %s", exc)

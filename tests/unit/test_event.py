"""The record → ExitEvent step, without a kernel: decoding, signals, CPU split, hostile bytes."""

from __future__ import annotations

import json
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from procmon.event import MAX_EVENT_BYTES, EventBuilder, ExitEvent, Killer, _split_cputime
from procmon.probe.record import (
    EXIT_RECORD_SIZE,
    FLAG_GROUP_DEAD,
    FLAG_THREAD,
    KILLER_KERNEL,
    KILLER_KNOWN,
    KILLER_OOM,
    RawExit,
    decode,
    encode_exit,
)
from procmon.sinks.stdout import reason_text, render, seed_lines

BOOT_ID = "0f6d1f9e-3c1a-4d8b-9a57-1b2c3d4e5f60"


def raw(**overrides: object) -> RawExit:
    base = dict(
        ts_boot_ns=5_000_000_000,
        start_boot_ns=4_000_000_000,
        utime_ns=8_000_000,
        stime_ns=4_000_000,
        runtime_ns=15_000_000,
        max_rss_pages=100,
        cgroup_id=42,
        pid=1234,
        tid=1234,
        ppid=1200,
        uid=1000,
        gid=1000,
        exit_code=3 << 8,
        pidns_inode=4026531836,
        ns_pid=1234,
        flags=FLAG_GROUP_DEAD,
        comm=b"ls",
        parent_comm=b"bash",
    )
    base.update(overrides)
    return RawExit(**base)  # type: ignore[arg-type]


def builder() -> EventBuilder:
    return EventBuilder("host-a", "core", boot_id=BOOT_ID)


def test_record_layout_matches_c_struct() -> None:
    assert EXIT_RECORD_SIZE == 176  # sizeof(struct exit_record) in bpf/exit_record.h
    record = raw(comm=b"sh")
    assert decode(encode_exit(record)) == record


def test_exit_code_and_no_signal() -> None:
    ev = builder().build(raw())
    assert (ev.exit_code, ev.signal, ev.core_dumped) == (3, None, False)
    assert ev.scope == "process"
    assert ev.event_id == f"{BOOT_ID}:1234:4000000000"


def test_signal_with_core() -> None:
    ev = builder().build(raw(exit_code=signal.SIGSEGV | 0x80))
    assert ev.signal is not None
    assert (ev.signal.number, ev.signal.name) == (11, "SIGSEGV")
    assert ev.core_dumped and ev.exit_code == 0


def test_unnamed_signal_number() -> None:
    ev = builder().build(raw(exit_code=100))
    assert ev.signal is not None and ev.signal.name == "SIG100"


def test_thread_event_id_differs_from_process() -> None:
    b = builder()
    assert b.build(raw(flags=FLAG_THREAD)).event_id != b.build(raw()).event_id


def test_cputime_is_scaled_to_runtime_like_the_kernel() -> None:
    assert _split_cputime(8, 4, 15) == (10, 5)
    assert _split_cputime(0, 0, 7) == (7, 0)  # no tick sampled: all user, as cputime_adjust
    ev = builder().build(raw())
    assert ev.utime_ns + ev.stime_ns == 15_000_000


def test_times_and_age() -> None:
    ev = builder().build(raw())
    assert ev.age_ns == 1_000_000_000
    assert ev.time.endswith("Z") and len(ev.time.split(".")[1]) == 10


def test_seed_lines() -> None:
    first, second, reason = seed_lines(builder().build(raw(utime_ns=2, stime_ns=1, runtime_ns=3)))
    assert first == "PROCESS_MONITOR: Process exiting - PID: 1234, Name: ls, Parent PID: 1200"
    assert second == "PROCESS_MONITOR:   User time: 2 ns, System time: 1 ns"
    assert reason == "PROCESS_MONITOR:   Exit reason: exit code 3"


@given(st.binary(max_size=16))
def test_any_comm_bytes_give_valid_json(comm: bytes) -> None:
    comm = comm.split(b"\0")[0]
    ev = builder().build(raw(comm=comm))
    for fmt in ("json", "human", "seed"):
        out = render(ev, fmt)
        out.decode("utf-8")  # every format stays valid UTF-8
    line = render(ev, "json")
    parsed = json.loads(line)
    assert ExitEvent.model_validate(parsed) == ev
    assert b"\n" not in line[:-1]


@given(
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 0xFFFF),
)
def test_extreme_numbers_never_crash(utime: int, rss: int, pid: int, status: int) -> None:
    ev = builder().build(
        raw(utime_ns=utime, runtime_ns=utime, max_rss_pages=rss // 8, pid=pid, exit_code=status)
    )
    assert ExitEvent.model_validate_json(render(ev, "json")) == ev


KILL, SEGV, TERM, ABRT = (
    int(s) for s in (signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM, signal.SIGABRT)
)
FROM_KUBELET = {
    "killer_flags": KILLER_KNOWN,
    "killer_pid": 4242,
    "killer_uid": 0,
    "killer_comm": b"kubelet",
}
FROM_KERNEL = {"killer_flags": KILLER_KNOWN | KILLER_KERNEL, "killer_code": 0x80}


def test_exit_reasons_and_their_text() -> None:
    cases = [
        (raw(exit_code=0), "exit", None, "exit code 0"),
        (raw(exit_code=3 << 8), "error", None, "exit code 3"),
        (
            raw(exit_code=KILL, **FROM_KUBELET),
            "killed",
            Killer(pid=4242, comm="kubelet", uid=0),
            "killed by SIGKILL from pid 4242 (kubelet, uid 0)",
        ),
        (
            raw(exit_code=TERM, killer_flags=KILLER_KNOWN, killer_pid=1234, killer_comm=b"sh"),
            "killed",
            Killer(pid=1234, comm="sh", uid=0),
            "killed by SIGTERM from itself",
        ),
        (raw(exit_code=TERM), "killed", None, "killed by SIGTERM"),  # sender not seen
        (
            raw(exit_code=SEGV, **FROM_KERNEL),
            "crashed",
            Killer(pid=0, comm="kernel", uid=0),
            "crashed: SIGSEGV",
        ),
        (raw(exit_code=SEGV), "crashed", None, "crashed: SIGSEGV"),  # a fault, sender not seen
        (
            raw(exit_code=SEGV | 0x80, **FROM_KUBELET),
            "crashed",
            Killer(pid=4242, comm="kubelet", uid=0),
            "crashed: SIGSEGV (core dumped)",
        ),
        (
            raw(exit_code=SEGV, **FROM_KUBELET),
            "killed",
            Killer(pid=4242, comm="kubelet", uid=0),
            "killed by SIGSEGV from pid 4242 (kubelet, uid 0)",
        ),
        (
            raw(exit_code=ABRT, killer_flags=KILLER_KNOWN, killer_pid=1234, killer_comm=b"app"),
            "crashed",
            Killer(pid=1234, comm="app", uid=0),
            "crashed: SIGABRT",
        ),
        (
            raw(exit_code=KILL, killer_flags=KILLER_KNOWN | KILLER_KERNEL | KILLER_OOM),
            "oom",
            Killer(pid=0, comm="kernel", uid=0),
            "OOM-killed",
        ),
        (
            raw(exit_code=KILL, **FROM_KERNEL),
            "killed",
            Killer(pid=0, comm="kernel", uid=0),
            "killed by SIGKILL from the kernel",
        ),
        # the OOM mark counts only with the signal's record (the probe sets both)
        (raw(exit_code=KILL, killer_flags=KILLER_OOM), "killed", None, "killed by SIGKILL"),
    ]
    for record, reason, killer, text in cases:
        event = builder().build(record)
        assert (event.exit_reason, event.killer, reason_text(event)) == (reason, killer, text), (
            record
        )
        assert event.oom_killed == (reason == "oom")
    oom = builder().build(
        raw(exit_code=KILL, killer_flags=KILLER_KNOWN | KILLER_KERNEL | KILLER_OOM)
    )
    assert reason_text(oom.model_copy(update={"cgroup": "/system.slice/x.service"})) == (
        "OOM-killed in /system.slice/x.service"
    )
    forged = reason_text(oom.model_copy(update={"cgroup": "/a\nPROCESS_MONITOR: forged"}))
    assert forged.isprintable() and "\n" not in forged


def test_killer_comm_is_shown_safely() -> None:
    event = builder().build(
        raw(exit_code=KILL, killer_flags=KILLER_KNOWN, killer_pid=7, killer_comm=b"\x1b[2Jx")
    )
    assert "\x1b" not in reason_text(event)


def test_args_are_bounded_in_bytes_and_an_event_in_size() -> None:
    """Few huge items pass an item count: the byte bound stops them (a 925 KB event did)."""
    base = builder().build(raw()).model_dump()
    with pytest.raises(ValidationError, match="args are 900001 bytes in UTF-8, over 8192"):
        ExitEvent.model_validate({**base, "args": ("x" * 900_000,)})
    # Every field at its bound, in characters that serialize longest (a control character
    # becomes \\u0001, 6 bytes): the documented maximum holds.
    widest = "\x01"
    longest = ExitEvent.model_validate(
        {
            **base,
            "event_id": widest * 128,
            "host": widest * 128,
            "comm": widest * 64,
            "parent_comm": widest * 64,
            "exe": widest * 4096,
            "args": (widest * 7,) * 1024,  # 8 bytes an item with its separator: 8192
            "cgroup": widest * 4096,
            "unit": widest * 256,
            "container_id": "f" * 64,
            "container_runtime": "containerd",
            "pod_uid": "0" * 8 + "-0000-0000-0000-" + "0" * 12,
            "exec_source": "exec",
            "args_truncated": True,
            "signal": {"number": 9, "name": widest * 32},
            "exit_reason": "killed",
            "killer": {"pid": 2**32 - 1, "comm": widest * 64, "uid": 2**32 - 1},
        }
    )
    size = len(render(longest, "json"))
    assert 100_000 < size <= MAX_EVENT_BYTES, size

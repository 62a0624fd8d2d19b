#!/usr/bin/env python3
"""What one exec costs the agent's draining thread, whatever its argv looks like.

Per command line: decoding the ring record, shaping its args (one decode of the whole blob,
redaction) and the join of the exit that follows, timed with timeit. "miss" shapes a command
line never seen before (the worst case: an attacker makes every one differ); "hit" a repeated
one (served from the cache keyed by a digest of the raw argv). "before" is the code of the
first release (a decode and six regexes per argument), for the same argv, in the same run.

Usage: .venv/bin/python bench/event_cost.py. Writes its section of bench/results.md. No root
needed.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from itertools import cycle
from pathlib import Path
from types import ModuleType

from procmon.enrich.context import ProcessContext
from procmon.probe.record import (
    EXEC_HEADER,
    FLAG_GROUP_DEAD,
    KIND_EXEC,
    RawExec,
    RawExit,
    decode,
)
from results_section import write_section

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
FIRST_RELEASE = "00a1d09"  # the redaction this issue started from
ARGS_LEN = 1024

CASES: dict[str, list[bytes]] = {
    "typical: python3 -m pytest tests/test_x.py -k foo": [
        b"/usr/bin/python3",
        b"-m",
        b"pytest",
        b"tests/test_x.py",
        b"-k",
        b"foo",
    ],
    "typical: ls -la /tmp": [b"ls", b"-la", b"/tmp"],
    "typical: sh -c 'make -j2 all'": [b"sh", b"-c", b"make -j2 all"],
    "typical: mysql -u app -phunter2 db": [b"mysql", b"-u", b"app", b"-phunter2", b"db"],
    "worst: /bin/true + 511 x 'x' (1024 B)": [b"/bin/true"] + [b"x"] * 511,
    "worst: one 1014-byte argument": [b"/bin/true", b"a" * 1014],
    "worst: mysql + 300 x -pX": [b"mysql"] + [b"-pX"] * 300,
    "worst: 200 x '--password x'": [b"app"] + [b"--password", b"x"] * 100,
    "worst: sh -c of 1000 bytes of a=b pairs": [b"sh", b"-c", b"a=b " * 250],
    "worst: 24 GitHub tokens": [b"git"] + [b"ghp_" + b"A" * 36] * 24,
}


def blob_of(argv: list[bytes]) -> bytes:
    """The argv as the probe sends it: NUL-separated, cut at ARGS_LEN."""
    return b"\0".join(argv)[: ARGS_LEN - 1]


def exec_record(blob: bytes, pid: int) -> bytes:
    header = EXEC_HEADER.pack(KIND_EXEC, 0, 1, 100, pid, len(blob) + 1, len(blob) + 1, 1, 0, b"/x")
    return header + blob + b"\0"


def exit_of(pid: int) -> RawExit:
    return RawExit(
        5, 100, 0, 0, 0, 0, 7, pid, pid, 1, 0, 0, 0, 1, pid, FLAG_GROUP_DEAD, b"c", b"p",
        pid, 100, 1,
    )  # fmt: skip


def first_release_redactor() -> ModuleType:
    """redact.py as the first release had it (stdlib only), loaded under another name."""
    text = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{FIRST_RELEASE}:agent/procmon/enrich/redact.py"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "redact_first_release.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("redact_first_release", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def per_call_us(fn: Callable[[], object], number: int) -> float:
    """The best of 9 repeats, in µs per call (the least disturbed by the machine)."""
    return min(timeit.repeat(fn, number=number, repeat=9)) / number * 1e6


def measure(argv: list[bytes], old: ModuleType, number: int) -> dict[str, float]:
    blob = blob_of(argv)
    # The exit follows its exec: its record is decoded by the exit's own path, not timed here.
    pairs = cycle([(exec_record(blob, pid), exit_of(pid)) for pid in range(10, 10 + number)])
    ctx = ProcessContext()
    observe, for_exit, shaped = ctx.observe, ctx.for_exit, ctx._shaped

    def event_miss() -> None:
        record, exit_raw = next(pairs)
        shaped.clear()  # a command line never seen before
        observe(decode(record))  # type: ignore[arg-type]
        for_exit(exit_raw)

    def event_hit() -> None:
        record, exit_raw = next(pairs)
        observe(decode(record))  # type: ignore[arg-type]
        for_exit(exit_raw)

    redactor = old.Redactor()

    def event_before() -> None:  # the first release: split, decode and redact per argument
        record, _ = next(pairs)
        raw = decode(record)
        assert isinstance(raw, RawExec) and raw.args is not None
        decoded = [a.decode("utf-8", "backslashreplace") for a in raw.args.split(b"\0")]
        redactor.redact(decoded)

    return {
        "before": per_call_us(event_before, max(10, number // 10)),
        "miss": per_call_us(event_miss, number),
        "hit": per_call_us(event_hit, number),
        "args": float(blob.count(b"\0") + 1),
        "bytes": float(len(blob) + 1),
    }


def report(results: dict[str, dict[str, float]]) -> str:
    typical = max(r["miss"] for case, r in results.items() if case.startswith("typical"))
    worst = max(r["miss"] for case, r in results.items() if case.startswith("worst"))
    lines = [
        "## The cost of one exec on the draining thread",
        "",
        f"`make bench-event-cost` ({time.strftime('%Y-%m-%d')}): decode the ring record, decode"
        " and redact its args, and join the exit that follows (`bench/event_cost.py`). Best of"
        " 9 timeit repeats, µs per exec, this machine. *miss*: a command line never seen before"
        " (every one differs, as in an attack); *hit*: a repeated one (cache keyed by a digest"
        " of the raw argv); *first release*: a decode and the six regexes per argument, before"
        " this change. Goals: typical ≤ 10 µs, worst ≤ 50 µs.",
        "",
        "| argv | args | bytes | first release | now, miss | now, hit |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case, r in results.items():
        lines.append(
            f"| {case} | {r['args']:.0f} | {r['bytes']:.0f} | {r['before']:,.1f} |"
            f" {r['miss']:.1f} | {r['hit']:.1f} |"
        )
    lines += ["", f"Largest typical: {typical:.1f} µs. Largest worst case: {worst:.1f} µs."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--number", type=int, default=2000, help="calls per timeit repeat")
    ap.add_argument("--results", type=Path, default=BENCH / "results.md")
    args = ap.parse_args(argv)
    old = first_release_redactor()
    results = {case: measure(argv, old, args.number) for case, argv in CASES.items()}
    text = report(results)
    write_section(args.results, "event-cost", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

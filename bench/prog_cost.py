"""The kernel-side cost of each procmon BPF program, from the kernel's own BPF statistics.

With kernel.bpf_stats_enabled = 1 the kernel counts, per program, how often it ran and the
nanoseconds it spent. This runs `procmon tail` (default settings) while a fork storm and a
stream of kills run, then reads those counters: what each program costs per call and per
exit, the killer programs (signal_generate, mark_victim) beside the exit program. A section
of bench/killer_cost.md.

    python3 bench/prog_cost.py [--exits N]   # root
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from results_section import write_section  # noqa: E402

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
PROGRAMS = ("exit_btf", "exec_btf", "signal_raw", "oom_raw")


def prog_stats() -> dict[str, tuple[int, int]]:
    """(run_cnt, run_time_ns) of procmon's loaded programs, by name."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, check=True)
    stats: dict[str, tuple[int, int]] = {}
    for prog in json.loads(out.stdout):
        name = prog.get("name", "")
        if name in PROGRAMS:
            cnt, ns = stats.get(name, (0, 0))
            stats[name] = (cnt + prog.get("run_cnt", 0), ns + prog.get("run_time_ns", 0))
    return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exits", type=int, default=40000, help="fork-storm children")
    ap.add_argument("--kills", type=int, default=2000, help="processes killed by SIGTERM")
    ap.add_argument("--results", type=Path, default=BENCH / "killer_cost.md")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (loads eBPF, reads BPF statistics)")
    procmon = Path(sys.executable).parent / "procmon"
    with tempfile.TemporaryDirectory() as tmp:
        forkstorm = Path(tmp) / "forkstorm"
        subprocess.run(["cc", "-O2", "-o", str(forkstorm), str(BENCH / "forkstorm.c")], check=True)
        was = STATS.read_text().strip()
        STATS.write_text("1")
        tail = subprocess.Popen(
            [str(procmon), "tail", "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            time.sleep(2)  # attached and seeded
            before = prog_stats()
            subprocess.run([str(forkstorm), str(args.exits), "2"], check=True, capture_output=True)
            # Fatal signals delivered: what the killer map is for.
            for _ in range(args.kills):
                victim = subprocess.Popen(["sleep", "5"])
                victim.send_signal(signal.SIGTERM)
                victim.wait()
            time.sleep(1)
            after = prog_stats()
        finally:
            tail.send_signal(signal.SIGINT)
            tail.wait(timeout=30)
            STATS.write_text(was)
    exits = args.exits + 3 * args.kills  # storm children, victims; the Popen helpers' forks
    rows = []
    for name in PROGRAMS:
        cnt = after.get(name, (0, 0))[0] - before.get(name, (0, 0))[0]
        ns = after.get(name, (0, 0))[1] - before.get(name, (0, 0))[1]
        per_call = f"{ns / cnt:.0f}" if cnt else "n/a"
        rows.append(f"| `{name}` | {cnt:,} | {per_call} | {ns / max(1, exits):.0f} |")
    body = "\n".join(
        [
            "## Kernel cost per program (`bench/prog_cost.py`, kernel BPF statistics)",
            "",
            f"`procmon tail` with default settings during a 2-worker fork storm of {args.exits:,}"
            f" children and {args.kills:,} processes killed by SIGTERM; `run_time_ns` and "
            "`run_cnt` from `kernel.bpf_stats_enabled`. Every exit also sends SIGCHLD, so "
            "`signal_raw` runs about once per exit; the in-kernel filter returns before any map "
            "access for signals that do not kill.",
            "",
            "| program | runs | ns per run | ns per exit (about) |",
            "|---|---:|---:|---:|",
            *rows,
        ]
    )
    write_section(args.results, "prog-cost", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

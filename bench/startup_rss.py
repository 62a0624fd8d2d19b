#!/usr/bin/env python3
"""The agent's start-up to first event and its RSS, code revisions side by side in one run.

Each variant is a revision of agent/ (git archive REV, or the working tree), run as the full
pipeline of bench/run.py (agent -> mosquitto -> mosquitto_sub) with bench/run.py's own session:
start-up is spawn to the first canary exit at the subscriber, peak RSS is VmHWM after the
storms and steady loads. Variants alternate (A B, B A, ...), so the machine's load falls on
each alike. A second, in-process measurement splits the RSS by phase: imports, the probe's
load (libbpf parsing the kernel's BTF), the ring's mapping.

Usage (root): .venv/bin/python bench/startup_rss.py --variant before=42c42d8 \
    --variant after=HEAD [--reps 4]. Writes bench/out/startup_rss.json and prints the tables
for bench/startup_rss.md. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import monitors
import run
from monitors import Monitor

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
STATUS_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")

# Run in a variant's tree: RSS after the imports the agent makes, after the probe's load and
# attach (VmHWM: libbpf's peak while it parses the kernel BTF), after the ring is mapped.
PHASES = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    def status():
        out = {}
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
        return out
    phases = {"python": status()}
    import procmon.agent, procmon.cli
    phases["imports"] = status()
    from procmon.assemble import attach_probe
    from procmon.config import load_config
    cfg = load_config(None, {"probe": {"backend": "core"}})
    probe = attach_probe(cfg.probe, cfg.enrich)
    phases["probe attached, ring mapped"] = status()
    probe.close()
    print(json.dumps({"phases": phases, "modules": sorted(sys.modules)}))
    """
)


def proc_status(pid: int | None) -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of a live process, in kB."""
    out: dict[str, int] = {}
    if pid is None:
        return out
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in STATUS_KEYS:
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def prepare_variant(label: str, rev: str, root: Path) -> Path:
    """agent/ of rev (or the working tree for "worktree") with the built BPF artifacts, compiled
    to bytecode as an installed package is; returns a launcher standing in for bin/procmon."""
    tree = root / label
    tree.mkdir()
    if rev == "worktree":
        shutil.copytree(
            REPO / "agent", tree / "agent", ignore=shutil.ignore_patterns("__pycache__")
        )
    else:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", rev, "agent"],
            check=True,
            capture_output=True,
        ).stdout
        tar_path = root / f"{label}.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            tar.extractall(tree)  # our own repository's archive
        tar_path.unlink()
    built = REPO / "agent/procmon/probe/bpf"
    dest = tree / "agent/procmon/probe/bpf"
    dest.mkdir(exist_ok=True)
    for artifact in built.iterdir():
        if artifact.is_file() and not (dest / artifact.name).exists():
            shutil.copy2(artifact, dest / artifact.name)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(tree / "agent/procmon")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    launcher = tree / "procmon"
    launcher.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(tree / 'agent')!r})\n"
        "from procmon.cli import main\nsys.exit(main())\n"
    )
    launcher.chmod(0o755)
    return launcher


# /proc/<agent>/status where bench/run.py's session reads VmHWM: after the loads.
LAST_END: dict[str, int] = {}
_peak_rss_kb = monitors.peak_rss_kb


def _peak_and_status(pid: int | None) -> int | None:
    LAST_END.update(proc_status(pid))
    return _peak_rss_kb(pid)


run.peak_rss_kb = _peak_and_status  # type: ignore[attr-defined]  # run.py imported it by name


class StatusBench(run.Bench):
    """bench/run.py's sessions, also keeping /proc/<agent>/status right after attach."""

    attached_status: dict[str, int]

    def wait_attached(self, mon: Monitor, canary: str) -> float | None:
        took = super().wait_attached(mon, canary)
        self.attached_status = proc_status(mon.pid())
        return took


def phases_of(tree_agent: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PHASES, str(tree_agent)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return data


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value / scale:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=REV")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--no-loads", action="store_true", help="start-up only, no storms")
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "startup_rss.json")
    args = ap.parse_args(argv)
    variants = [v.partition("=")[::2] for v in args.variant] or [
        ("before", "HEAD~1"),
        ("after", "worktree"),
    ]
    workdir = Path(tempfile.mkdtemp(prefix="procmon-startup-", dir="/dev/shm"))
    (workdir / "trees").mkdir()
    (workdir / "bench").mkdir()
    launchers = {label: prepare_variant(label, rev, workdir / "trees") for label, rev in variants}
    profile = run.QUICK
    loads = [] if args.no_loads else run.storm_loads(profile) + run.steady_loads(profile)
    bench = StatusBench(profile, workdir / "bench", str(launchers[variants[0][0]]), ["full"])
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in variants}
    phases: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in variants}
    try:
        bench.build()
        bench.start_broker()
        for rep in range(args.reps):
            order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
            for label, _ in order:
                launcher = launchers[label]
                phases[label].append(phases_of(launcher.parent / "agent"))
                bench.procmon = str(launcher)
                bench.attached_status = {}
                LAST_END.clear()
                res = bench.session("full", rep, loads)
                results[label].append(
                    {
                        "session": dataclasses.asdict(res),
                        "attached": bench.attached_status,
                        "end": dict(LAST_END),
                    }
                )
    finally:
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"variants": variants, "results": results, "phases": phases}))
    print(report(variants, results, phases))
    return 0


def report(
    variants: list[tuple[str, str]],
    results: dict[str, list[dict[str, Any]]],
    phases: dict[str, list[dict[str, Any]]],
) -> str:
    lines = [
        "| variant | rev | start-up to first event, s (median; each) | online status, s | "
        "VmHWM after attach, MB | VmRSS after attach, MB | peak RSS (VmHWM) after loads, MB "
        "(max; each) | VmRSS after loads, MB |",
        "|---|---|---|---:|---:|---:|---|---:|",
    ]
    for label, rev in variants:
        rows = [r for r in results[label] if not r["session"]["error"]]
        startup = [r["session"]["startup_s"] for r in rows if r["session"]["startup_s"]]
        online = [r["session"]["online_s"] for r in rows if r["session"]["online_s"]]
        hwm_att = [r["attached"].get("VmHWM", 0) for r in rows]
        rss_att = [r["attached"].get("VmRSS", 0) for r in rows]
        hwm_end = [r["end"].get("VmHWM", 0) for r in rows]
        rss_end = [r["end"].get("VmRSS", 0) for r in rows]
        lines.append(
            f"| {label} | {rev} | {fmt(median(startup), 1, 3)} "
            f"({', '.join(f'{s:.2f}' for s in startup)}) | {fmt(median(online), 1, 3)} | "
            f"{fmt(median(hwm_att), 1024)} | {fmt(median(rss_att), 1024)} | "
            f"{fmt(max(hwm_end, default=None), 1024)} "
            f"({', '.join(f'{h / 1024:.1f}' for h in hwm_end)}) | "
            f"{fmt(median(rss_end), 1024)} |"
        )
    lines += ["", "In-process phases (median over reps; MB of VmHWM / VmRSS / RssFile):", ""]
    names = list(next(iter(phases.values()))[0]["phases"]) if phases else []
    lines += ["| variant | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, _ in variants:
        cells = []
        for name in names:
            per = [p["phases"][name] for p in phases[label]]
            cells.append(
                " / ".join(
                    fmt(median([float(p[k]) for p in per]), 1024)
                    for k in ("VmHWM", "VmRSS", "RssFile")
                )
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

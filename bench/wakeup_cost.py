#!/usr/bin/env python3
"""What a wakeup costs the agent, before and after, against exitsnoop, in one run.

Arms, rotated in every repetition (A B C, B C A, ...), each started afresh and run under
bench/run.py's steady loads (1k exits/s with 1 worker, 5k/s with 2): `before`, the agent of
git BEFORE (exported and run from the same venv), `now`, this checkout's agent, and
`exitsnoop`. Per load: CPU (user+sys over the load and its drain, % of a core, as run.py),
the agent's wakeups per thread (voluntary context switches), completeness and p99 latency.
With --timers, each agent arm is also run under bench/wakeup_timers.py: drains a second,
events per drain, and the CPU of a drain split into a fixed part per drain and a part per
event (a least-squares fit over the drains), per part of the pipeline.

Usage (root): .venv/bin/python bench/wakeup_cost.py [--reps 4] [--timers] [--before 42c42d8]
Writes bench/wakeup_cost.md and bench/out/wakeup_cost.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from monitors import Monitor, PipelineMonitor
from results_section import write_section
from run import FULL, Bench, Load, LoadResult, steady_loads

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BEFORE = "42c42d8"  # main before the edge-triggered wakeups
ARMS = ("before", "now", "exitsnoop")


def export_before(commit: str, into: Path) -> Path:
    """The agent package of ``commit``, with this checkout's built BPF objects (not tracked)."""
    into.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "agent"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    bpf = REPO / "agent" / "procmon" / "probe" / "bpf"
    shutil.copytree(bpf, into / "agent" / "procmon" / "probe" / "bpf", dirs_exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(into / "agent")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return into / "agent"


def launcher(path: Path, pythonpath: Path | None, timers: Path | None) -> str:
    """An executable that runs `procmon ...` from ``pythonpath`` (or the checkout)."""
    env = f"PYTHONPATH={pythonpath} " if pythonpath else ""
    entry = f"{BENCH / 'wakeup_timers.py'}" if timers else "-m procmon.cli"
    out = f"WAKEUP_TIMERS_OUT={timers} " if timers else ""
    path.write_text(f'#!/bin/sh\n{env}{out}exec {sys.executable} {entry} "$@"\n')
    path.chmod(0o755)
    return str(path)


def switches(pid: int | None) -> tuple[int, int]:
    """Voluntary context switches of the main thread and of the other threads."""
    main = other = 0
    if pid is None:
        return main, other
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        n = int(line.split()[1])
                        if task.name == str(pid):
                            main += n
                        else:
                            other += n
    return main, other


class WakeupBench(Bench):
    """run.py's harness with two agent arms (before, now) besides exitsnoop."""

    def __init__(self, workdir: Path, procmons: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(FULL, workdir, procmons["now"], list(ARMS))
        self.procmons = procmons
        self.wakeups: list[dict[str, Any]] = []
        self.windows: dict[str, tuple[float, float]] = {}  # load: its monotonic start, end

    def monitor(self, key: str) -> Monitor:
        if key in self.procmons:
            m = PipelineMonitor(self.procmons[key], self.port, key=key, label=f"agent {key}")
            m.broker_pid = self.broker.pid if self.broker else None
            return m
        return super().monitor(key)

    def run_load(self, mon: Monitor, load: Load, comm: str, drain_quiet_s: float) -> LoadResult:
        before = switches(mon.pid()) if isinstance(mon, PipelineMonitor) else None
        started = time.monotonic()
        result = super().run_load(mon, load, comm, drain_quiet_s)
        self.windows[load.key] = (started, time.monotonic())
        if before is not None:
            after = switches(mon.pid())
            self.wakeups.append(
                {
                    "arm": mon.key,
                    "load": load.key,
                    "main_per_s": (after[0] - before[0]) / result.seconds,
                    "network_per_s": (after[1] - before[1]) / result.seconds,
                }
            )
        return result


def cpu_runs(workdir: Path, procmons: dict[str, str], reps: int, seconds: float) -> dict[str, Any]:
    bench = WakeupBench(workdir, procmons)
    profile = dataclasses.replace(FULL, steady1k_s=seconds, steady5k_s=seconds)
    loads = steady_loads(profile)
    rows: list[dict[str, Any]] = []
    try:
        bench.build()
        bench.start_broker()
        for rep in range(reps):
            for i in range(len(ARMS)):
                arm = ARMS[(rep + i) % len(ARMS)]
                res = bench.session(arm, rep, loads)
                for r in res.loads:
                    lat = sorted(r.latency_ms)
                    rows.append(
                        {
                            "arm": arm,
                            "rep": rep,
                            "load": r.load,
                            "rate": r.rate,
                            "cpu_pct": None if r.cpu_s is None else 100 * r.cpu_s / r.seconds,
                            "complete": None if r.delivered is None else r.delivered / r.expected,
                            "p99_ms": lat[int(0.99 * (len(lat) - 1))] if lat else None,
                            "loadavg": res.loadavg[0],
                        }
                    )
    finally:
        bench.close()
    return {"rows": rows, "wakeups": bench.wakeups}


def timer_runs(
    workdir: Path, pythonpaths: dict[str, Path | None], seconds: float
) -> dict[str, Any]:
    """Each agent arm under bench/wakeup_timers.py, alternating, at 1k/s and 5k/s."""
    out: dict[str, Any] = {}
    for rep in range(2):
        for arm, path in pythonpaths.items() if rep == 0 else reversed(pythonpaths.items()):
            timers = workdir / f"timers-{arm}-{rep}.json"
            exe = launcher(workdir / f"procmon-timed-{arm}", path, timers)
            bench = WakeupBench(workdir / f"t-{arm}-{rep}", {"now": exe})
            profile = dataclasses.replace(FULL, steady1k_s=seconds, steady5k_s=seconds)
            try:
                bench.build()
                bench.start_broker()
                bench.session("now", rep, steady_loads(profile))
            finally:
                bench.close()
            data = json.loads(timers.read_text())
            for load, (t0, t1) in bench.windows.items():
                fit = fit_steps([s for s in data["steps"] if t0 <= s[0] <= t1], t1 - t0)
                out.setdefault(arm, {}).setdefault(load, []).append(fit)
    return out


def fit_steps(steps: list[Any], seconds: float) -> dict[str, Any]:
    """Drains a second, events a drain, and CPU = fixed per drain + per event, per part."""
    busy = [s for s in steps if s[1] > 0]
    events = sum(s[1] for s in busy)
    xs = [s[1] for s in busy]
    parts = sorted({k for s in busy for k in s[3]})
    fits: dict[str, tuple[float, float]] = {}
    for part in ["total", *parts]:
        ys = [(s[2] if part == "total" else s[3].get(part, 0)) / 1e3 for s in busy]
        if len(set(xs)) > 1:
            slope, intercept = statistics.linear_regression(xs, ys)
            fits[part] = (intercept, slope)
    return {
        "drains_per_s": len(steps) / seconds,
        "events_per_drain": events / max(1, len(busy)),
        "cpu_us_per_event": sum(s[2] for s in busy) / 1e3 / max(1, events),
        "fit_us": fits,
    }


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def render(data: dict[str, Any]) -> str:
    rows = data["cpu"]["rows"]
    lines = [
        "# What a wakeup costs the agent: before and after, against exitsnoop",
        "",
        f"`bench/wakeup_cost.py` ({data['date']}, {os.cpu_count()} cores shared with other "
        f"jobs, load average {data['loadavg_start']:.1f} at the start). *before*: the agent "
        f"of {data['before']}; *now*: this checkout; arms rotated in each of {data['reps']} "
        "repetitions, each started afresh, run.py's steady loads. CPU: user+sys over the load "
        "and its drain, % of one core; the figure is the median over repetitions, the ratio "
        "is taken per repetition and its median given.",
        "",
        "| load | before | now | exitsnoop | before ÷ exitsnoop | now ÷ exitsnoop | p99 "
        "latency before / now | completeness (now) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for load in ("s1k", "s5k"):
        cpu = {
            arm: [r["cpu_pct"] for r in rows if r["arm"] == arm and r["load"] == load]
            for arm in ARMS
        }
        ratios: dict[str, list[float]] = {"before": [], "now": []}
        for rep in range(data["reps"]):
            by = {r["arm"]: r["cpu_pct"] for r in rows if r["rep"] == rep and r["load"] == load}
            for arm in ratios:
                if by.get(arm) and by.get("exitsnoop"):
                    ratios[arm].append(by[arm] / by["exitsnoop"])
        p99 = [r["p99_ms"] for r in rows if r["arm"] == "now" and r["load"] == load]
        p99_before = [r["p99_ms"] for r in rows if r["arm"] == "before" and r["load"] == load]
        lat_before = median([p for p in p99_before if p is not None])
        done = [r["complete"] for r in rows if r["arm"] == "now" and r["load"] == load]
        cells = [f"{m:.2f} %" if (m := median(cpu[a])) else "n/a" for a in ARMS]
        rcells = [f"{m:.2f}x" if (m := median(ratios[a])) else "n/a" for a in ("before", "now")]
        lat = median([p for p in p99 if p is not None])
        lines.append(
            f"| {load} | {' | '.join(cells)} | {' | '.join(rcells)} | "
            f"{'n/a' if lat_before is None else f'{lat_before:.1f}'} / "
            f"{'n/a' if lat is None else f'{lat:.1f} ms'} | "
            f"{100 * min(done):.3f} % |"
            if done
            else f"| {load} | {' | '.join(cells)} | {' | '.join(rcells)} | n/a | n/a |"
        )
    lines += ["", "Per repetition (CPU % before / now / exitsnoop):", ""]
    for load in ("s1k", "s5k"):
        per = []
        for rep in range(data["reps"]):
            by = {r["arm"]: r["cpu_pct"] for r in rows if r["rep"] == rep and r["load"] == load}
            per.append(" / ".join(f"{by[a]:.1f}" if by.get(a) else "-" for a in ARMS))
        lines.append(f"- {load}: " + "; ".join(per))
    wk = data["cpu"]["wakeups"]
    lines += [
        "",
        "Sleeps a second (voluntary context switches; a drain that finds records at once does "
        "not sleep, so the drains a second are in the timer table below; median over "
        "repetitions):",
        "",
        "| load | arm | main thread | MQTT network thread |",
        "|---|---|---:|---:|",
    ]
    for load in ("s1k", "s5k"):
        for arm in ("before", "now"):
            mains = [w["main_per_s"] for w in wk if w["arm"] == arm and w["load"] == load]
            nets = [w["network_per_s"] for w in wk if w["arm"] == arm and w["load"] == load]
            if mains:
                lines.append(
                    f"| {load} | {arm} | {median(mains):.0f} | {median(nets or [0.0]):.0f} |"
                )
    timers = data.get("timers") or {}
    if timers:
        lines += [
            "",
            "## A drain, part by part (bench/wakeup_timers.py)",
            "",
            "Thread CPU of the main thread's drains (one per wakeup), fitted per drain as "
            "*fixed µs + µs per event* (least squares over the drains of a load; two runs per "
            "arm, alternating, the lower total shown). The timers cost about 1 µs each.",
            "",
            "| load | arm | drains/s | events/drain | µs/event, all in | fixed µs/drain | "
            "µs/event (marginal) | fixed: spool append | fixed: socket read+send | fixed: "
            "ack delete |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for load in ("s1k", "s5k"):
            for arm in ("before", "now"):
                runs = timers.get(arm, {}).get(load, [])
                if not runs:
                    continue
                best = min(runs, key=lambda f: f["cpu_us_per_event"])
                fit = best["fit_us"]

                def fixed(part: str, fit: dict[str, Any] = fit) -> str:
                    return f"{fit[part][0]:.0f}" if part in fit else "n/a"

                sock = (
                    f"{fit['Link.read'][0] + fit['Link.flush'][0]:.0f}"
                    if "Link.read" in fit and "Link.flush" in fit
                    else "n/a"
                )
                total = fit.get("total", (float("nan"), float("nan")))
                lines.append(
                    f"| {load} | {arm} | {best['drains_per_s']:.1f} | "
                    f"{best['events_per_drain']:.0f} | {best['cpu_us_per_event']:.1f} | "
                    f"{total[0]:.0f} | {total[1]:.1f} | {fixed('Spool.append_ids')} | {sock} | "
                    f"{fixed('MqttSink._delete_acked_locked')} |"
                )
    return "\n".join(lines) + "\n"


def per_wakeup_section(md: str) -> str:
    """bench/stage_cost.md's "Per wakeup" section: what a wakeup ran, and the figures."""
    body = md.split("\n", 2)[2]  # without the title
    return (
        "## Per wakeup (`bench/wakeup_cost.py`)\n\n"
        "What one wakeup of the agent's main thread runs: the probe's poll (libbpf's epoll, "
        "then the ctypes callback per record), the builder per record, and one `emit` per "
        "chunk of up to 512 events: serialise, one spool transaction (BEGIN IMMEDIATE, one "
        "insert, COMMIT; the WAL's checkpoint every 256 pages), then under the sink's lock one "
        "`recv` of the PUBACKs, a delete transaction every 128 acks (or 0.2 s), the PUBLISH "
        "encoding and one `send`; then the agent's tick (a clock read; stats every "
        "`stats_interval_s`, the watchdog, signal flags: a few µs). No eventfd write to the "
        "network thread while the socket takes the bytes and the window has room.\n\n"
        "The wakeups themselves were the waste: libbpf's poll is level-triggered, so records "
        "that arrived while a batch was built woke the agent again at once, a few records at "
        "a time (*before* below: about twice per kernel wakeup at 1k exits/s, 150-180 drains "
        "a second of 5-30 records at 5k/s). The pipeline now waits for the kernel's wakeups "
        'edge-triggered (docs/design.md, "Probe wakeups"): about 25-30 drains a second at '
        "both rates, of 40 to 200 records. A drain's fixed CPU (its cost at zero events, "
        "fitted over the drains; imprecise when drains are all of one size) is a few hundred "
        "µs, cold caches included; the agent's tick is a few µs of it. What is left is the "
        "cost per event, about 22-23 µs live against 17-20 µs warm (the stage table above), "
        "mostly build/validate (pydantic): the 2x goal needs that cut, not fewer wakeups.\n\n"
        + body
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0, help="each steady load's length")
    ap.add_argument("--before", default=BEFORE, help="the git commit of the `before` arm")
    ap.add_argument("--timers", action="store_true", help="also the part-by-part timer runs")
    ap.add_argument("--out", type=Path, default=BENCH / "wakeup_cost.md")
    ap.add_argument("--json", type=Path, default=BENCH / "out" / "wakeup_cost.json")
    ap.add_argument(
        "--stage-cost",
        type=Path,
        default=BENCH / "stage_cost.md",
        help="where the per-wakeup section goes",
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("wakeup_cost: run as root (the monitors load eBPF programs)")
    shm = Path("/dev/shm")
    workdir = Path(tempfile.mkdtemp(prefix="procmon-wakeup-", dir=shm if shm.is_dir() else None))
    try:
        before = export_before(args.before, workdir / "before")
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(REPO / "agent" / "procmon")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        procmons = {
            "before": launcher(workdir / "procmon-before", before, None),
            "now": launcher(workdir / "procmon-now", None, None),
        }
        data: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "before": args.before,
            "reps": args.reps,
            "loadavg_start": os.getloadavg()[0],
        }
        data["cpu"] = cpu_runs(workdir / "cpu", procmons, args.reps, args.seconds)
        if args.timers:
            data["timers"] = timer_runs(
                workdir, {"before": before, "now": None}, min(args.seconds, 6.0)
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1))
    md = render(data)
    args.out.write_text(md)
    write_section(args.stage_cost, "per-wakeup", per_wakeup_section(md))
    print(md)
    print(f"wrote {args.out}, {args.json} and the per-wakeup section of {args.stage_cost}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

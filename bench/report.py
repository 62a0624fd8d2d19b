"""Turns the harness's raw figures (bench/out/results.json) into results.md and results.png."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

LABELS = {
    "none": "no monitor",
    "full": "procmon full pipeline (agent → mosquitto → subscriber)",
    "probe": "procmon probe only (`tail --json`)",
    "full-bare": "procmon full pipeline, no context (`enrich.enabled = false`)",
    "probe-bare": "procmon probe only, no context (`tail --json --no-context`)",
    "full-frozen": "procmon full pipeline, agent frozen during storms",
    "probe-frozen": "procmon probe only, frozen during storms",
    "full-nokiller": "procmon full pipeline, no killer programs (`probe.capture_killer = false`)",
    "exitsnoop": "libbpf-tools `exitsnoop`",
    "bpftrace": "`bpftrace` printf per exit",
    "forkstat": "`forkstat -e exit -S`",
}
SHORT = {
    "none": "none",
    "full": "procmon\nfull",
    "probe": "procmon\nprobe",
    "full-bare": "procmon full\nno context",
    "probe-bare": "procmon probe\nno context",
    "full-frozen": "procmon full\nfrozen",
    "probe-frozen": "procmon probe\nfrozen",
    "full-nokiller": "procmon full\nno killer",
    "exitsnoop": "exitsnoop",
    "bpftrace": "bpftrace",
    "forkstat": "forkstat",
}
STORMS = [("f1w", "fork 1w"), ("f2w", "fork 2w"), ("spn", "spawn")]
GOAL_RATIO, GOAL_P99_MS, GOAL_CPU_PCT, GOAL_RSS_MB, GOAL_ATTACH_S = 0.97, 50.0, 5.0, 60.0, 0.5
# Issue 17's missed goals: what was measured to cause each, and what is left (2026-11-30;
# the figures behind each are in the files named).
ISSUE17_CAUSES = (
    "**CPU against exitsnoop.** exitsnoop formats one line in C (0.9 % of a core at 1k/s on a "
    "quiet machine); the agent validates, enriches, spools and publishes every event in Python. "
    "Live, that is about 22 µs per event, of which building and validating the pydantic model "
    "is 11-14 µs (stage_cost.md), plus a fixed 200-300 µs per drain paid 25-30 times a second "
    "(wakeup_cost.md). Done: validation of one dict by the model's validator (15.6 → 11.4 µs), "
    "one spool row per batch (spool write 3.3 → 1.7 µs, ack 1.6 → 1.1 µs), waiting for the "
    "kernel's wakeups edge-triggered (drains at 5k/s 164 → 30 a second), batches over the "
    "in-flight window sent from memory. Left: 2x at 1k/s is 1.8 % of a core, about 18 µs per "
    "event all in; validation is part of the product, so what is left is a cheaper way to "
    "validate (one pass over the record into a core schema, no model instance) and fewer drains.",
    "**Peak RSS.** The interpreter with pydantic is 33.8 MB after imports; the 4 MiB ring is "
    "resident twice (libbpf maps its data pages twice: 8.2 MB in smaps); events held between "
    "the ring and their PUBACK add about 10 MB under these loads (startup_rss.md). Done: "
    "pydantic-settings replaced (0.7 MB, 25 ms), ssl only for mqtts:// (3.3 MB), libbpf's "
    "16 MB BTF parse moved into a short-lived loader child (VmHWM after attach 56 → 44 MB). "
    "Left: a ring consumer that maps the data once, and a tighter bound on events in flight.",
    "**Start-up.** 0.31 s = imports (about 0.14 s, mostly pydantic) + attach 0.055 s + the "
    "/proc seed 0.01 s + this harness's 50 ms canary period and the 40 ms wakeup latency. Left: "
    "overlapping the imports with the loader child (about 30-40 ms), building the models lazily.",
    "**2-worker fork storm.** Two workers and the agent share two vCPUs; the burst deferral "
    "keeps the agent off the CPU while the burst lasts, but the probe's in-kernel cost per "
    "exit stays (storm_cost.md). Runs today gave 0.83, 0.87, 0.97 and 1.08: within one run "
    "ratios move by about ±10 % here, so this figure cannot be called either way on this "
    "machine. Left: a quieter host for the measure, and the in-kernel cost per exit.",
    "**The baseline's bias.** Found: the guest never polls before halting "
    "(`guest_halt_poll_ns = 0`), so an unpinned storm's parent and child wake each other's vCPU "
    "out of HLT, and any monitor keeping the other vCPU busy spares the baseline that cost. "
    "Fixed in the method: single-worker storms run pinned to one CPU in every configuration "
    "(the unpinned run is kept beside it). exitsnoop went from 1.11-1.43 unpinned to 0.79-1.01 "
    "pinned; procmon's own 1.04-1.05 in this run (0.99 in another) is within the run-to-run "
    "spread. Left: more repetitions to narrow that spread.",
)


# Issue 17's goals, each with the figure of the run it started from (results.md of 2026-11-27,
# the run the issue quotes): (name, target, bound, at_least, before, format).
CPU_VS_EXITSNOOP = 2.0
GOAL_RSS17_MB, GOAL_STARTUP_S, MAX_BASELINE_BIAS = 40.0, 0.2, 1.03
BEFORE_CPU1 = (4.4, 1.1)  # agent, exitsnoop: % of a core at 1k/s
BEFORE_CPU5 = (15.8, 5.2)  # the same at 5k/s
BEFORE: dict[str, float] = {
    "rss": 57.0,
    "startup": 0.36,
    "f2w": 0.946,  # 0.78-0.83 in the issue's re-runs on another machine of the kind
    "bias": 1.133,  # the highest 1-worker ratio of any monitor (bpftrace)
}


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


NA = "n/a"


def _fmt(x: float | None, spec: str, unit: str = "") -> str:
    return NA if x is None else f"{format(x, spec)}{unit}"


class Figures:
    """Medians and ratios per configuration, from one run's sessions."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.configs: list[str] = data["configs"]
        ok = [s for s in data["sessions"] if not s["error"]]
        self.errors = [s for s in data["sessions"] if s["error"]]
        # rates[config][load][rep]
        self.rates: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        self.delivered: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.cpu: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.other_cpu: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.rss: dict[str, list[int]] = defaultdict(list)
        self.startup: dict[str, list[float]] = defaultdict(list)
        self.online: list[float] = []
        for s in ok:
            c = s["config"]
            if s["peak_rss_kb"]:
                self.rss[c].append(s["peak_rss_kb"])
            if s["startup_s"] is not None:
                self.startup[c].append(s["startup_s"])
            if s["online_s"] is not None:
                self.online.append(s["online_s"])
            for r in s["loads"]:
                self.rates[c][r["load"]][s["rep"]] = r["rate"]
                if r["delivered"] is not None:
                    self.delivered[c].append((r["delivered"], r["expected"]))
                if r["cpu_s"] is not None and r["load"] in ("s1k", "s5k"):
                    self.cpu[c][r["load"]].append(100 * r["cpu_s"] / r["seconds"])
                    helpers = sum(r["other_cpu_s"].values())
                    self.other_cpu[c][r["load"]].append(100 * helpers / r["seconds"])
                if r["load"] == "s1k":
                    self.latency[c].extend(r["latency_ms"])

    def rate(self, config: str, load: str) -> float | None:
        return _median(list(self.rates[config][load].values()))

    def ratio(self, config: str, load: str) -> float | None:
        """Median over repetitions of this configuration's rate / the no-monitor rate of the
        same repetition."""
        base = self.rates["none"][load]
        mine = self.rates[config][load]
        return _median([mine[rep] / base[rep] for rep in mine if base.get(rep)])

    def completeness(self, config: str) -> tuple[float | None, int, int]:
        got = sum(d for d, _ in self.delivered[config])
        want = sum(e for _, e in self.delivered[config])
        return (100 * got / want if want else None), got, want

    def cpu_pct(self, config: str, load: str) -> float | None:
        return _median(self.cpu[config][load])

    def helper_cpu_pct(self, config: str, load: str) -> float | None:
        return _median(self.other_cpu[config][load])

    def rss_mb(self, config: str) -> float | None:
        return max(self.rss[config]) / 1024 if self.rss[config] else None

    def startup_s(self, config: str) -> float | None:
        return _median(self.startup[config])


def _long_runs(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in data.get("long_runs", []):
        for r in s["loads"]:
            out[r["load"]] = {**r, "error": s["error"]}
        if s["error"] and not s["loads"]:
            out["error"] = {"error": s["error"]}
    return out


def _cpu_vs_exitsnoop(f: Figures, load: str) -> tuple[float | None, str]:
    mine, theirs = f.cpu_pct("full", load), f.cpu_pct("exitsnoop", load)
    if mine is None or not theirs:
        return None, NA
    return mine / theirs, f"{mine:.1f} % vs {theirs:.1f} % = {mine / theirs:.1f}x"


def _worst_baseline_bias(f: Figures) -> float | None:
    ratios = [f.ratio(c, "f1w") for c in f.configs if c != "none"]
    known = [r for r in ratios if r is not None]
    return max(known) if known else None


Issue17Row = tuple[str, str, str, str, float | None, float, bool]


def issue17_rows(f: Figures) -> list[Issue17Row]:
    """(goal, target, before, after, value, bound, at_least) for issue 17's goals."""
    r1, s1 = _cpu_vs_exitsnoop(f, "s1k")
    r5, s5 = _cpu_vs_exitsnoop(f, "s5k")
    b1, b5 = BEFORE_CPU1, BEFORE_CPU5
    rss, start = f.rss_mb("full"), f.startup_s("full")
    r2, bias = f.ratio("full", "f2w"), _worst_baseline_bias(f)
    pct, _, _ = f.completeness("full")
    return [
        (
            "agent CPU at 1k/s vs exitsnoop",
            f"≤ {CPU_VS_EXITSNOOP:.0f}x",
            f"{b1[0]} % vs {b1[1]} % = {b1[0] / b1[1]:.1f}x",
            s1,
            r1,
            CPU_VS_EXITSNOOP,
            False,
        ),
        (
            "agent CPU at 5k/s vs exitsnoop",
            f"≤ {CPU_VS_EXITSNOOP:.0f}x",
            f"{b5[0]} % vs {b5[1]} % = {b5[0] / b5[1]:.1f}x",
            s5,
            r5,
            CPU_VS_EXITSNOOP,
            False,
        ),
        (
            "agent peak RSS (4 MiB ring)",
            f"≤ {GOAL_RSS17_MB:.0f} MB",
            f"{BEFORE['rss']} MB",
            _fmt(rss, ".1f", " MB"),
            rss,
            GOAL_RSS17_MB,
            False,
        ),
        (
            "start-up to first event (CO-RE)",
            f"≤ {GOAL_STARTUP_S} s",
            f"{BEFORE['startup']} s",
            _fmt(start, ".2f", " s"),
            start,
            GOAL_STARTUP_S,
            False,
        ),
        (
            "fork-storm ratio, 2 workers",
            f"≥ {GOAL_RATIO}",
            f"{BEFORE['f2w']}",
            _fmt(r2, ".3f"),
            r2,
            GOAL_RATIO,
            True,
        ),
        (
            "highest 1-worker storm ratio of any monitor (bias)",
            f"≤ {MAX_BASELINE_BIAS}",
            f"{BEFORE['bias']}",
            _fmt(bias, ".3f"),
            bias,
            MAX_BASELINE_BIAS,
            False,
        ),
        (
            "completeness, all loads",
            "100.000 %",
            "100.000 %",
            _fmt(pct, ".3f", " %"),
            pct,
            100.0,
            True,
        ),
    ]


def render_markdown(data: dict[str, Any], plot_name: str = "results.png") -> str:
    f = Figures(data)
    m = data["machine"]
    p = data["profile"]
    la0 = ", ".join(f"{x:.2f}" for x in m["loadavg_start"])
    la1 = ", ".join(f"{x:.2f}" for x in m.get("loadavg_end", m["loadavg_start"]))
    v = m["versions"]
    out: list[str] = [
        "# procmon benchmark results",
        "",
        f"Generated by `make bench` (`bench/run.py`, {data.get('mode', 'full')} mode) on "
        f"{m['date']}, procmon `{m['procmon_git']}`, in {m['elapsed_s']:.0f} s.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['os']}, "
        f"kernel {m['kernel']}.",
        f"- Load average (1, 5, 15 min) at start: {la0}; at end: {la1}. The machine was "
        "shared with other jobs: absolute rates are noisy, ratios compare runs of the same "
        "invocation, interleaved.",
        f"- Peers: libbpf-tools {v['libbpf-tools']}, bpftrace {v['bpftrace']}, forkstat "
        f"{v['forkstat']}; mosquitto {v['mosquitto']}; Python {v['python']}.",
        f"- {p['reps']} interleaved repetitions of the storms (fork {p['fork1_n']} with 1 worker, "
        f"{p['fork2_n']} with 2, spawn {p['spawn_n']}); the first {p['steady_reps']} also ran "
        f"steady 1k/s for {p['steady1k_s']:.0f} s and 5k/s for {p['steady5k_s']:.0f} s. "
        "Medians over repetitions.",
        "",
        f"![throughput ratio and CPU per configuration]({plot_name})",
        "",
        "## Throughput under storms (exits/s, ratio to no monitor)",
        "",
        "| configuration | " + " | ".join(f"{name} exits/s | ratio" for _, name in STORMS) + " |",
        "|---|" + "---:|---:|" * len(STORMS),
    ]
    for c in f.configs:
        cells = []
        for key, _ in STORMS:
            cells.append(_fmt(f.rate(c, key), ",.0f"))
            cells.append("1" if c == "none" else _fmt(f.ratio(c, key), ".3f"))
        out.append(f"| {LABELS[c]} | " + " | ".join(cells) + " |")
    if any(f.rates[c].get("f1u") for c in f.configs):
        out += [
            "",
            "### The baseline's bias: the 1-worker fork storm pinned (above) and unpinned",
            "",
            "Unpinned, the storm's parent and child ping-pong between the two vCPUs, and each "
            "wakeup takes the other vCPU out of HLT (haltpoll with `guest_halt_poll_ns = 0`: a "
            "VM exit and an IPI). A monitor that keeps the other vCPU busy spares the baseline "
            "that cost, which is why every monitor used to beat no monitor. The harness now "
            "runs single-worker storms on one CPU in every configuration (`PIN_CPU`, "
            "`bench/run.py`); the unpinned run is kept for comparison.",
            "",
            "| configuration | unpinned exits/s | unpinned ratio | pinned exits/s | pinned ratio |",
            "|---|---:|---:|---:|---:|",
        ]
        for c in f.configs:
            cells = [
                _fmt(f.rate(c, "f1u"), ",.0f"),
                "1" if c == "none" else _fmt(f.ratio(c, "f1u"), ".3f"),
                _fmt(f.rate(c, "f1w"), ",.0f"),
                "1" if c == "none" else _fmt(f.ratio(c, "f1w"), ".3f"),
            ]
            out.append(f"| {LABELS[c]} | " + " | ".join(cells) + " |")
    out += [
        "",
        "## Completeness, latency, cost, start-up",
        "",
        "| configuration | completeness (all loads) | p50 / p99 exit→subscriber at 1k/s "
        "| CPU at 1k/s (% of a core) | CPU at 5k/s | peak RSS | start-up to first event |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in f.configs:
        if c == "none":
            continue
        pct, got, want = f.completeness(c)
        complete = NA if pct is None else f"{pct:.3f} % ({got:,}/{want:,})"
        lat = f.latency.get(c, [])
        latency = (
            f"{_fmt(_pct(lat, 0.5), '.1f')} / {_fmt(_pct(lat, 0.99), '.1f')} ms" if lat else NA
        )
        cpu1, cpu5 = f.cpu_pct(c, "s1k"), f.cpu_pct(c, "s5k")
        cpu1_s, cpu5_s = _fmt(cpu1, ".1f", " %"), _fmt(cpu5, ".1f", " %")
        if c.startswith("full"):
            h1, h5 = f.helper_cpu_pct(c, "s1k"), f.helper_cpu_pct(c, "s5k")
            cpu1_s += f" (+{_fmt(h1, '.1f')} broker+sub)"
            cpu5_s += f" (+{_fmt(h5, '.1f')} broker+sub)"
        start = _fmt(f.startup_s(c), ".2f", " s")
        if c == "full" and f.online:
            start += f"; `online` after {_median(f.online):.2f} s"
        out.append(
            f"| {LABELS[c]} | {complete} | {latency} | {cpu1_s} | {cpu5_s} | "
            f"{_fmt(f.rss_mb(c), '.1f', ' MB')} | {start} |"
        )
    out += [
        "| procmon bcc backend, bcc `exitsnoop` | see VM test | n/a | n/a | n/a | see VM test "
        "| see VM test |",
        "",
    ]
    attach = data.get("core_attach_s", [])
    longs = _long_runs(data)
    out += ["## Long runs (full pipeline)", ""]
    for key, what in (("lng", f"steady 5k/s for {p['long_s']:.0f} s"), ("bst", "burst")):
        r = longs.get(key)
        if r is None:
            err = longs.get("error", {}).get("error", "not run")
            out.append(f"- {what}: {err}")
            continue
        out.append(
            f"- {what}: {r['exits']:,} exits at {r['rate']:,.0f}/s; subscriber received "
            f"{r['delivered']:,} of {r['expected']:,} = "
            f"{100 * r['delivered'] / r['expected']:.3f} %."
        )
    stats = next((s.get("agent_stats") for s in data.get("long_runs", [])), None)
    if stats:
        keys = ("events_seen", "published", "dropped_kernel", "dropped_queue", "dropped_spool")
        out.append(
            "- the agent's counters at the end of the long runs (every exit on the host, the "
            "loads' and others'): " + ", ".join(f"{k} {stats.get(k, NA)}" for k in keys) + "."
        )
    out += [""]

    # --- goals --------------------------------------------------------------------------------
    def verdict(ok: bool | None) -> str:
        return NA if ok is None else ("met" if ok else "**missed**")

    r1, r2 = f.ratio("full", "f1w"), f.ratio("full", "f2w")
    lng = longs.get("lng")
    lng_pct = 100 * lng["delivered"] / lng["expected"] if lng and lng["expected"] else None
    bst = longs.get("bst")
    bst_pct = 100 * bst["delivered"] / bst["expected"] if bst and bst["expected"] else None
    p99 = _pct(f.latency.get("full", []), 0.99)
    cpu1 = f.cpu_pct("full", "s1k")
    rss = f.rss_mb("full")
    att = _median(attach)
    rows = [
        ("fork-storm ratio, 1 worker", f"≥ {GOAL_RATIO}", _fmt(r1, ".3f"), r1, GOAL_RATIO, True),
        ("fork-storm ratio, 2 workers", f"≥ {GOAL_RATIO}", _fmt(r2, ".3f"), r2, GOAL_RATIO, True),
        (
            f"completeness at 5k/s for {p['long_s']:.0f} s",
            "100.000 %",
            _fmt(lng_pct, ".3f", " %"),
            lng_pct,
            100.0,
            True,
        ),
        ("no loss after the burst", "100.000 %", _fmt(bst_pct, ".3f", " %"), bst_pct, 100.0, True),
        (
            "p99 exit→subscriber at 1k/s",
            f"≤ {GOAL_P99_MS:.0f} ms",
            _fmt(p99, ".1f", " ms"),
            p99,
            GOAL_P99_MS,
            False,
        ),
        (
            "agent CPU at 1k/s",
            f"≤ {GOAL_CPU_PCT:.0f} % of a core",
            _fmt(cpu1, ".1f", " %"),
            cpu1,
            GOAL_CPU_PCT,
            False,
        ),
        (
            "agent peak RSS",
            f"≤ {GOAL_RSS_MB:.0f} MB",
            _fmt(rss, ".1f", " MB"),
            rss,
            GOAL_RSS_MB,
            False,
        ),
        (
            "CO-RE attach (`procmon check`)",
            f"≤ {GOAL_ATTACH_S} s",
            _fmt(att, ".3f", " s"),
            att,
            GOAL_ATTACH_S,
            False,
        ),
    ]
    out += ["## Goals", "", "| goal | target | measured | |", "|---|---|---:|---|"]
    for name, target, shown, value, bound, at_least in rows:
        ok = None if value is None else (value >= bound if at_least else value <= bound)
        out.append(f"| {name} | {target} | {shown} | {verdict(ok)} |")
    out += [""]
    out += [
        "### Issue 17: the full pipeline within 2x of exitsnoop, and a benchmark without bias",
        "",
        "Before: the run this file showed when the issue was filed (2026-11-27, same harness "
        "but unpinned storms). After: this run. exitsnoop's figures are from the same run.",
        "",
        "| goal | target | before | after | |",
        "|---|---|---:|---:|---|",
    ]
    for name, target, before, after, value, bound, at_least in issue17_rows(f):
        ok = None if value is None else (value >= bound if at_least else value <= bound)
        out.append(f"| {name} | {target} | {before} | {after} | {verdict(ok)} |")
    out += [""]
    out += ["#### Where a goal is missed: the cause found, and what is left", ""]
    out += [f"- {line}" for line in ISSUE17_CAUSES] + [""]
    if f.errors:
        out += ["## Sessions that failed", ""]
        out += [f"- {s['config']} rep {s['rep'] + 1}: {s['error']}" for s in f.errors]
        out += [""]
    out += [
        "## How these are measured",
        "",
        "- Each repetition starts every monitor afresh, in rotated order, and runs the same "
        "loads. A load runs under a unique comm (a copy of `bench/forkstorm.c`'s binary, or of "
        "`/bin/true` spawned by `bench/spawnstorm.c`); completeness counts the exits each "
        "monitor's own output shows for that comm, against the exits the load made (children, "
        "plus forkstorm's workers and main process).",
        "- The full pipeline's count and latency come from `mosquitto_sub -q 1` on the "
        "agent's topics, with the receive time (`%U`) per message; latency is that receive time "
        "minus the event's `time` field. The probe-only, exitsnoop, bpftrace and forkstat "
        "outputs go to a tmpfs file (line-buffered for the C tools) and are counted there.",
        "- CPU is user+sys from `/proc/<pid>/stat` of the monitor process from the start of "
        "a steady load to the end of its drain, divided by the load's duration (% of one "
        "core); for the full pipeline it is the agent's, with the "
        "broker's and the subscriber's shown apart. Peak RSS is `VmHWM`, the highest over the "
        "repetitions.",
        "- Start-up to first event: from spawning the monitor until a uniquely named "
        "`/bin/true`, run every 50 ms, appears in its output (an upper bound on attach). CO-RE "
        "attach is what `procmon check --backend core` reports.",
        "- forkstat reads names from /proc; exits of processes already reaped show as "
        "`<unknown>`, so its completeness is a lower bound.",
    ]
    if any(c.endswith("-frozen") for c in f.configs):
        out.append(
            "- *Frozen* configurations: the monitor's process (for the full pipeline, the "
            "agent) is stopped with SIGSTOP before each storm and continued after it. The probe "
            "keeps running in the kernel and queues records in the ring buffer; every bit of "
            "userspace work waits for the storm's end. Their storm ratio is the probe's "
            "in-kernel cost alone; their completeness shows whether the ring held the storm. "
            "Steady loads run unfrozen."
        )
    out.append("")
    return "\n".join(out)


def _before_value(goal: str) -> float:
    b = BEFORE
    if "1k/s" in goal:
        return BEFORE_CPU1[0] / BEFORE_CPU1[1]
    if "5k/s" in goal:
        return BEFORE_CPU5[0] / BEFORE_CPU5[1]
    if "RSS" in goal:
        return float(b["rss"])
    if "start-up" in goal:
        return float(b["startup"])
    if "2 workers" in goal:
        return float(b["f2w"])
    return float(b["bias"])


def render_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = Figures(data)
    configs = [c for c in f.configs if c != "none"]
    x = list(range(len(configs)))
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 4.5))
    width = 0.8 / len(STORMS)
    for i, (key, name) in enumerate(STORMS):
        vals = [f.ratio(c, key) or 0.0 for c in configs]
        ax1.bar([xi + (i - 1) * width for xi in x], vals, width, label=name)
    ax1.axhline(GOAL_RATIO, color="k", ls="--", lw=1, label=f"goal {GOAL_RATIO}")
    ax1.set_xticks(x, [SHORT[c] for c in configs])
    ax1.set_ylabel("exits/s ÷ no-monitor exits/s")
    top = max([f.ratio(c, k) or 0.0 for c in configs for k, _ in STORMS] + [1.0])
    ax1.set_ylim(0, top + 0.1)
    ax1.set_title("Storm throughput ratio (median)")
    ax1.legend(fontsize=8, loc="lower left")
    w2 = 0.38
    for i, (key, name) in enumerate((("s1k", "1k exits/s"), ("s5k", "5k exits/s"))):
        own = [f.cpu_pct(c, key) or 0.0 for c in configs]
        helpers = [f.helper_cpu_pct(c, key) or 0.0 for c in configs]
        xs = [xi + (i - 0.5) * w2 for xi in x]
        ax2.bar(xs, own, w2, label=f"monitor at {name}", color=f"C{i}")
        ax2.bar(
            xs,
            helpers,
            w2,
            bottom=own,
            color=f"C{i}",
            alpha=0.35,
            label=f"broker + subscriber at {name}",
        )
    ax2.axhline(GOAL_CPU_PCT, color="k", ls="--", lw=1, label=f"goal {GOAL_CPU_PCT:.0f} % at 1k/s")
    ax2.set_xticks(x, [SHORT[c] for c in configs])
    ax2.set_ylabel("% of one core (user+sys)")
    ax2.set_title("Monitor CPU at a steady rate (median)")
    ax2.legend(fontsize=8)
    # Issue 17's goals: before and after, each as a share of its bound (1 = on the bound).
    goals = [row for row in issue17_rows(f) if row[4] is not None and "completeness" not in row[0]]
    short = {
        "agent CPU at 1k/s vs exitsnoop": "CPU 1k/s\n÷ exitsnoop",
        "agent CPU at 5k/s vs exitsnoop": "CPU 5k/s\n÷ exitsnoop",
        "agent peak RSS (4 MiB ring)": "peak RSS",
        "start-up to first event (CO-RE)": "start-up",
        "fork-storm ratio, 2 workers": "fork 2w\nratio",
        "highest 1-worker storm ratio of any monitor (bias)": "highest 1w\nratio (bias)",
    }
    names = [short.get(row[0], row[0]) for row in goals]
    before = [_before_value(row[0]) for row in goals]
    after = [row[4] or 0.0 for row in goals]
    gx = list(range(len(goals)))
    ax3.bar([g - 0.2 for g in gx], [b / row[5] for b, row in zip(before, goals, strict=True)], 0.4,
            label="before", color="C7")  # fmt: skip
    ax3.bar([g + 0.2 for g in gx], [a / row[5] for a, row in zip(after, goals, strict=True)], 0.4,
            label="after", color="C2")  # fmt: skip
    ax3.axhline(1.0, color="k", ls="--", lw=1, label="goal's bound")
    ax3.set_xticks(gx, names, fontsize=8)
    ax3.set_ylabel("figure ÷ goal's bound (≥ goals: below 1 is short)")
    ax3.set_title("Issue 17 goals, before and after")
    ax3.legend(fontsize=8)
    m = data["machine"]
    fig.suptitle(
        f"procmon bench, {m['date']}, {m['cores']} cores, load {m['loadavg_start'][0]:.1f}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

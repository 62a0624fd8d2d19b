#!/usr/bin/env python3
"""procmon benchmark: procmon against the tools users would pick instead, in one run.

Configurations run interleaved (A B C ... A B C ...), each repetition in a fresh session of the
monitor, under the same loads: fork storms with 1 and 2 workers, a posix_spawn storm and
steady-rate fork loads. Every load runs under a comm of its own (a copy of the generator or of
/bin/true with a unique name), so each monitor's output is counted per load. Ratios compare
each configuration with the no-monitor runs of the same invocation.

Usage (root): .venv/bin/python bench/run.py [--quick]. Writes bench/results.md,
bench/results.png and the raw figures in bench/out/results.json. Numbers are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from monitors import (
    CommandMonitor,
    Monitor,
    PipelineMonitor,
    Proc,
    cpu_seconds,
    peak_rss_kb,
)
from results_section import sections

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TRUE = "/bin/true"
CANARY_EVERY_S = 0.05
# Single-worker storms run on this one CPU, in every configuration. Unpinned, the parent and
# its child ping-pong between the two vCPUs: each fork and each exit wakes the other vCPU
# out of HLT (the guest's haltpoll driver has guest_halt_poll_ns = 0 here), a VM exit and an
# IPI every time. Any monitor that keeps the other vCPU busy or awake saves the baseline that
# cost, so every monitor, exitsnoop included, "beat" no monitor (ratios 1.05-1.17). Pinned,
# no configuration pays it and the ratio is the monitor's own cost (bench/README.md).
PIN_CPU = min(os.sched_getaffinity(0))
ATTACH_TIMEOUT_S = 30.0
SETTLE_S = 0.3


@dataclass(frozen=True)
class Profile:
    reps: int  # interleaved repetitions of the storm loads
    steady_reps: int  # of those, how many also run the steady-rate loads
    fork1_n: int
    fork2_n: int
    spawn_n: int
    steady1k_s: float
    steady5k_s: float
    long_s: float  # the steady 5k/s completeness run (full pipeline)
    burst_n: int  # the 17k/s burst (full pipeline)
    check_runs: int  # `procmon check` attach-time samples


FULL = Profile(
    reps=5,
    steady_reps=3,
    fork1_n=15000,
    fork2_n=25000,
    spawn_n=2000,
    steady1k_s=8,
    steady5k_s=5,
    long_s=60,
    burst_n=100000,
    check_runs=5,
)
QUICK = Profile(
    reps=2,
    steady_reps=1,
    fork1_n=8000,
    fork2_n=12000,
    spawn_n=1500,
    steady1k_s=6,
    steady5k_s=4,
    long_s=15,
    burst_n=30000,
    check_runs=3,
)


@dataclass(frozen=True)
class Load:
    key: str  # f1w f2w spn s1k s5k lng bst
    label: str
    kind: str  # fork or spawn
    n: int
    workers: int
    rate: float  # 0: as fast as possible
    # Run the generator and its children on one CPU (single-worker storms): see PIN_CPU.
    pinned: bool = False

    def expected_exits(self) -> int:
        """Exits under the load's comm: children, plus forkstorm's workers and main process
        (they carry the copied binary's name too); spawned children only for spawnstorm."""
        return self.n + (self.workers + 1 if self.kind == "fork" else 0)


def storm_loads(p: Profile) -> list[Load]:
    return [
        Load("f1w", "fork storm, 1 worker", "fork", p.fork1_n, 1, 0, pinned=True),
        # The old method, kept to show the bias it had (report.py: "The baseline's bias").
        Load("f1u", "fork storm, 1 worker, unpinned", "fork", p.fork1_n, 1, 0),
        Load("f2w", "fork storm, 2 workers", "fork", p.fork2_n, 2, 0),
        Load("spn", "spawn storm (posix_spawn /bin/true)", "spawn", p.spawn_n, 1, 0, pinned=True),
    ]


def steady_loads(p: Profile) -> list[Load]:
    return [
        Load("s1k", "steady 1k exits/s", "fork", int(1000 * p.steady1k_s), 1, 1000),
        Load("s5k", "steady 5k exits/s", "fork", int(5000 * p.steady5k_s), 2, 5000),
    ]


@dataclass
class LoadResult:
    load: str
    exits: int
    seconds: float
    rate: float
    expected: int
    delivered: int | None
    cpu_s: float | None  # the monitor's user+sys during the load
    other_cpu_s: dict[str, float] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)


@dataclass
class SessionResult:
    config: str
    rep: int
    startup_s: float | None  # spawn to the first canary exit seen in the monitor's output
    online_s: float | None  # full pipeline: spawn to the retained `online` status
    peak_rss_kb: int | None
    loads: list[LoadResult]
    loadavg: tuple[float, float, float]
    error: str = ""
    # Full pipeline: the agent's final counters (events_seen, published, dropped_kernel, ...).
    agent_stats: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(
        self,
        profile: Profile,
        workdir: Path,
        procmon: str,
        configs: list[str],
        agent_options: dict[str, dict[str, str]] | None = None,
        long_runs: bool = True,
    ) -> None:
        self.p = profile
        self.agent_options = agent_options or {}
        self.long_runs = long_runs
        self.workdir = workdir
        self.procmon = procmon
        self.configs = configs
        self.run_id = secrets.token_hex(3)
        self.sessions = 0
        self.broker: Proc | None = None
        self.port = 0
        self.bin = workdir / "bin"
        self.bin.mkdir()

    # --- set-up -------------------------------------------------------------------------------

    def build(self) -> None:
        # The package's bytecode, as an installed package has it (pip, dh_python): a checkout
        # run under PYTHONDONTWRITEBYTECODE would compile every module at each start-up.
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(REPO / "agent" / "procmon")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if not cc:
            raise SystemExit("bench: no C compiler (cc, gcc or clang) found")
        for name in ("forkstorm", "spawnstorm"):
            subprocess.run(
                [cc, "-O2", "-Wall", "-o", str(self.bin / name), str(BENCH / f"{name}.c")],
                check=True,
            )

    def start_broker(self) -> None:
        """mosquitto on a free loopback port with a throw-away config (bounded retries)."""
        for _ in range(5):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            conf = self.workdir / "mosquitto.conf"
            # As the ansible broker role, but anonymous on loopback and with a deep per-client
            # queue: the harness measures the agent, not the broker's drop policy. No in-flight
            # cap either (mosquitto's default gives MQTT 5 clients a Receive Maximum of 20).
            conf.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "max_queued_messages 1000000\nmax_inflight_messages 0\n"
                "log_dest stderr\nlog_type error\n"
                "log_type warning\n"
            )
            self.broker = Proc(["mosquitto", "-c", str(conf)], None, self.workdir / "mosquitto.err")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.broker.alive():
                with socket.socket() as s, contextlib.suppress(OSError):
                    s.settimeout(0.2)
                    s.connect(("127.0.0.1", self.port))
                    return
                time.sleep(0.05)
            self.broker.stop()
        raise SystemExit(
            f"bench: mosquitto did not start: {self.broker and self.broker.stderr_tail()}"
        )

    def monitor(self, key: str) -> Monitor:
        if key == "none":
            return Monitor()
        frozen = key.endswith("-frozen")
        if key in ("full", "full-bare", "full-frozen", "full-nokiller"):
            # full-bare: the same without exec/cgroup context (enrichment off); full-nokiller:
            # without the killer programs (signal_generate, mark_victim)
            bare = {"enrich": {"enabled": "false"}} if key == "full-bare" else {}
            if key == "full-nokiller":
                bare = {"probe": {**self.agent_options.get("probe", {}), "capture_killer": "false"}}
            m = PipelineMonitor(
                self.procmon,
                self.port,
                options={**self.agent_options, **bare},
                key=key,
                label="procmon full pipeline"
                + (", no context" if key == "full-bare" else "")
                + (
                    ", no killer probe (`probe.capture_killer = false`)"
                    if key == "full-nokiller"
                    else ""
                )
                + (", agent frozen in storms" if frozen else ""),
            )
            m.broker_pid = self.broker.pid if self.broker else None
            m.frozen_in_storms = frozen
            return m
        if key in ("probe", "probe-bare", "probe-frozen"):
            extra = ["--no-context"] if key == "probe-bare" else []
            c = CommandMonitor(
                key,
                "procmon probe only (tail --json"
                + (" --no-context" if extra else "")
                + (", frozen in storms)" if frozen else ")"),
                [self.procmon, "tail", "--json", *extra],
                b'"comm":"%s"',
            )
            c.frozen_in_storms = frozen
            return c
        if key == "exitsnoop":
            # Line-buffered, as on a terminal; fully buffered output would hide attach.
            return CommandMonitor(
                "exitsnoop", "exitsnoop (libbpf-tools)", ["stdbuf", "-oL", "exitsnoop"], b"%s "
            )
        if key == "bpftrace":
            prog = 'tracepoint:sched:sched_process_exit { printf("%d %s\\n", pid, comm); }'
            return CommandMonitor("bpftrace", "bpftrace printf", ["bpftrace", "-e", prog], b" %s\n")
        if key == "forkstat":
            # -e exit: exit events only; -c: the comm; -l: line-buffered; -S: statistics at
            # the end; -D: a bound on its run time (seconds).
            return CommandMonitor(
                "forkstat",
                "forkstat -e exit -S",
                ["forkstat", "-e", "exit", "-c", "-l", "-S", "-D", "3600"],
                b" %s\n",
            )
        raise ValueError(key)

    # --- one session --------------------------------------------------------------------------

    def comm(self, session: int, tag: str) -> str:
        name = f"pb{self.run_id}{session:03d}{tag}"  # 14 chars: fits TASK_COMM_LEN
        assert len(name) <= 15
        return name

    def prepare(self, load: Load, comm: str) -> list[str]:
        """The generator's argv, running under `comm` (on PIN_CPU for a pinned load)."""
        pin = ["taskset", "-c", str(PIN_CPU)] if load.pinned else []
        if load.kind == "fork":
            binary = self.bin / comm
            shutil.copy2(self.bin / "forkstorm", binary)
            return [*pin, str(binary), str(load.n), str(load.workers), str(load.rate)]
        program = self.bin / comm
        shutil.copy2(TRUE, program)
        return [
            *pin,
            str(self.bin / "spawnstorm"),
            str(load.n),
            str(load.workers),
            str(load.rate),
            str(program),
        ]

    def wait_attached(self, mon: Monitor, canary: str) -> float | None:
        """Run a uniquely named /bin/true every 50 ms until the monitor's output shows it."""
        if not mon.counted:
            return None
        program = self.bin / canary
        shutil.copy2(TRUE, program)
        started = time.monotonic()
        attempts = int(ATTACH_TIMEOUT_S / CANARY_EVERY_S)
        for _ in range(attempts):
            subprocess.run([str(program)], check=False, timeout=10)
            if mon.count(canary) > 0:
                return time.monotonic() - started
            if not mon.alive():
                raise RuntimeError(f"{mon.label} exited: {mon.failure()}")
            time.sleep(CANARY_EVERY_S)
        raise RuntimeError(f"{mon.label} showed no canary in {ATTACH_TIMEOUT_S} s")

    def drain(self, mon: Monitor, comm: str, expected: int, quiet_s: float, cap_s: float) -> int:
        """Wait until the monitor has shown `expected` exits of comm, or stopped progressing."""
        last, last_change = -1, time.monotonic()
        deadline = time.monotonic() + cap_s
        while time.monotonic() < deadline:
            n = mon.count(comm)
            if n >= expected:
                return n
            now = time.monotonic()
            if n != last:
                last, last_change = n, now
            elif now - last_change >= quiet_s:
                break
            time.sleep(0.1)
        return mon.count(comm)

    def run_load(self, mon: Monitor, load: Load, comm: str, drain_quiet_s: float) -> LoadResult:
        argv = self.prepare(load, comm)
        pid = mon.pid()
        others = mon.other_pids()
        cpu0 = cpu_seconds(pid)
        other0 = {k: cpu_seconds(v) for k, v in others.items()}
        timeout = 120 + load.n / (load.rate or 500)
        frozen = pid if mon.frozen_in_storms and not load.rate else None
        if frozen is not None:
            os.kill(frozen, signal.SIGSTOP)
        try:
            done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)
        finally:
            if frozen is not None:
                os.kill(frozen, signal.SIGCONT)
        exits, seconds = done.stdout.split()
        delivered = None
        if mon.counted:
            delivered = self.drain(
                mon, comm, load.expected_exits(), drain_quiet_s, 30 + load.n / 2000
            )
        # Up to the end of the drain: a monitor that fell behind pays for it here too.
        cpu1 = cpu_seconds(pid)
        other1 = {k: cpu_seconds(v) for k, v in others.items()}
        other_cpu = {
            k: b - a for k, a in other0.items() if a is not None and (b := other1[k]) is not None
        }
        result = LoadResult(
            load=load.key,
            exits=int(exits),
            seconds=float(seconds),
            rate=int(exits) / float(seconds),
            expected=load.expected_exits(),
            delivered=delivered,
            cpu_s=cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None,
            other_cpu_s=other_cpu,
        )
        if isinstance(mon, PipelineMonitor) and load.rate:
            result.latency_ms = mon.latencies_ms(comm)
        return result

    def session(
        self, key: str, rep: int, loads: list[Load], drain_quiet_s: float = 2.0
    ) -> SessionResult:
        self.sessions += 1
        sid = self.sessions
        mon = self.monitor(key)
        comms = {load.key: self.comm(sid, load.key) for load in loads}
        canary = self.comm(sid, "cny")
        for comm in [*comms.values(), canary]:
            mon.track(comm)
        if isinstance(mon, PipelineMonitor):
            for load in loads:
                if load.rate:
                    mon.track_latency(comms[load.key])
        sdir = self.workdir / f"s{sid:03d}-{key}"
        sdir.mkdir()
        res = SessionResult(key, rep, None, None, None, [], os.getloadavg())
        print(f"  [{sid:3d}] rep {rep + 1} {mon.label:34s}", end="", flush=True)
        t0 = time.monotonic()
        try:
            mon.start(sdir)
            res.startup_s = self.wait_attached(mon, canary)
            time.sleep(SETTLE_S)
            for load in loads:
                r = self.run_load(mon, load, comms[load.key], drain_quiet_s)
                res.loads.append(r)
                got = "" if r.delivered is None else f"/{100 * r.delivered / r.expected:.2f}%"
                print(f" {load.key} {r.rate / 1000:.1f}k{got}", end="", flush=True)
                if not mon.alive():
                    raise RuntimeError(f"{mon.label} exited: {mon.failure()}")
            res.peak_rss_kb = peak_rss_kb(mon.pid())
            if isinstance(mon, PipelineMonitor):
                res.online_s = mon.online_after_s
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            res.error = str(exc)[:500]
            print(f" ERROR {res.error}", end="")
        finally:
            mon.stop()
            if isinstance(mon, PipelineMonitor):
                res.agent_stats = dict(mon.final_stats)
            shutil.rmtree(sdir, ignore_errors=True)
            for comm in [*comms.values(), canary]:
                with contextlib.suppress(OSError):
                    (self.bin / comm).unlink()
        print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
        return res

    # --- attach time --------------------------------------------------------------------------

    def core_attach_times(self) -> list[float]:
        times: list[float] = []
        for _ in range(self.p.check_runs):
            out = subprocess.run(
                [self.procmon, "check", "--backend", "core"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout
            m = re.search(r"attached in ([0-9.]+) s", out)
            if m:
                times.append(float(m.group(1)))
        return times

    # --- the whole run ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        info = machine_info()
        print(f"procmon bench: {info['cpu']}, load {info['loadavg_start']}", flush=True)
        self.build()
        self.start_broker()
        attach = self.core_attach_times()
        print(f"CO-RE attach (procmon check): {attach}", flush=True)
        # Warm-up: page cache, the generators, the first BPF verifier run.
        self.session("none", -1, storm_loads(QUICK)[:1])
        sessions: list[SessionResult] = []
        for rep in range(self.p.reps):
            loads = storm_loads(self.p)
            if rep < self.p.steady_reps:
                loads += steady_loads(self.p)
            order = (
                self.configs[rep % len(self.configs) :] + self.configs[: rep % len(self.configs)]
            )
            print(f"repetition {rep + 1}/{self.p.reps}: {' '.join(order)}", flush=True)
            for key in order:
                sessions.append(self.session(key, rep, loads))
        long_runs: list[SessionResult] = []
        if "full" in self.configs and self.long_runs:
            print("full pipeline: long steady run and burst", flush=True)
            long = [
                Load(
                    "lng",
                    f"steady 5k exits/s for {self.p.long_s:.0f} s",
                    "fork",
                    int(5000 * self.p.long_s),
                    2,
                    5000,
                ),
                Load("bst", "burst at up to 17k exits/s", "fork", self.p.burst_n, 2, 17000),
            ]
            long_runs.append(self.session("full", 0, long, drain_quiet_s=10.0))
        info["loadavg_end"] = os.getloadavg()
        info["elapsed_s"] = round(time.monotonic() - started, 1)
        return {
            "machine": info,
            "profile": dataclasses.asdict(self.p),
            "configs": self.configs,
            "agent_options": self.agent_options,
            "core_attach_s": attach,
            "sessions": [dataclasses.asdict(s) for s in sessions],
            "long_runs": [dataclasses.asdict(s) for s in long_runs],
        }

    def close(self) -> None:
        if self.broker:
            self.broker.stop()


# --- machine description -----------------------------------------------------------------------


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return "n/a"
    return (
        (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "n/a"
    )


def _pkg_version(pkg: str) -> str:
    return _cmd(["dpkg-query", "-W", "-f", "${Version}", pkg])


def machine_info() -> dict[str, Any]:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    os_name = "Linux"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    git = _cmd(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "os": os_name,
        "kernel": os.uname().release,
        "procmon_git": git,
        "versions": {
            "libbpf-tools": _pkg_version("libbpf-tools"),
            "bpftrace": _pkg_version("bpftrace"),
            "forkstat": _pkg_version("forkstat"),
            "mosquitto": _pkg_version("mosquitto"),
            "python": sys.version.split()[0],
        },
        "loadavg_start": os.getloadavg(),
    }


# --- command line ------------------------------------------------------------------------------

ALL_CONFIGS = ["none", "full", "probe", "exitsnoop", "bpftrace", "forkstat"]
# Enrichment's cost: the same procmon configurations without exec/cgroup context
# (`make bench-context` runs them beside the ones with context).
# Where a storm's cost goes (`make bench-storm`): the same procmon configurations with the
# monitor process frozen (SIGSTOP) while a storm runs and thawed after it, so the probe keeps
# queueing records in the ring and all userspace work waits for the storm's end.
# What killer attribution costs (`make bench-killer`): the full pipeline without the killer
# programs.
EXTRA_CONFIGS = ["full-bare", "probe-bare", "full-frozen", "probe-frozen", "full-nokiller"]
TOOLS = {
    "full": ["mosquitto", "mosquitto_sub", "mosquitto_pub"],
    "full-bare": ["mosquitto", "mosquitto_sub", "mosquitto_pub"],
    "full-nokiller": ["mosquitto", "mosquitto_sub", "mosquitto_pub"],
    "full-frozen": ["mosquitto", "mosquitto_sub", "mosquitto_pub"],
    "exitsnoop": ["exitsnoop", "stdbuf"],
    "bpftrace": ["bpftrace"],
    "forkstat": ["forkstat"],
}


def agent_options(options: list[str]) -> dict[str, dict[str, str]]:
    """['probe.poll_interval_ms=25', ...] -> {'probe': {'poll_interval_ms': '25'}}; a key
    without a table ('log_level=...') goes to the top level."""
    tables: dict[str, dict[str, str]] = {}
    for opt in options:
        key, sep, value = opt.partition("=")
        table, _, name = key.rpartition(".")
        if not (sep and name and value):
            raise SystemExit(f"bench: --agent-option {opt!r} is not [TABLE.]KEY=VALUE")
        tables.setdefault(table, {})[name] = value
    return tables


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a ~3-minute run with fewer repetitions")
    ap.add_argument("--reps", type=int, help="override the number of repetitions")
    ap.add_argument("--configs", default=",".join(ALL_CONFIGS), help="comma-separated subset")
    ap.add_argument("--procmon", default=str(Path(sys.executable).parent / "procmon"))
    ap.add_argument("--out", type=Path, default=BENCH / "out")
    ap.add_argument("--results", type=Path, default=BENCH / "results.md")
    ap.add_argument("--plot", type=Path, default=BENCH / "results.png")
    ap.add_argument(
        "--agent-option",
        action="append",
        default=[],
        metavar="[TABLE.]KEY=VALUE",
        help="extra agent TOML setting (TOML value), e.g. probe.poll_interval_ms=25",
    )
    ap.add_argument("--no-long", action="store_true", help="skip the long run and the burst")
    ap.add_argument(
        "--report-only", action="store_true", help="re-render from OUT/results.json, no run"
    )
    args = ap.parse_args(argv)

    from report import render_markdown, render_plot

    raw_path = args.out / "results.json"
    if args.report_only:
        data = json.loads(raw_path.read_text())
    else:
        if os.geteuid() != 0:
            raise SystemExit("bench: run as root (the monitors load eBPF programs)")
        if not Path(args.procmon).exists():
            raise SystemExit(f"bench: {args.procmon} not found: run `make setup` first")
        configs = [c for c in args.configs.split(",") if c]
        unknown = set(configs) - set(ALL_CONFIGS + EXTRA_CONFIGS)
        if unknown:
            raise SystemExit(f"bench: unknown configurations {sorted(unknown)}")
        for key in list(configs):
            missing = [t for t in TOOLS.get(key, []) if not shutil.which(t)]
            if missing:
                print(f"bench: skipping {key}: {', '.join(missing)} not installed", file=sys.stderr)
                configs.remove(key)
        profile = QUICK if args.quick else FULL
        if args.reps:
            profile = dataclasses.replace(
                profile, reps=args.reps, steady_reps=min(profile.steady_reps, args.reps)
            )
        shm = Path("/dev/shm")
        workdir = Path(tempfile.mkdtemp(prefix="procmon-bench-", dir=shm if shm.is_dir() else None))
        bench = Bench(
            profile,
            workdir,
            args.procmon,
            configs,
            agent_options=agent_options(args.agent_option),
            long_runs=not args.no_long,
        )
        try:
            data = bench.run()
            data["mode"] = "quick" if args.quick else "full"
        finally:
            bench.close()
            shutil.rmtree(workdir, ignore_errors=True)
        args.out.mkdir(parents=True, exist_ok=True)
        raw_path.write_text(json.dumps(data, indent=1))
    md = render_markdown(data, plot_name=args.plot.name)
    # bench/flood.py and bench/event_cost.py keep their sections in the same file
    kept = sections(args.results.read_text()) if args.results.exists() else []
    args.results.write_text(md + "".join("\n" + section for section in kept))
    render_plot(data, args.plot)
    print(md)
    print(f"wrote {args.results}, {args.plot} and {raw_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

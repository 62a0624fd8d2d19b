"""Where to join exec data to exits: in userspace (procmon's design) or in the kernel.

Loads, in turn, procmon's probe (exec records sent to the ring, joined by the agent) and
bench/join_in_kernel.bpf.c (exec records kept in an LRU map, sent with every exit), runs the
fork storm (1 worker: no exec, every exit looks its image owner up) and the spawn storm
(posix_spawn of /bin/true: one exec per exit), and reads the kernel's own per-program
accounting (kernel.bpf_stats_enabled: run_time_ns / run_cnt) and the bytes each design puts
through the ring per exit. The ring is drained by a thread that only copies the records out,
as the agent's decoder does first.

Usage (root): .venv/bin/python bench/join_cost.py [--fork N] [--spawn N] [--reps R]
Writes bench/join_cost.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from procmon.probe import libbpf
from procmon.probe.btf import BTF_PATH

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
DESIGNS = {
    # name: (object, exit program, exec program)
    "userspace join (procmon)": ("procmon", "exit_btf", "exec_btf"),
    "in-kernel join (LRU map)": ("variant", "join_exit", "join_exec"),
}


@dataclass
class Sample:
    design: str
    load: str
    exits: int
    exit_ns: float  # kernel time per exit-program run
    exec_ns: float  # kernel time per exec-program run (0 runs: 0)
    ring_bytes_per_exit: float
    drain_us_per_exit: float  # consumer thread CPU per exit


class LoadedObject:
    """A BPF object with a chosen pair of programs attached and its ring drained."""

    def __init__(self, path: Path, programs: tuple[str, str]) -> None:
        bpf = libbpf.lib()
        bpf.bpf_program__fd.restype = ctypes.c_int
        bpf.bpf_program__fd.argtypes = [ctypes.c_void_p]
        bpf.bpf_obj_get_info_by_fd.restype = ctypes.c_int
        bpf.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self._bpf = bpf
        opts = libbpf.ObjectOpenOpts(btf_custom_path=str(BTF_PATH).encode())
        opts.sz = ctypes.sizeof(opts)
        self._obj = libbpf.check_ptr(
            bpf.bpf_object__open_file(str(path).encode(), ctypes.byref(opts)), f"opening {path}"
        )
        wanted = {p.encode() for p in programs}
        names = [b"exit_btf", b"exit_tp", b"exec_btf", b"cgroup_mkdir_btf", b"cgroup_rmdir_btf"]
        names += [b"join_exec", b"join_exit"]
        for name in names:
            prog = bpf.bpf_object__find_program_by_name(self._obj, name)
            if prog:
                bpf.bpf_program__set_autoload(prog, name in wanted)
        libbpf.check_rc(bpf.bpf_object__load(self._obj), f"loading {path}")
        self.prog_ids: dict[str, int] = {}
        self._links = []
        for program in programs:
            prog = bpf.bpf_object__find_program_by_name(self._obj, program.encode())
            self._links.append(libbpf.check_ptr(bpf.bpf_program__attach(prog), f"attach {program}"))
            info = (ctypes.c_uint8 * 256)()
            size = ctypes.c_uint32(256)
            fd = bpf.bpf_program__fd(prog)
            libbpf.check_rc(bpf.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)), "info")
            self.prog_ids[program] = int.from_bytes(bytes(info[4:8]), "little")  # prog_info.id
        ring_fd = bpf.bpf_map__fd(bpf.bpf_object__find_map_by_name(self._obj, b"events"))
        self.records = 0
        self.ring_bytes = 0
        self._cb = libbpf.RING_SAMPLE_FN(self._on_sample)
        self._ring = libbpf.check_ptr(bpf.ring_buffer__new(ring_fd, self._cb, None, None), "ring")
        self._stop = threading.Event()
        self.drain_cpu_s = 0.0
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _on_sample(self, _ctx: object, data: int, size: int) -> int:
        ctypes.string_at(data, size)
        self.records += 1
        self.ring_bytes += size
        return 0

    def _drain(self) -> None:
        start = time.thread_time()
        while not self._stop.is_set():
            self._bpf.ring_buffer__poll(self._ring, 50)
            self._bpf.ring_buffer__consume(self._ring)
        self._bpf.ring_buffer__consume(self._ring)
        self.drain_cpu_s = time.thread_time() - start

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for link in self._links:
            self._bpf.bpf_link__destroy(link)
        self._bpf.ring_buffer__free(self._ring)
        self._bpf.bpf_object__close(self._obj)


def prog_stats(prog_id: int) -> tuple[int, int]:
    out = subprocess.run(
        ["bpftool", "prog", "show", "id", str(prog_id), "-j"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    info = json.loads(out)
    return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))


def build(tmp: Path) -> dict[str, Path]:
    cc = ["cc", "-O2", "-o"]
    subprocess.run([*cc, str(tmp / "forkstorm"), str(BENCH / "forkstorm.c")], check=True)
    subprocess.run([*cc, str(tmp / "spawnstorm"), str(BENCH / "spawnstorm.c")], check=True)
    variant = tmp / "join_in_kernel.bpf.o"
    subprocess.run(
        [
            "clang", "-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86",
            f"-I{REPO / 'build'}", f"-I{REPO / 'bpf'}",
            "-c", str(BENCH / "join_in_kernel.bpf.c"), "-o", str(variant),
        ],
        check=True,
    )  # fmt: skip
    procmon = REPO / "agent/procmon/probe/bpf/exit.bpf.o"
    return {"procmon": procmon, "variant": variant, **{p.name: p for p in tmp.iterdir()}}


def run_once(files: dict[str, Path], design: str, load: str, n: int) -> Sample:
    obj_key, exit_prog, exec_prog = DESIGNS[design]
    loaded = LoadedObject(files[obj_key], (exit_prog, exec_prog))
    try:
        before = {p: prog_stats(i) for p, i in loaded.prog_ids.items()}
        argv = [str(files["forkstorm"]), str(n), "1"]
        if load == "spawn":
            argv = [str(files["spawnstorm"]), str(n), "1", "0", "/bin/true"]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        time.sleep(0.3)  # the drain catches up
        after = {p: prog_stats(i) for p, i in loaded.prog_ids.items()}
    finally:
        loaded.close()

    def per_run(prog: str) -> tuple[float, int]:
        ns = after[prog][0] - before[prog][0]
        runs = after[prog][1] - before[prog][1]
        return (ns / runs if runs else 0.0), runs

    exit_ns, exit_runs = per_run(exit_prog)
    exec_ns, _ = per_run(exec_prog)
    exits = max(1, n)
    return Sample(
        design,
        load,
        exit_runs,
        exit_ns,
        exec_ns,
        loaded.ring_bytes / exits,
        loaded.drain_cpu_s * 1e6 / exits,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fork", type=int, default=20000)
    ap.add_argument("--spawn", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=BENCH / "join_cost.md")
    args = ap.parse_args(argv)
    previous = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1\n")
    samples: list[Sample] = []
    try:
        with tempfile.TemporaryDirectory(prefix="procmon-join-") as tmp:
            files = build(Path(tmp))
            for rep in range(args.reps):
                for load, n in (("fork", args.fork), ("spawn", args.spawn)):
                    order = list(DESIGNS) if rep % 2 == 0 else list(reversed(DESIGNS))
                    for design in order:
                        s = run_once(files, design, load, n)
                        samples.append(s)
                        print(
                            f"rep {rep + 1} {load:5s} {design:26s} exit {s.exit_ns:6.0f} ns"
                            f"  exec {s.exec_ns:6.0f} ns  ring {s.ring_bytes_per_exit:6.0f} B"
                            f"  drain {s.drain_us_per_exit:5.2f} µs",
                            flush=True,
                        )
    finally:
        STATS_SYSCTL.write_text(previous + "\n")
    table = render(samples, args)
    args.out.write_text(table)
    print(table)
    return 0


def render(samples: list[Sample], args: argparse.Namespace) -> str:
    def med(design: str, load: str, attr: str) -> float:
        return float(
            statistics.median(
                getattr(s, attr) for s in samples if s.design == design and s.load == load
            )
        )

    lines = [
        "# Joining exec data to exits: userspace or kernel",
        "",
        f"`make bench-context` ({Path(__file__).name}), {time.strftime('%Y-%m-%d')}, "
        f"{args.reps} interleaved repetitions, medians. Fork storm: {args.fork:,} children "
        f"(1 worker, no exec); spawn storm: {args.spawn:,} posix_spawn(/bin/true). Kernel "
        "time per program run from kernel.bpf_stats_enabled; ring bytes and drain CPU per exit.",
        "",
        "| design | load | exit program | exec program | ring bytes / exit | drain CPU / exit |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for design in DESIGNS:
        for load in ("fork", "spawn"):
            lines.append(
                f"| {design} | {load} | {med(design, load, 'exit_ns'):.0f} ns "
                f"| {med(design, load, 'exec_ns'):.0f} ns "
                f"| {med(design, load, 'ring_bytes_per_exit'):.0f} B "
                f"| {med(design, load, 'drain_us_per_exit'):.2f} µs |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark (not a test): parallel (make -jN) against sequential (make -j1) mex compiles.

Compiles the test sources in ``tests/standins/cuda-sources`` against the stand-in mex API
with the Makefile ``kilosort_docker.mex`` generates, ``--repeats`` times each way, from
clean object and output folders, and reports the median wall times and their ratio
(sequential / parallel, so > 1 means parallel is faster). Writes ``mex_compile.json`` and a
bar chart ``mex_compile.png`` (matplotlib, Agg) into ``--out`` (default ``benchmarks/out``).

Needs nvcc (``CUDA_ROOT``, default /usr/local/cuda), make, g++ and cc. Run it from the
repository root:

    python -m benchmarks.mex_compile [--jobs N] [--repeats 3] [--gencode compute_80,sm_80 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kilosort_docker import mex
from tests.support import make_matlab_root

ROOT = Path(__file__).resolve().parents[1]

SOURCES = ROOT / "tests" / "standins" / "cuda-sources"
DEFAULT_GENCODE = ("compute_75,sm_75", "compute_80,sm_80", "compute_90,sm_90",
                   "compute_90,compute_90")  # fmt: skip


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_make(makefile: Path, work: Path, jobs: int) -> tuple[float, float]:
    """(wall s, CPU s) of one clean ``make -j<jobs>`` of ``makefile`` (outputs in ``work``).

    CPU time is user + system of make and every compiler it ran; it should not depend on
    ``jobs``, so a parallel run that is not faster points at a busy machine.
    """
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    argv = ["make", "-f", str(makefile), f"-j{jobs}", f"OUT_DIR={work}/bin", f"OBJ_DIR={work}/obj"]
    cpu = _children_cpu()
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"make -j{jobs} failed: {mex.first_error(result.stdout + result.stderr)}")
    return elapsed, _children_cpu() - cpu


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["make -j1", f"make -j{results['jobs']}"]
    medians = [results["sequential_s"], results["parallel_s"]]
    runs = [results["sequential_runs_s"], results["parallel_runs_s"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(labels, medians, color=["#888888", "#3a7bd5"])
    for i, values in enumerate(runs):
        ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    ax.set_ylabel("wall time (s)")
    ax.set_title(
        f"{results['commands']} mex build commands ({results['binaries']} binaries), "
        f"speed-up {results['ratio']:.2f}x",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gencode", action="append", help="default: sm_75, sm_80, sm_90 + PTX")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = parser.parse_args()
    cuda_root = os.environ.get("CUDA_ROOT", "/usr/local/cuda")
    nvcc = mex.find_tool("nvcc", cuda_root)
    if not nvcc:
        raise SystemExit(f"nvcc not found in {cuda_root}/bin or PATH: set CUDA_ROOT")
    cuda = re.search(r"release (\d+\.\d+)", mex.nvcc_version(nvcc))[1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mex-bench-") as tmp:
        tmp = Path(tmp)
        matlab_root = make_matlab_root(tmp / "matlab")
        chain = mex.Toolchain(
            profile="standin",
            matlab_root=str(matlab_root),
            cuda_root=cuda_root,
            cuda_version=cuda,
            host_compiler="g++",
            gencode=tuple(args.gencode or DEFAULT_GENCODE),
        ).validated()
        spec = mex.MexSpec.from_dict(json.loads((SOURCES / "spec.json").read_text()))
        plan = mex.MexPlan(chain, spec, str(SOURCES), "benchmark")
        makefile = mex.write_makefile(plan, tmp / "Makefile")
        load_before = os.getloadavg()[0]
        sequential, parallel, cpu = [], [], []
        for _ in range(args.repeats):  # interleaved, so drift affects both alike
            for runs, jobs in ((sequential, 1), (parallel, args.jobs)):
                wall, used = time_make(makefile, tmp / "work", jobs)
                runs.append(wall)
                cpu.append(used)
        load_after = os.getloadavg()[0]
    results = {
        "jobs": args.jobs,
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "nvcc": mex.nvcc_version(nvcc),
        "gencode": [str(t) for t in chain.gencode],
        "binaries": len(spec.sources),
        "commands": sum(len(s) for s in mex.plan_steps(plan).values()),
        "sequential_runs_s": [round(t, 3) for t in sequential],
        "parallel_runs_s": [round(t, 3) for t in parallel],
        "cpu_per_build_s": round(statistics.median(cpu), 3),
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "sequential_s": round(statistics.median(sequential), 3),
        "parallel_s": round(statistics.median(parallel), 3),
    }
    results["ratio"] = round(results["sequential_s"] / results["parallel_s"], 3)
    (out / "mex_compile.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / "mex_compile.png")
    print(
        f"make -j1: {results['sequential_s']:.2f} s, make -j{args.jobs}: "
        f"{results['parallel_s']:.2f} s (medians of {args.repeats}); "
        f"speed-up {results['ratio']:.2f}x on {os.cpu_count()} cores; "
        f"{results['cpu_per_build_s']:.2f} CPU s per build; load average "
        f"{results['load_average_1min'][0]:.2f} before, {results['load_average_1min'][1]:.2f} after"
    )
    print(f"wrote {out / 'mex_compile.json'} and {out / 'mex_compile.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

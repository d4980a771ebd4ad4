#!/usr/bin/env python3
"""Benchmark (not a test): compiling Kilosort v3.0.2's real CUDA sources, and what the mex
files add to the image.

1. Wall time of the mex build, ``make -j1`` against ``make -jN`` (N = the cores a container
   sees, what the kilosort3 image's mex-build stage uses), from clean object and output folders,
   ``--repeats`` times each way, interleaved. The commands are the ones the stage runs: the
   Makefile ``kilosort_docker.mex`` generates for profile r2022b's gencode list (sm_35 ... sm_80
   and compute_80 PTX), with Debian's CUDA 11.8 (``tests/support/toolkits.py``) and g++-11, the
   stand-in mex API, and Kilosort's CUDA/ exported from the mirror at the pinned tag. They run
   in a container of the tests' Debian bookworm image (the OS of the stand-in MATLAB base the
   stage starts from), which installs make and g++-11 first (not timed).
2. The bytes the final ``kilosort3`` image adds over ``kilosort3-code``: the whole kilosort3
   chain built from the mirrors with that toolkit (``docker image inspect`` sizes, and the
   layers above kilosort3-code in ``docker history``), and how long the kilosort3 build took.
   The base is the tests' stand-in MATLAB base with the CUDA runtime MATLAB ships in
   ``bin/glnxa64`` (``tests.support.standin_with_cudart``).

Needs the Docker engine, debootstrap (or the tests' Debian image), Debian's package mirror, and
the shared mirrors (``../shared/mirrors`` or ``KILOSORT_DOCKER_MIRRORS``). Run it from the
repository root:

    python -m benchmarks.real_mex_compile [--repeats 3] [--out benchmarks/results]

Writes ``real_mex_compile.json`` and ``real_mex_compile.png``. The images it builds are tagged
in the ``kilosort-docker-bench`` namespace and untagged at the end (layers stay as build cache).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

from kilosort_docker import containers, engine, mex
from kilosort_docker.images import build, mexstage, sources
from tests import support

ROOT = support.REPO_ROOT
NAMESPACE = "kilosort-docker-bench"
#: Where the container sees its inputs.
MOUNTS = {"cuda": "/cuda", "matlab": "/matlab", "src": "/src", "work": "/work"}

_SCRIPT = r"""
set -eu
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    make g++-11 >/dev/null
echo "nproc $(nproc)"
echo "g++ $(g++-11 -dumpfullversion)"
TIMEFORMAT='%R %U %S'
for repeat in $(seq REPEATS); do
  for jobs in 1 $(nproc); do
    rm -rf /work/run && mkdir -p /work/run
    t=$( { time make -f /work/Makefile -j"$jobs" OUT_DIR=/work/run/bin OBJ_DIR=/work/run/obj \
        >/work/run/log 2>&1 || { tail -n 30 /work/run/log >&2; exit 1; }; } 2>&1 )
    echo "RESULT jobs=$jobs wall_user_sys=$t binaries=$(ls /work/run/bin | wc -l)"
  done
done
"""


def _mirrors() -> dict[str, Path]:
    folder = Path(os.environ.get("KILOSORT_DOCKER_MIRRORS") or ROOT.parent / "shared" / "mirrors")
    found = {name: folder / f"{name}.git" for name in ("Kilosort", "npy-matlab")}
    absent = [str(p) for p in found.values() if not p.is_dir()]
    if absent:
        raise SystemExit(f"the upstream mirrors are absent ({', '.join(absent)})")
    return found


def time_compiles(
    client, debian: str, plan, toolkit: Path, tmp: Path, *, kilosort: Path, repeats: int
) -> dict:
    """make -j1 / -jN wall, user and system seconds per run, in a Debian container; the
    sources are Kilosort's CUDA/ at the pinned commit, exported from the mirror ``kilosort``."""
    sources.export(plan.pins.kilosort3, tmp / "ks", repository=str(kilosort))
    support.make_matlab_root(tmp / "matlab")
    mex_plan = mexstage.mex_plan(plan).with_paths(
        matlab_root=MOUNTS["matlab"], cuda_root=MOUNTS["cuda"], src_dir=MOUNTS["src"]
    )
    work = tmp / "work"
    work.mkdir()
    mex.write_makefile(mex_plan, work / "Makefile")
    volumes = {
        str(toolkit): {"bind": MOUNTS["cuda"], "mode": "ro"},
        str(tmp / "matlab"): {"bind": MOUNTS["matlab"], "mode": "ro"},
        str(tmp / "ks" / "CUDA"): {"bind": MOUNTS["src"], "mode": "ro"},
        str(work): {"bind": MOUNTS["work"], "mode": "rw"},
    }
    result = containers.run(
        debian,
        ["bash", "-c", _SCRIPT.replace("REPEATS", str(repeats))],
        client=client,
        volumes=volumes,
        user="0",
        network=True,
        timeout_s=3600,
    )
    if not result.ok:
        raise SystemExit(f"the compile container failed: {result.tail}")
    runs: dict[int, list[list[float]]] = {}
    binaries = set()
    for jobs, wall, user, system, count in re.findall(
        r"^RESULT jobs=(\d+) wall_user_sys=([\d.]+) ([\d.]+) ([\d.]+) binaries=(\d+)$",
        result.output,
        re.M,
    ):
        runs.setdefault(int(jobs), []).append([float(wall), float(user), float(system)])
        binaries.add(int(count))
    nproc = int(re.search(r"^nproc (\d+)$", result.output, re.M)[1])
    return {
        "nproc": nproc,
        "host_compiler_version": re.search(r"^g\+\+ (\S+)$", result.output, re.M)[1],
        "binaries": sorted(binaries),
        "mex_files": [s.name for s in mex_plan.spec.sources],
        "commands": sum(len(s) for s in mex.plan_steps(mex_plan).values()),
        "gencode": [str(t) for t in mex_plan.toolchain.gencode],
        "runs_wall_user_sys_s": {str(j): r for j, r in sorted(runs.items())},
        "median_wall_s": {
            str(j): round(statistics.median(r[0] for r in rs), 2) for j, rs in sorted(runs.items())
        },
        # user + system seconds of make and the compilers: the work itself, whatever -j is
        # (a -j1 wall time above it, or a -jN speed-up below N, means a busy machine)
        "median_cpu_s": {
            str(j): round(statistics.median(r[1] + r[2] for r in rs), 2)
            for j, rs in sorted(runs.items())
        },
    }


def image_growth(client, plan) -> dict:
    """Build the kilosort3 chain; sizes of kilosort3-code and kilosort3 and the layers between."""
    built = {b.step.spec.name: b for b in build.execute(plan, client)}
    code, final = built["kilosort3-code"], built["kilosort3"]
    layers = []
    for entry in client.api.history(final.image_id):
        if entry["Id"] == code.image_id:
            break
        layers.append({"created_by": entry["CreatedBy"][-120:], "bytes": entry["Size"]})
    return {
        "kilosort3_code_bytes": code.size,
        "kilosort3_bytes": final.size,
        "added_bytes": final.size - code.size,
        "layers_above_kilosort3_code": layers,
        "kilosort3_build_s": round(final.seconds, 1),
        "refs": [ref for b in built.values() for ref in b.step.refs],
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timing = results["compile"]
    jobs = list(timing["runs_wall_user_sys_s"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    medians = [timing["median_wall_s"][j] for j in jobs]
    left.bar([f"make -j{j}" for j in jobs], medians, color=["#888888", "#3a7bd5"][: len(jobs)])
    for i, j in enumerate(jobs):
        walls = [r[0] for r in timing["runs_wall_user_sys_s"][j]]
        left.scatter([i] * len(walls), walls, color="black", s=12, zorder=3)
        left.annotate(f"{medians[i]:.1f} s", (i, medians[i]), ha="center", va="bottom")
    cpu = statistics.median(timing["median_cpu_s"].values())
    left.axhline(
        cpu, color="#d55e00", linestyle="--", linewidth=1, label=f"CPU s per build ({cpu:.1f})"
    )
    left.legend(loc="lower right", fontsize=8)
    left.set_ylabel("wall time (s)")
    left.set_title(
        f"{len(timing['mex_files'])} mex files, {timing['commands']} commands, "
        f"R2022b gencode,\nCUDA 11.8 + g++-11, {timing['nproc']} cores, load average "
        f"{results['load_average_1min'][0]:.1f}",
        fontsize=9,
    )
    growth = results["image"]
    mb = 1e6
    right.bar(
        ["kilosort3-code", "kilosort3"],
        [growth["kilosort3_code_bytes"] / mb, growth["kilosort3_bytes"] / mb],
        color=["#888888", "#3a7bd5"],
    )
    right.set_ylabel("image size (MB)")
    right.set_title(
        f"the mex files add {growth['added_bytes'] / mb:.2f} MB\n"
        f"(stand-in MATLAB base; kilosort3 build {growth['kilosort3_build_s']:.0f} s)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw the figure from the JSON in --out"
    )
    args = parser.parse_args()
    if args.plot_only:
        results = json.loads((args.out / "real_mex_compile.json").read_text())
        plot(results, args.out / "real_mex_compile.png")
        return 0
    mirrors = _mirrors()
    client = engine.connect(timeout=3600)
    debian = support.debootstrap_image(client)
    args.out.mkdir(parents=True, exist_ok=True)
    refs: list[str] = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="real-mex-bench-") as tmp,
            support.http_server(support.STANDINS / "mpm") as mpm,
        ):
            tmp = Path(tmp)
            os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")
            toolkit = support.debian_cuda_toolkit(client, debian, tmp / "toolkit")
            standin = support.standin_with_cudart(
                client,
                support.build_matlab_standin(client, debian, tmp / "matlab-standin"),
                toolkit,
                tmp / "matlab-cudart",
                ref=f"{NAMESPACE}/matlab-standin-cudart:r2022b",
            )
            plan = support.real_kilosort3_plan(
                mirrors,
                toolkit,
                namespace=NAMESPACE,
                base_image=standin,
                mpm_url=f"{mpm}/mpm",
                mex_binaries=str(tmp / "no-committed-binaries"),
            )
            refs = [standin, *(ref for step in plan.steps for ref in step.refs)]
            load_before = os.getloadavg()[0]
            timing = time_compiles(
                client,
                debian,
                plan,
                toolkit,
                tmp,
                kilosort=mirrors["Kilosort"],
                repeats=args.repeats,
            )
            growth = image_growth(client, plan)
            load_after = os.getloadavg()[0]
    finally:
        for ref in refs:
            with contextlib.suppress(Exception):
                client.api.remove_image(ref, noprune=True)
    growth.pop("refs")
    results = {
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "nvcc": f"Debian nvidia-cuda-toolkit {support.DEBIAN_CUDA_VERSION}",
        "kilosort_commit": plan.pins.kilosort3.commit,
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "compile": timing,
        "image": growth,
    }
    medians = timing["median_wall_s"]
    j1, jn = medians["1"], medians[str(timing["nproc"])]
    results["compile"]["speedup"] = round(j1 / jn, 3)
    (args.out / "real_mex_compile.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "real_mex_compile.png")
    print(
        f"make -j1 {j1:.1f} s, make -j{timing['nproc']} {jn:.1f} s "
        f"(medians of {args.repeats}, speed-up {j1 / jn:.2f}x; CPU time per build "
        f"{timing['median_cpu_s']['1']:.1f} s); kilosort3 adds "
        f"{growth['added_bytes']} bytes over kilosort3-code; kilosort3 build "
        f"{growth['kilosort3_build_s']} s"
    )
    print(f"wrote {args.out / 'real_mex_compile.json'} and {args.out / 'real_mex_compile.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

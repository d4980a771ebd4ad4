"""Overheads of the ground-truth test, and the kilosort4 image against the host, in one run.

1. At the H200 size (384 channels, 300 s, 200 units): simulation (cold and cached), scoring and
   figures as fractions of the sort, from the device step of
   :mod:`benchmarks.groundtruth_sweeps` (its ``status.json``: the first sort, alone on its
   GPU) and, with the scoring code of this checkout, re-timed here on the packed output.
   Target: scoring + figures < 5 % of the sort.
2. The same CPU sort on this host (``ks4_entry.py`` under this Python) and inside the
   ``kilosort4`` image (:func:`kilosort_docker.groundtruth.sorters.run_kilosort4_container`),
   interleaved host, image, host, image... so that a change in the machine's load hits both;
   the load average is recorded around each sort. Target: image time / host time <= 1/0.98.

    python -m benchmarks.groundtruth_overheads --image NS/kilosort4:4.1.7 --pairs 2 \\
        --status STATUS.json --scratch SCRATCH

``STATUS.json`` and ``SCRATCH`` come from ``groundtruth_sweeps device --timing`` (the sorts
alone on one H200) and its ``analyse --scratch``; the committed numbers used
``benchmarks/groundtruth_h200/timing_device_status.json``.

Writes ``benchmarks/results/groundtruth_overheads.{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kilosort_docker.groundtruth.simulate import SimulationParams, simulate  # noqa: E402

ENTRY = ROOT / "kilosort_docker" / "groundtruth" / "sorters" / "ks4_entry.py"
#: The CPU recording: the CI one's layout and rates (16 channels, 10 units at 10-20 Hz,
#: +-5 um drift), 20 s long so that two pairs fit in minutes on two cores.
CPU_PARAMS = SimulationParams(
    duration_s=20.0, n_channels=16, n_units=10, firing_rates_hz=(10.0, 20.0), drift_um=5.0
)


def h200_overheads(status: dict[str, Any], scratch: Path | None) -> dict[str, Any]:
    """Fractions of the first (GPU-alone) sort at the H200 size, from the device's status."""
    first = next(iter(status["jobs"].values()))
    for name, job in status["jobs"].items():
        if job.get("overheads"):
            first, first_name = job, name
            break
    from benchmarks.groundtruth_sweeps import overlaps

    sim = next(iter(status["simulations"].values()))
    sort_s = first["attempts"][-1]["ks_run"]["seconds"]
    dev = first["overheads"]
    out: dict[str, Any] = {
        "machine": f"{status.get('gpu_info')}; {status.get('cpu_count')} cores",
        "sort": first_name,
        "sort_seconds": sort_s,
        "sort_overlap": overlaps(status, first_name),
        "simulation_cold_seconds": sim["seconds"],
        "simulation_cold_jobs": sim["n_jobs"],
        "simulation_cached_seconds": sim["cached_seconds"],
        "device_score_seconds_first_call": dev["score_seconds"],
        "device_figures_seconds": dev["figures_seconds"],
        "device_score_and_figures_seconds_second_call": dev["score_and_figures_seconds"],
        "device_load": [dev["load_start"], dev["load_end"]],
        "note": "device scoring ran in the sweep's process (spikeinterface already imported "
        "by the simulation); 'local' re-times this checkout's code here in a fresh process",
    }
    out["fractions_of_sort"] = {
        "simulation_cold": sim["seconds"] / sort_s,
        "simulation_cached": sim["cached_seconds"] / sort_s,
        "score_and_figures_device": (dev["score_seconds"] + dev["figures_seconds"]) / sort_s,
    }
    if scratch is not None:
        local = local_scoring(scratch, first_name, first["recording"])
        out["local"] = local
        out["fractions_of_sort"]["score_and_figures_local"] = (
            local["score_seconds"] + local["figures_seconds"]
        ) / sort_s
    return out


def local_scoring(scratch: Path, run: str, recording: str) -> dict[str, Any]:
    """Score the packed first sort with this checkout's code in a fresh process (imports
    counted), then again with figures; seconds and this host's load."""
    code = (
        "import time, json, sys\n"
        "t0 = time.perf_counter()\n"
        "from kilosort_docker.groundtruth import score as s, merges as m\n"
        f"r = s.score({str(scratch / 'raw/recordings' / recording)!r}, "
        f"{str(scratch / 'raw/runs' / run)!r}, out_dir='/tmp/gto-score', figures=False)\n"
        "t1 = time.perf_counter()\n"
        "from pathlib import Path\n"
        f"s.write_figures(Path({str(scratch / 'raw/recordings' / recording)!r}), "
        "Path('/tmp/gto-score'), r.units, sorter='kilosort4', "
        f"drift_estimate=m.kilosort4_drift({str(scratch / 'raw/runs' / run)!r}))\n"
        "t2 = time.perf_counter()\n"
        "print(json.dumps({'score_seconds': t1 - t0, 'figures_seconds': t2 - t1}))\n"
    )
    load0 = os.getloadavg()[0]
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["load"] = [load0, os.getloadavg()[0]]
    out["cpu_count"] = os.cpu_count()
    out["what"] = "fresh process, imports included, on this host"
    return out


def host_sort(folder: Path, out: Path) -> dict:
    res = subprocess.run(
        [sys.executable, str(ENTRY), str(folder), str(out), "cpu"],
        capture_output=True,
        text=True,
    )
    if res.returncode:
        raise RuntimeError(f"host sort failed: {res.stderr[-500:]}")
    return json.loads((out / "ks_run.json").read_text())


def image_sort(folder: Path, out: Path, image: str) -> dict:
    from kilosort_docker.groundtruth.sorters import run_kilosort4_container

    result = run_kilosort4_container(folder, out, image=image, gpu=False)
    return dict(result.info)


def host_vs_image(image: str, pairs: int, work: Path) -> dict[str, Any]:
    sim = simulate(CPU_PARAMS, work / "sims", n_jobs=2)
    runs = []
    for i in range(pairs):
        for where in ("host", "image"):
            out = work / f"{where}-{i + 1}"
            if out.exists():
                subprocess.run(["rm", "-rf", str(out)], check=True)
            out.mkdir(parents=True)
            load0 = os.getloadavg()
            t0 = time.perf_counter()
            info = (
                host_sort(sim.folder, out)
                if where == "host"
                else image_sort(sim.folder, out, image)
            )
            wall = time.perf_counter() - t0
            runs.append(
                {
                    "where": where,
                    "pair": i + 1,
                    "sort_seconds": info["seconds"],
                    "wall_seconds": wall,
                    "load_before": list(load0),
                    "load_after": list(os.getloadavg()),
                    "kilosort": info.get("kilosort"),
                    "torch": info.get("torch"),
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    host = [r["sort_seconds"] for r in runs if r["where"] == "host"]
    img = [r["sort_seconds"] for r in runs if r["where"] == "image"]
    ratios = [h / m for h, m in zip(host, img, strict=True)]
    return {
        "recording": {k: getattr(CPU_PARAMS, k) for k in ("duration_s", "n_channels", "n_units")},
        "image": image,
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "speed_ratio_per_pair": ratios,
        "speed_ratio_image_vs_host": sum(host) / sum(img),
        "target": "image speed >= 0.98 x host (host seconds / image seconds >= 0.98)",
    }


def figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    h = result.get("h200")
    if h:
        fr = h["fractions_of_sort"]
        names = list(fr)
        axes[0].barh(names, [100 * fr[n] for n in names])
        axes[0].axvline(5, color="r", ls="--", lw=0.8, label="5 % target (scoring + figures)")
        axes[0].set(
            xlabel=f"% of the sort ({h['sort_seconds']:.0f} s on an H200)",
            title="H200 size: overheads",
        )
        axes[0].set_xscale("log")
        axes[0].legend(fontsize=8)
    c = result.get("cpu")
    if c:
        for where, color in (("host", "tab:blue"), ("image", "tab:orange")):
            rs = [r for r in c["runs"] if r["where"] == where]
            axes[1].plot(
                [r["pair"] for r in rs],
                [r["sort_seconds"] for r in rs],
                "o-",
                color=color,
                label=where,
            )
        axes[1].set(
            xlabel="pair (host then image)",
            ylabel="sort seconds",
            title=f"CPU sort: image speed {c['speed_ratio_image_vs_host']:.3f} x host",
        )
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.groundtruth_overheads")
    p.add_argument("--status", type=Path, help="status.json of the device sweep")
    p.add_argument("--scratch", type=Path, help="unpacked sweep (analyse --scratch)")
    p.add_argument("--image", help="kilosort4 image for the CPU comparison")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/groundtruth-overheads"))
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    result: dict[str, Any] = {"what": "benchmarks/groundtruth_overheads.py"}
    if args.status:
        result["h200"] = h200_overheads(json.loads(args.status.read_text()), args.scratch)
    if args.image:
        result["cpu"] = host_vs_image(args.image, args.pairs, args.work)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "groundtruth_overheads.json").write_text(json.dumps(result, indent=1))
    figure(result, args.results / "groundtruth_overheads.png")
    print(json.dumps(result, indent=1)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())

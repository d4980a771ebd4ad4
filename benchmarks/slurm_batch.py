#!/usr/bin/env python3
"""SLURM array jobs of CPU sorts on a one-node cluster (issue 14): wall time for 1, 2 and 4
recordings; per task, the overhead (SLURM's start, then Python, the checks and the container's
start and stop) against the sort itself; and the concurrency reached against the slots.

It starts its own one-node cluster (:func:`tests.support.slurm.cluster`: munged, slurmctld,
slurmd as root, stopped by pid at the end), simulates small recordings (16 channels, 6 s,
6 units, static; Kilosort 4 with ``nblocks 0``, as the batch tests), and for each batch size
runs ``kilosort_docker.batch.submit.sort_batch`` (``--cpus-per-task 1``: one slot per CPU of
the node) and waits until every task has ended. Times come from the tasks' own status files
(start and end of the task script), ``sort-record.json`` (the sorter's own ``seconds``) and the
moment of submission. The load average before and after is recorded: other work on the machine
slows the sorts and the figure does not hide it.

Run from the repository root as root, with the images nox environment's Python:
python -m benchmarks.slurm_batch --image REF [--sizes 1 2 4] [--out benchmarks/results]
(``--plot-only`` redraws the PNG from the JSON.)
Writes slurm_batch.json and slurm_batch.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kilosort_docker.batch import record, status, submit
from kilosort_docker.batch.script import BatchOptions
from kilosort_docker.groundtruth.simulate import SimulationParams, simulate
from tests.support import slurm

PARAMS = dict(duration_s=6, n_channels=16, n_units=6, drift_um=0)
SETTINGS = {"nblocks": 0}
POLL_S = 1.0


def write_list(folder: Path, sims: list[Path], n: int) -> Path:
    (folder / "settings.json").write_text(json.dumps(SETTINGS))
    shutil.copy2(sims[0] / "chanMap.mat", folder / "chanMap.mat")
    text = '[defaults]\nprobe = "chanMap.mat"\nsettings = "settings.json"\nchannels = 16\n'
    text += "sampling_rate = 30000\n"
    for i in range(n):
        shutil.copy2(sims[i % len(sims)] / "recording.bin", folder / f"r{i}.bin")
        text += f'\n[[recording]]\npath = "r{i}.bin"\nout = "sorted/r{i}"\n'
    path = folder / "recordings.toml"
    path.write_text(text)
    return path


def concurrency(intervals: list[tuple[float, float]]) -> tuple[int, float, list]:
    """Maximum tasks at once, time-weighted mean over the span, and the step curve."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now, level, peak, area, curve = events[0][0], 0, 0, 0.0, []
    for t, step in events:
        area += level * (t - now)
        now, level = t, level + step
        peak = max(peak, level)
        curve.append((t, level))
    span = events[-1][0] - events[0][0]
    return peak, (area / span if span else 0.0), curve


def run_batch(folder: Path, sims: list[Path], n: int, image: str, slots: int) -> dict:
    listing = write_list(folder, sims, n)
    options = BatchOptions(cpus_per_task=1, partition=slurm.PARTITION)
    submitted_at = time.time()
    done = submit.sort_batch(listing, options, image=image)
    batch = record.read(done.folder)
    while not status.settled(states := status.row_states(batch)):
        time.sleep(POLL_S)
    tasks = []
    for row in states:
        own = json.loads(status.status_path(done.folder, row.index, done.job_id).read_text())
        sort_record = json.loads((Path(row.out) / "sort-record.json").read_text())
        tasks.append(
            {
                "row": row.index,
                "state": row.state,
                "started": own["started"] - submitted_at,
                "ended": own["ended"] - submitted_at,
                "sort_s": sort_record["seconds"],
                "exit_status": own["exit_status"],
            }
        )
    ends = sorted(t["ended"] for t in tasks)
    for i, task in enumerate(sorted(tasks, key=lambda t: t["started"])):
        # the moment a slot was free for this task: the submission for the first `slots`
        # tasks, else the end of the task whose slot it took
        free_at = 0.0 if i < slots else ends[i - slots]
        task["slurm_start_s"] = max(0.0, task["started"] - free_at)
        task["task_overhead_s"] = task["ended"] - task["started"] - task["sort_s"]
    peak, mean, curve = concurrency([(t["started"], t["ended"]) for t in tasks])
    return {
        "recordings": n,
        "job_id": done.job_id,
        "wall_s": max(t["ended"] for t in tasks),
        "tasks": sorted(tasks, key=lambda t: t["row"]),
        "peak_concurrency": peak,
        "mean_concurrency": mean,
        "curve": curve,
    }


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, slots = result["runs"], result["slots"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    sizes = [r["recordings"] for r in runs]
    ax.plot(sizes, [r["wall_s"] for r in runs], "o-", label="measured")
    one = runs[0]["wall_s"]
    ax.plot(
        sizes,
        [one * -(-n // slots) for n in sizes],
        "--",
        color="grey",
        label=f"1-recording time x ceil(n/{slots})",
    )
    ax.set_xlabel("recordings in the array job")
    ax.set_ylabel("wall time, submission to last task end (s)")
    ax.set_xticks(sizes)
    ax.legend()
    ax.set_title("Wall time")
    ax = axes[1]
    labels, bottoms = [], []
    slurm_s, over_s, sort_s = [], [], []
    for r in runs:
        for t in r["tasks"]:
            labels.append(f"{r['recordings']}:{t['row']}")
            slurm_s.append(t["slurm_start_s"])
            over_s.append(t["task_overhead_s"])
            sort_s.append(t["sort_s"])
    x = range(len(labels))
    ax.bar(x, slurm_s, label="SLURM start (slot free -> task script)")
    bottoms = slurm_s
    ax.bar(x, over_s, bottom=bottoms, label="Python, checks, container start/stop")
    bottoms = [a + b for a, b in zip(slurm_s, over_s, strict=True)]
    ax.bar(x, sort_s, bottom=bottoms, label="the sort (Kilosort 4's own time)")
    ax.set_xticks(list(x), labels, rotation=0, fontsize=8)
    ax.set_xlabel("batch size : row")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    ax.set_title("Per task: overhead against the sort")
    ax = axes[2]
    for i, r in enumerate(runs):
        ts = [t for t, _ in r["curve"]]
        levels = [level - 0.04 * i for _, level in r["curve"]]  # offset: the curves overlap
        ax.step(ts, levels, where="post", lw=2, label=f"{r['recordings']} recording(s)")
    ax.axhline(slots, color="grey", ls="--", label=f"slots ({slots})")
    ax.set_xlabel("seconds since submission")
    ax.set_ylabel("tasks running")
    ax.set_title("Concurrency reached")
    ax.legend(fontsize=8)
    fig.suptitle(
        f"SLURM array jobs on a one-node cluster ({result['cpus']} CPUs), Kilosort 4 on the CPU; "
        f"load average {result['load_before'][0]:.1f} before, {result['load_after'][0]:.1f} after"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="kilosort4 image in the Docker engine (required)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw the PNG from the JSON in --out"
    )
    args = parser.parse_args(argv)
    if args.plot_only:
        figure(
            json.loads((args.out / "slurm_batch.json").read_text()), args.out / "slurm_batch.png"
        )
        return 0
    if not args.image:
        parser.error("--image is required: a kilosort4 image in the Docker engine")
    if os.getuid() != 0 or slurm.missing_programs():
        print("needs root and slurm-wlm and munge (scripts/setup-host.sh)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kilosort-docker-bench-slurm-") as tmp:
        work = Path(tmp)
        cache = work / "simulations"
        sims = [
            simulate(SimulationParams(seed=s, **PARAMS), cache, n_jobs=1).folder for s in (1, 2)
        ]
        with slurm.cluster() as cluster:
            slots = cluster.cpus  # --cpus-per-task 1
            runs = []
            for n in args.sizes:
                folder = work / f"batch-{n}"
                folder.mkdir()
                run = run_batch(folder, sims, n, args.image, slots)
                print(
                    f"{n} recording(s): wall {run['wall_s']:.1f} s, peak concurrency "
                    f"{run['peak_concurrency']}/{slots}",
                    flush=True,
                )
                runs.append(run)
    image_id = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", args.image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    result = {
        "image": args.image,
        "image_id": image_id,
        "cpus": cluster.cpus,
        "slots": slots,
        "recording": PARAMS | {"fs": 30000, "settings": SETTINGS},
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "nproc": os.cpu_count(),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "slurm_batch.json").write_text(json.dumps(result, indent=2) + "\n")
    figure(result, args.out / "slurm_batch.png")
    print(f"wrote {args.out / 'slurm_batch.json'} and slurm_batch.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

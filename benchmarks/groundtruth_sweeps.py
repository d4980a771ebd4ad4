"""Why Kilosort 4 loses units under drift: sweeps of drift amplitude and unit distance, repeats
for determinism, and the overheads of the ground-truth test, at the H200 size.

Three steps, on two machines:

``device`` (on the GPU machine, in the background): simulates every recording of the sweep
(:data:`FULL`: 384 channels, 300 s, 200 units, seed 42, zigzag drift with a 200 s period),
sorts each with Kilosort 4 (:mod:`kilosort_docker.groundtruth.sorters.ks4_entry`, one process
per sort, ``CUDA_VISIBLE_DEVICES`` naming its GPU), and keeps a compact copy of what scoring
needs (ground-truth spikes, phy spike times and clusters, Kilosort's ``dshift``). The first
sort and the first ``--deterministic`` sort have GPU 0 to themselves (their times are the
timings); the others run two per GPU and are marked ``concurrent``. It also times the
simulation (cold, then cached) and the scoring and figures of the first sort::

    setsid python -m benchmarks.groundtruth_sweeps device --work /tmp/gts &

``wait`` (on the GPU machine): waits up to ``--max-wait`` seconds, then packs what is done
into ``--out`` as ``raw.tar.xz.00``, ``.01``... (each under 15 MB), with ``status.json``.

``analyse`` (here): unpacks, scores every sort with :func:`kilosort_docker.groundtruth.score.score`
(merge-aware), and writes ``sweeps.json`` (runs, determinism, overheads),
``sweeps_units.json`` (per-unit rows of the first run of each recording), the device's
``sweeps_device_status.json`` (every time stamp) and the figures into ``--results``
(default ``benchmarks/groundtruth_h200/``)::

    python -m benchmarks.groundtruth_sweeps analyse /work/.device/N/raw.tar.xz.*

``--small`` makes a CPU-sized sweep (16 channels, 10 units, 20 s, no GPU) to test the steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kilosort_docker.groundtruth.simulate import (  # noqa: E402
    DEFAULT_UNIT_DISTANCE_UM,
    SPIKEINTERFACE_UNIT_DISTANCE_UM,
    SimulationParams,
)

#: Unit distance ranges of the sweep (um from the probe plane): spikeinterface 0.105's default
#: (5-45), this project's (10-45), and two with the near limit further away.
Z5, Z10, Z20, Z35 = (
    SPIKEINTERFACE_UNIT_DISTANCE_UM,
    DEFAULT_UNIT_DISTANCE_UM,
    (20.0, 45.0),
    (35.0, 45.0),
)
PART_BYTES = 15 * 1024 * 1024
ENTRY = ROOT / "kilosort_docker" / "groundtruth" / "sorters" / "ks4_entry.py"


@dataclass(frozen=True)
class Job:
    """One sort: ``recording`` (a key of the sweep's recordings), ``repeat`` number,
    ``deterministic`` mode, and ``exclusive`` (GPU 0 to itself, for timing)."""

    name: str
    recording: str
    repeat: int = 1
    deterministic: str = "off"
    exclusive: bool = False


def recordings(small: bool) -> dict[str, SimulationParams]:
    """The sweep's recordings by name: ``d<drift>_z<near distance>``, ``s0`` = static."""
    base = (
        {"duration_s": 20.0, "n_channels": 16, "n_units": 10, "firing_rates_hz": (10.0, 20.0)}
        if small
        else {"duration_s": 300.0, "n_channels": 384, "n_units": 200}
    )
    base |= {"seed": 42, "drift_period_s": 200.0}
    spec = {
        "d10_z5": (10.0, Z5),
        "s0_z5": (0.0, Z5),
        "d10_z20": (10.0, Z20),
        "s0_z20": (0.0, Z20),
        "d10_z35": (10.0, Z35),
        "s0_z35": (0.0, Z35),
        "d10_z10": (10.0, Z10),
        "s0_z10": (0.0, Z10),
        "d5_z5": (5.0, Z5),
        "d20_z5": (20.0, Z5),
    }
    if small:
        spec = {k: spec[k] for k in ("d10_z5", "s0_z5", "d10_z20")}
    return {
        name: SimulationParams(**base, drift_um=drift, unit_distance_um=dist)
        for name, (drift, dist) in spec.items()
    }


#: ``device --timing``: the thresholds' recording sorted alone on the machine, with the default
#: kernels and then PyTorch's deterministic ones (warn mode), for clean timings.
TIMING_JOBS = [
    Job("d10_z10.t1", "d10_z10", exclusive=True),
    Job("d10_z10.tdet", "d10_z10", repeat=2, deterministic="warn", exclusive=True),
]


def jobs(small: bool) -> list[Job]:
    """Sorts in priority order (the first two have GPU 0 to themselves)."""
    if small:
        return [
            Job("d10_z5.1", "d10_z5", exclusive=True),
            Job("d10_z5.det1", "d10_z5", deterministic="strict", exclusive=True),
            Job("s0_z5.1", "s0_z5"),
            Job("d10_z20.1", "d10_z20"),
        ]
    out = [
        Job("d10_z5.1", "d10_z5", exclusive=True),
        Job("s0_z5.1", "s0_z5"),
        Job("d10_z5.det1", "d10_z5", deterministic="strict", exclusive=True),
    ]
    out += [
        Job(f"{r}.1", r)
        for r in ("d10_z20", "s0_z20", "d10_z35", "s0_z35", "d10_z10", "s0_z10", "d5_z5", "d20_z5")
    ]
    out += [
        Job("d10_z5.det2", "d10_z5", repeat=2, deterministic="strict"),
        Job("d10_z5.2", "d10_z5", repeat=2),
        Job("s0_z5.2", "s0_z5", repeat=2),
        Job("d10_z5.3", "d10_z5", repeat=3),
        Job("s0_z5.3", "s0_z5", repeat=3),
    ]
    return out


# --------------------------------------------------------------------------- device


class Sweep:
    """Runs the sweep in ``work``: ``sims/`` (simulation cache), ``runs/<job>/`` (phy output),
    ``raw/`` (compact copies), ``status.json`` (progress, times)."""

    def __init__(
        self, work: Path, *, small: bool, gpus: int, per_gpu: int, timing: bool = False
    ) -> None:
        self.work, self.small, self.gpus, self.per_gpu = work, small, gpus, per_gpu
        self.recs = recordings(small)
        self.jobs = jobs(small)
        if timing:  # one recording, sorts one after the other on GPU 0
            self.recs = {"d10_z10": self.recs["d10_z10"]}
            self.jobs = list(TIMING_JOBS)
        self.lock = threading.Lock()
        self.ready: dict[str, str] = {}  # recording -> simulation folder
        self.status: dict[str, Any] = {
            "started": time.time(),
            "small": small,
            "gpus": gpus,
            "cpu_count": os.cpu_count(),
            "simulations": {},
            "jobs": {},
            "overheads": {},
            "done": False,
        }
        self.running: dict[int, list[Job]] = {g: [] for g in range(max(gpus, 1))}

    def save(self) -> None:
        with self.lock:
            text = json.dumps(self.status, indent=1, default=str)
        tmp = self.work / "status.json.tmp"
        tmp.write_text(text)
        tmp.replace(self.work / "status.json")

    # simulations ---------------------------------------------------------------

    def simulate_all(self) -> None:
        from kilosort_docker.groundtruth.simulate import simulate

        cache = self.work / "sims"
        cores = os.cpu_count() or 1
        for i, (name, params) in enumerate(self.recs.items()):
            jobs_n = min(16, cores) if i == 0 else max(1, min(8, cores // 4))
            t0, load0 = time.time(), os.getloadavg()[0]
            try:
                sim = simulate(params, cache, n_jobs=jobs_n)
            except Exception as exc:  # the other recordings can still be made
                with self.lock:
                    self.status["simulations"][name] = {"error": repr(exc)}
                self.save()
                continue
            t1 = time.time()
            entry = {
                "seconds": t1 - t0,
                "start": t0,
                "end": t1,
                "n_jobs": jobs_n,
                "cached": sim.cached,
                "load_start": load0,
                "folder": str(sim.folder),
                "params": dataclasses.asdict(params),
            }
            if i == 0:  # the cached path, timed on the same parameters
                c0 = time.time()
                again = simulate(params, cache, n_jobs=jobs_n)
                entry["cached_seconds"] = time.time() - c0
                entry["cached_check"] = again.cached
            self.pack_recording(name, sim.folder)
            with self.lock:
                self.status["simulations"][name] = entry
                self.ready[name] = str(sim.folder)
            self.save()

    def pack_recording(self, name: str, folder: Path) -> None:
        dest = self.work / "raw" / "recordings" / name
        dest.mkdir(parents=True, exist_ok=True)
        for f in (
            "gt_spike_times.npy",
            "gt_spike_labels.npy",
            "gt_units.json",
            "gt_drift.npy",
            "manifest.json",
        ):
            shutil.copy(folder / f, dest / f)

    # sorts ---------------------------------------------------------------------

    def pick(self) -> tuple[Job, int] | None:
        """The next job whose recording is ready and that fits on a GPU, with the GPU."""
        pending_exclusive = [
            j for j in self.jobs if j.exclusive and j.name not in self.status["jobs"]
        ]
        for job in self.jobs:
            if job.name in self.status["jobs"] or job.recording not in self.ready:
                continue
            if job.exclusive:
                if not self.running[0]:
                    return job, 0
                continue
            for g in range(len(self.running)):
                if g == 0 and (pending_exclusive or any(j.exclusive for j in self.running[0])):
                    continue  # GPU 0 is kept for the timed sorts until they are done
                if len(self.running[g]) < self.per_gpu:
                    return job, g
        return None

    def sort(self, job: Job, gpu: int) -> None:
        try:
            self._sort(job, gpu)
        except Exception as exc:  # the GPU slot must come free whatever happened
            with self.lock:
                self.status["jobs"][job.name] = {
                    "ok": False,
                    "error": repr(exc),
                    **dataclasses.asdict(job),
                }
                if job in self.running[gpu]:
                    self.running[gpu].remove(job)
            self.save()

    def _sort(self, job: Job, gpu: int) -> None:
        folder = Path(self.ready[job.recording])
        out = self.work / "runs" / job.name
        if out.exists():
            shutil.rmtree(out)
        threads = 16 if job.exclusive else 8
        env = os.environ | {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "NUMBA_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
        }
        device = "cpu" if self.gpus == 0 else "cuda"
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        modes = [job.deterministic] + (["warn"] if job.deterministic == "strict" else [])
        record: dict[str, Any] = {"gpu": gpu, "threads": threads, "attempts": []}
        for mode in modes:
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            t0, load0 = time.time(), os.getloadavg()[0]
            with (out / "sort.log").open("w") as log:
                code = subprocess.call(
                    [
                        sys.executable,
                        str(ENTRY),
                        str(folder),
                        str(out),
                        device,
                        f"--deterministic={mode}",
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            t1 = time.time()
            info = {}
            if (out / "ks_run.json").is_file():
                info = json.loads((out / "ks_run.json").read_text())
            record["attempts"].append(
                {
                    "mode": mode,
                    "exit": code,
                    "start": t0,
                    "end": t1,
                    "wall_seconds": t1 - t0,
                    "load_start": load0,
                    "load_end": os.getloadavg()[0],
                    "ks_run": info,
                    "log_tail": (out / "sort.log").read_text()[-1500:],
                }
            )
            if code == 0:
                break
        record["ok"] = record["attempts"][-1]["exit"] == 0
        try:
            if record["ok"]:
                self.pack_run(job, out)
                if job.name == self.jobs[0].name:
                    record["overheads"] = self.time_scoring(folder, out)
        except Exception as exc:  # keep the sweep going; say what broke
            record["post_error"] = repr(exc)
        finally:
            with self.lock:
                self.status["jobs"][job.name] = record | dataclasses.asdict(job)
                self.running[gpu].remove(job)
            self.save()

    def pack_run(self, job: Job, out: Path) -> None:
        dest = self.work / "raw" / "runs" / job.name
        dest.mkdir(parents=True, exist_ok=True)
        for f in (
            "spike_times.npy",
            "spike_clusters.npy",
            "params.py",
            "cluster_KSLabel.tsv",
            "ks_run.json",
        ):
            if (out / f).is_file():
                shutil.copy(out / f, dest / f)
        if (out / "ops.npy").is_file():  # only what the drift figure reads
            ops = np.load(out / "ops.npy", allow_pickle=True).item()
            small = {
                "dshift": ops.get("dshift"),
                "settings": {
                    k: ops.get("settings", {}).get(k) for k in ("fs", "batch_size", "tmin")
                },
            }
            np.save(dest / "ops.npy", np.array(small, dtype=object))

    def time_scoring(self, sim: Path, out: Path) -> dict[str, Any]:
        """Seconds to score the first sort without figures, and to write the figures."""
        from kilosort_docker.groundtruth import merges
        from kilosort_docker.groundtruth import score as scoring

        res: dict[str, Any] = {"load_start": os.getloadavg()[0]}
        t0 = time.perf_counter()
        report = scoring.score(sim, out, out_dir=out / "score-nofig", figures=False)
        res["score_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scoring.write_figures(
            sim,
            out,
            report.units,
            sorter="kilosort4",
            drift_estimate=merges.kilosort4_drift(out),
        )
        res["figures_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scoring.score(sim, out, out_dir=out / "score-all", figures=True)
        res["score_and_figures_seconds"] = time.perf_counter() - t0
        res["load_end"] = os.getloadavg()[0]
        return res

    def run(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            smi = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=name,driver_version,memory.total",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.status["gpu_info"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            self.status["gpu_info"] = f"nvidia-smi failed: {exc}"
        self.save()
        sims = threading.Thread(target=self.simulate_all, daemon=True)
        sims.start()
        threads: list[threading.Thread] = []
        while True:
            with self.lock:
                started = {j.name for g in self.running.values() for j in g}
                finished = set(self.status["jobs"])
                picked = self.pick() if len(started) < 64 else None
                if picked:
                    job, gpu = picked
                    self.running[gpu].append(job)
                    self.status["jobs"][job.name] = {
                        "gpu": gpu,
                        "running": True,
                        "start": time.time(),
                    }
            if picked:
                t = threading.Thread(target=self.sort, args=picked, daemon=True)
                t.start()
                threads.append(t)
                self.save()
                continue
            if len(finished) == len(self.jobs) and not started:
                break
            if (
                not sims.is_alive()
                and not started
                and all(j.recording not in self.ready for j in self.jobs if j.name not in finished)
            ):
                break  # a simulation failed: nothing more can run
            time.sleep(2)
        for t in threads:
            t.join()
        self.status["done"] = True
        self.status["finished"] = time.time()
        self.save()


def pack(work: Path, out: Path) -> list[str]:
    """``raw/`` and ``status.json`` as ``raw.tar.xz.NN`` parts of at most 15 MB in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tar = work / "raw.tar.xz"
    with tarfile.open(tar, "w:xz", preset=6) as tf:
        if (work / "raw").is_dir():
            tf.add(work / "raw", arcname="raw")
        if (work / "status.json").is_file():
            tf.add(work / "status.json", arcname="status.json")
    data = tar.read_bytes()
    names = []
    for i in range(0, len(data), PART_BYTES):
        name = f"raw.tar.xz.{i // PART_BYTES:02d}"
        (out / name).write_bytes(data[i : i + PART_BYTES])
        names.append(name)
    shutil.copy(work / "status.json", out / "status.json")
    return names


def wait(work: Path, out: Path, max_wait: float) -> int:
    deadline = time.time() + max_wait
    st = work / "status.json"
    while time.time() < deadline:
        try:
            if json.loads(st.read_text()).get("done"):
                break
        except (OSError, ValueError):
            pass
        time.sleep(5)
    status = json.loads((work / "status.json").read_text())
    names = pack(work, out)
    done = [k for k, v in status["jobs"].items() if "ok" in v]
    print(
        f"done: {status.get('done')}; sorts finished {len(done)}: {done}; "
        f"simulations {list(status['simulations'])}; packed {names}"
    )
    return 0


# --------------------------------------------------------------------------- analysis


def unpack(parts: list[Path], dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    blob = dest / "raw.tar.xz"
    blob.write_bytes(b"".join(p.read_bytes() for p in sorted(parts)))
    with tarfile.open(blob) as tf:
        tf.extractall(dest, filter="data")
    return dest


def differences(a: Path, b: Path, report_a: dict, report_b: dict) -> dict[str, Any]:
    """What differs between two sorts of one recording: spikes, clusters, and the units whose
    best accuracy changed."""
    ta, tb = np.load(a / "spike_times.npy"), np.load(b / "spike_times.npy")
    ca, cb = np.load(a / "spike_clusters.npy"), np.load(b / "spike_clusters.npy")
    same = ta.shape == tb.shape and np.array_equal(ta, tb) and np.array_equal(ca, cb)
    ua = {u["unit"]: u for u in report_a["units"]}
    changed = [
        {
            "unit": u,
            "snr": ua[u]["snr"],
            "accuracy": [ua[u]["accuracy"], v["accuracy"]],
            "merged_accuracy": [ua[u]["merged_accuracy"], v["merged_accuracy"]],
        }
        for u, v in ((v["unit"], v) for v in report_b["units"])
        if abs(ua[u]["accuracy"] - v["accuracy"]) > 1e-9
    ]
    return {
        "identical": bool(same),
        "n_spikes": [int(ta.size), int(tb.size)],
        "n_clusters": [report_a["n_clusters"], report_b["n_clusters"]],
        "n_well_detected": [report_a["n_well_detected"], report_b["n_well_detected"]],
        "n_well_detected_merged": [
            report_a["n_well_detected_merged"],
            report_b["n_well_detected_merged"],
        ],
        "n_units_accuracy_changed": len(changed),
        "n_units_crossing_0.8": sum(
            1 for c in changed if (c["accuracy"][0] >= 0.8) != (c["accuracy"][1] >= 0.8)
        ),
        "units_changed": changed,
    }


def outcome_groups(runs_dir: Path, names: list[str]) -> list[list[str]]:
    """``names`` grouped by bit-identical spike times and clusters."""
    groups: list[list[str]] = []
    for n in names:
        t, c = (
            np.load(runs_dir / n / "spike_times.npy"),
            np.load(runs_dir / n / "spike_clusters.npy"),
        )
        for g in groups:
            t0 = np.load(runs_dir / g[0] / "spike_times.npy")
            c0 = np.load(runs_dir / g[0] / "spike_clusters.npy")
            if t.shape == t0.shape and np.array_equal(t, t0) and np.array_equal(c, c0):
                g.append(n)
                break
        else:
            groups.append([n])
    return groups


def overlaps(status: dict[str, Any], name: str) -> dict[str, Any]:
    """What else ran while sort ``name`` ran: sorts on its GPU, on the other, simulations."""
    job = status["jobs"][name]
    a = job["attempts"][-1]
    start, end = a["start"], a["end"]

    def cover(s0, s1):
        return max(0.0, min(end, s1) - max(start, s0))

    same, other = {}, {}
    for n, j in status["jobs"].items():
        if n == name or not j.get("attempts"):
            continue
        for b in j["attempts"]:
            sec = cover(b["start"], b["end"])
            if sec > 1:
                (same if j["gpu"] == job["gpu"] else other)[n] = round(sec, 1)
    sims = {
        n: round(cover(v["start"], v["end"]), 1)
        for n, v in status["simulations"].items()
        if "start" in v and cover(v["start"], v["end"]) > 1
    }
    return {
        "seconds": round(end - start, 1),
        "same_gpu_sorts": same,
        "other_gpu_sorts": other,
        "simulations": sims,
        "alone_on_gpu": not same,
        "alone_on_machine": not same and not other and not sims,
    }


def analyse(raw: Path, results: Path) -> dict[str, Any]:
    from kilosort_docker.groundtruth import score as scoring

    status = json.loads((raw / "status.json").read_text())
    recs_dir, runs_dir = raw / "raw" / "recordings", raw / "raw" / "runs"
    reports: dict[str, dict] = {}
    score_dir = raw / "scored"
    for name, job in sorted(status["jobs"].items()):
        if not job.get("ok") or not (runs_dir / name).is_dir():
            continue
        rec = job["recording"]
        out = score_dir / name
        rep = scoring.score(
            recs_dir / rec, runs_dir / name, out_dir=out, figures=(name.endswith(".1"))
        )
        d = rep.to_dict()
        d.pop("simulation", None)
        reports[name] = d
    results.mkdir(parents=True, exist_ok=True)
    sims = status["simulations"]
    rows = []
    for name, job in sorted(status["jobs"].items()):
        att = job.get("attempts", [])
        rep = reports.get(name)
        ks = att[-1]["ks_run"] if att else {}
        rows.append(
            {
                "job": name,
                "recording": job.get("recording"),
                "drift_um": sims.get(job.get("recording"), {}).get("params", {}).get("drift_um"),
                "unit_distance_um": sims.get(job.get("recording"), {})
                .get("params", {})
                .get("unit_distance_um"),
                "repeat": job.get("repeat"),
                "deterministic": job.get("deterministic"),
                "deterministic_used": att[-1]["mode"] if att else None,
                "deterministic_failures": [a["ks_run"].get("error") for a in att if a["exit"]],
                "nondeterministic_operations": ks.get("nondeterministic_operations"),
                "gpu": job.get("gpu"),
                "timing": ("alone on its GPU" if job.get("exclusive") else "concurrent (2 per GPU)")
                if att
                else None,
                "overlap": overlaps(status, name) if att else None,
                "sort_seconds": ks.get("seconds"),
                "wall_seconds": att[-1]["wall_seconds"] if att else None,
                "load_start": att[-1]["load_start"] if att else None,
                "ok": job.get("ok"),
                **(
                    {
                        k: rep[k]
                        for k in (
                            "n_gt_units",
                            "n_well_detected",
                            "n_high_snr",
                            "n_well_detected_high_snr",
                            "median_accuracy",
                            "n_well_detected_merged",
                            "n_well_detected_high_snr_merged",
                            "median_merged_accuracy",
                            "n_units_split",
                            "n_clusters",
                            "n_redundant_units",
                            "n_false_positive_units",
                            "snr_bands",
                            "drift_estimate",
                        )
                    }
                    if rep
                    else {}
                ),
            }
        )
    determinism = {}
    for rec, prefix in (("d10_z5", "d10_z5"), ("s0_z5", "s0_z5")):
        names = [n for n in (f"{prefix}.1", f"{prefix}.2", f"{prefix}.3") if n in reports]
        determinism[rec] = [
            {
                "pair": [names[0], n],
                **differences(runs_dir / names[0], runs_dir / n, reports[names[0]], reports[n]),
            }
            for n in names[1:]
        ]
    determinism["outcomes"] = {
        rec: outcome_groups(runs_dir, sorted(n for n in reports if n.startswith(rec + ".")))
        for rec in ("d10_z5", "s0_z5")
    }
    dets = [n for n in ("d10_z5.det1", "d10_z5.det2") if n in reports]
    if len(dets) == 2:
        determinism["d10_z5_deterministic"] = [
            {
                "pair": dets,
                **differences(
                    runs_dir / dets[0], runs_dir / dets[1], reports[dets[0]], reports[dets[1]]
                ),
            }
        ]
    overheads = next(
        (j.get("overheads") for j in status["jobs"].values() if j.get("overheads")), None
    )
    summary = {
        "what": "Kilosort 4.1.7 ground-truth sweeps (benchmarks/groundtruth_sweeps.py)",
        "gpu_info": status.get("gpu_info"),
        "cpu_count": status.get("cpu_count"),
        "device_wall_seconds": (status.get("finished") or time.time()) - status["started"],
        "simulations": {
            k: {
                kk: v[kk]
                for kk in ("seconds", "n_jobs", "cached", "params", "cached_seconds", "load_start")
                if kk in v
            }
            for k, v in sims.items()
        },
        "runs": rows,
        "determinism": determinism,
        "device_overheads": overheads,
        "units": {
            n: [
                {
                    k: (round(u[k], 4) if isinstance(u[k], float) else u[k])
                    for k in ("unit", "snr", "z_um", "accuracy", "merged_accuracy", "n_split")
                }
                for u in r["units"]
            ]
            for n, r in reports.items()
            if n.endswith(".1") or "det" in n
        },
    }
    units = summary.pop("units")
    (results / "sweeps.json").write_text(json.dumps(summary, indent=1, default=float))
    # per-unit rows, compact: one line per run
    (results / "sweeps_units.json").write_text(
        "{\n"
        + ",\n".join(
            f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in units.items()
        )
        + "\n}\n"
    )
    summary["units"] = units
    figures(summary, results)
    (results / "sweeps_device_status.json").write_text(json.dumps(status, indent=1))
    for name in ("d10_z5.1", "s0_z5.1", "d10_z10.1"):
        for fig in ("merges_vs_snr.png", "drift.png"):
            src = score_dir / name / fig
            if src.is_file() and (fig != "drift.png" or name.startswith("d")):
                shutil.copy(src, results / f"sweeps_{name.split('.')[0]}_{fig}")
    return summary


def figures(summary: dict[str, Any], results: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {r["job"]: r for r in summary["runs"] if r.get("n_gt_units")}

    def frac(r, key):
        return r[key] / r["n_gt_units"]

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    xs, single, merged = [], [], []
    for d in (0, 5, 10, 20):
        r = runs.get(f"{'s0' if d == 0 else f'd{d}'}_z5.1")
        if r:
            xs.append(d)
            single.append(r["n_well_detected"])
            merged.append(r["n_well_detected_merged"])
    ax.plot(xs, single, "o-", label="best single cluster")
    ax.plot(xs, merged, "s--", label="after merges")
    ax.set(
        xlabel="drift amplitude (+- um)",
        ylabel="well detected units (of 200)",
        title="drift sweep (units 5-45 um from the probe)",
    )
    ax.legend()
    ax = axes[1]
    width = 0.2
    zs = [5, 10, 20, 35]
    for i, (kind, label) in enumerate((("s0", "static"), ("d10", "+-10 um drift"))):
        vals = [runs.get(f"{kind}_z{z}.1") for z in zs]
        ys = [v["n_well_detected"] / v["n_gt_units"] if v else np.nan for v in vals]
        ym = [v["n_well_detected_merged"] / v["n_gt_units"] if v else np.nan for v in vals]
        pos = np.arange(len(zs)) + (i - 0.5) * 2 * width
        ax.bar(pos - width / 2, ys, width, label=f"{label}, single")
        ax.bar(pos + width / 2, ym, width, label=f"{label}, merged", alpha=0.6)
    ax.set_xticks(np.arange(len(zs)), [f">= {z} um" for z in zs])
    ax.set(
        xlabel="nearest unit distance from the probe (units up to 45 um)",
        ylabel="fraction well detected",
        ylim=(0, 1.05),
        title="distance sweep",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(results / "sweeps.png", dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.groundtruth_sweeps")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("device", help="simulate and sort the sweep (GPU machine)")
    d.add_argument("--work", type=Path, required=True)
    d.add_argument("--small", action="store_true", help="CPU-sized sweep to test the steps")
    d.add_argument("--per-gpu", type=int, default=2, help="concurrent sorts per GPU")
    d.add_argument(
        "--timing", action="store_true", help="only the timing runs (TIMING_JOBS), alone"
    )
    w = sub.add_parser("wait", help="wait for the device step, pack results into --out")
    w.add_argument("--work", type=Path, required=True)
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--max-wait", type=float, default=540.0)
    a = sub.add_parser("analyse", help="score the packed results, write JSON and figures")
    a.add_argument("parts", type=Path, nargs="+", help="raw.tar.xz.NN files (and status.json)")
    a.add_argument("--scratch", type=Path, default=Path("/tmp/groundtruth-sweeps"))
    a.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "groundtruth_h200")
    args = p.parse_args(argv)
    if args.cmd == "device":
        gpus = 0
        if not args.small:
            import torch

            gpus = torch.cuda.device_count()
            if gpus == 0:
                print("no GPU visible: use --small for the CPU sweep", file=sys.stderr)
                return 2
        Sweep(
            args.work, small=args.small, gpus=gpus, per_gpu=args.per_gpu, timing=args.timing
        ).run()
        return 0
    if args.cmd == "wait":
        return wait(args.work, args.out, args.max_wait)
    parts = [x for x in args.parts if ".tar.xz." in x.name]
    raw = unpack(parts, args.scratch)
    summary = analyse(raw, args.results)
    print(
        json.dumps(
            {
                r["job"]: [
                    r.get("n_well_detected"),
                    r.get("n_well_detected_merged"),
                    r.get("sort_seconds"),
                ]
                for r in summary["runs"]
            },
            indent=0,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

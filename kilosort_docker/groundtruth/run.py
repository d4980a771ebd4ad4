"""The ground-truth test (``nox -s gpu``): preflight, simulate, sort, score, verdict.

Run ``python -m kilosort_docker.groundtruth --help``. Exit status:

* 0 - the sort met the thresholds (``PASS``);
* 1 - it did not (``FAIL``), or the sorter crashed (``FAIL: the sorter crashed: <the
  exception's last line>``), or its output could not be scored; ``summary.json`` then holds
  ``passed: false`` and the ``error``;
* 2 - a usage or input problem, found before any work (a one-line message names the fix),
  including a recording the sorter is known not to handle (shorter than two of its batches:
  :func:`kilosort_docker.groundtruth.sorters.kilosort4.check_recording`,
  :func:`kilosort_docker.groundtruth.sorters.kilosort3.check_recording`);
* 77 - skipped: the preflight found something missing (no GPU, no GPU access in Docker,
  no MATLAB license...). :data:`EXIT_SKIP` follows the automake convention, so a front end
  (nox) can turn it into a skip; the reason is then the last line on stderr, as
  ``skipped: <one-line reason>`` (:data:`SKIP_PREFIX`).

With ``KILOSORT_DOCKER_REQUIRE_GPU=1`` in the environment (CI on a GPU machine), a failed
preflight is a failure instead: exit 1, with a message naming the variable.

Outputs, under ``--out``: ``run-<n>/`` (phy files of each sort), ``report.json`` and the
PNG figures of the first run, and ``summary.json`` (the headline numbers, the sort times of
every run, and whether repeated runs gave identical spike trains).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kilosort_docker.errors import UserError
from kilosort_docker.groundtruth.simulate import DEFAULT_UNIT_DISTANCE_UM

log = logging.getLogger(__name__)

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_SKIP = 0, 1, 2, 77
#: Environment variable that turns a failed preflight (exit 77) into a failure (exit 1).
REQUIRE_GPU_VARIABLE = "KILOSORT_DOCKER_REQUIRE_GPU"
#: Start of the last stderr line when the run is skipped: ``skipped: <reason>``.
SKIP_PREFIX = "skipped: "
SORTERS = ("kilosort4", "kilosort3")
MODES = ("host", "container")


@dataclass(frozen=True)
class Plan:
    """What one ground-truth run does (parsed from the command line)."""

    sorter: str
    mode: str
    image: str | None
    device: str
    license: str | None
    mac_address: str | None


# --------------------------------------------------------------------------- preflight


def gpu_visible() -> str | None:
    """None when an NVIDIA GPU is visible (torch.cuda, else ``nvidia-smi -L``), else why not."""
    try:
        import torch

        if torch.cuda.is_available():
            return None
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and "GPU" in out.stdout:
                return None
        except (OSError, subprocess.SubprocessError):
            pass
    return "no NVIDIA GPU visible (torch.cuda.is_available() is False and nvidia-smi lists none)"


def docker_gpu_ready(client, image: str, **probe) -> str | None:
    """None when a container of ``image`` gets the GPUs, else why not (``no GPU access:
    <Docker's error line>``).

    Decided by what works: :func:`kilosort_docker.containers.probe_gpus` runs ``nvidia-smi
    -L`` in ``image`` with the GPU request the sort uses. ``docker info``'s runtime list does
    not tell: the NVIDIA Container Toolkit may serve ``--gpus`` through its runtime hook or
    CDI with no ``nvidia`` runtime listed. ``probe`` goes to ``probe_gpus`` (``request``,
    ``command``, ``timeout_s``).

    Raises:
        UserError: the probe could not run (the image vanished, the engine stopped
            answering): that is an error, neither a GPU nor a skip.
    """
    from kilosort_docker import containers

    return containers.probe_gpus(image, client=client, **probe)


def preflight(plan: Plan, *, client=None) -> str | None:
    """Check what the run needs before any work; None when all is there, else a one-line reason.

    Checks, in order: spikeinterface importable; for Kilosort 3, MATLAB (host mode) and a
    license that is set and reachable; for Kilosort 4 on the host, kilosort importable; a GPU
    when the sort uses one; for containers, a Docker engine, the image, and, when a GPU is
    passed, that a container of the image gets it (:func:`docker_gpu_ready`).
    """
    try:
        import spikeinterface  # noqa: F401
    except ImportError:
        return "spikeinterface is not installed: pip install 'kilosort-docker[groundtruth]'"
    if plan.sorter == "kilosort3":
        from kilosort_docker.matlab import host_license, local_matlab, resolve_license

        try:
            if plan.mode == "host":
                lic = host_license(plan.license, local_matlab())
            else:
                lic = resolve_license(plan.license)
        except UserError as exc:
            return str(exc)
        if lic is not None:
            reason = lic.reachable()
            if reason:
                return reason
    needs_gpu = plan.sorter == "kilosort3" or plan.device != "cpu"
    if plan.mode == "host":
        if plan.sorter == "kilosort4":
            try:
                import kilosort  # noqa: F401
            except ImportError:
                return "kilosort is not installed: pip install 'kilosort-docker[groundtruth]'"
        if needs_gpu and plan.device != "auto":
            reason = gpu_visible()
            if reason:
                hint = "; use --device cpu to sort on the CPU" if plan.sorter == "kilosort4" else ""
                return reason + hint
        return None
    from kilosort_docker import engine

    try:
        client = client or engine.connect(timeout=60)
    except UserError as exc:
        return str(exc)
    try:
        present = engine.image_exists(client, plan.image)
    except Exception:
        present = False
    if not present:
        return f"image {plan.image} is not present: build it first"
    if needs_gpu:
        return docker_gpu_ready(client, plan.image)
    return None


# --------------------------------------------------------------------------- the run


def identical_outputs(a: Path, b: Path) -> bool:
    """True when two phy folders hold the same spike times and cluster labels."""
    for name in ("spike_times.npy", "spike_clusters.npy"):
        pa, pb = a / name, b / name
        if not (pa.is_file() and pb.is_file()):
            return False
        if not np.array_equal(np.load(pa), np.load(pb)):
            return False
    return True


def _run_numbers(report, folder: Path) -> dict:
    path = folder / "spike_times.npy"
    return {
        "n_well_detected": report.n_well_detected,
        "median_accuracy": report.median_accuracy,
        "n_clusters": report.n_clusters,
        "n_spikes": int(np.load(path, mmap_mode="r").shape[0]) if path.is_file() else 0,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kilosort_docker.groundtruth",
        description="Simulate a drifting Neuropixels recording, sort it, score it against "
        "the ground truth, and exit 0 (pass), 1 (fail), 2 (usage) or 77 (skipped).",
    )
    p.add_argument("--sorter", choices=SORTERS, default="kilosort4")
    p.add_argument("--mode", choices=MODES, default="host")
    p.add_argument(
        "--image", help="image for --mode container (e.g. kilosortdocker/kilosort4:4.1.7)"
    )
    p.add_argument(
        "--device",
        choices=("cuda", "cpu", "auto"),
        default="cuda",
        help="Kilosort 4 device (default cuda: the GPU test); cpu sorts on the CPU",
    )
    p.add_argument("--duration", type=float, default=120.0, help="seconds (default 120)")
    p.add_argument("--channels", type=int, default=32, help="channels, 8..384 (default 32)")
    p.add_argument("--units", type=int, default=10, help="ground-truth units (default 10)")
    p.add_argument(
        "--firing-rates",
        type=float,
        nargs=2,
        default=(2.0, 8.0),
        metavar=("LOW", "HIGH"),
        help="range of the units' firing rates in Hz (default 2 8)",
    )
    p.add_argument(
        "--unit-distance",
        type=float,
        nargs=2,
        default=DEFAULT_UNIT_DISTANCE_UM,
        metavar=("NEAR", "FAR"),
        help="range of the units' distance from the probe plane in um (default "
        f"{DEFAULT_UNIT_DISTANCE_UM[0]:g} {DEFAULT_UNIT_DISTANCE_UM[1]:g}: MEArec's near limit)",
    )
    p.add_argument("--drift", type=float, default=10.0, help="peak drift in um, 0 = static")
    p.add_argument("--drift-period", type=float, default=100.0, help="zigzag period in s")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, default=Path("groundtruth-out"), help="output folder")
    p.add_argument("--cache", type=Path, default=None, help="simulation cache folder")
    p.add_argument(
        "--thresholds", type=Path, default=None, help="TOML file (default thresholds/<sorter>.toml)"
    )
    p.add_argument("--repeat", type=int, default=1, help="sort this many times, compare runs")
    p.add_argument("--jobs", type=int, default=None, help="processes writing the simulation")
    p.add_argument(
        "--license",
        default=None,
        help="Kilosort 3: port@host or license file (default $MLM_LICENSE_FILE)",
    )
    p.add_argument("--mac-address", default=None, help="Kilosort 3: MAC for a host-locked license")
    p.add_argument("--no-preflight", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ground-truth test; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        datefmt="%H:%M:%S",
    )
    # faiss logs each optional CPU-specific library it does not find; that is not a failure
    logging.getLogger("faiss").setLevel(logging.WARNING)
    try:
        return _run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _say(msg: str) -> None:
    print(f"[groundtruth] {msg}", flush=True)


def require_gpu() -> bool:
    """True when ``KILOSORT_DOCKER_REQUIRE_GPU=1``: a failed preflight must fail the run."""
    return os.environ.get(REQUIRE_GPU_VARIABLE, "").strip() == "1"


def _preflight_failed(reason: str) -> int:
    """Report a failed preflight: a skip (77, ``skipped: <reason>`` last on stderr), or with
    ``KILOSORT_DOCKER_REQUIRE_GPU=1`` a failure (1)."""
    reason = " ".join(reason.split())  # one line, whatever the check said
    if require_gpu():
        _say(f"FAIL: {reason} ({REQUIRE_GPU_VARIABLE}=1: a failed preflight is a failure)")
        print(
            f"error: preflight failed with {REQUIRE_GPU_VARIABLE}=1: {reason}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAIL
    _say(f"SKIP: {reason}")
    print(f"{SKIP_PREFIX}{reason}", file=sys.stderr, flush=True)
    return EXIT_SKIP


def refuse_recording(sorter: str, params) -> None:
    """Refuse, before any work, a recording ``sorter`` is known not to handle (too short).

    Raises:
        UserError: one line naming the shortest ``--duration`` the sorter sorts.
    """
    from kilosort_docker.groundtruth.sorters import kilosort3, kilosort4

    module = kilosort4 if sorter == "kilosort4" else kilosort3
    shortest = math.ceil(module.min_samples() / params.fs * 10) / 10
    module.check_recording(
        params.n_samples, params.fs, fix=f"pass --duration {shortest:g} or longer"
    )


def _runs(results, per_run, params) -> list[dict]:
    """``summary.json``'s ``runs``: time, real-time multiple, numbers and sorter info per run."""
    return [
        {
            "seconds": r.seconds,
            "x_real_time": params.duration_s / r.seconds if r.seconds else None,
            **numbers,
            **{k: v for k, v in r.info.items() if k != "seconds"},
        }
        for r, numbers in zip(results, per_run, strict=True)
    ]


def _failed(out: Path, base: dict, results: list, reason: str, params) -> int:
    """A sort that crashed or cannot be scored: ``FAIL: <reason>`` (one line), a
    ``summary.json`` with ``passed: false`` and the ``error``, exit 1."""
    reason = " ".join(reason.split())
    summary = {
        **base,
        "runs": _runs(results, [{} for _ in results], params),  # the runs that finished
        "passed": False,
        "reasons": [reason],
        "error": reason,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _say(f"FAIL: {reason}")
    return EXIT_FAIL


def _run(args: argparse.Namespace) -> int:
    from kilosort_docker.groundtruth import score as scoring
    from kilosort_docker.groundtruth.simulate import SimulationParams, simulate
    from kilosort_docker.groundtruth.sorters import SortError, run_kilosort

    if args.mode == "container" and not args.image:
        raise UserError("--mode container needs --image NAME:TAG")
    if args.image:  # a typo is bad input (exit 2), not a missing image (a skip)
        from kilosort_docker.images.references import check_reference

        check_reference(
            args.image, what="--image", fix="give --image as [registry/]name[:tag], lowercase"
        )
    if args.repeat < 1:
        raise UserError("--repeat must be >= 1")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}: leave it out for one per core")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file: pass a folder for the results")
    plan = Plan(args.sorter, args.mode, args.image, args.device, args.license, args.mac_address)
    params = SimulationParams(
        duration_s=args.duration,
        n_channels=args.channels,
        n_units=args.units,
        drift_um=args.drift,
        drift_period_s=args.drift_period,
        seed=args.seed,
        firing_rates_hz=tuple(args.firing_rates),
        unit_distance_um=tuple(args.unit_distance),
    )
    refuse_recording(args.sorter, params)
    limits = scoring.load_thresholds(
        args.thresholds or scoring.thresholds_path(args.sorter), n_channels=params.n_channels
    )
    if not args.no_preflight:
        reason = preflight(plan)
        if reason:
            return _preflight_failed(reason)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    _say(
        f"simulating {params.n_units} units, {params.n_channels} channels, "
        f"{params.duration_s:g} s, {params.firing_rates_hz[0]:g}-{params.firing_rates_hz[1]:g} Hz, "
        f"drift +-{params.drift_um:g} um (seed {params.seed})"
    )
    t0 = time.perf_counter()
    sim = simulate(params, args.cache, n_jobs=args.jobs)
    _say(
        f"simulation {'found in cache' if sim.cached else 'written'} at {sim.folder} "
        f"({time.perf_counter() - t0:.1f} s)"
    )

    base = {
        "sorter": args.sorter,
        "mode": args.mode,
        "image": args.image,
        "simulation": sim.manifest()["params"],
        "simulation_folder": str(sim.folder),
        "thresholds": dataclasses.asdict(limits),
    }
    results = []
    for i in range(args.repeat):
        run_dir = out / f"run-{i + 1}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        _say(f"sorting with {args.sorter} ({args.mode}), run {i + 1}/{args.repeat}")
        try:
            result = run_kilosort(
                args.sorter,
                args.mode,
                sim.folder,
                run_dir,
                image=args.image,
                device=args.device,
                gpu=args.device != "cpu",
                license=args.license,
                mac_address=args.mac_address,
            )
        except SortError as exc:
            return _failed(out, base, results, f"the sorter crashed: {exc}", params)
        x_rt = params.duration_s / result.seconds if result.seconds else float("nan")
        _say(
            f"run {i + 1}: sorted in {result.seconds:.1f} s ({x_rt:.2f} x real time) "
            f"on {result.info.get('device', '?')}"
        )
        results.append(result)

    try:  # the sort ran: output that cannot be scored (no spikes...) is a failed sort
        report = scoring.score(
            sim.folder,
            results[0].output,
            out_dir=out,
            sorter=args.sorter,
            thresholds=limits,
            sort_seconds=results[0].seconds,
        )
        per_run = [_run_numbers(report, results[0].output)]
        for r in results[1:]:
            again = scoring.score(sim.folder, r.output, sorter=args.sorter, figures=False)
            per_run.append(_run_numbers(again, r.output))
    except UserError as exc:
        return _failed(out, base, results, f"the sort could not be scored: {exc}", params)
    identical = None
    if len(results) > 1:
        identical = all(identical_outputs(results[0].output, r.output) for r in results[1:])
        _say(f"repeated runs identical: {identical}")
        for i, numbers in enumerate(per_run, 1):
            _say(
                f"run {i}: {numbers['n_well_detected']}/{report.n_gt_units} well detected, "
                f"median accuracy {numbers['median_accuracy']:.3f}, "
                f"{numbers['n_clusters']} clusters, {numbers['n_spikes']} spikes"
            )
    summary = {
        **base,
        "n_gt_units": report.n_gt_units,
        "units_without_spikes": report.units_without_spikes,
        "n_well_detected": report.n_well_detected,
        "n_high_snr": report.n_high_snr,
        "n_well_detected_high_snr": report.n_well_detected_high_snr,
        "median_accuracy": report.median_accuracy,
        "n_clusters": report.n_clusters,
        "n_good_clusters": report.n_good_clusters,
        "n_well_detected_merged": report.n_well_detected_merged,
        "median_merged_accuracy": report.median_merged_accuracy,
        "n_units_split": report.n_units_split,
        "snr_bands": report.snr_bands,
        "drift_estimate": report.drift_estimate,
        "runs": _runs(results, per_run, params),
        "identical_runs": identical,
        "passed": report.passed,
        "reasons": report.reasons,
        "error": None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    silent = report.units_without_spikes
    _say(
        f"{report.n_well_detected}/{report.n_gt_units} units well detected (accuracy >= 0.8), "
        f"{report.n_well_detected_high_snr}/{report.n_high_snr} of SNR >= {scoring.HIGH_SNR:g}; "
        f"median accuracy {report.median_accuracy:.3f}; {report.n_clusters} clusters"
        + (f"; {len(silent)} units without spikes in the recording left out" if silent else "")
    )
    for line in report.table().splitlines():
        _say(line)
    _say(f"merge rule: {report.merge_rule}")
    _say(
        f"thresholds [{limits.name}] from {limits.source} ({limits.score} score): "
        f"{limits.applies_to}"
    )
    if report.passed:
        _say("PASS")
        return EXIT_PASS
    _say("FAIL: " + "; ".join(report.reasons))
    return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())

"""Kilosort 4 runners: on the host (``kilosort.run_kilosort`` in this process) or in the
``kilosort4`` image (its venv's ``python``, network off, GPU only when asked)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from kilosort_docker.errors import UserError
from kilosort_docker.groundtruth.sorters import common, ks4_entry
from kilosort_docker.groundtruth.sorters.common import (
    SortError,
    SortResult,
    check_data_folder,
    run_container,
)
from kilosort_docker.groundtruth.sorters.ks4_entry import KS4_BATCH_SIZE, KS4_NT, min_samples
from kilosort_docker.paths import DATA_MOUNT, OUT_MOUNT

log = logging.getLogger(__name__)

KS4_INPUTS = ("recording.bin", "ks4_settings.json", "ks4_probe.json")
DEVICES = ("auto", "cuda", "cpu")


def check_recording(
    n_samples: int,
    fs: float,
    *,
    batch_size: int = KS4_BATCH_SIZE,
    nt: int = KS4_NT,
    fix: str = "sort a longer recording",
) -> None:
    """Refuse a recording Kilosort 4 cannot sort: fewer than
    :func:`~kilosort_docker.groundtruth.sorters.ks4_entry.min_samples` samples (more than one
    batch of ``batch_size``, 60000 by default in Kilosort 4.1.7 kilosort/parameters.py).
    A one-batch recording makes Kilosort 4 fail in its whitening step (``linalg.svd: ...
    non-finite values``; MouseLand/Kilosort issue 1022 is a 1 s recording).

    Args:
        n_samples: samples per channel.
        fs: sampling rate in Hz (for the message).
        fix: how the caller gets a longer recording, ends the message.

    Raises:
        UserError: the recording is too short; the message names the minimum.
    """
    need = min_samples(batch_size, nt)
    if n_samples < need:
        raise UserError(
            f"a {n_samples / fs:g} s recording ({n_samples} samples) is too short for Kilosort 4: "
            f"it needs more than one batch of {batch_size} samples, at least {need} samples "
            f"({need / fs:.3f} s at {fs:g} Hz); {fix}"
        )


def recording_samples(data_dir: Path) -> tuple[int, dict]:
    """Samples per channel of ``data_dir/recording.bin`` and the Kilosort 4 settings.

    Raises:
        UserError: ``ks4_settings.json`` is not JSON or lacks ``n_chan_bin``.
    """
    try:
        settings = json.loads((data_dir / "ks4_settings.json").read_text())
        n_chan = int(settings["n_chan_bin"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{data_dir / 'ks4_settings.json'} is not Kilosort 4 settings with n_chan_bin "
            f"({type(exc).__name__}): simulate the folder again"
        ) from None
    return (data_dir / "recording.bin").stat().st_size // (2 * n_chan), settings


def check_folder(data_dir: Path) -> None:
    """:func:`check_recording` for a simulation folder, with its own settings."""
    n_samples, settings = recording_samples(data_dir)
    check_recording(
        n_samples,
        float(settings.get("fs", 30000.0)),
        batch_size=settings.get("batch_size", KS4_BATCH_SIZE),
        nt=settings.get("nt", KS4_NT),
    )


def run_kilosort4_host(
    data_dir: Path | str, out_dir: Path | str, *, device: str = "auto"
) -> SortResult:
    """Sort a simulation folder with Kilosort 4 in this Python process.

    Args:
        data_dir: folder from :func:`kilosort_docker.groundtruth.simulate.simulate`.
        out_dir: folder for the phy output (created).
        device: ``auto`` (CUDA when torch sees a GPU, else CPU), ``cuda`` or ``cpu``.

    Raises:
        UserError: missing inputs, a recording too short (:func:`check_recording`), kilosort
            not installed, or CUDA asked for but absent.
        SortError: Kilosort 4 raised an exception; the message is its last line
            (``ValueError: ...``), the traceback is in ``out_dir/kilosort4.log``.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if device not in DEVICES:
        raise UserError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    check_data_folder(data_dir, KS4_INPUTS)
    check_folder(data_dir)
    try:
        import kilosort  # noqa: F401
    except ImportError as exc:
        raise UserError(
            "kilosort is not installed: pip install 'kilosort-docker[groundtruth]'"
        ) from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    code = ks4_entry.main([str(data_dir), str(out_dir), device])
    wall = time.perf_counter() - start
    info = common.read_run_info(out_dir)
    if code == ks4_entry.EXIT_NO_CUDA:
        raise UserError("device cuda asked for but torch sees no GPU: use --device cpu or auto")
    if code == ks4_entry.EXIT_CRASHED:
        raise SortError(info.get("error") or "kilosort4 raised an exception (see kilosort4.log)")
    if code != 0:
        raise UserError(f"kilosort4 entry point failed with code {code}")
    return SortResult("kilosort4", "host", out_dir, float(info.get("seconds", wall)), info)


def run_kilosort4_container(
    data_dir: Path | str,
    out_dir: Path | str,
    *,
    image: str,
    gpu: bool = False,
    client=None,
) -> SortResult:
    """Sort a simulation folder with Kilosort 4 inside the ``kilosort4`` image.

    The data folder is mounted read-only at ``/data``, ``out_dir`` read-write at ``/out``;
    the container has no network. The image needs ``python`` (with kilosort and torch) on
    its PATH; this package's entry point is passed as ``python -c`` source, so nothing of
    ours has to be in the image.

    Args:
        data_dir: folder from :func:`kilosort_docker.groundtruth.simulate.simulate`.
        out_dir: folder for the phy output (created).
        image: image tag, e.g. ``kilosort4:4.1.7``.
        gpu: pass every GPU to the container and require CUDA; else sort on CPU.
        client: docker SDK client (default: from the environment).

    Raises:
        UserError: missing inputs, no Docker engine, unknown image.
        SortError: the container exited non-zero (exit 2 with a one-line reason for a
            recording too short: the entry point checks it inside the image).
    """
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    check_data_folder(data_dir, KS4_INPUTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = Path(ks4_entry.__file__).read_text()
    command = ["python", "-c", source, DATA_MOUNT, OUT_MOUNT, "cuda" if gpu else "cpu"]
    start = time.perf_counter()
    run_container(
        image,
        command,
        volumes={
            str(data_dir): {"bind": DATA_MOUNT, "mode": "ro"},
            str(out_dir): {"bind": OUT_MOUNT, "mode": "rw"},
        },
        gpu=gpu,
        network=False,
        client=client,
    )
    wall = time.perf_counter() - start
    info = common.read_run_info(out_dir)
    return SortResult("kilosort4", "container", out_dir, float(info.get("seconds", wall)), info)

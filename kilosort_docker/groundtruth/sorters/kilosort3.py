"""Kilosort 3 runners: ``matlab -batch "run_kilosort3(DATA, OUT)"`` in the ``kilosort3`` image
or with a local ``matlab``, both through :func:`kilosort_docker.matlab.run_batch`. The MATLAB
license is given at run time and never logged."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from kilosort_docker import matlab as matlab_runner
from kilosort_docker.errors import UserError
from kilosort_docker.groundtruth.simulate import KS3_NT
from kilosort_docker.groundtruth.sorters import common
from kilosort_docker.groundtruth.sorters.common import SortError, SortResult, check_data_folder
from kilosort_docker.paths import DATA_MOUNT, MATLAB_DIR, MATLAB_MOUNT, OUT_MOUNT

log = logging.getLogger(__name__)

KS3_INPUTS = ("recording.bin", "ops.mat", "chanMap.mat")


def min_samples(nt: int = KS3_NT) -> int:
    """The fewest samples Kilosort 3 sorts: more than one batch of ``ops.NT`` samples.

    Kilosort v3.0.2 preProcess/preprocessDataSub.m counts ``Nbatch = ceil(sampsToRead / NT)``
    and preProcess/get_whitening_matrix.m divides the covariance by
    ``ceil((Nbatch - 1) / ops.nSkipCov)``, zero for one batch, so the whitening matrix is
    not finite. ``NT = 64*1024 - ntbuff = 65472`` (configFiles/configFile384.m at v3.0.2).
    """
    return int(nt) + 1


def check_recording(
    n_samples: int, fs: float, *, nt: int = KS3_NT, fix: str = "sort a longer recording"
) -> None:
    """Refuse a recording Kilosort 3 cannot sort (see :func:`min_samples`).

    Args:
        n_samples: samples per channel.
        fs: sampling rate in Hz (for the message).
        nt: Kilosort 3's batch size ``ops.NT`` in samples.
        fix: how the caller gets a longer recording, ends the message.

    Raises:
        UserError: the recording is too short; the message names the minimum.
    """
    need = min_samples(nt)
    if n_samples < need:
        raise UserError(
            f"a {n_samples / fs:g} s recording ({n_samples} samples) is too short for Kilosort 3: "
            f"it needs more than one batch of {int(nt)} samples (ops.NT), at least {need} "
            f"samples ({need / fs:.3f} s at {fs:g} Hz); {fix}"
        )


def matlab_statement(data_dir: str, out_dir: str, *, matlab_dir: str | None = None) -> str:
    """The ``-batch`` statement: add our MATLAB folder to the path, then run_kilosort3."""
    add = f"addpath({matlab_runner.quote(matlab_dir)}); " if matlab_dir else ""
    return f"{add}run_kilosort3({matlab_runner.quote(data_dir)}, {matlab_runner.quote(out_dir)})"


def check_folder(data_dir: Path) -> None:
    """:func:`check_recording` for a simulation folder: channels, rate and ``NT`` from its
    ``ops.mat``, samples from the size of ``recording.bin``.

    Raises:
        UserError: ``ops.mat`` is not Kilosort ops, or the recording is too short.
    """
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        ops = scipy.io.loadmat(data_dir / "ops.mat", simplify_cells=True)["ops"]
        n_chan, fs, nt = int(ops["NchanTOT"]), float(ops["fs"]), int(ops["NT"])
    except (MatReadError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{data_dir / 'ops.mat'} is not Kilosort ops with NchanTOT, fs and NT "
            f"({type(exc).__name__}): simulate the folder again"
        ) from None
    check_recording((data_dir / "recording.bin").stat().st_size // (2 * n_chan), fs, nt=nt)


def run_kilosort3_container(
    data_dir: Path | str,
    out_dir: Path | str,
    *,
    image: str,
    license: str | None = None,
    **batch_options: Any,
) -> SortResult:
    """Sort a simulation folder with Kilosort 3 inside the ``kilosort3`` image on every GPU.

    The data folder is mounted read-only at ``/data``, ``out_dir`` at ``/out``, this
    repository's ``matlab/`` at ``/opt/kilosort-docker/matlab``. A license file is mounted
    read-only at ``/licenses/license.lic`` (a folder of ``.lic`` files at ``/licenses``); a
    server form (``port@host``, ``@host``, a triad, a colon-separated list) is passed as
    ``MLM_LICENSE_FILE`` unchanged. The container keeps its network only when the license names
    a server (a server form, or ``SERVER`` lines in the file) or for a host-locked license with
    ``mac_address``. MATLAB runs as the image's own user; the files it writes to ``out_dir``
    are handed back to the caller's uid:gid afterwards (see
    :func:`kilosort_docker.matlab.run_batch`).

    Args:
        image: image tag, e.g. ``kilosort3:3.0.2``.
        license: any ``MLM_LICENSE_FILE`` form FlexLM accepts; default ``$MLM_LICENSE_FILE``.
        batch_options: go to :func:`kilosort_docker.matlab.run_batch` as they are:
            ``mac_address`` (the licensed MAC address of a host-locked license),
            ``matlab_command`` (argv placed before ``-batch``: empty when the image's
            entrypoint is MATLAB, as in ``mathworks/matlab``; ``("matlab",)`` otherwise),
            ``client``, ``gpu``.

    Raises:
        UserError: no license, missing inputs, no Docker engine, unknown image.
        SortError: MATLAB exited non-zero.
    """
    lic = matlab_runner.resolve_license(license)
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    check_data_folder(data_dir, KS3_INPUTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    volumes = {
        str(data_dir): {"bind": DATA_MOUNT, "mode": "ro"},
        str(out_dir): {"bind": OUT_MOUNT, "mode": "rw"},
        str(MATLAB_DIR): {"bind": MATLAB_MOUNT, "mode": "ro"},
    }
    stmt = matlab_statement(DATA_MOUNT, OUT_MOUNT, matlab_dir=MATLAB_MOUNT)
    start = time.perf_counter()
    try:
        matlab_runner.run_batch(stmt, image=image, license=lic, volumes=volumes, **batch_options)
    except matlab_runner.MatlabError as exc:
        raise SortError(str(exc)) from None
    wall = time.perf_counter() - start
    info = common.read_run_info(out_dir)
    return SortResult("kilosort3", "container", out_dir, float(info.get("seconds", wall)), info)


def run_kilosort3_host(
    data_dir: Path | str,
    out_dir: Path | str,
    *,
    license: str | None = None,
    matlab: str = "matlab",
) -> SortResult:
    """Sort a simulation folder with Kilosort 3 using a local MATLAB (Kilosort 3 and
    npy-matlab on its path, or Kilosort 3's folder in ``$KILOSORT3_PATH``).

    Raises:
        UserError: no MATLAB, no license, missing inputs, a recording too short
            (:func:`check_recording`).
        SortError: MATLAB exited non-zero.
    """
    exe = matlab_runner.local_matlab(matlab)
    lic = matlab_runner.host_license(license, exe)
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    check_data_folder(data_dir, KS3_INPUTS)
    check_folder(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stmt = matlab_statement(str(data_dir), str(out_dir), matlab_dir=str(MATLAB_DIR))
    start = time.perf_counter()
    try:
        matlab_runner.run_batch(stmt, license=lic, matlab=exe, cwd=out_dir)
    except matlab_runner.MatlabError as exc:
        raise SortError(str(exc)) from None
    wall = time.perf_counter() - start
    info = common.read_run_info(out_dir)
    return SortResult("kilosort3", "host", out_dir, float(info.get("seconds", wall)), info)

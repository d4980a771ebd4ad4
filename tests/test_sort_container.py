"""``invoke sort`` for real: a small simulated recording sorted in the kilosort4 image (built by
the ``kilosort4_image`` fixture) on the CPU, scored against its ground truth, the output's
owner checked.

Two routes: a raw binary with a probeinterface JSON (``invoke sort`` run as root, the
container as the image's user, uid 1000: the files must come back to root), and a
SpikeGLX-style ``.ap.bin`` (16 neural channels and the sync channel) with its ``.meta``, which
gives the layout and the probe (run as an unprivileged user with Docker access where this
machine allows it: the container then runs as that user).

The recording is kept small for CI: 10 s, 16 channels, 6 static units. Kilosort 4.1.7
clusters the spikes nearest each of its clustering centres together only when there are at
least 1000 of them (``kilosort/clustering_qr.py`` ``run``: ``if Xd.shape[0] < 1000: iclust =
zeros``), so a short recording needs busy units: 80-120 Hz gives 800-1200 spikes each. Drift
correction is off (``{"nblocks": 0}``, Kilosort 4's setting for none): the recording is
static, and it is the slowest step on a CPU.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("spikeinterface")

from kilosort_docker.groundtruth import score as scoring  # noqa: E402
from kilosort_docker.groundtruth.simulate import (  # noqa: E402
    SimulationParams,
    neuropixels_probe,
    simulate,
)
from kilosort_docker.sorting import record, recordings  # noqa: E402
from tests import support  # noqa: E402
from tests.support.spikeglx import write_meta  # noqa: E402

pytestmark = pytest.mark.docker

PARAMS = SimulationParams(
    duration_s=10,
    n_channels=16,
    n_units=6,
    drift_um=0,
    firing_rates_hz=(80.0, 120.0),
    noise_uv=(4.0, 5.0),
    seed=7,
)
SETTINGS = {"nblocks": 0}
#: An unprivileged user to run ``invoke sort`` as (no account needed: setpriv sets the ids).
OTHER_UID = 4321


@pytest.fixture(scope="module")
def simulation():
    return simulate(PARAMS)


@pytest.fixture
def workdir():
    """A folder any user can enter (pytest's own tmp_path is root's, mode 0700), removed
    after; its name carries the prefix the leftovers check knows."""
    folder = Path(tempfile.mkdtemp(prefix="kilosort-docker-sort-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def invoke_sort(args: list[str], *, as_user: int | None = None) -> subprocess.CompletedProcess:
    """``invoke sort ARGS`` in this repository (as ``as_user`` with the docker group, through
    setpriv, when given)."""
    argv = [sys.executable, "-m", "invoke", "sort", *args]
    env = os.environ | {"PYTHONPATH": str(support.REPO_ROOT), "COLUMNS": "200"}
    if as_user is not None:
        docker_gid = grp.getgrnam("docker").gr_gid
        argv = [
            "setpriv",
            f"--reuid={as_user}",
            f"--regid={as_user}",
            f"--groups={docker_gid}",
            "--",
            *argv,
        ]
        env |= {"HOME": "/tmp"}
    return subprocess.run(
        argv, cwd=support.REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200
    )


def can_switch_user() -> bool:
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        return False
    with contextlib.suppress(KeyError):
        grp.getgrnam("docker")
        return os.access("/var/run/docker.sock", os.F_OK)
    return False


def check_sort(out: Path, simulation, done: subprocess.CompletedProcess, *, owner: int):
    """The sort finished, its numbers are right, and every file is ``owner``'s."""
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "units found" in done.stdout and "times real time" in done.stdout
    assert record.is_finished(out)
    rec = json.loads((out / "sort-record.json").read_text())
    assert rec["exit_status"] == 0 and rec["digest"].startswith("sha256:")
    assert rec["sorter"] == "kilosort4" and rec["sorter_version"] == "4.1.7"
    assert rec["settings"]["nblocks"] == 0 and rec["device_used"] == "cpu"
    owners = {p.lstat().st_uid for p in [out, *out.rglob("*")]}
    assert owners == {owner}, f"files owned by {owners}, expected {owner}"
    report = scoring.score(simulation.folder, out, sorter="kilosort4", figures=False)
    print(
        f"\n{out.name}: {report.summary()}; sorted in {rec['seconds']:.1f} s "
        f"({rec['wall_seconds']:.1f} s with the container)"
    )
    assert report.n_high_snr >= 3, report.summary()
    assert report.n_well_detected_high_snr == report.n_high_snr, report.summary()
    assert report.median_accuracy >= 0.8, report.summary()
    assert rec["summary"]["units"] >= report.n_well_detected
    return rec, report


def test_sort_a_raw_binary_with_a_probeinterface_json(kilosort4_image, simulation, workdir):
    from probeinterface import write_probeinterface

    probe = workdir / "probe.json"
    write_probeinterface(probe, neuropixels_probe(PARAMS.n_channels))
    settings = workdir / "settings.json"
    settings.write_text(json.dumps(SETTINGS))
    out = workdir / "sorted"
    args = [
        str(simulation.binary),
        "--probe", str(probe),
        "--out", str(out),
        "--channels", "16",
        "--sampling-rate", "30000",
        "--device", "cpu",
        "--settings", str(settings),
        "--image", kilosort4_image,
    ]  # fmt: skip
    start = time.perf_counter()
    done = invoke_sort(args)
    rec, _ = check_sort(out, simulation, done, owner=os.getuid())
    print(f"invoke sort took {time.perf_counter() - start:.1f} s")
    assert rec["recording_sha256"] == recordings.sha256(simulation.binary)
    assert not rec["converted"] and rec["binary"] == str(simulation.binary)  # read in place
    # a second sort into the same folder is refused, and changes nothing
    marker = (out / record.MARKER_NAME).read_bytes()
    again = invoke_sort(args)
    assert again.returncode == 2 and "already holds a finished sort" in again.stderr
    assert (out / record.MARKER_NAME).read_bytes() == marker


def test_sort_a_spikeglx_bin_and_meta(kilosort4_image, simulation, workdir):
    data = np.fromfile(simulation.binary, dtype=np.int16).reshape(-1, PARAMS.n_channels)
    sync = np.zeros((data.shape[0], 1), dtype=np.int16)  # SpikeGLX's sync channel, last
    run = workdir / "run_g0" / "run_g0_t0.imec0.ap.bin"
    run.parent.mkdir()
    np.hstack([data, sync]).tofile(run)
    meta = write_meta(run.with_suffix(".meta"), n_neural=16, file_size=run.stat().st_size)
    settings = workdir / "settings.json"
    settings.write_text(json.dumps(SETTINGS))
    user = OTHER_UID if can_switch_user() else None
    owner = user if user is not None else os.getuid()
    out = workdir / "sorted"
    out.mkdir()
    os.chown(out, owner, owner)
    args = [
        str(run), "--probe", str(meta), "--out", str(out), "--device", "cpu",
        "--settings", str(settings), "--image", kilosort4_image,
    ]  # fmt: skip
    done = invoke_sort(args, as_user=user)
    rec, _ = check_sort(out, simulation, done, owner=owner)
    assert rec["n_channels"] == 17 and rec["settings"]["n_chan_bin"] == 17
    assert rec["recording_format"] == "SpikeGLX binary" and rec["user"] == f"{owner}:{owner}"
    probe = json.loads((out / "kilosort-inputs" / "ks4_probe.json").read_text())
    assert probe["chanMap"] == list(range(16)) and probe["n_chan"] == 16  # no sync channel

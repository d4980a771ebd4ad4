"""Real SLURM array jobs on a one-node cluster (the ``slurm_cluster`` fixture) sorting small
simulated recordings with the kilosort4 image on the CPU, through Docker and through podman.

One recording is truncated on purpose after its job was submitted (a file still being copied):
its task fails while the others finish, ``batch-status`` names the failure with its reason,
and ``sort-batch --resume`` reruns only that one once it is whole again, leaving the finished
sorts untouched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kilosort_docker.batch import record
from kilosort_docker.groundtruth.simulate import SimulationParams, simulate
from tests import support

pytestmark = [pytest.mark.docker, pytest.mark.slurm]

ROOT = Path(__file__).resolve().parent.parent
#: Small enough that a CPU sort takes well under a minute on an idle core: 16 channels, 6 s,
#: 6 units; Kilosort 4 without drift correction (nblocks 0: a static recording).
PARAMS = dict(duration_s=6, n_channels=16, n_units=6, drift_um=0)
SETTINGS = {"nblocks": 0}
WAIT_S = 1500


def invoke(*args: str, timeout: float = 300):
    return support.invoke(*args, timeout=timeout)  # SLURM_CONF: the cluster's, from os.environ


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> list[Path]:
    """Two simulated recordings (seeds 1 and 2): their folders (recording.bin, chanMap.mat)."""
    cache = tmp_path_factory.mktemp("simulations")
    return [
        simulate(SimulationParams(seed=seed, **PARAMS), cache, n_jobs=1).folder for seed in (1, 2)
    ]


def write_list(folder: Path, sims: list[Path], names: list[str]) -> Path:
    """Copy one simulated recording per name into ``folder`` and list them (TOML)."""
    (folder / "settings.json").write_text(json.dumps(SETTINGS))
    shutil.copy2(sims[0] / "chanMap.mat", folder / "chanMap.mat")
    text = (
        '[defaults]\nprobe = "chanMap.mat"\nsettings = "settings.json"\nchannels = 16\n'
        "sampling_rate = 30000\n"
    )
    for i, name in enumerate(names):
        shutil.copy2(sims[i % len(sims)] / "recording.bin", folder / f"{name}.bin")
        text += f'\n[[recording]]\npath = "{name}.bin"\nout = "sorted/{name}"\n'
    path = folder / "recordings.toml"
    path.write_text(text)
    return path


def lines_of(done: subprocess.CompletedProcess) -> dict[str, str]:
    """batch-status's lines by recording file name."""
    found = {}
    for line in done.stdout.splitlines():
        for word in line.split():
            if word.endswith(".bin"):
                found[word] = line
    return found


def test_array_job_failure_and_resume(tmp_path, slurm_cluster, kilosort4_image, simulated):
    listing = write_list(tmp_path, simulated, ["a", "b", "c"])
    submit = invoke(
        "sort-batch",
        str(listing),
        "--image",
        kilosort4_image,
        "--partition",
        slurm_cluster.partition,
        "--max-parallel",
        "2",
        "--cpus-per-task",
        "1",
    )
    assert submit.returncode == 0, submit.stderr
    # c is cut short after submission, before its task can start (2 slots, rows 0 and 1 first)
    with (tmp_path / "c.bin").open("r+b") as handle:
        handle.truncate(1001)
    batch = record.read(record.default_folder(listing))
    assert [s.rows for s in batch.submissions] == [(0, 1, 2)]
    first_job = batch.submissions[0].job_id
    assert "#SBATCH --array=0-2%2" in Path(batch.submissions[0].script).read_text()

    status = invoke("batch-status", str(listing), "--wait", timeout=WAIT_S)
    assert status.returncode == 1, status.stdout + status.stderr
    assert "error: some recordings failed" in status.stderr
    rows = lines_of(status)
    assert " done " in rows["a.bin"] and " done " in rows["b.bin"], status.stdout
    failed = rows["c.bin"]
    assert " failed " in failed and "exit status 2" in failed, failed
    assert "reason: error: the recording" in failed, failed  # the sort's own one-line error
    log = tmp_path / "recordings.batch" / "logs" / f"row-2.job-{first_job}.log"
    assert f"log {log}" in failed and log.is_file()
    assert "3 recordings: 2 done, 1 failed, 0 running, 0 pending" in status.stdout
    finished = {}
    for name in ("a", "b"):
        out = tmp_path / "sorted" / name
        sort_record = json.loads((out / "sort-record.json").read_text())
        assert sort_record["exit_status"] == 0 and sort_record["runtime"] == "docker"
        assert (out / "sort-complete.json").is_file() and (out / "spike_times.npy").is_file()
        finished[name] = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    assert not (tmp_path / "sorted" / "c" / "sort-complete.json").exists()

    # fixed: c is whole again; --resume submits only row 2
    shutil.copy2(simulated[0] / "recording.bin", tmp_path / "c.bin")
    resume = invoke("sort-batch", str(listing), "--resume", "--image", kilosort4_image)
    assert resume.returncode == 0, resume.stderr
    assert "left out 2 finished, pending or running recording(s): rows 1, 2" in resume.stdout
    batch = record.read(record.default_folder(listing))
    assert [s.rows for s in batch.submissions] == [(0, 1, 2), (2,)]
    assert "#SBATCH --array=2\n" in Path(batch.submissions[1].script).read_text()
    status = invoke("batch-status", str(listing), "--wait", timeout=WAIT_S)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "3 recordings: 3 done, 0 failed, 0 running, 0 pending" in status.stdout
    assert (tmp_path / "sorted" / "c" / "sort-complete.json").is_file()
    for name in ("a", "b"):  # never rerun, never rewritten
        out = tmp_path / "sorted" / name
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == (
            finished[name]
        )
    again = invoke("sort-batch", str(listing), "--resume", "--image", kilosort4_image)
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stderr
    assert len(record.read(record.default_folder(listing)).submissions) == 2


def test_dry_run_prints_the_script_and_submits_nothing(
    tmp_path, slurm_cluster, simulated, kilosort4_image
):
    listing = write_list(tmp_path, simulated, ["a", "b"])
    absent = invoke("sort-batch", str(listing), "--dry-run", "--image", "lab/kilosort4:absent")
    assert "row 1: image lab/kilosort4:absent is not present" in support.one_error_line(absent)
    done = invoke(
        "sort-batch",
        str(listing),
        "--dry-run",
        "--image",
        kilosort4_image,
        "--max-parallel",
        "1",
        "--time",
        "10",
        "--mem",
        "8G",
        "--gpus-per-task",
        "1",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("#!/bin/bash\n")
    for directive in ("--array=0-1%1", "--time=10", "--mem=8G", "--gres=gpu:1"):
        assert f"#SBATCH {directive}\n" in done.stdout
    assert "dry run: would submit 2 recording(s); nothing submitted" in done.stdout
    assert not (tmp_path / "recordings.batch").exists()
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=True)
    assert queue.stdout.strip() == ""


@pytest.fixture(scope="module")
def podman_image(kilosort4_image):
    """kilosort4_image copied into podman's storage (invoke podman-load); removed after."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: scripts/setup-host.sh installs it")
    done = invoke("podman-load", kilosort4_image, timeout=900)
    assert done.returncode == 0, done.stderr
    assert f"podman has {kilosort4_image}" in done.stdout
    yield kilosort4_image
    subprocess.run(["podman", "rmi", "--force", kilosort4_image], capture_output=True, check=False)
    gone = subprocess.run(["podman", "image", "exists", kilosort4_image], check=False)
    assert gone.returncode == 1, f"podman still holds {kilosort4_image}"


def test_a_task_through_podman(tmp_path, slurm_cluster, podman_image, simulated):
    listing = write_list(tmp_path, simulated[1:], ["p"])
    submit = invoke("sort-batch", str(listing), "--runtime", "podman", "--image", podman_image)
    assert submit.returncode == 0, submit.stderr
    script = Path(record.read(record.default_folder(listing)).submissions[0].script).read_text()
    assert "--runtime podman" in script
    status = invoke("batch-status", str(listing), "--wait", timeout=WAIT_S)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "1 recordings: 1 done" in status.stdout
    sort_record = json.loads((tmp_path / "sorted" / "p" / "sort-record.json").read_text())
    assert sort_record["runtime"] == "podman" and sort_record["exit_status"] == 0
    leftover = subprocess.run(
        ["podman", "ps", "--all", "--quiet"], capture_output=True, text=True, check=True
    )
    assert leftover.stdout.strip() == ""

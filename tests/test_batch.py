"""kilosort_docker.batch without a container: the list, the sbatch script, status reasons,
Apptainer's command lines, and bad input refused before anything is submitted (one line,
non-zero exit; a stand-in ``sbatch`` on PATH proves it was never called)."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from kilosort_docker.batch import apptainer, script, status
from kilosort_docker.batch.recordings import Row, read_list
from kilosort_docker.batch.script import BatchOptions, array_spec, render, sort_argv
from kilosort_docker.errors import UserError
from tests import support

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args: str, env: dict[str, str] | None = None):
    return support.invoke(*args, env=env, timeout=120)


one_error_line = support.one_error_line


def make_list(folder: Path, names=("a", "b"), *, outs=None, suffix=".toml") -> Path:
    """A list of recordings (files of zeros) with one probe; returns its path."""
    (folder / "probe.json").write_text("{}")
    outs = outs or [f"sorted/{n}" for n in names]
    for name in names:
        (folder / f"{name}.bin").write_bytes(bytes(64))
    if suffix == ".toml":
        text = '[defaults]\nprobe = "probe.json"\nchannels = 16\n'
        for name, out in zip(names, outs, strict=True):
            text += f'\n[[recording]]\npath = "{name}.bin"\nout = "{out}"\n'
    else:
        text = "path,probe,out,sampling_rate\n" + "".join(
            f"{n}.bin,probe.json,{o},30000\n" for n, o in zip(names, outs, strict=True)
        )
    path = folder / f"list{suffix}"
    path.write_text(text)
    return path


@pytest.fixture
def recorder_bin(tmp_path: Path) -> tuple[Path, Path]:
    """A folder holding a stand-in ``sbatch`` that only notes it was called; (bin, note)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    note = tmp_path / "sbatch-called"
    sbatch = folder / "sbatch"
    sbatch.write_text(f"#!/bin/sh\ntouch {shlex.quote(str(note))}\necho 1\n")
    sbatch.chmod(0o755)
    return folder, note


# --- the list -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".toml", ".csv"])
def test_list_rows_resolve_paths_against_the_list(tmp_path, suffix):
    rows = read_list(make_list(tmp_path, suffix=suffix))
    assert [r.index for r in rows] == [0, 1]
    assert rows[0].recording == tmp_path / "a.bin"
    assert rows[1].out == tmp_path / "sorted" / "b"
    assert rows[0].probe == tmp_path / "probe.json"
    if suffix == ".toml":
        assert rows[0].channels == 16 and rows[0].sampling_rate is None
    else:
        assert rows[0].sampling_rate == 30000.0 and rows[0].channels is None


def test_list_missing_recording_names_the_row(tmp_path):
    path = make_list(tmp_path, ("a", "b"))
    (tmp_path / "b.bin").unlink()
    with pytest.raises(UserError, match=r"list.toml row 2: recording .*b\.bin does not exist"):
        read_list(path)


def test_list_shared_output_folder_names_both_rows(tmp_path):
    path = make_list(tmp_path, ("a", "b", "c"), outs=["x", "y", "./x"], suffix=".csv")
    with pytest.raises(UserError, match=r"rows 1 and 3 both write to .*/x: give each"):
        read_list(path)


def test_list_unknown_column_and_bad_number(tmp_path):
    path = tmp_path / "l.csv"
    (tmp_path / "a.bin").write_bytes(b"")
    path.write_text("path,probe,out,colour\na.bin,p.json,o,red\n")
    with pytest.raises(UserError, match="unknown column colour"):
        read_list(path)
    path.write_text("path,probe,out,channels\na.bin,p.json,o,many\n")
    with pytest.raises(UserError, match="channels 'many' is not a whole number"):
        read_list(path)
    toml = tmp_path / "l.toml"
    for cell, message in (
        ("channels = 16.7", "channels 16.7 is not a whole number"),
        ("channels = true", "channels True is not a whole number"),
        ('sampling_rate = "inf"', "sampling_rate 'inf' is not a finite number"),
    ):
        toml.write_text(f'[[recording]]\npath = "a.bin"\nprobe = "p.json"\nout = "o"\n{cell}\n')
        with pytest.raises(UserError, match=message):
            read_list(toml)


def test_a_file_name_cannot_reach_the_script_as_a_command(tmp_path):
    """A newline in a recording's name would end the script's comment and run the rest."""
    evil = tmp_path / "nl\ntouch PWNED #.bin"
    evil.write_bytes(b"")
    toml = tmp_path / "l.toml"
    toml.write_text(f'[[recording]]\npath = {json.dumps(evil.name)}\nprobe = "p.json"\nout = "o"\n')
    with pytest.raises(UserError, match="holds a control character"):
        read_list(toml)
    row = Row(index=0, recording=evil, probe=tmp_path / "p.json", out=tmp_path / "o")
    script = render([row], [0], BatchOptions(), folder=tmp_path / "b", commands={0: ["true"]})
    assert "\ntouch PWNED" not in script and '# "nl\\ntouch PWNED #.bin"' in script
    with pytest.raises(UserError, match="which #SBATCH lines cannot carry"):
        render([row], [0], BatchOptions(), folder=tmp_path / "my lists%j", commands={0: ["true"]})


# --- the sbatch script --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("indices", "throttle", "spec"),
    [([0, 1, 2, 3], 2, "0-3%2"), ([2], None, "2"), ([1, 3, 4, 7, 8, 9], 3, "1,3-4,7-9%3")],
)
def test_array_spec(indices, throttle, spec):
    assert array_spec(indices, throttle) == spec


def test_script_asks_slurm_for_what_was_given_and_is_valid_bash(tmp_path):
    rows = read_list(make_list(tmp_path, ("a", "b b", "c")))
    options = BatchOptions(
        partition="gpu",
        gpus_per_task=1,
        cpus_per_task=4,
        time="2:00:00",
        mem="32G",
        max_parallel=2,
    )
    commands = {r.index: sort_argv(r, options) for r in rows}
    text = render(rows, [0, 2], options, folder=tmp_path / "batch", commands=commands)
    directives = [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("#SBATCH")]
    assert "--array=0,2%2" in directives
    assert {
        "--partition=gpu",
        "--gres=gpu:1",
        "--cpus-per-task=4",
        "--time=2:00:00",
        "--mem=32G",
    } <= set(directives)
    assert f"--output={tmp_path / 'batch' / 'logs' / 'row-%a.job-%A.log'}" in directives
    assert "--device cuda --runtime docker" in text
    assert "b b.bin" not in text  # row 1 is not in this job
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_script_runs_the_row_and_writes_its_exit_status(tmp_path):
    """The script's own logic, run by bash with SLURM's variables set: the row's command runs
    and its exit status lands in the status file."""
    rows = read_list(make_list(tmp_path, ("a", "b")))
    options = BatchOptions()
    commands = {0: ["sh", "-c", "exit 0"], 1: ["sh", "-c", "echo sorting; exit 3"]}
    text = render(rows, [0, 1], options, folder=tmp_path / "batch", commands=commands)
    (tmp_path / "batch" / "status").mkdir(parents=True)
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_JOB_ID": "77"}
    done = subprocess.run(["bash"], input=text, text=True, env=env, capture_output=True)
    assert done.returncode == 3
    assert "sorting" in done.stdout
    recorded = status._read_json(status.status_path(tmp_path / "batch", 1, "77"))
    assert recorded["exit_status"] == 3 and recorded["ended"] >= recorded["started"]
    no_gpu = [line for line in text.splitlines() if "--gres" in line]
    assert no_gpu == []


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"time": "two hours"}, "--time 'two hours' is not in sbatch's format"),
        ({"mem": "lots"}, "--mem 'lots'"),
        ({"max_parallel": 0}, "--max-parallel must be 1 or more"),
        ({"runtime": "lxc"}, "unknown runtime 'lxc'"),
    ],
)
def test_options_refused(given, message):
    with pytest.raises(UserError, match=message):
        BatchOptions(**given)


# --- status reasons -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log_text", "reason"),
    [
        (
            "slurmstepd: error: *** JOB 12 ON vm CANCELLED AT 2026-11-30T04:00:00 DUE TO TIME "
            "LIMIT ***",
            "time limit",
        ),
        ("slurmstepd: error: Detected 1 oom-kill event(s) in StepId=12.batch.", "out of memory"),
        ("slurmstepd: error: Exceeded job memory limit", "out of memory"),
        (
            "slurmstepd: error: *** JOB 12 ON vm CANCELLED AT 2026-11-30T04:00:00 DUE TO NODE "
            "FAILURE, SEE SLURMCTLD LOG FOR DETAILS ***",
            "node failure",
        ),
        (
            "sorting...\nerror: the recording holds 99 bytes: not a whole number of samples\n",
            "error: the recording holds 99 bytes: not a whole number of samples",
        ),
        ("all fine\n", None),
    ],
)
def test_reason_from_log(tmp_path, log_text, reason):
    path = tmp_path / "task.log"
    path.write_text(log_text)
    assert status.reason_from_log(path) == reason


@pytest.mark.parametrize(("code", "value"), [("1:0", 1), ("0:9", 137), ("0:0", 0), (None, None)])
def test_slurm_exit_code(code, value):
    assert status._exit_status(code) == value


# --- Apptainer (not run in CI: only the shape of its commands) ----------------------------------


def test_apptainer_commands_shape():
    ref = "kilosortdocker/kilosort4:4.1.7"
    assert apptainer.build_command(ref, "ks4.sif") == [
        "apptainer",
        "build",
        "ks4.sif",
        f"docker-daemon://{ref}",
    ]
    assert apptainer.build_command(ref, "ks4.sif", archive="ks4.tar")[-1] == (
        "docker-archive://ks4.tar"
    )
    definition = apptainer.definition_file(ref)
    assert definition.splitlines()[:2] == ["Bootstrap: docker-daemon", f"From: {ref}"]
    argv = apptainer.run_command(
        "ks4.sif", ["--device", "cpu"], ro={"/data/r": "/recording"}, rw={"/o": "/out"}, gpu=True
    )
    assert argv[:4] == ["apptainer", "run", "--containall", "--cleanenv"]
    assert "--nv" in argv
    assert argv[argv.index("/data/r:/recording:ro") - 1] == "--bind"
    assert "/o:/out:rw" in argv
    assert argv[-3:] == ["ks4.sif", "--device", "cpu"]
    assert "docker-archive://" in apptainer.instructions(ref, "/x/ks4.sif")


def test_apptainer_rows_need_a_sif_file(tmp_path):
    rows = read_list(make_list(tmp_path, ("a",)))
    with pytest.raises(UserError, match="give --image FILE.sif"):
        apptainer.check_row(rows[0], BatchOptions(runtime="apptainer"))


# --- bad input: one line, non-zero exit, sbatch never called ------------------------------------


def test_bad_missing_recording(tmp_path, recorder_bin):
    folder, note = recorder_bin
    path = make_list(tmp_path, ("a", "b"))
    (tmp_path / "a.bin").unlink()
    line = one_error_line(
        invoke("sort-batch", str(path), env={"PATH": f"{folder}:{os.environ['PATH']}"})
    )
    assert "row 1: recording" in line and "does not exist" in line
    assert not note.exists() and not (tmp_path / "list.batch").exists()


def test_bad_two_recordings_one_output_folder(tmp_path, recorder_bin):
    folder, note = recorder_bin
    path = make_list(tmp_path, ("a", "b"), outs=["same", "same"], suffix=".csv")
    line = one_error_line(
        invoke("sort-batch", str(path), env={"PATH": f"{folder}:{os.environ['PATH']}"})
    )
    assert "rows 1 and 2 both write to" in line
    assert not note.exists() and not (tmp_path / "list.batch").exists()


def test_bad_sbatch_not_on_path(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    line = one_error_line(invoke("sort-batch", str(make_list(tmp_path)), env={"PATH": str(empty)}))
    assert line == (
        "error: sbatch is not on PATH: run this on a SLURM login node, or install SLURM's "
        "clients (apt-get install slurm-client)"
    )
    assert not (tmp_path / "list.batch").exists()


def test_bad_runtime_not_installed(tmp_path, recorder_bin):
    folder, note = recorder_bin  # PATH holds sbatch and nothing else: no podman
    line = one_error_line(
        invoke(
            "sort-batch", str(make_list(tmp_path)), "--runtime", "podman", env={"PATH": str(folder)}
        )
    )
    assert "runtime podman is not installed (podman not on PATH)" in line
    assert "apt-get install podman" in line
    assert not note.exists() and not (tmp_path / "list.batch").exists()


def test_status_without_a_batch(tmp_path):
    line = one_error_line(invoke("batch-status", str(make_list(tmp_path))))
    assert "no batch record" in line and "invoke sort-batch LIST" in line


def test_help_of_the_batch_tasks():
    for name in ("sort-batch", "batch-status", "podman-load"):
        done = invoke(name, "--help")
        assert done.returncode == 0 and f"{name} [--options]" in done.stdout, done.stderr


@pytest.mark.slurm
def test_bad_partition_slurm_does_not_have(tmp_path, slurm_cluster):
    path = make_list(tmp_path)
    line = one_error_line(invoke("sort-batch", str(path), "--partition", "nope"))
    assert line == (
        f"error: SLURM has no partition 'nope': use one of {slurm_cluster.partition} "
        "(sinfo lists them)"
    )
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=True)
    assert queue.stdout.strip() == "" and not (tmp_path / "list.batch").exists()


@pytest.mark.slurm
def test_status_of_real_tasks_without_accounting(tmp_path, slurm_cluster):
    """Real array tasks whose commands stand in for sorts: one writes the completion marker,
    one exits 3, one is cancelled while it runs, one waits behind the throttle. The status of
    each comes from squeue, scontrol and the tasks' own files (no slurmdbd here)."""
    import time

    from kilosort_docker.batch import record, slurm

    rows = read_list(make_list(tmp_path, ("done", "fails", "cancelled", "queued")))
    marker = rows[0].out / status.MARKER_NAME
    commands = {
        0: [
            "sh",
            "-c",
            # a finished sort: the record, then the marker naming its sha256 (as the sort does)
            f"mkdir -p {rows[0].out} && cd {rows[0].out} && echo {{}} > sort-record.json && "
            f'printf \'{{"record_sha256": "%s"}}\' '
            f"$(sha256sum sort-record.json | cut -c1-64) > {marker}",
        ],
        1: ["sh", "-c", "echo 'error: the sort failed: stand-in' >&2; exit 3"],
        2: ["sleep", "60"],
        3: ["sleep", "60"],
    }
    folder = tmp_path / "batch"
    for sub in ("logs", "status"):
        (folder / sub).mkdir(parents=True)
    options = BatchOptions(max_parallel=1, partition=slurm_cluster.partition)
    script_path = folder / "job.sbatch"
    script_path.write_text(render(rows, [0, 1, 2, 3], options, folder=folder, commands=commands))
    job = slurm.submit(script_path)
    batch = record.BatchRecord(
        folder=folder,
        list=str(tmp_path / "list.toml"),
        options={},
        rows=tuple(r.to_json() for r in rows),
        submissions=(record.Submission(job, (0, 1, 2, 3), "now", str(script_path)),),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = {s.index: s for s in status.row_states(batch)}
        if states[2].state == status.RUNNING and states[1].state == status.FAILED:
            break
        time.sleep(0.5)
    assert states[0].state == status.DONE
    assert states[1].state == status.FAILED and states[1].exit_status == 3
    assert states[1].reason == "error: the sort failed: stand-in"
    assert states[1].log == folder / "logs" / f"row-1.job-{job}.log"
    assert states[2].state == status.RUNNING
    assert states[3].state == status.PENDING and states[3].reason == "JobArrayTaskLimit"
    subprocess.run(["scancel", f"{job}_2"], check=True)
    subprocess.run(["scancel", f"{job}_3"], check=True)
    deadline = time.monotonic() + 60
    while not status.settled(list(states.values())) and time.monotonic() < deadline:
        time.sleep(0.5)
        states = {s.index: s for s in status.row_states(batch)}
    assert states[2].state == status.FAILED and states[2].reason == "cancelled"
    assert states[3].state == status.FAILED and states[3].reason == "cancelled"
    assert status.summary(list(states.values())) == (
        "4 recordings: 1 done, 3 failed, 0 running, 0 pending"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 5400), ("5:30", 330), ("2:00:00", 7200), ("1-12", 129600), ("1-00:30:15", 88215)],
)
def test_time_limit_seconds(text, seconds):
    assert script.time_limit_s(text) == seconds


def test_script_stops_the_sort_when_slurm_signals(tmp_path):
    """SLURM's warning before the time limit (--signal=B:INT@N reaches the batch shell): the
    shell passes SIGINT on to the sort, which stops (a container runtime removes its container
    on KeyboardInterrupt), and the task still writes its exit status."""
    import signal
    import time

    rows = read_list(make_list(tmp_path, ("a",)))
    options = BatchOptions(time="2:00:00")
    ready = tmp_path / "ready"
    sort = (
        "import pathlib, sys, time\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "try:\n    time.sleep(60)\n"
        "except KeyboardInterrupt:\n    print('interrupted: container removed'); sys.exit(1)\n"
    )
    text = render(
        rows, [0], options, folder=tmp_path / "b", commands={0: [sys.executable, "-c", sort]}
    )
    assert "#SBATCH --signal=B:INT@120\n" in text
    (tmp_path / "b" / "status").mkdir(parents=True)
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "5"}
    path = tmp_path / "job.sh"
    path.write_text(text)
    shell = subprocess.Popen(["bash", str(path)], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    shell.send_signal(signal.SIGINT)
    out, _ = shell.communicate(timeout=30)
    assert shell.returncode == 1
    assert script.STOPPING in out and "interrupted: container removed" in out
    assert status._read_json(status.status_path(tmp_path / "b", 0, "5"))["exit_status"] == 1
    log = tmp_path / "b" / "task.log"
    log.write_text(out)
    assert status._stopped(log, "2:00:00", 7150.0) == "time limit"
    assert status._stopped(log, "2:00:00", 60.0) == "stopped by a signal (scancel)"


def test_podman_command_shape(monkeypatch, tmp_path):
    """podman run's argv (run for real by tests/test_batch_slurm.py; GPUs only here): network
    off, never pulls, limits runc can set, the task's SLURM GPUs, no environment values."""
    from kilosort_docker.sorting.runtimes import PodmanRuntime

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    argv = PodmanRuntime().command(
        "img:1",
        ["python", "-c", "x"],
        name="n",
        ro={str(tmp_path): "/in"},
        rw={str(tmp_path): "/out"},
        gpu=True,
        environment={"TOKEN": "secret"},
    )
    assert argv[:4] == ["podman", "run", "--rm", "--pull"] and argv[4] == "never"
    assert argv[argv.index("--network") + 1] == "none"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--device"] == [
        "nvidia.com/gpu=1",
        "nvidia.com/gpu=3",
    ]
    assert f"{tmp_path}:/in:ro" in argv and f"{tmp_path}:/out:rw" in argv
    assert "TOKEN" in argv and not any("secret" in a for a in argv)
    assert argv[-4:] == ["img:1", "python", "-c", "x"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    argv = PodmanRuntime().command("img:1", [], name="n", gpu=True)
    assert argv[argv.index("--device") + 1] == "nvidia.com/gpu=all"


def test_an_image_that_is_not_there_is_refused_before_submitting(tmp_path, monkeypatch):
    """Every task would fail on it: the list is refused, dry run or not, naming the row."""
    import numpy as np
    from probeinterface import write_probeinterface

    from kilosort_docker.batch import submit
    from kilosort_docker.groundtruth.simulate import neuropixels_probe
    from kilosort_docker.sorting import runtimes

    write_probeinterface(tmp_path / "probe.json", neuropixels_probe(16))
    np.zeros((90_000, 16), dtype=np.int16).tofile(tmp_path / "a.bin")
    listing = tmp_path / "list.toml"
    listing.write_text(
        '[[recording]]\npath = "a.bin"\nprobe = "probe.json"\nout = "sorted/a"\n'
        'channels = 16\nsampling_rate = 30000\nimage = "lab/kilosort4:absent"\n'
    )
    asked = []

    class Missing:
        name = "docker"

        def image(self, ref):
            asked.append(ref)
            raise UserError(f"image {ref} is not present: build it")

    monkeypatch.setitem(runtimes.RUNTIMES, "docker", Missing)
    rows = read_list(listing)
    with pytest.raises(UserError, match="^row 1: image lab/kilosort4:absent is not present"):
        submit.validate_rows(rows, BatchOptions())
    assert asked == ["lab/kilosort4:absent"]


def test_nested_output_folders_are_refused(tmp_path):
    path = make_list(tmp_path, ("a", "b"), outs=["sorted/a", "sorted/a/b"])
    with pytest.raises(UserError, match="rows 1 and 2: .*sorted/a/b and .*sorted/a are nested"):
        read_list(path)


def test_a_kilosort3_row_without_gpus_names_gpus_per_task(tmp_path):
    from kilosort_docker.batch import submit

    rows = read_list(make_list(tmp_path, ("a",)))
    rows = [dataclasses.replace(rows[0], sorter="kilosort3")]
    with pytest.raises(UserError, match="row 1 .*pass --gpus-per-task 1"):
        submit.validate_rows(rows, BatchOptions())


def test_a_spreadsheet_csv_with_a_byte_order_mark_reads(tmp_path):
    path = make_list(tmp_path, ("a",), suffix=".csv")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [r.recording.name for r in read_list(path)] == ["a.bin"]


def test_a_refused_submission_leaves_no_script(tmp_path, monkeypatch):
    from kilosort_docker.batch import slurm, submit

    rows = read_list(make_list(tmp_path, ("a",)))
    monkeypatch.setattr(submit, "read_list", lambda path: rows)
    monkeypatch.setattr(slurm, "require", lambda program: None)
    monkeypatch.setattr(submit, "check_runtime", lambda runtime: None)
    monkeypatch.setattr(submit, "validate_rows", lambda rows, options: None)

    def refuse(script):
        raise UserError("sbatch: error: Batch job submission failed: Invalid partition name")

    monkeypatch.setattr(slurm, "submit", refuse)
    with pytest.raises(UserError, match="Invalid partition"):
        submit.sort_batch(tmp_path / "list.toml", BatchOptions(), folder=tmp_path / "b")
    assert not (tmp_path / "b" / "job-pending.sbatch").exists()

"""The ground-truth orchestration: preflight, exit codes, and a full Kilosort 4 run on CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("spikeinterface")

from kilosort_docker.errors import UserError  # noqa: E402
from kilosort_docker.groundtruth import run as groundtruth  # noqa: E402
from kilosort_docker.groundtruth.sorters import SortResult  # noqa: E402


def fake_sorter(jitter: int = 0):
    """A stand-in for run_kilosort that returns the ground truth as phy files."""

    def run(sorter, mode, data_dir, out_dir, **kwargs):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        times = np.load(Path(data_dir) / "gt_spike_times.npy") + jitter
        labels = np.load(Path(data_dir) / "gt_spike_labels.npy")
        np.save(out / "spike_times.npy", times.astype(np.uint64))
        np.save(out / "spike_clusters.npy", labels.astype(np.int32))
        (out / "params.py").write_text("sample_rate = 30000.0\n")
        return SortResult(sorter, mode, out, 2.0, {"device": "fake"})

    return run


SMALL = ["--duration", "8", "--channels", "16", "--units", "4", "--device", "cpu"]
#: A run whose preflight fails at once, before any Docker call: Kilosort 3 with no license.
KS3_NO_LICENSE = [
    *SMALL[:6],
    *("--sorter", "kilosort3", "--mode", "container", "--image", "kilosort3:test"),
]


@pytest.fixture(autouse=True)
def _preflight_may_skip(monkeypatch):
    """The tests decide whether KILOSORT_DOCKER_REQUIRE_GPU is set, not the caller's shell."""
    monkeypatch.delenv(groundtruth.REQUIRE_GPU_VARIABLE, raising=False)


def test_pipeline_with_a_perfect_sorter(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("kilosort_docker.groundtruth.sorters.run_kilosort", fake_sorter())
    out = tmp_path / "out"
    code = groundtruth.main(
        [*SMALL, "--out", str(out), "--cache", str(tmp_path / "cache"), "--repeat", "2", "-q"]
    )
    printed = capsys.readouterr().out
    assert code == groundtruth.EXIT_PASS, printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_well_detected"] == 4 and summary["identical_runs"] is True
    assert [r["n_well_detected"] for r in summary["runs"]] == [4, 4]
    assert summary["runs"][0]["x_real_time"] == pytest.approx(8 / 2.0)
    assert "4/4 units well detected" in printed and "PASS" in printed
    assert (out / "report.json").is_file() and (out / "accuracy_sorted.png").is_file()


def test_fail_verdict_gives_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("kilosort_docker.groundtruth.sorters.run_kilosort", fake_sorter(jitter=400))
    code = groundtruth.main([*SMALL, "--out", str(tmp_path), "--cache", str(tmp_path / "c"), "-q"])
    assert code == groundtruth.EXIT_FAIL
    assert "FAIL" in capsys.readouterr().out


def test_container_mode_needs_image(tmp_path, capsys):
    code = groundtruth.main([*SMALL, "--mode", "container", "--out", str(tmp_path)])
    assert code == groundtruth.EXIT_USAGE
    assert "--image" in capsys.readouterr().err


def test_no_gpu_skips_with_a_reason(tmp_path, capsys):
    if groundtruth.gpu_visible() is None:
        pytest.skip("this machine has a GPU")
    args = ["--duration", "8", "--channels", "16", "--units", "4", "--device", "cuda"]
    code = groundtruth.main([*args, "--out", str(tmp_path)])
    assert code == groundtruth.EXIT_SKIP
    out = capsys.readouterr().out
    assert "SKIP: no NVIDIA GPU visible" in out and "--device cpu" in out


def test_kilosort3_without_license_skips(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLM_LICENSE_FILE", raising=False)
    plan = groundtruth.Plan("kilosort3", "container", "kilosort3:test", "cuda", None, None)
    reason = groundtruth.preflight(plan)
    assert reason is not None and "MLM_LICENSE_FILE" in reason
    code = groundtruth.main(
        [
            *SMALL[:6],
            "--sorter",
            "kilosort3",
            "--mode",
            "container",
            "--image",
            "kilosort3:test",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == groundtruth.EXIT_SKIP
    assert "SKIP: no MATLAB license" in capsys.readouterr().out


def test_kilosort3_unreachable_license_server(monkeypatch):
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLM_LICENSE_FILE", f"{port}@127.0.0.1")
    plan = groundtruth.Plan("kilosort3", "container", "kilosort3:test", "cuda", None, None)
    reason = groundtruth.preflight(plan)
    assert reason is not None and "does not answer" in reason
    assert "127.0.0.1" not in reason  # the license value is never printed


# --------------------------------------------------------------------------- what the sorter
# cannot handle: refused before any work (exit 2), or a crash reported as a verdict (exit 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # issue 11 item 5: Kilosort 4 crashed inside its whitening step with a traceback
        (["--device", "cpu", "--duration", "1"], "too short for Kilosort 4"),
        # exactly one Kilosort 4 batch (60000 samples) fails the same way
        (["--device", "cpu", "--duration", "2"], "at least 60061 samples"),
        # Kilosort 3 batches are 65472 samples (ops.NT): refused before its license preflight
        (
            ["--sorter", "kilosort3", "--mode", "container", "--image", "kilosort3:test"]
            + ["--duration", "2.1"],
            "too short for Kilosort 3",
        ),
    ],
)
def test_recording_the_sorter_cannot_handle_is_refused(tmp_path, args, message, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    code = groundtruth.main([*args, "--out", str(out), "--cache", str(cache)])
    captured = capsys.readouterr()
    assert code == groundtruth.EXIT_USAGE, captured
    [line] = captured.err.strip().splitlines()  # one line
    assert message in line and "pass --duration" in line
    assert not out.exists() and not cache.exists()  # before any work


def test_shortest_recordings_the_sorters_take():
    """The limits follow the sorters' batch sizes: Kilosort 4.1.7 batch_size 60000 and nt 61
    (kilosort/parameters.py), Kilosort 3.0.2 NT = 64*1024 - 64 (configFile384.m)."""
    from kilosort_docker.groundtruth.simulate import SimulationParams
    from kilosort_docker.groundtruth.sorters import kilosort3, kilosort4

    assert kilosort4.min_samples() == 60000 + 61
    assert kilosort3.min_samples() == 64 * 1024 - 64 + 1
    for sorter, shortest in (("kilosort4", 2.1), ("kilosort3", 2.2)):
        groundtruth.refuse_recording(sorter, SimulationParams(duration_s=shortest))
        with pytest.raises(UserError, match=f"pass --duration {shortest:g} or longer"):
            groundtruth.refuse_recording(sorter, SimulationParams(duration_s=shortest - 0.1))


def test_kilosort4_runners_refuse_a_short_recording(tmp_path, capsys):
    """The runners refuse it too: the host runner before importing kilosort, the entry point
    (what the container runs) with exit 2 and one line."""
    from kilosort_docker.groundtruth.simulate import SimulationParams, simulate
    from kilosort_docker.groundtruth.sorters import ks4_entry, run_kilosort4_host

    sim = simulate(SimulationParams(duration_s=1, n_channels=16, n_units=2), tmp_path, n_jobs=1)
    with pytest.raises(UserError, match="too short for Kilosort 4.*at least 60061 samples"):
        run_kilosort4_host(sim.folder, tmp_path / "host", device="cpu")
    assert not (tmp_path / "host").exists()
    pytest.importorskip("kilosort")
    capsys.readouterr()
    assert ks4_entry.main([str(sim.folder), str(tmp_path / "entry"), "cpu"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("the recording is too short for Kilosort 4: 30000 samples")


def test_sorter_crash_is_a_verdict(tmp_path, capsys):
    """Kilosort 4 on CPU raises in its clustering (too few spikes in 2.1 s): exit 1, one
    FAIL line with the exception's last line, and a summary.json that records it."""
    pytest.importorskip("kilosort")
    out = tmp_path / "out"
    args = ["--device", "cpu", "--duration", "2.1", "--channels", "16", "--units", "4"]
    code = groundtruth.main([*args, "--out", str(out), "--cache", str(tmp_path / "c"), "-q"])
    captured = capsys.readouterr()
    assert code == groundtruth.EXIT_FAIL, captured
    last = captured.out.strip().splitlines()[-1]
    crash = re.fullmatch(r"\[groundtruth\] FAIL: the sorter crashed: (.*)", last)
    assert crash and re.fullmatch(CLUSTERING_CRASH, crash[1]), last
    assert "Traceback" not in captured.out + captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is False and summary["runs"] == []
    assert summary["error"] == "the sorter crashed: " + crash[1]
    assert summary["simulation"]["duration_s"] == 2.1
    assert "Traceback" in (out / "run-1" / "kilosort4.log").read_text()  # kept for the user


#: What Kilosort 4.1.7 raises on 2.1 s, 16 channels, 4 units (seed 42) on the CPU: too few
#: spikes for its k-means (here n_samples=3, n_clusters=6; MouseLand/Kilosort issue 719).
CLUSTERING_CRASH = r"ValueError: n_samples=\d+ should be >= n_clusters=\d+\."


def test_sorter_crash_from_the_command_line(tmp_path):
    """The same through ``python -m``, with a crash elsewhere: on 8 channels Kilosort 4 finds
    no spike to learn its templates from (MouseLand/Kilosort issue 776)."""
    pytest.importorskip("kilosort")
    out = tmp_path / "out"
    args = ["--device", "cpu", "--duration", "2.1", "--channels", "8", "--units", "2", "-q"]
    env = {k: v for k, v in os.environ.items() if k != groundtruth.REQUIRE_GPU_VARIABLE}
    proc = subprocess.run(
        [sys.executable, "-m", "kilosort_docker.groundtruth", *args, "--out", str(out)]
        + ["--cache", str(tmp_path / "c")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == groundtruth.EXIT_FAIL, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("[groundtruth] FAIL: the sorter crashed: ValueError: Found array")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is False and "TruncatedSVD" in summary["error"]


def test_output_that_cannot_be_scored_is_a_fail(tmp_path, monkeypatch, capsys):
    """A sorter that finishes with no spike at all: a failed sort, not a usage error."""

    def no_spikes(sorter, mode, data_dir, out_dir, **kwargs):
        out = Path(out_dir)
        out.mkdir(parents=True)
        np.save(out / "spike_times.npy", np.zeros(0, np.uint64))
        np.save(out / "spike_clusters.npy", np.zeros(0, np.int32))
        (out / "params.py").write_text("sample_rate = 30000.0\n")
        return SortResult(sorter, mode, out, 1.0, {"device": "fake"})

    monkeypatch.setattr("kilosort_docker.groundtruth.sorters.run_kilosort", no_spikes)
    out = tmp_path / "out"
    code = groundtruth.main([*SMALL, "--out", str(out), "--cache", str(tmp_path / "c"), "-q"])
    assert code == groundtruth.EXIT_FAIL
    assert "FAIL: the sort could not be scored: empty sorting" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is False and summary["runs"][0]["device"] == "fake"


@pytest.mark.slow
def test_full_kilosort4_run_on_cpu(tmp_path):
    """Kilosort 4 on the host CPU recovers at least 8 of 10 simulated units (accuracy >= 0.8).

    The smallest recording measured to give the verdict with a unit to spare: 60 s, 16
    channels, 10 units firing at 10-20 Hz, +-5 um drift (9/10 well detected, median accuracy
    0.999; sort 272 s on 2 shared cores). Kilosort 4 needs a few hundred spikes per unit: at
    2-8 Hz, 60 s/16 channels/5 units gave 1/5; at 10-20 Hz, 45 s/16 channels/8 units gave
    6/8 and 30 s/32 channels/10 units 5/10 (merged units). 32 channels cost several times
    16 on the CPU (30 s: 383 s against 24 s).
    """
    pytest.importorskip("kilosort")
    out = tmp_path / "out"
    args = (
        "--device cpu --duration 60 --channels 16 --units 10 --firing-rates 10 20 "
        "--drift 5 --drift-period 100"
    )
    code = groundtruth.main([*args.split(), "--out", str(out), "-q"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_gt_units"] == 10
    assert summary["n_well_detected"] >= 8, summary
    assert summary["runs"][0]["device"] == "cpu"
    assert code == groundtruth.EXIT_PASS


def test_skip_reason_is_the_last_stderr_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLM_LICENSE_FILE", raising=False)
    code = groundtruth.main([*KS3_NO_LICENSE, "--out", str(tmp_path)])
    assert code == groundtruth.EXIT_SKIP
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("skipped: no MATLAB license: set MLM_LICENSE_FILE")


def test_skip_reason_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(groundtruth, "preflight", lambda plan: "first part\n  second part")
    code = groundtruth.main([*SMALL, "--out", str(tmp_path)])
    assert code == groundtruth.EXIT_SKIP
    assert capsys.readouterr().err.strip().splitlines()[-1] == "skipped: first part second part"


def test_require_gpu_turns_a_failed_preflight_into_a_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLM_LICENSE_FILE", raising=False)
    monkeypatch.setenv("KILOSORT_DOCKER_REQUIRE_GPU", "1")
    code = groundtruth.main([*KS3_NO_LICENSE, "--out", str(tmp_path)])
    assert code == groundtruth.EXIT_FAIL == 1
    captured = capsys.readouterr()
    assert "skipped:" not in captured.err
    assert "KILOSORT_DOCKER_REQUIRE_GPU=1" in captured.err.strip().splitlines()[-1]
    assert "no MATLAB license" in captured.err and "FAIL" in captured.out


def test_module_entry_point_skip_and_require_gpu(tmp_path):
    """``python -m kilosort_docker.groundtruth`` as nox runs it: exit 77 and ``skipped: ...``
    last on stderr (logging included); 1 with KILOSORT_DOCKER_REQUIRE_GPU=1."""
    env = {k: v for k, v in os.environ.items() if k != "MLM_LICENSE_FILE"}
    env.pop(groundtruth.REQUIRE_GPU_VARIABLE, None)
    argv = [sys.executable, "-m", "kilosort_docker.groundtruth", *KS3_NO_LICENSE]
    skipped = subprocess.run(
        [*argv, "--out", str(tmp_path / "a")], env=env, capture_output=True, text=True
    )
    assert skipped.returncode == 77, skipped.stderr
    assert skipped.stderr.strip().splitlines()[-1].startswith("skipped: no MATLAB license")
    env[groundtruth.REQUIRE_GPU_VARIABLE] = "1"
    failed = subprocess.run(
        [*argv, "--out", str(tmp_path / "b")], env=env, capture_output=True, text=True
    )
    assert failed.returncode == 1, failed.stderr
    assert "KILOSORT_DOCKER_REQUIRE_GPU" in failed.stderr.strip().splitlines()[-1]


# --------------------------------------------------------------------------- which run has it

REPO = Path(__file__).resolve().parents[1]


def _collected(marks: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        + ["-m", marks, str(Path(__file__))],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_quick_tests_leave_the_cpu_sort_to_the_slow_session():
    """`nox -s tests` leaves the full CPU sort out; the `slow` session runs it, and plain
    `nox` (README's test command, what .ci/run runs) runs both."""
    pytest.importorskip("nox")
    import noxfile

    listed = subprocess.run(
        [sys.executable, "-m", "nox", "-f", str(REPO / "noxfile.py"), "--list", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr
    assert {"lint", "tests", "slow", "images"} <= {s["name"] for s in json.loads(listed.stdout)}
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert "nox" in [line.split("#")[0].strip() for line in ci]  # bare: every default session
    readme = (REPO / "README.md").read_text()
    assert "\nnox   " in readme and "`nox` runs `lint`, `tests`, `slow` and `images`" in readme
    full = "test_full_kilosort4_run_on_cpu"
    assert full not in _collected(f"{noxfile.HOST_TESTS} and not slow")
    assert full in _collected(f"{noxfile.HOST_TESTS} and slow")

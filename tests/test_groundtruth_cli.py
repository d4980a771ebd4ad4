"""`python -m kilosort_docker.groundtruth` refuses bad input with one line and exit 2 before
any work: a typo is not a skip (77), which CI would read as a missing GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "container", "--image", "Bad Image!!"], "--image 'Bad Image!!'"),
        (["--duration", "inf"], "the duration must be > 0 and at most 3600 s, got inf"),
        (["--duration", "1e9"], "at most 3600 s"),
        (["--jobs", "0"], "--jobs must be >= 1"),
        (["--drift", "nan"], "the drift must be >= 0 um"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "kilosort_docker.groundtruth", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists()


def test_an_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "results"
    a_file.write_text("keep me")
    done = subprocess.run(
        [sys.executable, "-m", "kilosort_docker.groundtruth", "--out", str(a_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: --out {a_file} is a file: pass a folder for the results"
    assert a_file.read_text() == "keep me"

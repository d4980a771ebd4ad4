"""Kilosort 4 ground truth on a GPU, sized like a real probe; results under $OUT (or ./out).

Runs :mod:`kilosort_docker.groundtruth` twice: a drifting recording (384 channels,
300 s, 200 units, zigzag drift +-10 um, period 200 s) sorted twice to check that repeated runs
agree, then the same units without drift. Copies summary, report and figures of each into the
output folder (at most 8 files, as the device tool returns). About 8 minutes on one H200.

    python benchmarks/groundtruth_h200.py [drift|static|both]
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from kilosort_docker.groundtruth import run as groundtruth

COMMON = [
    "--device",
    "cuda",
    "--duration",
    "300",
    "--channels",
    "384",
    "--units",
    "200",
    "--seed",
    "42",
    "--jobs",
    str(os.cpu_count() or 1),
    "-q",
]
RUNS = {
    "drift": ["--drift", "10", "--drift-period", "200", "--repeat", "2"],
    "static": ["--drift", "0"],
}


def main(which: str = "both") -> int:
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    codes = []
    for name, extra in RUNS.items():
        if which not in (name, "both"):
            continue
        work = Path("/tmp") / f"groundtruth-{name}"
        codes.append(groundtruth.main([*COMMON, *extra, "--out", str(work)]))
        shutil.copy(work / "summary.json", out / f"summary_{name}.json")
        shutil.copy(work / "report.json", out / f"report_{name}.json")
        for fig in (
            ("accuracy_vs_snr.png",)
            if name == "static"
            else ("accuracy_vs_snr.png", "accuracy_sorted.png")
        ):
            shutil.copy(work / fig, out / f"{Path(fig).stem}_{name}.png")
    return max(codes) if codes else 2


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))

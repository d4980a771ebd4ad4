"""Kilosort 4 inside the ``kilosort4`` image, network off, on CPU: the ground-truth verdict.

Needs the ``kilosort4_image`` fixture (tests/conftest.py, yields an image tag); skips when
it is not defined.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("spikeinterface")

from kilosort_docker.groundtruth import score as scoring  # noqa: E402
from kilosort_docker.groundtruth.simulate import SimulationParams, simulate  # noqa: E402
from kilosort_docker.groundtruth.sorters import SortError, run_kilosort4_container  # noqa: E402
from kilosort_docker.groundtruth.sorters.common import run_container  # noqa: E402

#: The recording the CPU test on the host sorts (tests/test_groundtruth_cpu.py): the smallest
#: measured to give the verdict with a unit to spare, and the same simulation cache.
PARAMS = SimulationParams(
    duration_s=60, n_channels=16, n_units=10, drift_um=5, firing_rates_hz=(10.0, 20.0), seed=42
)


@pytest.fixture
def image(kilosort4_image):
    """The kilosort4 image the suite builds (``kilosort4_image`` in tests/conftest.py)."""
    return kilosort4_image


@pytest.mark.docker
def test_container_has_no_network(image):
    probe = "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)"
    with pytest.raises(SortError):
        run_container(image, ["python", "-c", probe], volumes={}, network=False)


@pytest.mark.docker
def test_kilosort4_in_container_recovers_units(image, tmp_path):
    sim = simulate(PARAMS)
    result = run_kilosort4_container(sim.folder, tmp_path / "sort", image=image, gpu=False)
    assert result.info.get("device") == "cpu" and result.seconds > 0
    limits = scoring.load_thresholds(
        scoring.thresholds_path("kilosort4"), n_channels=PARAMS.n_channels
    )
    report = scoring.score(
        sim.folder,
        result.output,
        out_dir=tmp_path / "report",
        thresholds=limits,
        sort_seconds=result.seconds,
    )
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["n_well_detected"] == report.n_well_detected
    assert report.n_well_detected >= 8, report.summary()
    assert report.passed, report.summary()

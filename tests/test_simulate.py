"""Simulation: files, shapes, caching, and the Kilosort 3 / 4 inputs against Kilosort's own
files (configFile384.m at v3.0.2, the Kilosort 4 API)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("spikeinterface")
scipy_io = pytest.importorskip("scipy.io")

from kilosort_docker.errors import UserError  # noqa: E402
from kilosort_docker.groundtruth.simulate import (  # noqa: E402
    KS3_NT,
    SimulationParams,
    load_ground_truth,
    neuropixels_probe,
    simulate,
)

PARAMS = SimulationParams(
    duration_s=6, n_channels=16, n_units=4, drift_um=8, drift_period_s=4, drift_start_s=1, seed=7
)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate(PARAMS, tmp_path_factory.mktemp("cache"), n_jobs=1)


def test_binary_shape_and_scale(sim):
    raw = np.fromfile(sim.binary, dtype=np.int16)
    assert raw.size == PARAMS.n_samples * PARAMS.n_channels
    data = raw.reshape(PARAMS.n_samples, PARAMS.n_channels)
    # noise of 6-8 uV at 0.195 uV/bit is tens of bits on every channel
    sd = data.std(axis=0) * PARAMS.uv_per_bit
    assert np.all(sd > 4) and np.all(sd < 40)
    # readable by a container that runs as another user
    assert sim.folder.stat().st_mode & 0o755 == 0o755
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in sim.folder.iterdir())
    manifest = sim.manifest()
    assert manifest["binary"]["shape"] == [PARAMS.n_samples, PARAMS.n_channels]
    assert set(manifest["files"]) >= {
        "recording.bin",
        "chanMap.mat",
        "ops.mat",
        "ops.json",
        "ks4_settings.json",
        "ks4_probe.json",
        "gt_spike_times.npy",
    }


def test_ground_truth(sim):
    times = np.load(sim.folder / "gt_spike_times.npy")
    labels = np.load(sim.folder / "gt_spike_labels.npy")
    assert times.dtype == np.int64 and times.shape == labels.shape
    assert times.min() >= 0 and times.max() < PARAMS.n_samples
    assert set(np.unique(labels)) <= set(range(PARAMS.n_units))
    units = json.loads((sim.folder / "gt_units.json").read_text())
    assert [u["unit"] for u in units] == list(range(PARAMS.n_units))
    assert sum(u["n_spikes"] for u in units) == times.size
    assert all(u["snr"] > 0 and u["peak_uv"] > 0 for u in units)
    gt = load_ground_truth(sim.folder)
    assert gt.sampling_frequency == PARAMS.fs
    assert sum(gt.count_num_spikes_per_unit().values()) == times.size


def test_spikes_are_in_the_binary(sim):
    """The recording around ground-truth spikes of the biggest unit deviates from the noise."""
    data = np.memmap(
        sim.binary, dtype=np.int16, mode="r", shape=(PARAMS.n_samples, PARAMS.n_channels)
    )
    units = json.loads((sim.folder / "gt_units.json").read_text())
    big = max(units, key=lambda u: u["snr"])
    times = np.load(sim.folder / "gt_spike_times.npy")[
        np.load(sim.folder / "gt_spike_labels.npy") == big["unit"]
    ]
    times = times[(times > 100) & (times < PARAMS.n_samples - 100)]
    ch = big["peak_channel"]
    at_spikes = np.array([np.abs(data[t - 30 : t + 60, ch].astype(float)).max() for t in times])
    noise_bits = big["noise_uv"] / PARAMS.uv_per_bit
    assert np.median(at_spikes) > 4 * noise_bits


def test_drift_trace(sim, tmp_path):
    drift = np.load(sim.folder / "gt_drift.npy")
    assert drift.shape[1] == 2
    assert np.all(np.diff(drift[:, 0]) > 0)
    assert np.abs(drift[:, 1]).max() == pytest.approx(PARAMS.drift_um, abs=1.0)
    static = simulate(
        SimulationParams(duration_s=3, n_channels=8, n_units=2, drift_um=0), tmp_path, n_jobs=1
    )
    assert np.all(np.load(static.folder / "gt_drift.npy")[:, 1] == 0)


def test_cache_hit_and_key(sim, tmp_path):
    again = simulate(PARAMS, sim.folder.parent, n_jobs=1)
    assert again.cached and again.folder == sim.folder
    # Same values written differently give the same key; any change gives another.
    assert replace(PARAMS, duration_s=6.0, drift_um=8.0).key() == PARAMS.key()
    other = replace(PARAMS, seed=8)
    assert other.key() != PARAMS.key()


def test_cache_ignores_incomplete_folder(tmp_path):
    params = SimulationParams(duration_s=2, n_channels=8, n_units=2, seed=3)
    (tmp_path / f"sim-{params.key()}").mkdir()  # a folder without manifest.json
    sim = simulate(params, tmp_path, n_jobs=1)
    assert not sim.cached and (sim.folder / "manifest.json").is_file()


def test_chanmap_matches_probe(sim):
    cm = scipy_io.loadmat(sim.folder / "chanMap.mat")
    probe = neuropixels_probe(PARAMS.n_channels)
    n = PARAMS.n_channels
    assert cm["chanMap"].ravel().tolist() == list(range(1, n + 1))  # 1-based
    assert cm["chanMap0ind"].ravel().tolist() == list(range(n))
    np.testing.assert_allclose(cm["xcoords"].ravel(), probe.contact_positions[:, 0])
    np.testing.assert_allclose(cm["ycoords"].ravel(), probe.contact_positions[:, 1])
    assert cm["kcoords"].ravel().tolist() == [1] * n
    assert cm["connected"].ravel().all() and cm["connected"].size == n
    assert float(cm["fs"].squeeze()) == PARAMS.fs


def test_neuropixels_layout():
    probe = neuropixels_probe(384)
    pos = probe.contact_positions
    assert probe.get_contact_count() == 384
    assert sorted(set(pos[:, 0])) == [0.0, 16.0, 32.0, 48.0]  # NP 1.0 checkerboard
    assert pos[:, 1].max() - pos[:, 1].min() == 191 * 20


def test_ops_follow_kilosort_302(sim):
    """Kilosort's configFile384.m at v3.0.2: NT = 64*1024 - ntbuff (65472), the spike-holes fix
    (MouseLand/Kilosort issue 594)."""
    ops = scipy_io.loadmat(sim.folder / "ops.mat", simplify_cells=True)["ops"]
    assert ops["ntbuff"] == 64
    assert ops["NT"] == 64 * 1024 - ops["ntbuff"] == 65472 == KS3_NT
    assert ops["NT"] != 64 * 1024 + 64  # the pre-3.0.2 value that reintroduces the holes
    assert ops["NT"] % 32 == 0
    assert ops["NchanTOT"] == ops["Nchan"] == PARAMS.n_channels
    assert ops["fs"] == PARAMS.fs
    assert list(ops["Th"]) == [9, 9]
    assert list(ops["momentum"]) == [20, 400]
    assert list(ops["trange"]) == [0, np.inf]
    expected = {
        "fshigh": 300,
        "minfr_goodchannels": 0.1,
        "lam": 20,  # configFile384.m at v3.0.2 (10 was wrong: issue 10)
        "AUCsplit": 0.8,
        "minFR": 1 / 50,
        "sigmaMask": 30,
        "ThPre": 8,
        "sig": 20,
        "nblocks": 5,
        "spkTh": -6,
        "reorder": 1,
        "nskip": 25,
        "GPU": 1,
        "nfilt_factor": 4,
        "whiteningRange": 32,
        "nSkipCov": 25,
        "scaleproc": 200,
        "nPCs": 3,
        "useRAM": 0,
        "useStableMode": 1,
    }
    for key, value in expected.items():
        assert ops[key] == pytest.approx(value), key
    # relative names, made absolute by run_kilosort3.m
    assert ops["fbinary"] == "recording.bin" and ops["chanMap"] == "chanMap.mat"
    # ops.json says the same
    js = json.loads((sim.folder / "ops.json").read_text())
    for key, value in js.items():
        mat = ops[key]
        if isinstance(value, list):
            assert list(np.ravel(mat)) == value, key
        else:
            assert mat == value, key


def test_kilosort4_inputs(sim):
    settings = json.loads((sim.folder / "ks4_settings.json").read_text())
    assert settings == {"n_chan_bin": PARAMS.n_channels, "fs": PARAMS.fs}
    probe = json.loads((sim.folder / "ks4_probe.json").read_text())
    cm = scipy_io.loadmat(sim.folder / "chanMap.mat")
    assert probe["chanMap"] == cm["chanMap0ind"].ravel().astype(int).tolist()  # 0-based
    assert probe["n_chan"] == PARAMS.n_channels
    np.testing.assert_allclose(probe["xc"], cm["xcoords"].ravel())
    np.testing.assert_allclose(probe["yc"], cm["ycoords"].ravel())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"duration_s": 0},
        {"n_channels": 4},
        {"n_channels": 385},
        {"n_units": 0},
        {"drift_um": -1},
        {"drift_period_s": 0},
        {"firing_rates_hz": (8.0, 2.0)},
        {"firing_rates_hz": (0.0, 2.0)},
        {"unit_distance_um": (20.0, 20.0)},
        {"unit_distance_um": (-1.0, 20.0)},
    ],
)
def test_bad_parameters(kwargs):
    with pytest.raises(UserError):
        SimulationParams(**kwargs)


def test_params_are_frozen():
    with pytest.raises(AttributeError):
        PARAMS.seed = 1  # type: ignore[misc]


def test_units_lie_in_the_asked_distance_range(sim, tmp_path):
    from kilosort_docker.groundtruth.simulate import DEFAULT_UNIT_DISTANCE_UM

    assert PARAMS.unit_distance_um == DEFAULT_UNIT_DISTANCE_UM == (10.0, 45.0)
    z = [u["z_um"] for u in json.loads((sim.folder / "gt_units.json").read_text())]
    assert all(10.0 <= v <= 45.0 for v in z)
    far = replace(PARAMS, n_units=6, unit_distance_um=(30, 35))
    assert far.key() != replace(far, unit_distance_um=(5, 45)).key()
    units = json.loads((simulate(far, tmp_path, n_jobs=1).folder / "gt_units.json").read_text())
    assert len(units) == 6 and all(30.0 <= u["z_um"] <= 35.0 for u in units)

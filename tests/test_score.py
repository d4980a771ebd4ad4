"""Scoring: comparison numbers, report, figures, thresholds, and bad phy input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("spikeinterface")
pytest.importorskip("matplotlib")

from kilosort_docker.errors import UserError  # noqa: E402
from kilosort_docker.groundtruth import score as scoring  # noqa: E402
from kilosort_docker.groundtruth.simulate import SimulationParams, simulate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARAMS = SimulationParams(duration_s=20, n_channels=16, n_units=5, seed=11)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate(PARAMS, tmp_path_factory.mktemp("cache"), n_jobs=1)


def write_phy(folder: Path, times, clusters, *, fs=30000.0, labels=None) -> Path:
    """A minimal phy folder, as Kilosort writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "spike_times.npy", np.asarray(times, dtype=np.uint64))
    np.save(folder / "spike_clusters.npy", np.asarray(clusters, dtype=np.int32))
    (folder / "params.py").write_text(
        f"dat_path = 'recording.bin'\nn_channels_dat = 16\ndtype = 'int16'\n"
        f"offset = 0\nsample_rate = {fs}\nhp_filtered = False\n"
    )
    if labels is not None:
        rows = "".join(f"{c}\t{lab}\n" for c, lab in labels.items())
        (folder / "cluster_KSLabel.tsv").write_text("cluster_id\tKSLabel\n" + rows)
    return folder


def gt_arrays(sim):
    return np.load(sim.folder / "gt_spike_times.npy"), np.load(sim.folder / "gt_spike_labels.npy")


def test_perfect_sorting(sim, tmp_path):
    times, labels = gt_arrays(sim)
    # cluster ids need not equal unit ids; a 2-sample jitter is inside the 0.4 ms window
    phy = write_phy(
        tmp_path / "phy",
        times + 2,
        labels + 100,
        labels={100 + u: "good" for u in range(PARAMS.n_units)},
    )
    limits = scoring.load_thresholds(scoring.thresholds_path("kilosort4"), n_channels=16)
    report = scoring.score(
        sim.folder, phy, out_dir=tmp_path / "out", thresholds=limits, sort_seconds=10.0
    )
    assert report.n_gt_units == PARAMS.n_units
    assert report.n_well_detected == PARAMS.n_units
    assert report.median_accuracy == 1.0
    assert report.n_clusters == PARAMS.n_units and report.n_good_clusters == PARAMS.n_units
    assert [u["match"] for u in report.units] == [100 + u for u in range(PARAMS.n_units)]
    assert report.passed is True and report.reasons == []
    assert report.sort["x_real_time"] == pytest.approx(PARAMS.duration_s / 10.0)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["n_well_detected"] == PARAMS.n_units and saved["passed"] is True
    for name in scoring.FIGURES:
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PASS" in report.summary()


def test_lost_spikes_and_merges_are_counted(sim, tmp_path):
    times, labels = gt_arrays(sim)
    rng = np.random.default_rng(0)
    keep = ~((labels == 0) & (rng.random(labels.size) < 0.3))  # lose 30 % of unit 0
    clusters = labels.copy()
    clusters[clusters == 2] = 1  # merge units 1 and 2
    phy = write_phy(tmp_path / "phy", times[keep], clusters[keep])
    report = scoring.score(sim.folder, phy, out_dir=tmp_path / "out", figures=False)
    by_unit = {u["unit"]: u for u in report.units}
    assert 0.55 < by_unit[0]["recall"] < 0.8 and by_unit[0]["precision"] == 1.0
    assert by_unit[0]["accuracy"] < 0.8
    # one of the merged pair matches the merged cluster with poor precision, the other nothing
    assert min(by_unit[1]["accuracy"], by_unit[2]["accuracy"]) < 0.8
    assert by_unit[3]["accuracy"] == 1.0 and by_unit[4]["accuracy"] == 1.0
    assert report.n_well_detected == 3 - (
        by_unit[1]["accuracy"] < 0.8 and by_unit[2]["accuracy"] < 0.8
    )
    assert report.passed is None  # no thresholds given


def test_verdict_fails_below_thresholds(sim, tmp_path):
    times, labels = gt_arrays(sim)
    keep = labels < 2  # only 2 of 5 units found
    phy = write_phy(tmp_path / "phy", times[keep], labels[keep])
    limits = scoring.Thresholds(
        name="t",
        applies_to="test",
        max_channels=64,
        min_well_detected_fraction=0.8,
        min_median_accuracy=0.8,
    )
    report = scoring.score(sim.folder, phy, out_dir=tmp_path, thresholds=limits, figures=False)
    assert report.n_well_detected == 2
    assert report.passed is False
    assert any("well-detected fraction 0.400" in r for r in report.reasons)
    assert "FAIL" in report.summary()


def test_missing_phy_files(sim, tmp_path):
    times, labels = gt_arrays(sim)
    phy = write_phy(tmp_path / "phy", times, labels)
    (phy / "spike_clusters.npy").unlink()
    with pytest.raises(UserError, match="lacks spike_clusters.npy"):
        scoring.score(sim.folder, phy, figures=False)
    with pytest.raises(UserError, match="does not exist"):
        scoring.score(sim.folder, tmp_path / "nowhere", figures=False)
    phy2 = write_phy(tmp_path / "phy2", times, labels)
    (phy2 / "params.py").unlink()
    with pytest.raises(UserError, match="lacks params.py"):
        scoring.read_phy(phy2)


def test_spike_templates_stand_in_for_clusters(sim, tmp_path):
    times, labels = gt_arrays(sim)
    phy = write_phy(tmp_path / "phy", times, labels)
    shutil.move(phy / "spike_clusters.npy", phy / "spike_templates.npy")
    sorting, _ = scoring.read_phy(phy, fs=PARAMS.fs)
    assert len(sorting.unit_ids) == PARAMS.n_units


def test_empty_sorting(sim, tmp_path):
    phy = write_phy(tmp_path / "phy", [], [])
    with pytest.raises(UserError, match="empty sorting"):
        scoring.score(sim.folder, phy, figures=False)


def test_sampling_rate_mismatch(sim, tmp_path):
    times, labels = gt_arrays(sim)
    phy = write_phy(tmp_path / "phy", times, labels, fs=25000.0)
    with pytest.raises(UserError, match="sampling-rate mismatch.*25000 Hz.*30000 Hz"):
        scoring.score(sim.folder, phy, figures=False)


def test_messages_are_one_line(sim, tmp_path):
    phy = write_phy(tmp_path / "phy", [], [])
    with pytest.raises(UserError) as info:
        scoring.read_phy(phy)
    assert "\n" not in str(info.value)


def test_params_py_is_not_executed(tmp_path):
    (tmp_path / "params.py").write_text("import os\nsample_rate = 30000.\nx = os.getcwd()\n")
    assert scoring.read_params_py(tmp_path / "params.py") == {"sample_rate": 30000.0}


def test_repository_thresholds():
    for sorter in ("kilosort4", "kilosort3"):
        small = scoring.load_thresholds(scoring.thresholds_path(sorter), n_channels=32)
        probe = scoring.load_thresholds(scoring.thresholds_path(sorter), n_channels=384)
        assert small.name == "small" and probe.name == "probe"
        for t in (small, probe):
            assert 0 < t.min_well_detected_fraction <= 1 and 0 < t.min_median_accuracy <= 1
            assert t.applies_to and str(REPO / "thresholds") in t.source


def test_threshold_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        scoring.load_thresholds(tmp_path / "none.toml", n_channels=32)
    bad = tmp_path / "bad.toml"
    bad.write_text("[[size]]\nname = 'x'\nmax_channels = 64\n")
    with pytest.raises(UserError, match="incomplete"):
        scoring.load_thresholds(bad, n_channels=32)
    with pytest.raises(UserError, match="no \\[\\[size\\]\\] table for 1000"):
        scoring.load_thresholds(scoring.thresholds_path("kilosort4"), n_channels=1000)
    bad.write_text("[[size]]\nname = 'x'\nmax_channels = 64\nmin_median_accurracy = 1\n")
    with pytest.raises(UserError, match="unknown keys"):
        scoring.load_thresholds(bad, n_channels=32)


# --------------------------------------------------------------------------- silent units


def small_limits():
    return scoring.load_thresholds(scoring.thresholds_path("kilosort4"), n_channels=16)


def test_perfect_sort_of_a_very_short_recording_passes(tmp_path):
    """0.2 s, 10 units at 2-8 Hz: half the units never fire. A perfect sort used to fail
    (well-detected fraction 0.5); units without spikes are now left out of every number."""
    short = simulate(SimulationParams(duration_s=0.2, n_channels=16, n_units=10), tmp_path)
    times, labels = gt_arrays(short)
    silent = sorted(set(range(10)) - set(labels.tolist()))
    assert silent  # the case this test is about
    phy = write_phy(tmp_path / "phy", times, labels)
    report = scoring.score(short.folder, phy, out_dir=tmp_path / "out", thresholds=small_limits())
    assert report.units_without_spikes == silent
    assert report.n_gt_units == report.n_well_detected == 10 - len(silent)
    assert sorted(u["unit"] for u in report.units) == sorted(set(labels.tolist()))
    assert report.median_accuracy == 1.0 and report.passed is True, report.reasons
    assert f"{len(silent)} units without spikes left out" in report.summary()
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["units_without_spikes"] == silent


def test_unit_without_spikes_is_left_out(sim, tmp_path):
    """A ground truth whose unit 3 has no spike: the other four, sorted perfectly, pass; the
    same sort scored with unit 3's spikes in the ground truth does not count it as found."""
    folder = tmp_path / "sim"
    shutil.copytree(sim.folder, folder)
    times, labels = gt_arrays(sim)
    fires = labels != 3
    np.save(folder / "gt_spike_times.npy", times[fires])
    np.save(folder / "gt_spike_labels.npy", labels[fires])
    phy = write_phy(tmp_path / "phy", times[fires], labels[fires])
    report = scoring.score(folder, phy, thresholds=small_limits(), figures=False)
    assert report.units_without_spikes == [3] and report.n_gt_units == 4
    assert report.n_well_detected == 4 and report.passed is True
    full = scoring.score(sim.folder, phy, thresholds=small_limits(), figures=False)
    assert full.units_without_spikes == [] and full.n_gt_units == 5
    assert full.n_well_detected == 4


def test_no_unit_fires(sim, tmp_path):
    folder = tmp_path / "sim"
    shutil.copytree(sim.folder, folder)
    np.save(folder / "gt_spike_times.npy", np.zeros(0, np.int64))
    np.save(folder / "gt_spike_labels.npy", np.zeros(0, np.int64))
    times, labels = gt_arrays(sim)
    phy = write_phy(tmp_path / "phy", times, labels)
    with pytest.raises(UserError, match="no ground-truth unit fires"):
        scoring.score(folder, phy, figures=False)


# --------------------------------------------------------------------------- merge-aware scores

from kilosort_docker.groundtruth import merges  # noqa: E402


def test_merge_rule_by_hand():
    # units x clusters matched counts; cluster sizes
    counts = np.array(
        [
            [90, 10, 0, 40, 5, 85],  # unit 0
            [20, 80, 0, 40, 0, 85],  # unit 1 (chance coincidences with unit 0's clusters)
        ]
    )
    sizes = np.array([100, 95, 50, 80, 100, 100])
    # cluster 0: 90 of its 100 spikes match unit 0 -> unit 0 (the 20 chance matches with
    #   unit 1 do not count against it)
    # cluster 1: 80/95 = 0.84 match unit 1 -> unit 1
    # cluster 2: nothing matched -> nobody
    # cluster 3: 40/80 each -> nobody (mixed)
    # cluster 4: 5/100 -> nobody (mostly noise)
    # cluster 5: 85/100 for both (a tie: overlapping units) -> the first, one unit at most
    assert merges.merge_sets(counts, sizes) == [[0, 5], [1]]
    # exactly 80 %: merged (the rule says "at least"); 79 %: not
    assert merges.merge_sets(np.array([[80], [3]]), np.array([100])) == [[0], []]
    assert merges.merge_sets(np.array([[79], [3]]), np.array([100])) == [[], []]
    assert merges.merge_sets(np.zeros((0, 3)), np.ones(3)) == []
    with pytest.raises(ValueError):
        merges.merge_sets(counts, sizes[:3])


def test_union_accuracy_by_hand():
    gt = np.arange(10) * 1000  # 10 spikes, 1000 samples apart
    a = gt[:4] + 5  # 4 hits, within delta 12
    b = np.concatenate([gt[4:7] - 12, [50_000]])  # 3 hits at the edge, 1 false positive
    dup = gt[:2] + 1  # the same events as a: duplicates, false positives after a merge
    res = merges.union_accuracy(gt, [a, b], delta=12)
    assert res["tp"] == 7 and res["n_sorted"] == 8
    assert res["accuracy"] == pytest.approx(7 / (10 + 8 - 7))
    assert res["recall"] == pytest.approx(0.7) and res["precision"] == pytest.approx(7 / 8)
    res = merges.union_accuracy(gt, [a, b, dup], delta=12)
    assert res["tp"] == 7 and res["accuracy"] == pytest.approx(7 / (10 + 10 - 7))
    # 13 samples away is outside the window
    assert merges.union_accuracy(gt, [gt + 13], delta=12)["tp"] == 0
    assert merges.union_accuracy(gt, [], delta=12)["accuracy"] == 0.0


def test_split_unit_is_found_after_merges(sim, tmp_path):
    times, labels = gt_arrays(sim)
    n = PARAMS.n_units
    clusters = labels.copy()
    # unit 0 split three ways by time (as drift does), unit 1 into two halves
    u0 = np.flatnonzero(labels == 0)
    thirds = np.array_split(u0, 3)
    clusters[thirds[1]] = 50
    clusters[thirds[2]] = 51
    u1 = np.flatnonzero(labels == 1)
    clusters[u1[::2]] = 60
    # a noise cluster (no ground-truth spike near it) is not merged into anyone
    noise = np.arange(1, 200) * 3001 + 7
    noise = noise[np.min(np.abs(noise[:, None] - times[None, :]), axis=1) > 50]
    phy = write_phy(
        tmp_path / "phy",
        np.concatenate([times, noise]),
        np.concatenate([clusters, np.full(noise.size, 99)]),
    )
    report = scoring.score(sim.folder, phy, out_dir=tmp_path / "out")
    rows = {u["unit"]: u for u in report.units}
    # unit 0's best cluster holds a third of its spikes: an agreement below spikeinterface's
    # match_score (0.5), so no single cluster matches it
    assert rows[0]["accuracy"] == 0.0
    assert rows[0]["merged_accuracy"] == 1.0 and rows[0]["n_split"] == 3
    assert sorted(rows[0]["merged_clusters"]) == [0, 50, 51]
    assert rows[1]["n_split"] == 2 and rows[1]["merged_accuracy"] == 1.0
    assert rows[1]["accuracy"] in (0.0, pytest.approx(0.5, abs=0.01))
    for u in range(2, n):
        assert rows[u]["n_split"] == 1 and rows[u]["merged_accuracy"] == rows[u]["accuracy"] == 1.0
    assert report.n_well_detected == n - 2 and report.n_well_detected_merged == n
    assert report.n_units_split == 2 and report.median_merged_accuracy == 1.0
    assert sum(b["n_units"] for b in report.snr_bands) == n
    assert sum(b["n_units_split"] for b in report.snr_bands) == 2
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["merge_rule"] == merges.MERGE_RULE and saved["n_well_detected_merged"] == n
    assert "after merges: 5/5 well detected (3 before)" in report.table()
    assert (tmp_path / "out" / "merges_vs_snr.png").read_bytes()[:4] == b"\x89PNG"


def test_merged_score_in_the_verdict_only_when_the_file_says_so(tmp_path):
    numbers = {
        "n_gt_units": 10,
        "n_well_detected": 4,
        "n_high_snr": 10,
        "n_well_detected_high_snr": 4,
        "median_accuracy": 0.5,
        "n_well_detected_merged": 9,
        "n_well_detected_high_snr_merged": 9,
        "median_merged_accuracy": 0.95,
    }
    single = scoring.Thresholds("t", "x", 64, 0.8, 0.8, 0.8)
    assert len(scoring.verdict(numbers, single)) == 3
    merged = dataclasses_replace(single, score="merged")
    assert scoring.verdict(numbers, merged) == []
    path = tmp_path / "t.toml"
    path.write_text(
        '[[size]]\nname = "s"\napplies_to = "x"\nmax_channels = 64\n'
        'min_well_detected_fraction = 0.8\nmin_median_accuracy = 0.8\nscore = "merged"\n'
    )
    assert scoring.load_thresholds(path, n_channels=16).score == "merged"
    path.write_text(path.read_text().replace('"merged"', '"best"'))
    with pytest.raises(UserError, match="score must be one of single, merged"):
        scoring.load_thresholds(path, n_channels=16)


def dataclasses_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def test_sorters_drift_estimate_against_the_simulated_drift(sim, tmp_path):
    times, labels = gt_arrays(sim)
    phy = write_phy(tmp_path / "phy", times, labels)
    truth = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, -10.0]])
    np.save(sim.folder.parent / "drift-truth.npy", truth)
    batch, fs = 60000, 30000.0
    centres = (np.arange(10) + 0.5) * batch / fs  # 1, 3, ... 19 s
    # Kilosort's dshift: the opposite sign of the displacement, its own zero (+3 um)
    dshift = -np.interp(centres, truth[:, 0], truth[:, 1]) + 3.0
    ops = {"dshift": dshift[:, None], "settings": {"fs": fs, "batch_size": batch, "tmin": 0.0}}
    np.save(phy / "ops.npy", np.array(ops, dtype=object))
    est = merges.kilosort4_drift(phy)
    assert est["t"] == pytest.approx(centres) and est["dshift"] == pytest.approx(dshift)
    agree = merges.drift_agreement(est, truth)
    assert agree["correlation"] == pytest.approx(1.0) and agree["slope"] == pytest.approx(1.0)
    assert agree["residual_rms_um"] == pytest.approx(0.0, abs=1e-9)
    assert agree["offset_um"] == pytest.approx(-3.0) and agree["n_batches"] == 10
    # a static truth: no correlation to speak of, the estimate's spread is the residual
    flat = merges.drift_agreement({"t": centres, "dshift": np.r_[1.0, -1.0].repeat(5)}, truth * 0)
    assert flat["correlation"] is None and flat["residual_rms_um"] == pytest.approx(1.0)
    report = scoring.score(sim.folder, phy, out_dir=tmp_path / "out")
    assert report.drift_estimate["n_batches"] == 10
    assert "sorter's drift estimate vs simulated" in report.table()
    # without ops.npy (Kilosort 3, or nblocks = 0) there is no estimate
    (phy / "ops.npy").unlink()
    assert merges.kilosort4_drift(phy) is None
    assert scoring.score(sim.folder, phy, figures=False).drift_estimate is None

"""Score a sorter's phy output against a simulation's ground truth and give a verdict.

:func:`read_phy` reads ``spike_times.npy``, ``spike_clusters.npy`` (or ``spike_templates.npy``)
and ``params.py``; :func:`score` compares with the ground truth through
:func:`spikeinterface.comparison.compare_sorter_to_ground_truth` (match window 0.4 ms;
accuracy = tp / (tp + fn + fp); a unit is *well detected* at accuracy >= 0.8), adds the
merge-aware scores of :mod:`kilosort_docker.groundtruth.merges` (accuracy after merging a
unit's split clusters, the number of clusters, a table by SNR band) and Kilosort 4's own drift
estimate against the simulated drift, writes ``report.json`` and four PNG figures, and checks
the numbers against the thresholds in a TOML file (``thresholds/<sorter>.toml``; its
``score`` key picks the single-cluster score, the default, or the merged one). Ground-truth
units that do not fire in the recording (possible in a short one) cannot be found by any
sorter: they are left out of every number and listed in ``units_without_spikes``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kilosort_docker.errors import UserError
from kilosort_docker.groundtruth import merges
from kilosort_docker.paths import THRESHOLDS_DIR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

WELL_DETECTED = 0.8
#: Units at or above this SNR are "should be found" units; reported separately.
HIGH_SNR = 5.0
FIGURES = ("accuracy_sorted.png", "accuracy_vs_snr.png", "drift.png", "merges_vs_snr.png")
#: Scores a thresholds file may judge by (its ``score`` key).
SCORES = ("single", "merged")


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits for one sorter and one recording size (a ``[[size]]`` table).

    Attributes:
        name: the table's name, e.g. ``small`` or ``probe``.
        applies_to: the recording the numbers were set for, in words.
        max_channels: the table applies to recordings with at most this many channels.
        min_well_detected_fraction: well-detected units / ground-truth units, at least.
        min_median_accuracy: median accuracy over ground-truth units, at least.
        min_well_detected_fraction_high_snr: the same fraction over units with
            SNR >= :data:`HIGH_SNR` (None: not checked).
        score: ``single`` (best single-cluster accuracy, the default) or ``merged``
            (accuracy after merges, :mod:`kilosort_docker.groundtruth.merges`).
        source: the TOML file.
    """

    name: str
    applies_to: str
    max_channels: int
    min_well_detected_fraction: float
    min_median_accuracy: float
    min_well_detected_fraction_high_snr: float | None = None
    score: str = "single"
    source: str = ""

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise UserError(
                f"{self.source or 'thresholds'}: score must be one of {', '.join(SCORES)}, "
                f"got {self.score!r}"
            )


#: The y range of every score axis (scores lie in [0, 1]).
SCORE_LIMITS = (-0.02, 1.02)


def thresholds_path(sorter: str) -> Path:
    """``thresholds/<sorter>.toml`` at the repository root."""
    return THRESHOLDS_DIR / f"{sorter}.toml"


def load_thresholds(path: Path | str, *, n_channels: int) -> Thresholds:
    """The first ``[[size]]`` table of ``path`` whose ``max_channels`` >= ``n_channels``.

    Raises:
        UserError: the file is missing or malformed, or no table covers ``n_channels``.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UserError(f"thresholds file {path} not found: pass --thresholds FILE") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"thresholds file {path} is not valid TOML: {exc}") from exc
    sizes = data.get("size")
    if not isinstance(sizes, list) or not sizes:
        raise UserError(f"{path} has no [[size]] tables: add one (see thresholds/kilosort4.toml)")
    names = {f.name for f in dataclasses.fields(Thresholds)} - {"source"}
    for table in sorted(sizes, key=lambda t: t.get("max_channels", 0)):
        unknown = set(table) - names
        if unknown:
            raise UserError(
                f"{path}: unknown keys {sorted(unknown)} in [[size]] {table.get('name')}"
            )
        if int(table.get("max_channels", 0)) >= n_channels:
            try:
                return Thresholds(**table, source=str(path))
            except TypeError as exc:
                raise UserError(
                    f"{path}: [[size]] {table.get('name')} is incomplete: {exc}"
                ) from exc
    raise UserError(f"{path} has no [[size]] table for {n_channels} channels: add one")


# --------------------------------------------------------------------------- phy input


def read_params_py(path: Path) -> dict[str, Any]:
    """The literal assignments of a phy ``params.py`` (no code is executed)."""
    out: dict[str, Any] = {}
    for node in ast.parse(path.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return out


def read_phy(folder: Path | str, *, fs: float | None = None):
    """Read a phy folder as a spikeinterface ``NumpySorting`` (every cluster, any label).

    Args:
        folder: the sorter's output folder.
        fs: the ground truth's sampling rate in Hz; checked against ``params.py``.

    Returns:
        ``(sorting, labels)``: the sorting and a dict cluster id -> Kilosort label
        (``good``/``mua``, from ``cluster_KSLabel.tsv``; empty if absent).

    Raises:
        UserError: missing phy files, no spikes, or a sampling rate that differs from ``fs``.
    """
    from spikeinterface.core import NumpySorting

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"phy folder {folder} does not exist: run the sorter first")
    clusters = folder / "spike_clusters.npy"
    if not clusters.is_file():
        clusters = folder / "spike_templates.npy"
    needed = [folder / "spike_times.npy", clusters, folder / "params.py"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        if "spike_templates.npy" in missing:
            missing[missing.index("spike_templates.npy")] = "spike_clusters.npy"
        raise UserError(
            f"phy output in {folder} lacks {', '.join(missing)}: the sort did not finish; rerun it"
        )
    params = read_params_py(folder / "params.py")
    rate = params.get("sample_rate")
    if rate is None:
        raise UserError(f"{folder / 'params.py'} has no sample_rate: rerun the sorter")
    rate = float(rate)
    if fs is not None and abs(rate - fs) > 1e-6 * fs:
        raise UserError(
            f"sampling-rate mismatch: phy params.py says {rate:g} Hz, ground truth is {fs:g} Hz; "
            "sort with fs set to the recording's rate"
        )
    times = np.load(folder / "spike_times.npy").astype(np.int64).ravel()
    labels = np.load(clusters).astype(np.int64).ravel()
    if times.size != labels.size:
        raise UserError(
            f"{folder}: spike_times.npy has {times.size} spikes but {clusters.name} "
            f"{labels.size}: rerun the sorter"
        )
    if times.size == 0:
        raise UserError(
            f"empty sorting: {folder} holds no spikes; check the sorter log and its input"
        )
    ks_labels: dict[int, str] = {}
    tsv = folder / "cluster_KSLabel.tsv"
    if tsv.is_file():
        for line in tsv.read_text().splitlines()[1:]:
            parts = line.split("\t")
            if len(parts) >= 2 and parts[0].strip().lstrip("-").isdigit():
                ks_labels[int(parts[0])] = parts[1].strip()
    order = np.argsort(times, kind="stable")
    sorting = NumpySorting.from_samples_and_labels([times[order]], [labels[order]], rate)
    return sorting, ks_labels


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Report:
    """The outcome of :func:`score`; :meth:`to_dict` is what ``report.json`` holds.

    Attributes:
        n_gt_units / n_clusters / n_good_clusters: counts; ``n_gt_units`` counts the
            ground-truth units with at least one spike in the recording.
        n_well_detected: ground-truth units at accuracy >= 0.8.
        n_high_snr / n_well_detected_high_snr: the same for units with SNR >= 5.
        median_accuracy: median over ground-truth units (unmatched count as 0).
        n_well_detected_merged / n_well_detected_high_snr_merged / median_merged_accuracy:
            the same after merges (:data:`~kilosort_docker.groundtruth.merges.MERGE_RULE`).
        n_units_split: ground-truth units whose spikes are split into two or more clusters.
        units: per ground-truth unit: unit, snr, peak_uv, z_um, accuracy, recall, precision,
            match, merged_accuracy, merged_recall, merged_precision, n_split (clusters
            merged into it), merged_clusters.
        merge_rule: the merge rule in words.
        snr_bands: :func:`~kilosort_docker.groundtruth.merges.snr_band_table` rows.
        drift_estimate: the sorter's drift estimate against the simulated drift
            (:func:`~kilosort_docker.groundtruth.merges.drift_agreement`), None without one.
        passed: the verdict (None when no thresholds were given).
        reasons: why it failed (empty when it passed).
        units_without_spikes: ground-truth units with no spike in the recording, left out.
    """

    sorter: str
    n_gt_units: int
    n_clusters: int
    n_good_clusters: int
    n_well_detected: int
    n_high_snr: int
    n_well_detected_high_snr: int
    median_accuracy: float
    n_false_positive_units: int
    n_redundant_units: int
    n_overmerged_units: int
    units: list[dict[str, Any]]
    simulation: Mapping[str, Any]
    sort: Mapping[str, Any] = field(default_factory=dict)
    thresholds: Mapping[str, Any] | None = None
    passed: bool | None = None
    reasons: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    units_without_spikes: list[int] = field(default_factory=list)
    n_well_detected_merged: int = 0
    n_well_detected_high_snr_merged: int = 0
    median_merged_accuracy: float = 0.0
    n_units_split: int = 0
    merge_rule: str = ""
    snr_bands: list[dict[str, Any]] = field(default_factory=list)
    drift_estimate: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line: well detected, median accuracy, sort time, verdict."""
        parts = [
            f"{self.sorter}: {self.n_well_detected}/{self.n_gt_units} units well detected "
            f"(accuracy >= {WELL_DETECTED})",
            f"{self.n_well_detected_high_snr}/{self.n_high_snr} of SNR >= {HIGH_SNR:g}",
            f"median accuracy {self.median_accuracy:.3f}",
            f"{self.n_clusters} clusters ({self.n_good_clusters} good)",
        ]
        if self.units_without_spikes:
            parts.append(f"{len(self.units_without_spikes)} units without spikes left out")
        if self.sort.get("seconds"):
            parts.append(
                f"sorted in {self.sort['seconds']:.1f} s "
                f"({self.sort.get('x_real_time', 0):.2f} x real time)"
            )
        if self.passed is not None:
            parts.append("PASS" if self.passed else "FAIL: " + "; ".join(self.reasons))
        return ", ".join(parts)

    def table(self) -> str:
        """The merge-aware numbers: a line, the SNR-band table, and the drift estimate."""
        from kilosort_docker.groundtruth.merges import format_table

        lines = [
            f"after merges: {self.n_well_detected_merged}/{self.n_gt_units} well detected "
            f"({self.n_well_detected} before), median accuracy {self.median_merged_accuracy:.3f}; "
            f"{self.n_units_split} units split into 2+ clusters",
            format_table(self.snr_bands),
        ]
        d = self.drift_estimate
        if d:
            corr = "-" if d["correlation"] is None else f"{d['correlation']:.3f}"
            slope = "-" if d["slope"] is None else f"{d['slope']:.2f}"
            lines.append(
                f"sorter's drift estimate vs simulated: r = {corr}, slope {slope}, "
                f"residual {d['residual_rms_um']:.2f} um rms over {d['n_batches']} batches"
            )
        return "\n".join(lines)


def verdict(report_numbers: Mapping[str, Any], limits: Thresholds) -> list[str]:
    """Reasons why the numbers miss ``limits`` (empty list: pass)."""
    reasons = []
    sfx, what = ("_merged", " after merges") if limits.score == "merged" else ("", "")
    n_gt = report_numbers["n_gt_units"]
    frac = report_numbers["n_well_detected" + sfx] / n_gt if n_gt else 0.0
    if frac < limits.min_well_detected_fraction:
        reasons.append(
            f"well-detected fraction{what} {frac:.3f} < {limits.min_well_detected_fraction}"
        )
    median = report_numbers["median_merged_accuracy" if sfx else "median_accuracy"]
    if median < limits.min_median_accuracy:
        reasons.append(f"median accuracy{what} {median:.3f} < {limits.min_median_accuracy}")
    if limits.min_well_detected_fraction_high_snr is not None and report_numbers["n_high_snr"]:
        frac_hi = report_numbers["n_well_detected_high_snr" + sfx] / report_numbers["n_high_snr"]
        if frac_hi < limits.min_well_detected_fraction_high_snr:
            reasons.append(
                f"well-detected fraction{what} at SNR >= {HIGH_SNR:g} {frac_hi:.3f} < "
                f"{limits.min_well_detected_fraction_high_snr}"
            )
    return reasons


def score(
    sim_folder: Path | str,
    phy_folder: Path | str,
    *,
    out_dir: Path | str | None = None,
    sorter: str = "kilosort4",
    thresholds: Thresholds | None = None,
    sort_seconds: float | None = None,
    figures: bool = True,
) -> Report:
    """Compare ``phy_folder`` with the ground truth in ``sim_folder``.

    Args:
        sim_folder: a folder made by :func:`kilosort_docker.groundtruth.simulate.simulate`.
        phy_folder: the sorter's phy output.
        out_dir: where ``report.json`` and the figures go (default: ``phy_folder``).
        sorter: name used in the report.
        thresholds: limits for the verdict; None gives ``passed=None``.
        sort_seconds: the sort's wall-clock time, for the real-time multiple.
        figures: write the PNG figures.

    Ground-truth units with no spike in the recording are left out (``units_without_spikes``).

    Raises:
        UserError: see :func:`read_phy` and
            :func:`kilosort_docker.groundtruth.simulate.load_ground_truth`; or no ground-truth
            unit fires in the recording.
    """
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    from kilosort_docker.groundtruth.simulate import load_ground_truth

    sim_folder, phy_folder = Path(sim_folder), Path(phy_folder)
    gt = load_ground_truth(sim_folder)
    counts = gt.count_num_spikes_per_unit()
    silent = sorted(int(u) for u, n in counts.items() if n == 0)
    if len(silent) == len(counts):
        raise UserError(f"no ground-truth unit fires in {sim_folder}: simulate a longer recording")
    if silent:
        gt = gt.select_units([u for u in gt.unit_ids if counts[u] > 0])
    manifest = json.loads((sim_folder / "manifest.json").read_text())
    tested, ks_labels = read_phy(phy_folder, fs=gt.sampling_frequency)
    out = Path(out_dir) if out_dir is not None else phy_folder
    out.mkdir(parents=True, exist_ok=True)

    cmp = compare_sorter_to_ground_truth(
        gt, tested, exhaustive_gt=True, well_detected_score=WELL_DETECTED
    )
    perf = cmp.get_performance(method="by_unit")
    best = cmp.best_match_12
    gt_units = json.loads((sim_folder / "gt_units.json").read_text())
    merged = merge_scores(cmp, gt, tested)
    units = []
    for info in gt_units:
        uid = info["unit"]
        if uid in silent:
            continue
        row = perf.loc[uid]
        match = best.loc[uid]
        units.append(
            {
                "unit": int(uid),
                "snr": float(info["snr"]),
                "peak_uv": float(info["peak_uv"]),
                "z_um": info.get("z_um"),
                "firing_rate_hz": float(info["firing_rate_hz"]),
                "accuracy": float(row["accuracy"]),
                "recall": float(row["recall"]),
                "precision": float(row["precision"]),
                "match": None if match == -1 else int(match),
                **merged[uid],
            }
        )
        # a merge is made only when it helps: the single cluster is one of the choices
        if units[-1]["merged_accuracy"] < units[-1]["accuracy"]:
            units[-1].update(
                merged_accuracy=units[-1]["accuracy"],
                merged_recall=units[-1]["recall"],
                merged_precision=units[-1]["precision"],
            )
    acc = np.array([u["accuracy"] for u in units])
    macc = np.array([u["merged_accuracy"] for u in units])
    snr = np.array([u["snr"] for u in units])
    hi = snr >= HIGH_SNR
    duration = float(manifest["params"]["duration_s"])
    sort_info: dict[str, Any] = {}
    if sort_seconds:
        sort_info = {"seconds": float(sort_seconds), "x_real_time": duration / float(sort_seconds)}
    numbers = {
        "n_gt_units": len(units),
        "n_well_detected": int((acc >= WELL_DETECTED).sum()),
        "n_high_snr": int(hi.sum()),
        "n_well_detected_high_snr": int((acc[hi] >= WELL_DETECTED).sum()),
        "median_accuracy": float(np.median(acc)) if acc.size else 0.0,
        "n_well_detected_merged": int((macc >= WELL_DETECTED).sum()),
        "n_well_detected_high_snr_merged": int((macc[hi] >= WELL_DETECTED).sum()),
        "median_merged_accuracy": float(np.median(macc)) if macc.size else 0.0,
        "n_units_split": sum(1 for u in units if u["n_split"] >= 2),
    }
    drift_estimate = None
    estimate = merges.kilosort4_drift(phy_folder)
    if estimate is not None and (sim_folder / "gt_drift.npy").is_file():
        drift_estimate = merges.drift_agreement(estimate, np.load(sim_folder / "gt_drift.npy"))
    reasons = verdict(numbers, thresholds) if thresholds else []
    fig_names: list[str] = []
    if figures:
        fig_names = write_figures(sim_folder, out, units, sorter=sorter, drift_estimate=estimate)
    report = Report(
        sorter=sorter,
        n_clusters=int(len(tested.unit_ids)),
        n_good_clusters=sum(1 for v in ks_labels.values() if v == "good"),
        n_false_positive_units=int(cmp.count_false_positive_units()),
        n_redundant_units=int(cmp.count_redundant_units()),
        n_overmerged_units=int(cmp.count_overmerged_units()),
        units=units,
        simulation=manifest,
        sort=sort_info,
        thresholds=dataclasses.asdict(thresholds) if thresholds else None,
        passed=(not reasons) if thresholds else None,
        reasons=reasons,
        figures=fig_names,
        units_without_spikes=silent,
        merge_rule=merges.MERGE_RULE,
        snr_bands=merges.snr_band_table(units),
        drift_estimate=drift_estimate,
        **numbers,
    )
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
    log.info("%s", report.summary())
    return report


def merge_scores(cmp, gt, tested) -> dict[int, dict[str, Any]]:
    """Per ground-truth unit id: merged accuracy, recall, precision, ``n_split`` and
    ``merged_clusters`` (:mod:`kilosort_docker.groundtruth.merges`), from a spikeinterface
    ground-truth comparison ``cmp`` of ``gt`` against ``tested``."""
    counts = cmp.match_event_count  # DataFrame: gt units x sorted units
    cluster_ids = list(counts.columns)
    n_spikes = np.array([cmp.event_counts2[c] for c in cluster_ids], dtype=float)
    sets = merges.merge_sets(counts.to_numpy(), n_spikes)
    delta = int(cmp.delta_frames)
    out = {}
    for uid, ks in zip(counts.index, sets, strict=True):
        clusters = [cluster_ids[k] for k in ks]
        union = merges.union_accuracy(
            gt.get_unit_spike_train(uid),
            [tested.get_unit_spike_train(c) for c in clusters],
            delta=delta,
        )
        out[int(uid)] = {
            "merged_accuracy": union["accuracy"],
            "merged_recall": union["recall"],
            "merged_precision": union["precision"],
            "n_split": len(clusters),
            "merged_clusters": [int(c) for c in clusters],
        }
    return out


# --------------------------------------------------------------------------- figures


def write_figures(
    sim_folder: Path,
    out: Path,
    units: list[dict[str, Any]],
    *,
    sorter: str,
    drift_estimate: Mapping[str, np.ndarray] | None = None,
) -> list[str]:
    """Write :data:`FIGURES` into ``out``: accuracy per unit (sorted), accuracy against SNR,
    the simulated drift with the sorter's own estimate over it (``drift_estimate``, from
    :func:`~kilosort_docker.groundtruth.merges.kilosort4_drift`), and accuracy against SNR
    before and after merges with each unit's cluster count. Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = np.array([u["accuracy"] for u in units])
    rec = np.array([u["recall"] for u in units])
    prec = np.array([u["precision"] for u in units])
    snr = np.array([u["snr"] for u in units])
    n_well = int((acc >= WELL_DETECTED).sum())

    fig, ax = plt.subplots(figsize=(7, 4))
    order = np.argsort(acc)[::-1]
    ax.plot(np.arange(1, acc.size + 1), acc[order], "o-", ms=3, label="accuracy")
    ax.plot(np.arange(1, acc.size + 1), rec[order], ".", ms=3, alpha=0.6, label="recall")
    ax.plot(np.arange(1, acc.size + 1), prec[order], ".", ms=3, alpha=0.6, label="precision")
    ax.axhline(WELL_DETECTED, color="k", ls="--", lw=0.8)
    ax.set(xlabel="ground-truth unit (sorted by accuracy)", ylabel="score", ylim=SCORE_LIMITS)
    ax.set_title(f"{sorter}: {n_well}/{acc.size} units at accuracy >= {WELL_DETECTED}")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out / FIGURES[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(snr, acc, s=12, c=np.where(acc >= WELL_DETECTED, "tab:green", "tab:red"))
    ax.axhline(WELL_DETECTED, color="k", ls="--", lw=0.8)
    ax.axvline(HIGH_SNR, color="grey", ls=":", lw=0.8)
    ax.set(xlabel="SNR (template peak / noise)", ylabel="accuracy", ylim=SCORE_LIMITS)
    ax.set_title(f"{sorter}: accuracy against SNR")
    if snr.size and snr.min() > 0:
        ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(out / FIGURES[1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3))
    drift_file = sim_folder / "gt_drift.npy"
    truth = np.load(drift_file) if drift_file.is_file() else None
    if truth is not None:
        ax.plot(truth[:, 0], truth[:, 1], lw=1.5, label="simulated")
    if drift_estimate is not None:
        est = -np.asarray(drift_estimate["dshift"])  # sign: see merges.kilosort4_drift
        t = np.asarray(drift_estimate["t"])
        if truth is not None:  # Kilosort's zero is its own reference: match the means
            est = est - est.mean() + np.interp(t, truth[:, 0], truth[:, 1]).mean()
        ax.plot(t, est, ".-", ms=3, lw=0.8, label=f"{sorter} estimate (-dshift)")
        ax.legend(loc="upper right", fontsize=8)
    ax.set(xlabel="time (s)", ylabel="displacement (um)", title="probe drift (vertical)")
    fig.tight_layout()
    fig.savefig(out / FIGURES[2], dpi=120)
    plt.close(fig)

    merged = np.array([u.get("merged_accuracy", u["accuracy"]) for u in units])
    n_split = np.array([u.get("n_split", 0) for u in units])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for a, b, x in zip(acc, merged, snr, strict=True):
        if b > a:
            ax.plot([x, x], [a, b], color="grey", lw=0.6, zorder=1)
    ax.scatter(
        snr, acc, s=14, facecolors="none", edgecolors="tab:blue", label="best single cluster"
    )
    sc = ax.scatter(
        snr,
        merged,
        s=14,
        c=np.clip(n_split, 0, 6),
        cmap="viridis",
        vmin=0,
        vmax=6,
        label="after merges",
        zorder=2,
    )
    fig.colorbar(sc, ax=ax, label="clusters merged into the unit (6 = 6+)")
    ax.axhline(WELL_DETECTED, color="k", ls="--", lw=0.8)
    ax.set(xlabel="SNR (template peak / noise)", ylabel="accuracy", ylim=SCORE_LIMITS)
    n_merged = int((merged >= WELL_DETECTED).sum())
    ax.set_title(
        f"{sorter}: well detected {n_well} -> {n_merged} of {acc.size} after merges; "
        f"{int((n_split >= 2).sum())} units split",
        fontsize=9,
    )
    if snr.size and snr.min() > 0:
        ax.set_xscale("log")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / FIGURES[3], dpi=120)
    plt.close(fig)
    return list(FIGURES)

"""Merge-aware scores: how much of a ground-truth unit the sorter found once its split
clusters are merged, and how many clusters it was split into.

The merge rule (:func:`merge_sets`): a sorted cluster is merged into ground-truth unit ``u``
when at least :data:`MERGE_PURITY` (80 %) of the cluster's spikes match a spike of ``u``
(within the comparison's window, 0.4 ms, spikeinterface's ``delta_time``): the cluster is
mostly ``u``'s, judged on all its spikes. With 80 % > 50 %, a cluster is merged into one unit
at most. The fraction is taken over all the cluster's spikes, not over its spikes matched to
any unit: at the H200 size (200 units at 2-8 Hz) chance coincidences within 0.4 ms match a
cluster's spikes to about 0.8 other ground-truth spikes each (measured: matched counts summed
over units are 1.8 times the cluster's size), so "matched spikes" would be mostly chance.

The merged accuracy (:func:`union_accuracy`) is ``tp / (n_gt + n_merged - tp)`` for the union
of the merged clusters' spikes, ``tp`` being the ground-truth spikes with a merged spike within
the window; a duplicate (two merged clusters firing on one event) counts as a false positive,
as it would after a merge in phy. A unit's score after merges is the larger of that and its
best single-cluster accuracy: a merge that would lower the score is not made.

Also here: the table by SNR band (:func:`snr_band_table`) and Kilosort 4's own drift estimate
(:func:`kilosort4_drift`, :func:`drift_agreement`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: A cluster is merged into a unit when at least this fraction of its spikes match the unit's.
MERGE_PURITY = 0.8
#: The rule, in words, for report.json and the printed summary.
MERGE_RULE = (
    f"a cluster is merged into a ground-truth unit when >= {MERGE_PURITY:.0%} of the cluster's "
    "spikes match that unit's spikes (within 0.4 ms); a unit's merged accuracy is that of the "
    "union of its clusters' spikes, kept only if it beats the best single cluster"
)
#: SNR band edges of the table (template peak / noise); the last band is open.
SNR_BANDS = (0.0, 5.0, 10.0, 15.0, 25.0)
WELL_DETECTED = 0.8


def merge_sets(
    match_counts: np.ndarray,
    cluster_counts: np.ndarray,
    *,
    purity: float = MERGE_PURITY,
) -> list[list[int]]:
    """Which clusters merge into which unit.

    Args:
        match_counts: ``(n_units, n_clusters)`` matched spike counts (ground-truth unit ``u``
            against cluster ``k``), e.g. spikeinterface's ``match_event_count``.
        cluster_counts: ``(n_clusters,)`` spikes in each cluster.
        purity: least fraction of a cluster's spikes that must match the unit's.

    Returns:
        For each unit, the column indices of its clusters (ascending; empty when none).
    """
    m = np.asarray(match_counts, dtype=float)
    n = np.asarray(cluster_counts, dtype=float)
    if m.ndim != 2 or n.shape != (m.shape[1],):
        raise ValueError(f"match_counts {m.shape} and cluster_counts {n.shape} do not agree")
    sets: list[list[int]] = [[] for _ in range(m.shape[0])]
    if not m.size:
        return sets
    owner = m.argmax(axis=0)
    for k in range(m.shape[1]):
        u = int(owner[k])
        if n[k] > 0 and m[u, k] > 0 and m[u, k] >= purity * n[k]:
            sets[u].append(k)
    return sets


def union_accuracy(
    gt_times: np.ndarray, cluster_times: Sequence[np.ndarray], *, delta: int
) -> dict[str, float]:
    """Accuracy, recall and precision of the union of ``cluster_times`` against ``gt_times``.

    Args:
        gt_times: the unit's spike times in samples.
        cluster_times: the merged clusters' spike times in samples.
        delta: match window in samples (``|t_sorted - t_gt| <= delta``).

    Returns:
        ``{"accuracy", "recall", "precision", "tp", "n_gt", "n_sorted"}``; a ground-truth
        spike counts once however many merged spikes lie near it (refractory periods longer
        than ``2 * delta`` make this one-to-one for a real unit).
    """
    g = np.sort(np.asarray(gt_times, dtype=np.int64))
    parts = [np.asarray(t, dtype=np.int64) for t in cluster_times]
    s = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    tp = 0
    if g.size and s.size:
        idx = np.searchsorted(s, g - delta, side="left")
        ok = idx < s.size
        tp = int((s[np.minimum(idx, s.size - 1)][ok] <= g[ok] + delta).sum())
    n_gt, n_s = int(g.size), int(s.size)
    denom = n_gt + n_s - tp
    return {
        "accuracy": tp / denom if denom else 0.0,
        "recall": tp / n_gt if n_gt else 0.0,
        "precision": tp / n_s if n_s else 0.0,
        "tp": tp,
        "n_gt": n_gt,
        "n_sorted": n_s,
    }


def band_name(low: float, high: float | None) -> str:
    """``"5-10"`` or ``">=25"``."""
    return f">={low:g}" if high is None else f"{low:g}-{high:g}"


def snr_band_table(
    units: Sequence[Mapping[str, Any]], *, edges: Sequence[float] = SNR_BANDS
) -> list[dict[str, Any]]:
    """Rows by SNR band: units, well detected before and after merges, median accuracies,
    units split into two or more clusters and the mean clusters per unit.

    ``units`` are report rows with ``snr``, ``accuracy``, ``merged_accuracy`` and ``n_split``.
    """
    rows = []
    bounds = [*edges[1:], None]
    for low, high in zip(edges, bounds, strict=True):
        sel = [u for u in units if u["snr"] >= low and (high is None or u["snr"] < high)]
        acc = np.array([u["accuracy"] for u in sel], dtype=float)
        merged = np.array([u["merged_accuracy"] for u in sel], dtype=float)
        splits = np.array([u["n_split"] for u in sel], dtype=float)
        rows.append(
            {
                "snr_band": band_name(low, high),
                "n_units": len(sel),
                "n_well_detected": int((acc >= WELL_DETECTED).sum()),
                "n_well_detected_merged": int((merged >= WELL_DETECTED).sum()),
                "median_accuracy": float(np.median(acc)) if acc.size else None,
                "median_merged_accuracy": float(np.median(merged)) if merged.size else None,
                "n_units_split": int((splits >= 2).sum()),
                "mean_clusters_per_unit": float(splits.mean()) if splits.size else None,
            }
        )
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """:func:`snr_band_table` as fixed-width text for the console."""
    head = (
        f"{'SNR':>7} {'units':>5} {'well':>5} {'merged':>6} {'median':>7} {'merged':>7} "
        f"{'split':>5} {'clu/unit':>8}"
    )
    lines = [head]
    for r in rows:
        med = "-" if r["median_accuracy"] is None else f"{r['median_accuracy']:.3f}"
        medm = "-" if r["median_merged_accuracy"] is None else f"{r['median_merged_accuracy']:.3f}"
        cpu = "-" if r["mean_clusters_per_unit"] is None else f"{r['mean_clusters_per_unit']:.2f}"
        lines.append(
            f"{r['snr_band']:>7} {r['n_units']:>5} {r['n_well_detected']:>5} "
            f"{r['n_well_detected_merged']:>6} {med:>7} {medm:>7} {r['n_units_split']:>5} {cpu:>8}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- drift estimate


def kilosort4_drift(phy_folder: Path | str) -> dict[str, np.ndarray] | None:
    """Kilosort 4's own drift estimate from ``phy_folder/ops.npy``, or None when absent.

    Kilosort 4.1.7 kilosort/datashift.py ``run`` stores ``ops['dshift']``, shape
    ``(n_batches, nblocks)``, in micrometres (``imin * binning_depth``), one row per batch of
    ``settings['batch_size']`` samples; kilosort/io.py ``save_ops`` writes ``ops.npy`` (a
    pickled dict) at the end of the sort; kilosort/plots.py ``plot_drift_amount`` puts batch
    ``i`` at ``tmin + i * batch_size / fs``. Here each batch is placed at its centre,
    ``tmin + (i + 0.5) * batch_size / fs``. Kilosort subtracts the shift from the channel
    positions (kilosort/preprocessing.py ``get_drift_matrix``: ``yp[:, 1] -= shifts``), so
    ``dshift`` has the opposite sign of the probe-relative displacement of the units.

    ``ops.npy`` is loaded with ``allow_pickle=True``: read only sorter output you made.

    Returns:
        ``{"t": (n_batches,) seconds, "dshift": (n_batches,) um, mean over blocks}``.
    """
    path = Path(phy_folder) / "ops.npy"
    if not path.is_file():
        return None
    try:
        ops = np.load(path, allow_pickle=True).item()
    except (ValueError, OSError, AttributeError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    dshift = ops.get("dshift")
    if dshift is None:  # nblocks = 0: no drift correction
        return None
    dshift = np.asarray(dshift, dtype=float)
    if dshift.ndim == 2:
        dshift = dshift.mean(axis=1)
    settings = ops.get("settings", {})
    fs = float(settings.get("fs", ops.get("fs", 30000.0)))
    batch = float(settings.get("batch_size", ops.get("batch_size", 60000)))
    tmin = float(settings.get("tmin", 0.0) or 0.0)
    t = tmin + (np.arange(dshift.size) + 0.5) * batch / fs
    return {"t": t, "dshift": dshift}


def drift_agreement(
    estimate: Mapping[str, np.ndarray], truth: np.ndarray, *, sign: float = -1.0
) -> dict[str, Any]:
    """How well ``sign * dshift`` follows the simulated displacement.

    Args:
        estimate: from :func:`kilosort4_drift`.
        truth: ``(n, 2)`` time (s) and displacement (um), the simulation's ``gt_drift.npy``.
        sign: applied to ``dshift`` (-1: see :func:`kilosort4_drift`).

    Returns:
        ``correlation`` (None for a constant trace), ``slope`` of the estimate on the truth
        (None likewise), ``offset_um`` (mean estimate minus mean truth: Kilosort's zero is its
        own reference, not the simulation's), ``residual_rms_um`` after removing that offset,
        ``n_batches``, ``sign``.
    """
    t, d = np.asarray(estimate["t"]), sign * np.asarray(estimate["dshift"])
    truth = np.asarray(truth, dtype=float)
    true_at = np.interp(t, truth[:, 0], truth[:, 1])
    offset = float(d.mean() - true_at.mean())
    resid = d - offset - true_at
    corr = slope = None
    if d.std() > 0 and true_at.std() > 0:
        corr = float(np.corrcoef(d, true_at)[0, 1])
        slope = float(np.polyfit(true_at, d, 1)[0])
    return {
        "source": "ops.npy dshift (Kilosort 4)",
        "sign": sign,
        "n_batches": int(d.size),
        "correlation": corr,
        "slope": slope,
        "offset_um": offset,
        "residual_rms_um": float(np.sqrt(np.mean(resid**2))),
    }

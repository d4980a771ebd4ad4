"""What a finished sort found, read from its phy folder, and the one-screen summary (rich).

Read from the files every Kilosort writes (Kilosort 4.1.7 ``kilosort/io.py`` ``save_to_phy``;
Kilosort v3.0.2 ``utils/rezToPhy2.m``): ``spike_times.npy`` (one entry per spike),
``spike_clusters.npy`` (the cluster of each spike; ``spike_templates.npy`` when absent) and
``cluster_KSLabel.tsv`` (``cluster_id``, ``KSLabel`` ``good`` or ``mua``).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SortSummary:
    """The headline numbers of one sort.

    Attributes:
        units: clusters with at least one spike.
        good_units: those of them Kilosort labels ``good`` (``cluster_KSLabel.tsv``).
        spikes: spikes found.
        seconds: the sort's wall-clock time in seconds.
        recording_seconds: the recording's duration in seconds.
        gpu: the GPU's name, or None for a CPU sort.
        device: ``cuda`` or ``cpu``.
    """

    units: int
    good_units: int
    spikes: int
    seconds: float
    recording_seconds: float
    gpu: str | None = None
    device: str | None = None

    @property
    def x_real_time(self) -> float | None:
        """Recording seconds sorted per second of sorting (> 1: faster than real time)."""
        return self.recording_seconds / self.seconds if self.seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"x_real_time": self.x_real_time}


def good_clusters(folder: Path) -> set[int] | None:
    """Cluster ids labelled ``good`` in ``cluster_KSLabel.tsv``; None without the file."""
    path = folder / "cluster_KSLabel.tsv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = csv.DictReader(f, delimiter="\t")
        return {
            int(float(r["cluster_id"])) for r in rows if (r.get("KSLabel") or "").strip() == "good"
        }


def summarize(
    folder: Path,
    *,
    seconds: float,
    recording_seconds: float,
    gpu: str | None = None,
    device: str | None = None,
) -> SortSummary:
    """The numbers of the phy folder ``folder`` (see the module docstring).

    Raises:
        FileNotFoundError: the folder holds no ``spike_times.npy``.
    """
    import numpy as np

    times = np.load(folder / "spike_times.npy", mmap_mode="r")
    clusters_file = folder / "spike_clusters.npy"
    if not clusters_file.is_file():
        clusters_file = folder / "spike_templates.npy"
    clusters = np.load(clusters_file).ravel() if clusters_file.is_file() else np.zeros(0, int)
    found = {int(c) for c in np.unique(clusters)}
    good = good_clusters(folder) or set()
    return SortSummary(
        units=len(found),
        good_units=len(found & good),
        spikes=int(times.shape[0]),
        seconds=float(seconds),
        recording_seconds=float(recording_seconds),
        gpu=gpu,
        device=device,
    )


def summary_table(summary: SortSummary, *, title: str, out: Path):
    """The one-screen summary as a rich table."""
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    x_rt = summary.x_real_time
    rows = [
        ("units found", str(summary.units)),
        ("good units (KSLabel good)", str(summary.good_units)),
        ("spikes", f"{summary.spikes:,}"),
        ("time", f"{summary.seconds:.1f} s for {summary.recording_seconds:.1f} s of recording"),
        ("times real time", f"{x_rt:.2f}" if x_rt is not None else "-"),
        ("GPU", summary.gpu or f"none ({summary.device or 'cpu'})"),
        ("phy folder", str(out)),
    ]
    for what, value in rows:
        table.add_row(what, value)
    return table

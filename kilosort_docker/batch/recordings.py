"""The list of recordings of a batch: TOML or CSV, one row per recording.

TOML (read with tomlkit, a dependency that also reads TOML on Python 3.10)::

    [defaults]                 # optional: any column below except path and out
    probe = "probes/np1-16.json"
    sorter = "kilosort4"

    [[recording]]
    path = "raw/session1.bin"
    out = "sorted/session1"
    channels = 16              # optional
    sampling_rate = 30000      # optional, Hz
    settings = "ks4.json"      # optional

CSV (read with :mod:`csv`): a header naming the columns, e.g.
``path,probe,out,settings,channels,sampling_rate``; empty cells mean "not given".

Columns: ``path`` (the recording, required), ``probe`` (required, per row or in defaults),
``out`` (output folder, required), ``sorter``, ``image``, ``settings``, ``channels``,
``sampling_rate``. Relative paths are relative to the list's folder. Errors are one line
naming the list, the row (1-based) and the fix (:class:`~kilosort_docker.errors.UserError`).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from kilosort_docker.errors import UserError

log = logging.getLogger(__name__)

REQUIRED = ("path", "probe", "out")
OPTIONAL = ("sorter", "image", "settings", "channels", "sampling_rate")
COLUMNS = REQUIRED + OPTIONAL
PATH_COLUMNS = ("path", "probe", "out", "settings")


@dataclass(frozen=True)
class Row:
    """One recording of the list.

    Attributes:
        index: 0-based position in the list (the SLURM array task id).
        recording: the recording's binary (absolute path).
        probe: the probe file (absolute path).
        out: the output folder (absolute path).
        sorter: ``kilosort4`` or ``kilosort3`` (None: the sorting package's default).
        image: image reference (None: the sorter's default image).
        settings: settings file (absolute path) or None.
        channels: number of channels in the binary, or None.
        sampling_rate: sampling rate in Hz, or None.
    """

    index: int
    recording: Path
    probe: Path
    out: Path
    sorter: str | None = None
    image: str | None = None
    settings: Path | None = None
    channels: int | None = None
    sampling_rate: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "recording": str(self.recording),
            "probe": str(self.probe),
            "out": str(self.out),
            "sorter": self.sorter,
            "image": self.image,
            "settings": str(self.settings) if self.settings else None,
            "channels": self.channels,
            "sampling_rate": self.sampling_rate,
        }


def _where(source: Path, number: int) -> str:
    return f"{source.name} row {number}"


def _row(source: Path, index: int, fields: dict[str, Any], defaults: dict[str, Any]) -> Row:
    where = _where(source, index + 1)
    merged = {k: v for k, v in defaults.items() if v not in (None, "")}
    merged.update({k: v for k, v in fields.items() if v not in (None, "")})
    unknown = sorted(set(merged) - set(COLUMNS))
    if unknown:
        raise UserError(f"{where}: unknown column {', '.join(unknown)}: use {', '.join(COLUMNS)}")
    absent = [c for c in REQUIRED if c not in merged]
    if absent:
        raise UserError(f"{where}: no {', '.join(absent)}: give it in the row or in [defaults]")
    values: dict[str, Any] = {}
    for column in PATH_COLUMNS:
        if column in merged:
            path = Path(str(merged[column])).expanduser()
            values[column] = path if path.is_absolute() else (source.parent / path).resolve()
    for column, kind in (("channels", int), ("sampling_rate", float)):
        if column in merged:
            raw = merged[column]
            try:
                if isinstance(raw, bool) or (kind is int and isinstance(raw, float)):
                    raise ValueError(raw)
                number = kind(raw)
                if not math.isfinite(number):
                    raise ValueError(raw)
            except (TypeError, ValueError, OverflowError):
                what = "a whole number" if kind is int else "a finite number"
                raise UserError(f"{where}: {column} {raw!r} is not {what}: fix the list") from None
            if number <= 0:
                raise UserError(f"{where}: {column} must be positive, not {number}: fix the list")
            values[column] = number
    for column in PATH_COLUMNS:
        text = str(merged.get(column, ""))
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
            raise UserError(
                f"{where}: {column} {text!r} holds a control character (a newline?): rename the "
                "file or fix the list"
            )
    return Row(
        index=index,
        recording=values["path"],
        probe=values["probe"],
        out=values["out"],
        sorter=str(merged["sorter"]) if "sorter" in merged else None,
        image=str(merged["image"]) if "image" in merged else None,
        settings=values.get("settings"),
        channels=values.get("channels"),
        sampling_rate=values.get("sampling_rate"),
    )


def _read_toml(source: Path) -> tuple[list[dict], dict]:
    try:
        data = tomlkit.parse(source.read_text()).unwrap()
    except tomlkit.exceptions.ParseError as exc:
        raise UserError(f"{source}: not valid TOML ({exc}): fix the list") from None
    unknown = sorted(set(data) - {"defaults", "recording"})
    if unknown:
        raise UserError(
            f"{source}: unknown table {', '.join(unknown)}: use [defaults] and [[recording]]"
        )
    rows = data.get("recording", [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{source}: recordings must be [[recording]] tables: fix the list")
    return rows, dict(data.get("defaults", {}))


def _read_csv(source: Path) -> tuple[list[dict], dict]:
    # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark, not part of a name
    with source.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            return [], {}
        header = [name.strip() for name in reader.fieldnames]
        unknown = sorted(set(header) - set(COLUMNS))
        if unknown:
            raise UserError(
                f"{source}: unknown column {', '.join(unknown)}: use {', '.join(COLUMNS)}"
            )
        rows = []
        for raw in reader:
            if None in raw:
                raise UserError(
                    f"{_where(source, reader.line_num - 1)}: more cells than columns: fix the list"
                )
            rows.append({k.strip(): (v or "").strip() for k, v in raw.items()})
    return rows, {}


def read_list(source: str | Path) -> list[Row]:
    """Read a TOML (``.toml``) or CSV (``.csv``) list of recordings.

    Checks the list itself: every row has path, probe and out; numbers are numbers; every
    recording exists; no two rows share an output folder. Raises UserError (one line) otherwise.
    The sorting package's own checks (:func:`kilosort_docker.sorting.runner.validate`) are run
    by :mod:`.submit`.
    """
    source = Path(source).expanduser().resolve()
    if not source.is_file():
        raise UserError(f"list {source} does not exist: give a TOML or CSV list of recordings")
    if source.suffix == ".toml":
        raw_rows, defaults = _read_toml(source)
    elif source.suffix == ".csv":
        raw_rows, defaults = _read_csv(source)
    else:
        raise UserError(f"list {source}: unknown format {source.suffix!r}: use .toml or .csv")
    if not raw_rows:
        raise UserError(f"list {source} has no recordings: add at least one row")
    rows = [_row(source, i, fields, defaults) for i, fields in enumerate(raw_rows)]
    seen: dict[Path, Row] = {}
    for row in rows:
        if not row.recording.is_file():
            raise UserError(
                f"{_where(source, row.index + 1)}: recording {row.recording} does not exist: "
                "fix its path in the list"
            )
        if row.out in seen:
            raise UserError(
                f"{source.name} rows {seen[row.out].index + 1} and {row.index + 1} both write to "
                f"{row.out}: give each recording its own output folder"
            )
        for other in seen.values():
            if row.out.is_relative_to(other.out) or other.out.is_relative_to(row.out):
                first, second = sorted((other, row), key=lambda r: r.index)
                raise UserError(
                    f"{source.name} rows {first.index + 1} and {second.index + 1}: {second.out} "
                    f"and {first.out} are nested (an --overwrite of one would reach into the "
                    "other): give each recording a folder of its own, side by side"
                )
        seen[row.out] = row
    log.debug("read %d recordings from %s", len(rows), source)
    return rows

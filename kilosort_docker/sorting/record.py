"""The sort record (``OUT/sort-record.json``) and the completion marker
(``OUT/sort-complete.json``).

The record is written whenever a sort was attempted (first when it starts, again when it
ends), so a failed sort says what failed. The marker is written on success only, last of
all, and holds the sha256 of the record: a folder is a *finished* sort exactly when the
marker exists and matches the record. Both are replaced atomically (write, then rename).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kilosort_docker.errors import UserError

log = logging.getLogger(__name__)

RECORD_NAME = "sort-record.json"
MARKER_NAME = "sort-complete.json"
SCHEMA = 1
#: Files whose presence means a folder holds a sort (finished or not): ours, and the phy
#: files every Kilosort writes (Kilosort 4.1.7 ``kilosort/io.py`` ``save_to_phy``; Kilosort
#: v3.0.2 ``utils/rezToPhy2.m``).
SORT_FILES = (RECORD_NAME, MARKER_NAME, "spike_times.npy", "params.py")


def now() -> str:
    """The current UTC time, ISO 8601 with seconds (``2026-11-30T04:12:00Z``)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def host_name() -> str:
    return socket.gethostname()


def _write_json(path: Path, data: Mapping[str, Any]) -> str:
    """Write ``data`` to ``path`` atomically; returns the sha256 of the bytes written."""
    blob = (json.dumps(data, indent=1, sort_keys=False) + "\n").encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(blob).hexdigest()


def write_record(out: Path, record: Mapping[str, Any]) -> str:
    """Write ``out/sort-record.json`` (with ``schema``); returns its sha256."""
    return _write_json(out / RECORD_NAME, {"schema": SCHEMA, **record})


def write_marker(out: Path, record_sha256: str) -> Path:
    """Write the completion marker ``out/sort-complete.json``: the record's sha256 and the
    time. Call it last, after everything else is in place."""
    _write_json(out / MARKER_NAME, {"record_sha256": record_sha256, "completed": now()})
    return out / MARKER_NAME


def read_record(out: Path) -> dict[str, Any] | None:
    """The record in ``out``, or None when there is none or it is not JSON."""
    try:
        return json.loads((out / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None


def is_finished(out: Path | str) -> bool:
    """True when ``out`` holds a finished sort: the marker exists and names the sha256 of
    the record beside it."""
    out = Path(out)
    try:
        marker = json.loads((out / MARKER_NAME).read_text())
        blob = (out / RECORD_NAME).read_bytes()
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict) and marker.get("record_sha256") == hashlib.sha256(blob).hexdigest()
    )


def holds_sort(out: Path) -> list[str]:
    """The files of :data:`SORT_FILES` that ``out`` holds (empty: no sort there)."""
    return [name for name in SORT_FILES if (out / name).exists()]


def check_output_folder(out: Path, *, overwrite: bool) -> None:
    """Refuse an output folder that cannot take this sort.

    Raises:
        UserError: ``out`` is a file; it already holds a sort and ``overwrite`` is False
            (finished or not, named in the message).
    """
    if out.is_symlink() and not out.exists():
        raise UserError(
            f"--out {out} is a symlink to {os.readlink(out)}, which does not exist: create that "
            "folder first (mkdir -p), or link to an existing one"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder for the sort")
    if not out.is_dir():
        check_creatable(out)
        return
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {out} is not writable by you: pass a folder you can write")
    if overwrite:
        return
    found = holds_sort(out)
    if found:
        state = "a finished sort" if is_finished(out) else "a sort (unfinished or not ours)"
        raise UserError(
            f"{out} already holds {state} ({', '.join(found)}): pass --overwrite to replace it, "
            "or another --out"
        )


def check_creatable(out: Path) -> None:
    """Refuse an output folder that cannot be made: its nearest existing parent must be a
    folder this user can write. Raises UserError naming that parent."""
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {out}: {parent} is a file, not a folder: pass another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(
            f"--out {out} cannot be created: {parent} is not writable by you: pass another --out"
        )


def clear_previous(out: Path) -> list[str]:
    """Before an ``--overwrite`` sort: remove the marker first (the folder is unfinished from
    then on), then the files the previous record lists as its outputs, and the record.
    Nothing else is deleted. Returns the names removed."""
    removed = []
    previous = read_record(out) or {}
    names = [MARKER_NAME, *previous.get("outputs", []), RECORD_NAME]
    for name in dict.fromkeys(names):
        path = out / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            log.warning("the previous record lists %s outside %s; left alone", name, out)
            continue
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(name)
    if removed:
        log.info("removed the previous sort's files: %s", ", ".join(removed))
    return removed


def output_names(out: Path, before: set[str]) -> list[str]:
    """The files under ``out`` (relative names) not in ``before``: what the sort wrote."""
    if not out.is_dir():
        return []
    names = []
    for root, _, files in os.walk(out):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), out)
            if rel not in before:
                names.append(rel)
    return sorted(names)


def existing_names(out: Path) -> set[str]:
    """Every file under ``out`` as a relative name (empty when ``out`` does not exist)."""
    return set(output_names(out, set()))

"""The batch record, ``<batch folder>/batch.json``: what was submitted, so that
``invoke batch-status`` and ``invoke sort-batch --resume`` find the jobs again.

The batch folder is ``<list folder>/<list name>.batch/`` unless ``--folder`` names another. It
holds ``batch.json``, one sbatch script per submission (``job-<id>.sbatch``), the task logs
(``logs/row-<row>.job-<id>.log``) and the tasks' status files (``status/``).

``batch.json``: ``list`` (path), ``options`` (runtime, partition, ...), ``rows`` (each row of
the list, :meth:`Row.to_json`) and ``submissions`` (``job_id``, ``rows`` (indices),
``submitted`` (ISO time), ``script``), oldest first. Written to a temporary file and renamed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kilosort_docker.errors import UserError

log = logging.getLogger(__name__)

RECORD_NAME = "batch.json"
FORMAT = 1


def default_folder(list_path: Path) -> Path:
    """``<list folder>/<list name>.batch``."""
    list_path = Path(list_path).expanduser().resolve()
    return list_path.parent / f"{list_path.stem}.batch"


@dataclass(frozen=True)
class Submission:
    """One ``sbatch`` of the batch: its job id, the rows it ran, when, and its script."""

    job_id: str
    rows: tuple[int, ...]
    submitted: str
    script: str


@dataclass(frozen=True)
class BatchRecord:
    """The record of a batch (see the module's docstring)."""

    folder: Path
    list: str
    options: dict[str, Any]
    rows: tuple[dict[str, Any], ...]
    submissions: tuple[Submission, ...] = ()

    def latest(self, index: int) -> Submission | None:
        """The newest submission that ran row ``index`` (None if none did)."""
        for submission in reversed(self.submissions):
            if index in submission.rows:
                return submission
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "list": self.list,
            "options": self.options,
            "rows": list(self.rows),
            "submissions": [
                dataclasses.asdict(s) | {"rows": list(s.rows)} for s in self.submissions
            ],
        }


def write(record: BatchRecord) -> Path:
    """Write ``batch.json`` atomically; returns its path."""
    record.folder.mkdir(parents=True, exist_ok=True)
    path = record.folder / RECORD_NAME
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record.to_json(), indent=2) + "\n")
    os.replace(temporary, path)
    return path


def read(folder: Path) -> BatchRecord:
    """Read ``folder/batch.json``; UserError if there is none or it cannot be read."""
    path = Path(folder) / RECORD_NAME
    if not path.is_file():
        raise UserError(
            f"no batch record {path}: submit the list first (invoke sort-batch LIST) or give "
            "its --folder"
        )
    try:
        data = json.loads(path.read_text())
        return BatchRecord(
            folder=Path(folder),
            list=data["list"],
            options=data["options"],
            rows=tuple(data["rows"]),
            submissions=tuple(
                Submission(s["job_id"], tuple(s["rows"]), s["submitted"], s["script"])
                for s in data["submissions"]
            ),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"batch record {path} is damaged ({exc}): submit the list again") from None

"""What ``invoke sort-batch``, ``invoke batch-status`` and ``invoke podman-load`` print.

The invoke tasks (tasks.py) are thin: they call these functions, which return the exit status
(0, or 1 when a recording failed) or raise UserError (one line, exit 1).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kilosort_docker.batch import record, status, submit
from kilosort_docker.batch.script import BatchOptions

log = logging.getLogger(__name__)

#: Seconds between two looks at the queue under ``batch-status --wait``.
POLL_S = 5.0


def sort_batch(
    list_path: str,
    options: BatchOptions,
    *,
    folder: str | None = None,
    image: str | None = None,
    resume: bool = False,
    dry_run: bool = False,
) -> int:
    """Submit (or on ``dry_run`` print) the batch; prints the job id and the folder."""
    done = submit.sort_batch(
        list_path, options, folder=folder, image=image, resume=resume, dry_run=dry_run
    )
    if done.skipped:
        print(
            f"left out {len(done.skipped)} finished, pending or running recording(s): rows "
            + ", ".join(str(i + 1) for i in done.skipped)
        )
    if dry_run:
        print(done.script, end="")
        print(f"dry run: would submit {len(done.rows)} recording(s); nothing submitted")
        return 0
    if done.job_id is None:
        print("nothing to submit: every recording is finished, pending or running")
        return 0
    print(f"submitted job {done.job_id}: {len(done.rows)} recording(s); batch folder {done.folder}")
    print(f"follow it with: invoke batch-status {list_path} --wait")
    return 0


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{value:.1f}s"


def describe(row: status.RowStatus) -> str:
    """One line for one recording."""
    name = Path(row.recording).name
    line = f"row {row.index + 1:>3}  {row.state:<8} {_seconds(row.seconds):>7}  {name}"
    if row.job_id:
        line += f"  (job {row.job_id}_{row.index})"
    if row.state == status.FAILED:
        exit_text = "-" if row.exit_status is None else str(row.exit_status)
        line += f": exit status {exit_text}, reason: {row.reason}; log {row.log}"
    elif row.state == status.PENDING and row.reason:
        line += f": {row.reason}"
    return line


def batch_status(
    list_path: str | None = None, *, folder: str | None = None, wait: bool = False
) -> int:
    """Print each recording's state and the total; with ``wait``, a progress line per poll
    until nothing is pending or running. Returns 1 if a recording failed, else 0."""
    if folder is None:
        if list_path is None:
            from kilosort_docker.errors import UserError

            raise UserError("give the list (invoke batch-status LIST) or its --folder")
        folder = str(record.default_folder(Path(list_path)))
    batch = record.read(Path(folder).expanduser().resolve())
    states = status.row_states(batch)
    started = time.monotonic()
    while wait and not status.settled(states):
        print(f"[{_seconds(time.monotonic() - started)}] {status.summary(states)}", flush=True)
        time.sleep(POLL_S)
        states = status.row_states(batch)
    for row in states:
        print(describe(row))
    print(status.summary(states))
    return 1 if any(r.state == status.FAILED for r in states) else 0


def podman_load(ref: str) -> int:
    """Copy ``ref`` from Docker into podman (``docker save | podman load``)."""
    from kilosort_docker.sorting.runtimes import load_from_docker

    image_id = load_from_docker(ref)
    print(f"podman has {ref} ({image_id[:19]})")
    return 0

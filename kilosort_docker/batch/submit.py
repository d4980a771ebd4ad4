"""``invoke sort-batch``: check a list of recordings, write the sbatch script, submit it.

Every check runs before anything is submitted, each failure one line
(:class:`~kilosort_docker.errors.UserError`): the list (:func:`.recordings.read_list`: a
missing recording, two rows with one output folder), each row through the sorting package's
own checks (:func:`kilosort_docker.sorting.runner.validate`), the runtime on PATH, ``sbatch``
on PATH, the partition known to SLURM. ``--resume`` submits only the rows without a completion
marker that are not pending or running; a finished recording is never run again.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kilosort_docker.batch import apptainer, record, slurm, status
from kilosort_docker.batch.recordings import Row, read_list
from kilosort_docker.batch.script import LOG_DIR, STATUS_DIR, BatchOptions, render, sort_argv
from kilosort_docker.errors import UserError

log = logging.getLogger(__name__)

#: What to install for each runtime (Debian package names; Apptainer from apptainer.org).
INSTALL_HINT = {
    "docker": "apt-get install docker.io",
    "podman": "apt-get install podman",
    "apptainer": "see https://apptainer.org/docs/admin/main/installation.html",
}


@dataclass(frozen=True)
class Submitted:
    """The outcome of :func:`sort_batch`.

    Attributes:
        folder: the batch folder (record, scripts, logs).
        script: the sbatch script's text.
        rows: the rows submitted (indices).
        skipped: rows left out by --resume (finished, or still pending/running).
        job_id: SLURM's job id (None on --dry-run or when nothing was left to submit).
    """

    folder: Path
    script: str
    rows: tuple[int, ...]
    skipped: tuple[int, ...]
    job_id: str | None


def check_runtime(runtime: str) -> None:
    """UserError if the runtime's program is not on PATH here."""
    programs = ("apptainer", "singularity") if runtime == "apptainer" else (runtime,)
    if not any(shutil.which(p) for p in programs):
        raise UserError(
            f"runtime {runtime} is not installed ({' or '.join(programs)} not on PATH): "
            f"install it ({INSTALL_HINT[runtime]}) or choose another --runtime"
        )


def sort_request(row: Row, options: BatchOptions):
    """The sorting package's request for one row (``--runtime`` docker or podman)."""
    from kilosort_docker.sorting import runner

    return runner.SortRequest(
        recording=row.recording,
        probe=row.probe,
        out=row.out,
        sorter=row.sorter or "kilosort4",
        image=row.image,
        device="cuda" if options.gpus_per_task else "cpu",
        settings=row.settings,
        channels=row.channels,
        sampling_rate=row.sampling_rate,
        runtime=options.runtime,
    )


def validate_rows(rows: list[Row], options: BatchOptions) -> None:
    """Each row through :func:`kilosort_docker.sorting.runner.validate` (UserError naming the
    row); apptainer rows through :func:`.apptainer.check_row`."""
    if options.runtime == "apptainer":
        for row in rows:
            apptainer.check_row(row, options)
        return
    from kilosort_docker.sorting import runner, runtimes

    images: dict[str, int] = {}
    for row in rows:
        if (row.sorter or "kilosort4") == "kilosort3" and not options.gpus_per_task:
            raise UserError(
                f"row {row.index + 1} ({row.recording.name}): Kilosort 3 sorts on an NVIDIA GPU "
                "only: pass --gpus-per-task 1 (and a GPU --partition)"
            )
        try:
            plan = runner.validate(sort_request(row, options))
        except UserError as exc:
            raise UserError(f"row {row.index + 1} ({row.recording.name}): {exc}") from None
        images.setdefault(plan.image, row.index)
    runtime = runtimes.get_runtime(options.runtime)
    for image, index in images.items():  # every task would fail on a missing image
        try:
            runtime.image(image)
        except UserError as exc:
            raise UserError(f"row {index + 1}: {exc}") from None


def _commands(rows: list[Row], options: BatchOptions) -> dict[int, list[str]]:
    if options.runtime == "apptainer":
        return {r.index: apptainer.task_argv(r, options) for r in rows}
    return {r.index: sort_argv(r, options) for r in rows}


def sort_batch(
    list_path: str | Path,
    options: BatchOptions,
    *,
    folder: str | Path | None = None,
    image: str | None = None,
    resume: bool = False,
    dry_run: bool = False,
) -> Submitted:
    """Check the list and submit one array job for its rows (``--resume``: the unfinished).

    ``image`` is the image of the rows that name none (a SIF file for Apptainer).
    Writes ``<folder>/job-<id>.sbatch`` and the batch record; on ``dry_run`` returns the
    script and writes and submits nothing. Raises UserError (one line) for bad input, before
    anything is submitted.
    """
    list_path = Path(list_path).expanduser().resolve()
    rows = read_list(list_path)
    if image:
        rows = [r if r.image else dataclasses.replace(r, image=image) for r in rows]
    slurm.require("sbatch")
    if options.partition:
        slurm.check_partition(options.partition)
    check_runtime(options.runtime)
    folder = Path(folder).expanduser().resolve() if folder else record.default_folder(list_path)
    previous = None
    if resume:
        previous = record.read(folder)
        old_outs = [r["out"] for r in previous.rows]
        if old_outs != [str(r.out) for r in rows]:
            raise UserError(
                f"{list_path.name} no longer has the rows of the batch in {folder} (output "
                "folders differ): resume with the same list, or submit to a new --folder"
            )
    elif (folder / record.RECORD_NAME).exists():
        raise UserError(
            f"{folder} already holds a batch: use --resume to rerun its unfinished recordings, "
            "or give another --folder"
        )
    skipped: list[int] = []
    todo = rows
    if previous is not None:
        states = {s.index: s for s in status.row_states(previous)}
        todo = [
            r
            for r in rows
            if states[r.index].state not in (status.DONE, status.PENDING, status.RUNNING)
        ]
        skipped = [r.index for r in rows if r not in todo]
    else:
        finished = [r for r in rows if status.is_finished(r.out)]
        if finished:
            raise UserError(
                f"row {finished[0].index + 1}: {finished[0].out} holds a finished sort: "
                "remove that row from the list, or move the folder away"
            )
    validate_rows(todo, options)
    if not todo:
        log.info("nothing to resubmit: every recording is finished, pending or running")
        return Submitted(folder, "", (), tuple(skipped), None)
    indices = [r.index for r in todo]
    script = render(rows, indices, options, folder=folder, commands=_commands(todo, options))
    if dry_run:
        return Submitted(folder, script, tuple(indices), tuple(skipped), None)
    for sub in (LOG_DIR, STATUS_DIR):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    pending = folder / "job-pending.sbatch"
    pending.write_text(script)
    try:
        job_id = slurm.submit(pending)
    except BaseException:
        pending.unlink(missing_ok=True)  # refused: leave no script that looks submitted
        raise
    script_path = folder / f"job-{job_id}.sbatch"
    pending.rename(script_path)
    submission = record.Submission(
        job_id=job_id,
        rows=tuple(indices),
        submitted=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        script=str(script_path),
    )
    base = previous or record.BatchRecord(
        folder=folder,
        list=str(list_path),
        options=dataclasses.asdict(options),
        rows=(),
    )
    record.write(
        dataclasses.replace(
            base,
            rows=tuple(r.to_json() for r in rows),
            options=dataclasses.asdict(options),
            submissions=base.submissions + (submission,),
        )
    )
    log.info("submitted job %s: %d recordings", job_id, len(indices))
    return Submitted(folder, script, tuple(indices), tuple(skipped), job_id)

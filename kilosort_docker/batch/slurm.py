"""The SLURM commands the batch uses: ``sbatch``, ``squeue``, ``scontrol`` (no ``sacct``).

No accounting daemon (``slurmdbd``) is assumed, so ``sacct`` is never asked. What is known of a
task comes from ``squeue`` (pending and running tasks), ``scontrol show job`` (while
``slurmctld`` remembers a finished job: ``MinJobAge``, 300 s by default), and, where the cluster
writes it and this user can read it, the ``jobcomp/filetxt`` file (``JobCompLoc`` in
``scontrol show config``). Field names and states: SLURM 22.05 ``squeue(1)``,
``scontrol(1)`` and ``slurm.conf(5)``.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kilosort_docker.errors import UserError

log = logging.getLogger(__name__)

#: How long a SLURM client call may take before it counts as failed, in seconds.
CLIENT_TIMEOUT_S = 60


@dataclass(frozen=True)
class TaskInfo:
    """What SLURM says of one array task.

    Attributes:
        task: the array task id (the row's index).
        state: SLURM's state, e.g. PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT,
            OUT_OF_MEMORY, NODE_FAIL, CANCELLED.
        reason: SLURM's reason (``None`` when it gives none).
        exit_code: ``ExitCode`` as SLURM gives it, ``status:signal`` (or None).
        start: ``StartTime`` (ISO, or None).
        end: ``EndTime`` (ISO, or None).
        source: ``squeue``, ``scontrol`` or ``jobcomp``.
    """

    task: int
    state: str
    reason: str | None = None
    exit_code: str | None = None
    start: str | None = None
    end: str | None = None
    source: str = "scontrol"


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    program = require(argv[0])
    log.debug("running %s", " ".join(argv))
    try:
        return subprocess.run(
            [program, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise UserError(
            f"{argv[0]} did not answer within {CLIENT_TIMEOUT_S} s: is slurmctld running "
            "(scontrol ping)?"
        ) from None


def require(program: str) -> str:
    """The path of a SLURM client; UserError if it is not on PATH."""
    path = shutil.which(program)
    if path is None:
        raise UserError(
            f"{program} is not on PATH: run this on a SLURM login node, or install SLURM's "
            "clients (apt-get install slurm-client)"
        )
    return path


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def check_partition(name: str) -> None:
    """UserError naming the partitions SLURM has if ``name`` is not one of them."""
    done = _run(["scontrol", "show", "partition", name])
    if done.returncode == 0 and f"PartitionName={name}" in done.stdout:
        return
    listing = _run(["sinfo", "-h", "-o", "%R"])
    if listing.returncode != 0:
        raise UserError(
            f"SLURM could not be asked for its partitions ({_last_line(listing.stderr)}): is "
            "slurmctld running (scontrol ping)?"
        )
    known = sorted(set(listing.stdout.split()))
    raise UserError(
        f"SLURM has no partition {name!r}: use one of {', '.join(known) or '(none)'} "
        "(sinfo lists them)"
    )


def submit(script: Path) -> str:
    """``sbatch --parsable SCRIPT``; returns the job id. UserError with sbatch's last line."""
    done = _run(["sbatch", "--parsable", str(script)])
    if done.returncode != 0:
        raise UserError(f"sbatch refused the job: {_last_line(done.stderr) or 'no message'}")
    job_id = done.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise UserError(f"sbatch gave no job id (it printed {done.stdout.strip()!r})")
    return job_id


def queued(job_id: str) -> dict[int, TaskInfo]:
    """The job's pending and running array tasks (``squeue --array``), by task id."""
    done = _run(["squeue", "-h", "--array", "-j", job_id, "-o", "%K|%T|%r"])
    if done.returncode != 0:
        # squeue fails for a job id slurmctld no longer knows: nothing of it is queued
        if "Invalid job id" in done.stderr:
            return {}
        raise UserError(f"squeue failed: {_last_line(done.stderr)}: is slurmctld running?")
    tasks: dict[int, TaskInfo] = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        reason = None if parts[2] in ("None", "") else parts[2]
        tasks[int(parts[0])] = TaskInfo(int(parts[0]), parts[1], reason, source="squeue")
    return tasks


def _fields(line: str) -> dict[str, str]:
    """``Key=Value`` pairs of one ``scontrol -o``/jobcomp line (values have no spaces, except
    the last ones of scontrol, which the batch does not read)."""
    return dict(m.groups() for m in re.finditer(r"(\w[\w/:]*)=(\S*)", line))


def _info(fields: dict[str, str], source: str) -> TaskInfo | None:
    task = fields.get("ArrayTaskId", "")
    if not task.isdigit():
        return None  # a pending range such as 2-5%2: squeue --array expands those
    reason = fields.get("Reason")
    return TaskInfo(
        task=int(task),
        state=fields.get("JobState", "UNKNOWN"),
        reason=None if reason in (None, "None", "(null)") else reason,
        exit_code=fields.get("ExitCode"),
        start=None if fields.get("StartTime") in (None, "Unknown", "None") else fields["StartTime"],
        end=None if fields.get("EndTime") in (None, "Unknown", "None") else fields["EndTime"],
        source=source,
    )


def remembered(job_id: str) -> dict[int, TaskInfo]:
    """Every array task ``slurmctld`` still remembers (``scontrol -o show job``), by task id;
    empty once it has forgotten the job (``MinJobAge``)."""
    done = _run(["scontrol", "-o", "show", "job", job_id])
    if done.returncode != 0:
        return {}
    tasks = {}
    for line in done.stdout.splitlines():
        info = _info(_fields(line), "scontrol")
        if info is not None:
            tasks[info.task] = info
    return tasks


def jobcomp_file() -> Path | None:
    """The ``jobcomp/filetxt`` file if the cluster writes one and it can be read, else None."""
    done = _run(["scontrol", "show", "config"])
    if done.returncode != 0:
        return None
    config = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    if config.get("JobCompType") != "jobcomp/filetxt":
        return None
    path = Path(config.get("JobCompLoc", ""))
    try:
        path.open().close()
    except OSError:
        return None
    return path


def completed(job_id: str, path: Path | None) -> dict[int, TaskInfo]:
    """The job's finished array tasks from the ``jobcomp/filetxt`` file (empty without one)."""
    if path is None:
        return {}
    tasks = {}
    for line in path.read_text(errors="replace").splitlines():
        fields = _fields(line)
        if fields.get("ArrayJobId") == job_id:
            info = _info(fields, "jobcomp")
            if info is not None:
                tasks[info.task] = info
    return tasks

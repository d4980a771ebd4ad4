"""Per-recording state of a batch: pending, running, done or failed, and why.

A row is **done** when its completion marker (``sort-complete.json``, written last by
``kilosort_docker.sorting``) exists, whatever SLURM says. Otherwise the newest submission that
ran the row decides: **pending** or **running** while ``squeue`` lists its task, else
**failed**. A failure's exit status comes from the task's status file (written by the sbatch
script) or SLURM's ``ExitCode``; its reason from SLURM's state (``TIMEOUT``, ``OUT_OF_MEMORY``,
``NODE_FAIL``, ``CANCELLED``: ``scontrol show job`` while ``slurmctld`` remembers the job, or
the ``jobcomp/filetxt`` file) or from the lines ``slurmstepd`` writes into the task's log
("CANCELLED AT ... DUE TO TIME LIMIT", "oom-kill", "Exceeded job memory limit"), else the
last error line the sort printed.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from kilosort_docker.batch import slurm
from kilosort_docker.batch.record import BatchRecord
from kilosort_docker.batch.script import LOG_DIR, STATUS_DIR, STOPPING, stop_before_s, time_limit_s

log = logging.getLogger(__name__)

#: The sorting package's files in an output folder (contract with kilosort_docker.sorting).
MARKER_NAME = "sort-complete.json"
SORT_RECORD_NAME = "sort-record.json"

PENDING, RUNNING, DONE, FAILED, NOT_SUBMITTED = (
    "pending",
    "running",
    "done",
    "failed",
    "not submitted",
)
#: squeue states (squeue(1) JOB STATE CODES) that mean "not started yet" / "on a node now".
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"}
ON_NODE = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}
#: SLURM end states that are a reason by themselves (squeue(1) JOB STATE CODES).
STATE_REASONS = {
    "TIMEOUT": "time limit",
    "OUT_OF_MEMORY": "out of memory",
    "NODE_FAIL": "node failure",
    "BOOT_FAIL": "node failed to boot",
    "CANCELLED": "cancelled",
    "PREEMPTED": "preempted",
    "DEADLINE": "deadline reached",
}
#: What slurmstepd writes into a task's log (SLURM 22.05 src/slurmd/slurmstepd/req.c and
#: the jobacct_gather plugins), most specific first.
LOG_REASONS = (
    (re.compile(r"DUE TO TIME LIMIT"), "time limit"),
    (re.compile(r"oom-kill|out-of-memory|Exceeded job memory limit", re.I), "out of memory"),
    (re.compile(r"DUE TO NODE FAIL", re.I), "node failure"),
    (re.compile(r"DUE TO PREEMPTION", re.I), "preempted"),
    (re.compile(r"CANCELLED AT"), "cancelled"),
)


@dataclass(frozen=True)
class RowStatus:
    """The state of one recording of a batch.

    Attributes:
        index: the row (0-based; the array task id).
        recording: the recording's path.
        out: its output folder.
        state: pending, running, done, failed or not submitted.
        job_id: the newest job that ran it (None if never submitted).
        exit_status: the task's exit status, if known.
        reason: why it failed (time limit, out of memory, node failure, the sort's error...).
        log: the task's log file (None if never submitted).
        seconds: time taken (running: so far), if known.
    """

    index: int
    recording: str
    out: str
    state: str
    job_id: str | None = None
    exit_status: int | None = None
    reason: str | None = None
    log: Path | None = None
    seconds: float | None = None


def log_path(folder: Path, index: int, job_id: str) -> Path:
    return Path(folder) / LOG_DIR / f"row-{index}.job-{job_id}.log"


def status_path(folder: Path, index: int, job_id: str) -> Path:
    return Path(folder) / STATUS_DIR / f"row-{index}.job-{job_id}.json"


def is_finished(out: str | Path) -> bool:
    """Whether the sort of this output folder finished: its completion marker names the
    sha256 of the record beside it (the sorting package's own test, so `batch-status`, `--resume`
    and `invoke sort` agree)."""
    from kilosort_docker.sorting import record as sort_record

    return sort_record.is_finished(out)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def reason_from_log(path: Path | None) -> str | None:
    """The failure reason slurmstepd or the sort left in a task's log, or None."""
    if path is None or not path.is_file():
        return None
    text = path.read_text(errors="replace")
    for pattern, reason in LOG_REASONS:
        if pattern.search(text):
            return reason
    errors = [line.strip() for line in text.splitlines() if line.strip().startswith("error:")]
    return errors[-1] if errors else None


def _stopped(path: Path, limit: str | None, seconds: float | None) -> str | None:
    """Why the task's script stopped its sort (its log's STOPPING line), or None: near the time
    limit it was SLURM's warning (``--signal=B:INT``), else somebody's ``scancel``."""
    if not path.is_file() or STOPPING not in path.read_text(errors="replace"):
        return None
    if limit and seconds is not None and seconds >= time_limit_s(limit) - stop_before_s(limit) - 60:
        return "time limit"
    return "stopped by a signal (scancel)"


def _exit_status(code: str | None) -> int | None:
    """SLURM's ``ExitCode`` ``status:signal`` -> status (128+signal when killed by one)."""
    if not code or ":" not in code:
        return None
    status, signal = code.split(":", 1)
    if signal.isdigit() and int(signal):
        return 128 + int(signal)
    return int(status) if status.isdigit() else None


def row_states(record: BatchRecord) -> list[RowStatus]:
    """The state of every row of the batch (asks squeue/scontrol once per job)."""
    queues: dict[str, dict[int, slurm.TaskInfo]] = {}
    memory: dict[str, dict[int, slurm.TaskInfo]] = {}
    jobcomp = None
    jobcomp_read = False
    states = []
    for row in record.rows:
        index = row["index"]
        submission = record.latest(index)
        base = {"index": index, "recording": row["recording"], "out": row["out"]}
        if submission is None:
            state = DONE if is_finished(row["out"]) else NOT_SUBMITTED
            states.append(RowStatus(state=state, **base))
            continue
        job = submission.job_id
        task_log = log_path(record.folder, index, job)
        own = _read_json(status_path(record.folder, index, job))
        started, ended = own.get("started"), own.get("ended")
        seconds = (ended - started) if started and ended else None
        common = base | {"job_id": job, "log": task_log}
        if is_finished(row["out"]):
            states.append(RowStatus(state=DONE, seconds=seconds, **common))
            continue
        if job not in queues:
            queues[job] = slurm.queued(job)
        info = queues[job].get(index)
        if info is not None and info.state in QUEUED:
            states.append(RowStatus(state=PENDING, reason=info.reason, **common))
            continue
        if info is not None and info.state in ON_NODE:
            running = time.time() - started if started else None
            states.append(RowStatus(state=RUNNING, seconds=running, **common))
            continue
        if job not in memory:
            memory[job] = slurm.remembered(job)
        info = memory[job].get(index)
        if info is None:
            if not jobcomp_read:
                jobcomp, jobcomp_read = slurm.jobcomp_file(), True
            info = slurm.completed(job, jobcomp).get(index)
        if info is not None and info.state in ON_NODE | QUEUED:
            # squeue and scontrol asked a moment apart: the task is still between the two
            states.append(RowStatus(state=RUNNING, **common))
            continue
        exit_status = own.get("exit_status")
        if exit_status is None and info is not None:
            exit_status = _exit_status(info.exit_code)
        reason = STATE_REASONS.get(info.state.split()[0]) if info is not None else None
        reason = reason or _stopped(task_log, record.options.get("time"), seconds)
        reason = reason or reason_from_log(task_log)
        if reason is None and exit_status is None:
            reason = "no trace of the task: SLURM forgot it and it wrote no status file"
        elif reason is None:
            reason = f"exit status {exit_status}"
        if exit_status == 0 and reason == "exit status 0":
            reason = "exit status 0 but no completion marker"
        states.append(
            RowStatus(
                state=FAILED, exit_status=exit_status, reason=reason, seconds=seconds, **common
            )
        )
    return states


def summary(states: list[RowStatus]) -> str:
    """One line: how many recordings are in each state."""
    counts = {s: sum(1 for r in states if r.state == s) for s in (DONE, FAILED, RUNNING, PENDING)}
    unsent = sum(1 for r in states if r.state == NOT_SUBMITTED)
    line = f"{len(states)} recordings: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    return line + (f", {unsent} not submitted" if unsent else "")


def settled(states: list[RowStatus]) -> bool:
    """Whether no row is pending or running."""
    return not any(r.state in (PENDING, RUNNING) for r in states)

"""The sbatch script of a batch: one array job, one task per recording.

The script is plain bash with ``#SBATCH`` lines (SLURM 22.05 ``sbatch(1)``): ``--array`` lists
the rows to run (``0-3%2`` runs rows 0 to 3, at most 2 at a time; a resume lists only the rows
it reruns), ``--output`` gives each task its own log, ``--gres=gpu:N`` is asked only when GPUs
are. Task ``$SLURM_ARRAY_TASK_ID`` runs its row's ``python -m kilosort_docker.sorting`` command
and writes ``status/row-<row>.job-<job>.json`` (start, end, host, exit status) around it, so a
failure's exit status is known without an accounting database.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kilosort_docker.batch.recordings import Row
from kilosort_docker.errors import UserError

RUNTIMES = ("docker", "podman", "apptainer")
#: sbatch's --time formats (sbatch(1)): minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
TIME_FORMAT = re.compile(
    r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2})$"
)
#: sbatch's --mem: a number with an optional K, M, G or T unit
MEM_FORMAT = re.compile(r"^\d+[KMGT]?$")
LOG_PATTERN = "logs/row-%a.job-%A.log"
#: At most this many seconds before the time limit SLURM asks the task to stop its sort
#: (sbatch(1) --signal=B:INT@SECONDS), so that the container is removed before SLURM kills the
#: task; a tenth of a short limit (at least 15 s). SLURM may send it up to 60 s early.
STOP_BEFORE_S = 120
#: What the task writes into its log when asked to stop (read back by batch-status).
STOPPING = "kilosort-batch: stopping the sort"
STATUS_DIR = "status"
LOG_DIR = "logs"


def time_limit_s(text: str) -> int:
    """sbatch's ``--time`` in seconds (sbatch(1): minutes, MM:SS, HH:MM:SS, D-HH,
    D-HH:MM, D-HH:MM:SS)."""
    days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
    parts = [int(p) for p in rest.split(":")]
    if "-" in text:  # D-HH[:MM[:SS]]
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts
    elif len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, minutes, seconds = 0, *parts
    else:
        hours, minutes, seconds = parts
    return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds


def stop_before_s(limit: str) -> int:
    """Seconds before the time limit ``limit`` at which the task is asked to stop its sort."""
    return min(STOP_BEFORE_S, max(15, time_limit_s(limit) // 10))


@dataclass(frozen=True)
class BatchOptions:
    """How every task of a batch runs.

    Attributes:
        runtime: container runtime on the nodes: docker, podman or apptainer.
        partition: SLURM partition (None: the cluster's default).
        gpus_per_task: GPUs per task (``--gres=gpu:N``); 0 sorts on the CPU (Kilosort 4 only).
        cpus_per_task: CPUs per task (``--cpus-per-task``).
        time: time limit per task in sbatch's format (e.g. ``2:00:00``), or None.
        mem: memory per task in sbatch's format (e.g. ``32G``), or None.
        max_parallel: at most this many tasks at once (the ``%N`` array throttle); None: no limit.
        python: the Python that runs ``kilosort_docker.sorting`` on the nodes.
        job_name: the job's name in squeue.
    """

    runtime: str = "docker"
    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    time: str | None = None
    mem: str | None = None
    max_parallel: int | None = None
    python: str = sys.executable
    job_name: str = "kilosort-batch"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise UserError(f"unknown runtime {self.runtime!r}: use one of {', '.join(RUNTIMES)}")
        if self.gpus_per_task < 0:
            raise UserError(f"--gpus-per-task must be 0 or more, not {self.gpus_per_task}")
        if self.cpus_per_task < 1:
            raise UserError(f"--cpus-per-task must be 1 or more, not {self.cpus_per_task}")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise UserError(f"--max-parallel must be 1 or more, not {self.max_parallel}")
        if self.time is not None and not TIME_FORMAT.match(self.time):
            raise UserError(
                f"--time {self.time!r} is not in sbatch's format: use minutes, HH:MM:SS or "
                "D-HH:MM:SS"
            )
        if self.mem is not None and not MEM_FORMAT.match(self.mem.upper()):
            raise UserError(f"--mem {self.mem!r} is not in sbatch's format: use e.g. 16G or 4000M")
        if not re.fullmatch(r"[\w.-]+", self.job_name):
            raise UserError(f"job name {self.job_name!r}: use letters, digits, '.', '_', '-'")


def array_spec(indices: Sequence[int], max_parallel: int | None) -> str:
    """``--array`` for these rows: ranges joined by commas, with ``%N`` when throttled."""
    if not indices:
        raise ValueError("no rows to submit")
    parts: list[str] = []
    ordered = sorted(set(indices))
    start = prev = ordered[0]
    for i in ordered[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    spec = ",".join(parts)
    return f"{spec}%{max_parallel}" if max_parallel else spec


def sort_argv(row: Row, options: BatchOptions) -> list[str]:
    """The ``python -m kilosort_docker.sorting`` command of one row (docker or podman)."""
    argv = [
        options.python,
        "-m",
        "kilosort_docker.sorting",
        str(row.recording),
        "--probe",
        str(row.probe),
        "--out",
        str(row.out),
        "--device",
        "cuda" if options.gpus_per_task else "cpu",
        "--runtime",
        options.runtime,
    ]
    if row.sorter:
        argv += ["--sorter", row.sorter]
    if row.image:
        argv += ["--image", row.image]
    if row.settings:
        argv += ["--settings", str(row.settings)]
    if row.channels:
        argv += ["--channels", str(row.channels)]
    if row.sampling_rate:
        argv += ["--sampling-rate", f"{row.sampling_rate:g}"]
    return argv


def check_directive_path(folder: Path) -> None:
    """Refuse a batch folder ``#SBATCH --output``/``--chdir`` lines cannot carry: sbatch(1)
    splits those lines at whitespace and expands ``%`` patterns (``%j``: the job id) in
    ``--output``. Raises UserError naming the characters."""
    text = str(folder)
    bad = sorted({ch for ch in text if ch.isspace() or ch == "%" or ord(ch) < 32})
    if bad:
        raise UserError(
            f"the batch folder {text!r} holds {bad!r}, which #SBATCH lines cannot carry: put the "
            "list in a folder without spaces or %, or give --folder"
        )


def render(
    rows: Sequence[Row],
    indices: Sequence[int],
    options: BatchOptions,
    *,
    folder: Path,
    commands: dict[int, list[str]],
) -> str:
    """The sbatch script running ``commands[row]`` for each row in ``indices``.

    ``folder`` is the batch folder (logs, status files); ``rows`` the whole list (the array
    task id is the row's index).
    """
    check_directive_path(folder)
    directives = [
        f"--job-name={options.job_name}",
        f"--array={array_spec(indices, options.max_parallel)}",
        "--ntasks=1",
        f"--cpus-per-task={options.cpus_per_task}",
        f"--output={folder / LOG_PATTERN}",
        f"--chdir={folder}",
    ]
    if options.partition:
        directives.append(f"--partition={options.partition}")
    if options.gpus_per_task:
        directives.append(f"--gres=gpu:{options.gpus_per_task}")
    if options.time:
        directives.append(f"--time={options.time}")
        directives.append(f"--signal=B:INT@{stop_before_s(options.time)}")
    if options.mem:
        directives.append(f"--mem={options.mem}")
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {d}" for d in directives]
    lines += [
        "# Written by kilosort-docker (invoke sort-batch); one task per recording.",
        "set -u",
        f"status_dir={shlex.quote(str(folder / STATUS_DIR))}",
        'row="$SLURM_ARRAY_TASK_ID"',
        'case "$row" in',
    ]
    by_index = {r.index: r for r in rows}
    for index in sorted(set(indices)):
        # the name as a JSON string: no newline or other control character reaches the script
        lines.append(f"  {index})  # {json.dumps(by_index[index].recording.name)}")
        lines.append(f"    argv=({shlex.join(commands[index])}) ;;")
    lines += [
        '  *) echo "kilosort-batch: no row $row in this job" >&2; exit 2 ;;',
        "esac",
        'status="$status_dir/row-$row.job-$SLURM_ARRAY_JOB_ID.json"',
        "started=$(date +%s.%N)",
        'printf \'{"row": %s, "job": "%s", "host": "%s", "started": %s}\\n\' '
        '"$row" "$SLURM_ARRAY_JOB_ID" "$(hostname)" "$started" > "$status"',
        'echo "kilosort-batch: row $row on $(hostname): ${argv[*]}"',
        # The sort runs in the background of a shell with job control (set -m), so that it
        # gets SIGINT (bash ignores it in background jobs without job control) and stops its
        # container on the way out. SLURM sends the batch shell SIGINT shortly before the
        # time limit (--signal=B:INT@stop_before_s); `scancel --batch --signal=INT` does too.
        "set -m",
        '"${argv[@]}" &',
        "child=$!",
        f'trap \'echo "{STOPPING} (signal); row $row"; kill -INT "$child"\' INT TERM',
        'wait "$child"; code=$?',
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done',
        "ended=$(date +%s.%N)",
        'printf \'{"row": %s, "job": "%s", "host": "%s", "started": %s, "ended": %s, '
        '"exit_status": %s}\\n\' "$row" "$SLURM_ARRAY_JOB_ID" "$(hostname)" "$started" '
        '"$ended" "$code" > "$status"',
        'echo "kilosort-batch: row $row exit status $code"',
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"

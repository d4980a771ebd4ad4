"""What the Kilosort runners share: the result record, errors, and running a sorter's
container (over :func:`kilosort_docker.containers.run`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kilosort_docker.errors import UserError

log = logging.getLogger(__name__)


class SortError(RuntimeError):
    """The sorter ran and failed (non-zero exit); the message ends with its last output line."""


@dataclass(frozen=True)
class SortResult:
    """One finished sort.

    Attributes:
        sorter: ``kilosort4`` or ``kilosort3``.
        mode: ``host`` or ``container``.
        output: folder holding the phy files (spike_times.npy, spike_clusters.npy, params.py...).
        seconds: wall-clock time of the sort in seconds (the sorter's own timing when it wrote
            ``ks_run.json``, else the time around the call, container start included).
        info: the sorter's ``ks_run.json`` (device, versions), empty if it wrote none.
    """

    sorter: str
    mode: str
    output: Path
    seconds: float
    info: Mapping[str, Any] = field(default_factory=dict)


def read_run_info(out_dir: Path) -> dict:
    """The sorter's own record of the run, ``out_dir/ks_run.json`` (device, versions, seconds);
    empty when it wrote none or it is not JSON."""
    path = out_dir / "ks_run.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def check_data_folder(data_dir: Path, names: Sequence[str]) -> None:
    """Raise UserError unless ``data_dir`` holds every file in ``names``."""
    missing = [n for n in names if not (data_dir / n).is_file()]
    if missing:
        raise UserError(
            f"{data_dir} lacks {', '.join(missing)}: pass a folder made by "
            "kilosort_docker.groundtruth.simulate"
        )


#: Set in Python containers unless the caller sets them: caches in /tmp (writable whatever the
#: uid), unbuffered output so the log streams as it comes.
PYTHON_ENVIRONMENT = {
    "MPLCONFIGDIR": "/tmp/mplconfig",
    "NUMBA_CACHE_DIR": "/tmp/numba",
    "PYTHONUNBUFFERED": "1",
}


def run_container(
    image: str,
    command: Sequence[str],
    *,
    environment: Mapping[str, str] | None = None,
    as_host_user: bool = True,
    **options: Any,
) -> str:
    """Run a sorter's ``command`` in ``image`` through :func:`kilosort_docker.containers.run`
    (output streamed to the log, container always removed); return the output.

    ``environment`` adds to :data:`PYTHON_ENVIRONMENT`; ``as_host_user`` (the default here)
    leaves the output files to the caller (:func:`kilosort_docker.containers.host_user`);
    ``options`` (``volumes``, ``gpu``, ``network``, ``mac_address``, ``redact``, ``client``,
    ...) go to :func:`kilosort_docker.containers.run` as they are.

    Raises:
        UserError: the image does not exist or Docker refuses the request.
        SortError: the command exited non-zero (its last output line is in the message).
    """
    from kilosort_docker import containers  # the docker SDK: only for containers, so host
    # mode runs on a GPU machine without it

    result = containers.run(
        image,
        command,
        environment=PYTHON_ENVIRONMENT | dict(environment or {}),
        as_host_user=as_host_user,
        **options,
    )
    if result.exit_code != 0:
        raise SortError(f"{image} exited with {result.exit_code}: {result.last_line}")
    return result.output

"""What the Kilosort runners share: the result record, errors, and running a sorter's
container (over :func:`kilosort_docker.containers.run`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kilosort_docker import containers
from kilosort_docker.errors import UserError
from kilosort_docker.paths import DATA_MOUNT, OUT_MOUNT  # noqa: F401 (the runners' mounts)

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
    volumes: Mapping[str, Mapping[str, str]],
    environment: Mapping[str, str] | None = None,
    gpu: bool = False,
    network: bool = False,
    mac_address: str | None = None,
    client=None,
    tail_lines: int = 20,
    redact: Sequence[str] = (),
    as_host_user: bool = True,
) -> str:
    """Run a sorter's ``command`` in ``image`` through :func:`kilosort_docker.containers.run`
    (output streamed to the log, container always removed); return the output.

    Args:
        image: image tag.
        command: the container command (argv list).
        volumes: docker SDK volume mapping ``{host_path: {"bind": path, "mode": "ro"|"rw"}}``.
        environment: extra environment variables (never logged); :data:`PYTHON_ENVIRONMENT`
            fills in what is not set.
        gpu: ask Docker for every GPU (``DeviceRequest(count=-1, capabilities=[["gpu"]])``).
        network: False gives the container no network (``network_mode="none"``).
        mac_address: MAC address for a host-locked license (``docker run --mac-address``).
        client: docker SDK client; default :func:`kilosort_docker.engine.connect`.
        tail_lines: how many trailing output lines are searched for the one a
            :class:`SortError` quotes.
        redact: strings replaced by ``***`` in logged output (license values).
        as_host_user: run as the calling user's uid:gid so outputs belong to them; when the
            caller is root the image's own user is kept instead (and ``rw`` mounts are made
            world-writable), so the image is exercised as it ships
            (:func:`kilosort_docker.containers.host_user`).

    Raises:
        UserError: the image does not exist or Docker refuses the request.
        SortError: the command exited non-zero.
    """
    env = dict(environment or {})
    for key, value in PYTHON_ENVIRONMENT.items():
        env.setdefault(key, value)
    user = None
    if as_host_user:
        user, extra = containers.host_user(volumes)
        for key, value in extra.items():
            env.setdefault(key, value)
    result = containers.run(
        image,
        command,
        volumes=volumes,
        environment=env,
        gpu=gpu,
        network=network,
        mac_address=mac_address,
        user=user,
        redact=redact,
        tail_lines=tail_lines,
        client=client,
    )
    if result.exit_code != 0:
        raise SortError(f"{image} exited with {result.exit_code}: {result.last_line}")
    return result.output

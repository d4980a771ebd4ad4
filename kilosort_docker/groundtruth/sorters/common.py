"""What the Kilosort runners share: the result record, errors, and running a container."""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def docker_client():
    """A docker SDK client from the environment; UserError when no engine answers."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a core dependency
        raise UserError("the docker package is missing: pip install docker") from exc
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        raise UserError(
            f"no Docker engine answers ({type(exc).__name__}): start dockerd or set DOCKER_HOST"
        ) from exc
    return client


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
    """Run ``image`` with ``command``, stream its output to the log, remove it, return the output.

    Args:
        image: image tag.
        command: the container command (argv list).
        volumes: docker SDK volume mapping ``{host_path: {"bind": path, "mode": "ro"|"rw"}}``.
        environment: extra environment variables (never logged).
        gpu: ask Docker for every GPU (``DeviceRequest(count=-1, capabilities=[["gpu"]])``).
        network: False gives the container no network (``network_mode="none"``).
        mac_address: MAC address for a host-locked license (``docker run --mac-address``).
        client: docker SDK client; default :func:`docker_client`.
        tail_lines: how many trailing output lines a :class:`SortError` quotes.
        redact: strings replaced by ``***`` in logged output (license values).
        as_host_user: run as the calling user's uid:gid so outputs belong to them; when the
            caller is root the image's own user is kept instead (and ``rw`` mounts are made
            world-writable), so the image is exercised as it ships.

    Raises:
        UserError: the image does not exist or Docker refuses the request.
        SortError: the command exited non-zero.
    """
    import docker
    from docker.types import DeviceRequest

    client = client or docker_client()
    kwargs: dict[str, Any] = {
        "command": list(command),
        "volumes": {str(k): dict(v) for k, v in volumes.items()},
        "environment": dict(environment or {}),
        "detach": True,
    }
    env = kwargs["environment"]
    env.setdefault("MPLCONFIGDIR", "/tmp/mplconfig")
    env.setdefault("NUMBA_CACHE_DIR", "/tmp/numba")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if as_host_user and os.getuid() != 0:
        kwargs["user"] = f"{os.getuid()}:{os.getgid()}"
        env.setdefault("HOME", "/tmp")
    elif as_host_user:
        for host_path, spec in volumes.items():
            if spec.get("mode", "rw") == "rw":
                os.chmod(host_path, 0o777)
    if not network:
        kwargs["network_mode"] = "none"
    if gpu:
        kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if mac_address:
        kwargs["mac_address"] = mac_address

    log.info("docker run %s (gpu=%s, network=%s)", image, gpu, network)
    try:
        container = client.containers.run(image, **kwargs)
    except docker.errors.ImageNotFound as exc:
        raise UserError(f"image {image} not found: build it first (invoke build)") from exc
    except docker.errors.APIError as exc:
        msg = str(getattr(exc, "explanation", None) or exc).splitlines()[0]
        hint = (
            " (is the NVIDIA container toolkit installed?)" if gpu and "gpu" in msg.lower() else ""
        )
        raise UserError(f"docker refused to run {image}: {msg}{hint}") from exc

    lines: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    try:
        buffer = b""
        for chunk in container.logs(stream=True, follow=True):
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                _emit(raw, lines, tail, redact)
        if buffer:
            _emit(buffer, lines, tail, redact)
        status = container.wait()
    finally:
        try:
            container.remove(force=True)
        except Exception:  # pragma: no cover - best effort clean-up
            log.debug("could not remove container", exc_info=True)
    code = int(status.get("StatusCode", 1))
    if code != 0:
        last = next((t for t in reversed(tail) if t.strip()), "(no output)")
        raise SortError(f"{image} exited with {code}: {last.strip()}")
    return "\n".join(lines)


def _emit(raw: bytes, lines: list[str], tail, redact: Sequence[str]) -> None:
    text = raw.decode(errors="replace").rstrip("\r")
    for secret in redact:
        if secret:
            text = text.replace(secret, "***")
    lines.append(text)
    tail.append(text)
    log.info("| %s", text)

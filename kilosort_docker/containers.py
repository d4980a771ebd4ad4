"""The one place that starts containers, and reads files out of images.

:func:`run` always goes create -> start -> stream the logs -> wait -> remove, and removes the
container on every path out. :func:`created` gives a container that is created but never
started, to copy files out of an image with :func:`archive` or :func:`read_file`.

Facts about the docker SDK for Python (docker-py 7.x; https://docker-py.readthedocs.io/en/stable/
containers.html) this module relies on:

* ``client.containers.run(..., detach=True)`` creates and then starts; when the start fails
  (for example ``could not select device driver "" with capabilities: [[gpu]]`` on a host
  without the NVIDIA runtime) the created container stays behind. So create and start are
  separate calls here, and the removal sits in a ``finally``.
* ``containers.create`` is ``api.create_container`` followed by ``containers.get``: when the
  second call fails (or is interrupted) the container exists but no object came back. Every
  container is therefore created under a unique name and, on such a failure, removed by name.
* ``containers.run`` pulls an image it does not find; :func:`run` never pulls (a missing image
  is a :class:`UserError` saying to build it).
* ``Container.logs(stream=True, follow=True)`` yields raw byte chunks of stdout and stderr as
  they come, until the container stops; the SDK lifts the client's socket timeout on this
  stream, so a quiet, long-running container does not time out.
* ``DeviceRequest(count=-1, capabilities=[["gpu"]])`` is ``docker run --gpus all`` (the way
  SpikeInterface's container runner, ``spikeinterface/sorters/container_tools.py``, asks for
  GPUs); ``DeviceRequest(driver="cdi", device_ids=["nvidia.com/gpu=all"])`` is ``docker run
  --device nvidia.com/gpu=all``, a CDI device (moby ``integration/container/cdi_test.go``);
  ``network_mode="none"`` is ``docker run --network none``.
* Whether a GPU request works is not written in ``docker info``: the NVIDIA Container Toolkit
  may serve ``--gpus`` through its runtime hook or CDI with no ``nvidia`` runtime listed
  (``Runtimes``: ``runc``, ``io.containerd.runc.v2``). :func:`probe_gpus` therefore runs
  ``nvidia-smi -L`` (which the toolkit mounts into the container) and looks at what happens.
* A bind mount whose host path does not exist is created by the engine (an empty folder owned
  by root, parents included) and the container runs; :func:`run` refuses such a mount first.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import re
import stat
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import DeviceRequest

from kilosort_docker import engine
from kilosort_docker.errors import UserError
from kilosort_docker.secrets import redact as _redact

log = logging.getLogger(__name__)

#: Prefix of the name of every container this module creates (``docker ps -a`` shows it).
NAME_PREFIX = "kilosort-docker-"
#: ``docker run --gpus all``: what ``run(gpu=True)`` asks for.
ALL_GPUS = DeviceRequest(count=-1, capabilities=[["gpu"]])
#: ``docker run --device nvidia.com/gpu=all``: every NVIDIA GPU as a CDI device (Docker 25+
#: with the NVIDIA Container Toolkit's CDI specification, ``nvidia-ctk cdi generate``).
CDI_ALL_GPUS = DeviceRequest(driver="cdi", device_ids=["nvidia.com/gpu=all"])
#: What :func:`probe_gpus` runs: ``nvidia-smi -L`` lists one ``GPU <n>: <name> (UUID: ...)``
#: line per GPU the container got (NVIDIA's nvidia-smi documentation, ``-L, --list-gpus``).
GPU_PROBE_COMMAND = ("nvidia-smi", "-L")
#: Start of the reason :func:`probe_gpus` gives.
NO_GPU_ACCESS = "no GPU access: "
_GPU_LINE = re.compile(r"^\s*GPU \d+: ")

Volumes = Mapping[str, Mapping[str, str]]


class ContainerTimeout(TimeoutError):
    """The container ran longer than ``timeout_s``; it was killed and removed."""


class ContainerRefused(UserError):
    """Docker refused to create or start the container (nothing ran; nothing is left).

    Attributes:
        reason: Docker's error, its first line, with the ``redact`` strings replaced.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ImageMissing(ContainerRefused):
    """The image is not present locally (it is never pulled)."""


@dataclass(frozen=True)
class ContainerResult:
    """A container that ran to its end (whatever its exit code).

    Attributes:
        image: the image it ran.
        exit_code: the command's exit status (137 after a kill).
        output: stdout and stderr interleaved, one string, lines joined by ``\\n``, with every
            ``redact`` string replaced by ``***``. Docker reads the two streams through
            separate pipes, so lines written close together to stdout and to stderr may
            come in either order.
        tail: the last ``tail_lines`` lines of ``output``.
        seconds: wall-clock seconds from create to exit.
    """

    image: str
    exit_code: int
    output: str
    tail: tuple[str, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def last_line(self) -> str:
        """The last non-blank output line, stripped; ``(no output)`` when there is none."""
        return next((t.strip() for t in reversed(self.tail) if t.strip()), "(no output)")


def run(
    image: str,
    command: Sequence[str] | None = None,
    *,
    entrypoint: Sequence[str] | str | None = None,
    volumes: Volumes | None = None,
    environment: Mapping[str, str] | None = None,
    gpu: bool | DeviceRequest = False,
    network: bool = False,
    mac_address: str | None = None,
    user: str | None = None,
    as_host_user: bool = False,
    shm_size: str | int | None = None,
    cpus: float | None = None,
    memory_mb: int | None = None,
    redact: Sequence[str] = (),
    tail_lines: int = 20,
    client: docker.DockerClient | None = None,
    stream_to_log: bool = True,
    timeout_s: float | None = None,
) -> ContainerResult:
    """Run ``image`` to its end and remove it; return its exit code and output.

    Args:
        image: image reference or ID. It must be present: this never pulls.
        command: the container's command (argv list); None keeps the image's ``CMD``. With
            the image's entrypoint kept, these are the entrypoint's arguments.
        entrypoint: replaces the image's ``ENTRYPOINT`` (``[]`` clears it); None keeps it.
        volumes: docker SDK bind mounts, ``{host_path: {"bind": path, "mode": "ro"|"rw"}}``;
            every absolute ``host_path`` must exist (a name without ``/`` is a named volume).
        environment: variables set in the container. Their values are never logged here;
            a value the container might print must also be in ``redact``.
        gpu: True asks for every GPU (:data:`ALL_GPUS`, ``--gpus all``); a ``DeviceRequest``
            (e.g. :data:`CDI_ALL_GPUS`) is passed as it is.
        network: False (the default) runs with ``network_mode="none"``; True keeps Docker's
            default bridge network.
        mac_address: the container's MAC address (``docker run --mac-address``), e.g. for a
            host-locked license; it needs ``network=True`` to mean anything.
        user: ``uid:gid`` or a user name to run as; None keeps the image's ``USER``
            (:func:`host_user` gives the caller's own).
        as_host_user: instead of ``user``, make the output files the caller's (see
            :func:`host_user`; its variables fill in what ``environment`` does not set). For
            root, the ``rw`` bind-mounted folders are opened (mode 0777) for the run only and
            get their modes back on every path out.
        shm_size: size of the container's ``/dev/shm`` (``docker run --shm-size``), e.g.
            ``"512m"`` or bytes; None keeps Docker's default (64 MB).
        cpus: CPU limit in CPUs (``docker run --cpus``); None: no limit.
        memory_mb: memory limit in MB (``docker run --memory``); None: no limit.
        redact: strings (license values, tokens) replaced by ``***`` in the logged output,
            the returned output and the error messages.
        tail_lines: how many trailing lines :attr:`ContainerResult.tail` keeps.
        client: docker SDK client; default :func:`kilosort_docker.engine.connect`.
        stream_to_log: log each output line at INFO as it comes (``| line``); False logs them
            at DEBUG only.
        timeout_s: kill the container after this many seconds (None: no limit).

    Returns:
        :class:`ContainerResult`; a non-zero exit is not an error here, the caller decides.

    Raises:
        UserError: a bind-mounted host path does not exist (:func:`check_mounts`); the
            engine stopped answering while the container ran.
        ContainerRefused: nothing ran: Docker refused to create or start the container (names
            the NVIDIA container toolkit when a GPU was asked for); :class:`ImageMissing`
            when the image is not present.
        ContainerTimeout: the container ran past ``timeout_s`` (it is killed).
        KeyboardInterrupt: passed on, after the container is removed.

    Whatever happens, the container is removed, and the host is as it was before the call
    except for what the container wrote into its ``rw`` mounts.
    """
    secrets = tuple(s for s in redact if s)
    check_mounts(volumes or {})
    kwargs: dict[str, Any] = {
        "command": list(command) if command is not None else None,
        "volumes": {str(k): dict(v) for k, v in (volumes or {}).items()},
        "environment": dict(environment or {}),
    }
    opened: Sequence[str] = ()
    if as_host_user:
        user, extra = host_user(kwargs["volumes"])
        kwargs["environment"] = extra | kwargs["environment"]
        if os.getuid() == 0:
            opened = [p for p, spec in kwargs["volumes"].items() if _writable_folder(p, spec)]
    if entrypoint is not None:
        kwargs["entrypoint"] = entrypoint if isinstance(entrypoint, str) else list(entrypoint)
    if not network:
        kwargs["network_mode"] = "none"
    if gpu:
        kwargs["device_requests"] = [ALL_GPUS if gpu is True else gpu]
    if mac_address:
        kwargs["mac_address"] = mac_address
    if user:
        kwargs["user"] = user
    if shm_size is not None:
        kwargs["shm_size"] = shm_size
    if cpus is not None:
        kwargs["nano_cpus"] = int(cpus * 1e9)  # docker run --cpus
    if memory_mb is not None:
        kwargs["mem_limit"] = f"{int(memory_mb)}m"  # docker run --memory

    client = client or engine.connect()
    log.info("docker run %s (gpu=%s, network=%s)", image, bool(gpu), network)
    killed = threading.Event()
    lines: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=max(tail_lines, 1))
    level = logging.INFO if stream_to_log else logging.DEBUG
    with opened_for_container(opened):
        start = time.perf_counter()
        container = _create(client, image, kwargs, gpu=bool(gpu), secrets=secrets)
        timer = None
        try:
            try:
                container.start()
            except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
                raise _refused(image, exc, gpu=bool(gpu), secrets=secrets) from exc
            if timeout_s is not None:
                timer = threading.Timer(timeout_s, _kill, args=(container, killed))
                timer.daemon = True
                timer.start()
            try:
                buffer = b""
                for chunk in container.logs(stream=True, follow=True):
                    *complete, buffer = (buffer + chunk).split(b"\n")
                    for raw in complete:
                        _emit(raw, lines, tail, secrets, level)
                if buffer:
                    _emit(buffer, lines, tail, secrets, level)
                status = container.wait()
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                reason = _redact(_first_line(exc), secrets)
                raise UserError(
                    f"lost the container of {image} while it ran ({reason}): check the Docker "
                    "engine (`docker info`) and try again"
                ) from exc
        finally:
            if timer is not None:
                timer.cancel()
            _remove(container)
    seconds = time.perf_counter() - start
    result = ContainerResult(
        image, int(status.get("StatusCode", 1)), "\n".join(lines), tuple(tail), seconds
    )
    if killed.is_set():
        raise ContainerTimeout(
            f"{image} ran longer than {timeout_s:g} s and was killed; last output: "
            f"{result.last_line}"
        )
    return result


def probe_gpus(
    image: str,
    *,
    client: docker.DockerClient | None = None,
    request: DeviceRequest = ALL_GPUS,
    command: Sequence[str] = GPU_PROBE_COMMAND,
    timeout_s: float = 120,
) -> str | None:
    """Whether a container of ``image`` gets GPUs: None when it does, else the reason, one
    line starting with :data:`NO_GPU_ACCESS` (``no GPU access: <Docker's error line>``).

    Decided by what works, not by ``docker info``: a short container of ``image`` asks for
    ``request`` (default :data:`ALL_GPUS`, what ``run(gpu=True)`` asks for) and runs
    ``command`` (default ``nvidia-smi -L``, which the NVIDIA Container Toolkit mounts into the
    container; it needs the image's C library, so use the image the GPU work runs in) as its
    entrypoint, with no network, through :func:`run` (so it is always removed). GPU access
    means the container started, exited 0 and listed at least one ``GPU <n>:`` line.

    Args:
        image: an image present locally (never pulled).
        client: docker SDK client; default :func:`kilosort_docker.engine.connect`.
        request: the device request to try (e.g. :data:`CDI_ALL_GPUS`).
        command: the program and its arguments; its output must list GPUs as ``nvidia-smi -L``.
        timeout_s: seconds before the probe counts as failed (its container is killed).

    Raises:
        UserError: ``image`` is not present, or the engine stopped answering (the probe could
            not run: that is not an answer).
    """
    try:
        result = run(
            image,
            list(command[1:]),
            entrypoint=[command[0]],
            gpu=request,
            stream_to_log=False,
            client=client,
            timeout_s=timeout_s,
        )
    except ImageMissing:
        raise
    except ContainerRefused as exc:
        return f"{NO_GPU_ACCESS}{exc.reason}"
    except ContainerTimeout:
        return f"{NO_GPU_ACCESS}{' '.join(command)} did not finish in {timeout_s:g} s"
    shown = " ".join(command)
    if not result.ok:
        return f"{NO_GPU_ACCESS}{shown} exited with {result.exit_code}: {result.last_line}"
    gpus = [line.strip() for line in result.output.splitlines() if _GPU_LINE.match(line)]
    if not gpus:
        return f"{NO_GPU_ACCESS}{shown} listed no GPU ({result.last_line})"
    log.info("%s sees %d GPU(s): %s", image, len(gpus), "; ".join(gpus))
    return None


@contextlib.contextmanager
def opened_for_container(paths: Sequence[str]) -> Iterator[None]:
    """Make each folder in ``paths`` writable for any user (mode 0777) for the ``with``
    block, and give every one its old mode back on every path out (exceptions and
    KeyboardInterrupt included): a container running as the image's user writes there.

    Raises:
        UserError: a folder's mode cannot be changed (the ones already changed are restored).
    """
    modes: dict[str, int] = {}
    try:
        for path in paths:
            try:
                modes[path] = stat.S_IMODE(os.stat(path).st_mode)
                os.chmod(path, 0o777)
            except OSError as exc:
                raise UserError(
                    f"cannot make {path} writable for the container ({exc.strerror}): use a "
                    "folder you own"
                ) from None
        yield
    finally:
        for path, mode in modes.items():
            with contextlib.suppress(OSError):
                os.chmod(path, mode)


@contextlib.contextmanager
def created(
    image: str,
    *,
    client: docker.DockerClient | None = None,
    entrypoint: Sequence[str] = ("true",),
) -> Iterator[Any]:
    """A container created from ``image`` and never started, removed on the way out.

    For reading files out of an image without running anything in it (a ``FROM scratch``
    stage, or an image whose programs need a license or a GPU)::

        with containers.created(image_id, client=client) as container:
            data = containers.read_file(container, "/opt/kilosort-docker/mex-manifest.json")
            tar_bytes = containers.archive(container, "/tmp/mex-out")

    The container has no network and the entrypoint ``true``, which Docker needs to create a
    container from an image without ``CMD`` but never runs (the image need not contain it).
    It is removed (``force=True``) on every path out of the ``with`` block, exceptions and
    KeyboardInterrupt included, and also when the creation itself fails part-way.

    Args:
        image: image reference or ID (present locally; never pulled).
        client: docker SDK client; default :func:`kilosort_docker.engine.connect`.
        entrypoint: the recorded entrypoint; it is never run.

    Yields:
        the docker SDK ``Container`` (``get_archive``, ``attrs``...).

    Raises:
        UserError: the image is not present, or Docker refuses to create the container.
    """
    client = client or engine.connect()
    kwargs = {"entrypoint": list(entrypoint), "network_mode": "none"}
    container = _create(client, image, kwargs, gpu=False, secrets=())
    try:
        yield container
    finally:
        _remove(container)


def archive(container, path: str) -> bytes:
    """The tar archive (bytes) of ``path`` in ``container``: a file, or a folder and all it
    holds, under its base name (``docker cp`` semantics, via ``Container.get_archive``).

    Raises:
        FileNotFoundError: ``path`` does not exist in the container.
    """
    try:
        stream, _ = container.get_archive(path)
        return b"".join(stream)
    except docker.errors.NotFound:
        raise FileNotFoundError(path) from None


def read_file(container, path: str) -> bytes:
    """The bytes of the regular file ``path`` in ``container``.

    Raises:
        FileNotFoundError: ``path`` does not exist or is not a regular file.
    """
    with tarfile.open(fileobj=io.BytesIO(archive(container, path))) as tar:
        member = tar.next()
        handle = tar.extractfile(member) if member is not None and member.isfile() else None
        if handle is None:
            raise FileNotFoundError(path)
        return handle.read()


def host_user(volumes: Volumes | None = None) -> tuple[str | None, dict[str, str]]:
    """``(user, environment)`` that make a container's output files belong to the caller.

    A non-root caller gets ``("uid:gid", {"HOME": "/tmp"})``: the container runs as the
    caller, with a writable home although that uid has no account in the image. For root,
    the image's own user is kept (``(None, {})``), so the image runs as it ships; :func:`run`
    then opens every ``rw`` bind-mounted folder for that user for the run only
    (:func:`opened_for_container`). ``volumes`` is accepted for callers that pass it; the
    answer does not depend on it.
    """
    del volumes
    if os.getuid() != 0:
        return f"{os.getuid()}:{os.getgid()}", {"HOME": "/tmp"}
    return None, {}


# ---- internals ----------------------------------------------------------------------------


def _create(client, image: str, kwargs: dict[str, Any], *, gpu: bool, secrets: Sequence[str]):
    name = f"{NAME_PREFIX}{uuid.uuid4().hex[:16]}"
    try:
        return client.containers.create(image, name=name, **kwargs)
    except BaseException as exc:
        _remove_by_name(client, name)
        if isinstance(exc, docker.errors.ImageNotFound):
            raise ImageMissing(
                f"image {image} not found: build it first (invoke build)", _first_line(exc)
            ) from exc
        if isinstance(exc, docker.errors.APIError):
            raise _refused(image, exc, gpu=gpu, secrets=secrets) from exc
        raise


def _refused(image: str, exc: Exception, *, gpu: bool, secrets: Sequence[str]) -> ContainerRefused:
    msg = _redact(_first_line(exc), secrets)
    hint = " (is the NVIDIA container toolkit installed?)" if gpu and "gpu" in msg.lower() else ""
    return ContainerRefused(f"docker refused to run {image}: {msg}{hint}", msg)


def check_mounts(volumes: Volumes) -> None:
    """Refuse a bind mount of a host path that does not exist, before anything is made: the
    engine would create it (an empty folder owned by root, parents included) and run the
    container anyway. A name without ``/`` is a named volume and is not checked.

    Raises:
        UserError: naming the first absolute host path that does not exist.
    """
    for host_path in volumes:
        path = os.fspath(host_path)
        if os.path.isabs(path) and not os.path.exists(path):
            raise UserError(
                f"{path} does not exist: create it, or pass the folder that holds the data"
            )


def _writable_folder(path: str, spec: Mapping[str, str]) -> bool:
    return spec.get("mode", "rw") == "rw" and os.path.isabs(path) and os.path.isdir(path)


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _emit(raw: bytes, lines: list[str], tail, secrets: Sequence[str], level: int) -> None:
    text = _redact(raw.decode(errors="replace").rstrip("\r"), secrets)
    lines.append(text)
    tail.append(text)
    log.log(level, "| %s", text)


def _kill(container, killed: threading.Event) -> None:
    killed.set()
    try:
        container.kill()
    except Exception:  # it may have exited meanwhile
        log.debug("could not kill the container", exc_info=True)


def _remove(container) -> None:
    """Remove ``container`` (``force=True``: a running one is killed first). An interrupt
    (a second Ctrl-C) during the removal does not stop it: the removal is tried once more,
    then the interrupt is passed on."""
    try:
        _try_remove(container)
    except KeyboardInterrupt:
        _try_remove(container)
        raise


def _try_remove(container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: "removal of container ... is already in progress"
            _warn_left(getattr(container, "name", "?"), exc)
    except Exception as exc:  # the engine went away: say what is left, keep the first error
        _warn_left(getattr(container, "name", "?"), exc)


def _warn_left(name: str, exc: Exception) -> None:
    log.warning("could not remove container %s (%s): run `docker rm -f %s`", name, exc, name)


def _remove_by_name(client, name: str) -> None:
    """Remove a container that the engine may have created although ``create`` failed."""
    try:
        client.api.remove_container(name, force=True)
    except docker.errors.NotFound:
        pass
    except Exception:
        log.debug("could not remove container %s", name, exc_info=True)

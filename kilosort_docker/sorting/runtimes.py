"""Container runtimes a sort can run in: a small :class:`Runtime` protocol, and
:data:`RUNTIMES` by name (``docker``; others, e.g. ``podman``, add themselves here).

A runtime runs an image with an argv, read-only and read-write bind mounts, with or without
GPUs, network off unless asked, and always removes the container; the files written into
the read-write mounts belong to the user who ran the sort (:func:`hand_back`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kilosort_docker.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """A container that ran to its end.

    Attributes:
        exit_status: the command's exit status.
        last_line: its last non-blank output line (``(no output)`` if none).
        seconds: wall-clock seconds, container start included.
    """

    exit_status: int
    last_line: str
    seconds: float = 0.0


@dataclass(frozen=True)
class ImageInfo:
    """What a runtime knows of an image: ``ref`` as given, ``id`` (``sha256:...``, the
    image's digest), ``repo_digests`` (registry digests, empty for a local build), ``labels``."""

    ref: str
    id: str
    repo_digests: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


class Runtime(Protocol):
    """What a sort needs of a container runtime."""

    name: str

    def image(self, ref: str) -> ImageInfo:
        """The image ``ref`` (present locally: never pulled).

        Raises:
            UserError: the runtime cannot be reached, or the image is not there (names the
                fix).
        """
        ...

    def run(
        self,
        image: str,
        argv: Sequence[str],
        *,
        ro: Mapping[str, str] = {},
        rw: Mapping[str, str] = {},
        gpu: bool = False,
        network: bool = False,
        environment: Mapping[str, str] | None = None,
        mac_address: str | None = None,
        redact: Sequence[str] = (),
    ) -> RunResult:
        """Run ``argv`` in ``image`` to its end and remove the container.

        Args:
            ro: read-only bind mounts, ``{host path: container path}``.
            rw: read-write bind mounts; what the container writes there is the caller's
                afterwards (owner uid:gid), whatever user the image runs as.
            gpu: every GPU of the host.
            network: keep the runtime's default network (off otherwise).
            environment: variables set in the container (never logged).
            mac_address: the container's MAC address (a host-locked license).
            redact: strings replaced by ``***`` in what is logged and returned.

        Output lines go to the log as they come (INFO, ``| line``).

        Raises:
            UserError: nothing ran (the runtime refused: a missing image, a GPU request it
                cannot serve...).
        """
        ...


def hand_back(folders: Sequence[str | os.PathLike], *, uid: int, gid: int) -> list[str]:
    """Give every file and folder under ``folders`` to ``uid:gid`` (``os.lchown``, which
    only root may do for files of another user); returns the paths that could not be
    changed (logged)."""
    failed: list[str] = []
    for top in folders:
        for root, dirs, files in os.walk(top):
            for name in [*dirs, *files, None]:
                path = os.path.join(root, name) if name else root
                try:
                    st = os.lstat(path)
                    if (st.st_uid, st.st_gid) != (uid, gid):
                        os.lchown(path, uid, gid)
                except OSError as exc:
                    failed.append(path)
                    log.debug("could not hand %s back: %s", path, exc)
    if failed:
        log.warning(
            "could not hand %d file(s) back to %d:%d (first: %s)", len(failed), uid, gid, failed[0]
        )
    return failed


class DockerRuntime:
    """The Docker engine, through :func:`kilosort_docker.containers.run` (always removes
    the container; never pulls).

    A non-root caller's container runs as the caller's uid:gid (``HOME=/tmp``); for root the
    image's own user is kept (the read-write folders are opened for it during the run) and
    the files it wrote are handed back to root afterwards (:func:`hand_back`).
    """

    name = "docker"

    def __init__(self, client=None) -> None:
        self._client = client

    @property
    def client(self):
        if self._client is None:
            from kilosort_docker import engine

            self._client = engine.connect(timeout=3600)
        return self._client

    def image(self, ref: str) -> ImageInfo:
        import docker.errors

        try:
            image = self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            raise UserError(
                f"image {ref} is not present: build it (invoke build --image kilosort4|kilosort3)"
                " or pass --image"
            ) from None
        except docker.errors.DockerException as exc:
            said = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise UserError(
                f"could not look up {ref} ({said}): fix --image or the engine"
            ) from None
        return ImageInfo(
            ref=ref,
            id=image.id,
            repo_digests=tuple(image.attrs.get("RepoDigests") or ()),
            labels=dict(image.labels or {}),
        )

    def run(
        self,
        image: str,
        argv: Sequence[str],
        *,
        ro: Mapping[str, str] = {},
        rw: Mapping[str, str] = {},
        gpu: bool = False,
        network: bool = False,
        environment: Mapping[str, str] | None = None,
        mac_address: str | None = None,
        redact: Sequence[str] = (),
    ) -> RunResult:
        from kilosort_docker import containers

        volumes = {str(h): {"bind": c, "mode": "ro"} for h, c in ro.items()}
        volumes |= {str(h): {"bind": c, "mode": "rw"} for h, c in rw.items()}
        try:
            result = containers.run(
                image,
                list(argv),
                volumes=volumes,
                environment=dict(environment or {}),
                gpu=gpu,
                network=network,
                mac_address=mac_address,
                as_host_user=True,
                redact=redact,
                client=self.client,
            )
        finally:
            if os.getuid() == 0:  # the image's user wrote the files: root takes them back
                hand_back([h for h in rw if os.path.isdir(h)], uid=0, gid=os.getgid())
        return RunResult(result.exit_code, result.last_line, result.seconds)


#: The runtimes by name (``--runtime``); each value makes one.
RUNTIMES: dict[str, Callable[[], Runtime]] = {"docker": DockerRuntime}


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``.

    Raises:
        UserError: no such runtime (names the known ones).
    """
    if name not in RUNTIMES:
        raise UserError(f"unknown --runtime {name!r}: use one of {', '.join(sorted(RUNTIMES))}")
    return RUNTIMES[name]()


def check_mountable(path: Path | str, *, what: str) -> None:
    """Refuse a host path a bind mount cannot take: Docker's mount syntax
    (``host:container:mode``) splits at ``:``, so a path holding one is misread.

    Raises:
        UserError: names the path and suggests a symlink without ``:``.
    """
    text = os.path.abspath(path)
    if ":" in text:
        link = f"/tmp/{Path(text).name.replace(':', '-')}"
        raise UserError(
            f"the {what} {text} holds ':', which Docker cannot mount (it splits mounts at "
            f"':'): make a symlink without one (ln -s '{text}' {link}) and pass that"
        )

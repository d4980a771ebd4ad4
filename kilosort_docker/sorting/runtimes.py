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


#: podman run(1)'s limits. Debian 12's podman 4.3 sets RLIMIT_NOFILE and RLIMIT_NPROC to its own
#: defaults (1048576 and 4194304); where the caller lacks CAP_SYS_RESOURCE (a container, a
#: locked-down node) runc cannot raise them ("error setting rlimit type 6/7: operation not
#: permitted"), so the container gets the caller's own open-file limit and at most
#: PODMAN_NPROC processes (RLIMIT_NPROC counts the user's processes on the whole host).
PODMAN_NPROC = 32768


class PodmanRuntime:
    """Podman's CLI (``podman run --rm``; never pulls: ``--pull never``).

    The container runs as its root user: rootful podman (a root caller) maps it to root,
    rootless podman to the caller (podman-run(1), ``--userns``), so in both cases the files
    written into the read-write mounts are the caller's. ``HOME=/tmp``. GPUs through CDI
    (``--device nvidia.com/gpu=all``, or those ``CUDA_VISIBLE_DEVICES`` names, as SLURM sets it
    for a task's ``--gres`` GPUs; the NVIDIA container toolkit's ``nvidia-ctk cdi generate``
    writes the spec). Images come from Docker with ``docker save REF | podman load``
    (:func:`load_from_docker`, ``invoke podman-load``).
    """

    name = "podman"

    def __init__(self, program: str = "podman") -> None:
        self.program = program

    def _podman(self, *args: str):
        import shutil
        import subprocess

        path = shutil.which(self.program)
        if path is None:
            raise UserError("podman is not on PATH: install it (apt-get install podman)")
        return subprocess.run([path, *args], capture_output=True, text=True, check=False)

    def image(self, ref: str) -> ImageInfo:
        import json

        done = self._podman("image", "inspect", "--format", "json", ref)
        if done.returncode != 0:
            raise UserError(
                f"image {ref} is not in podman's storage: load it from Docker "
                f"(invoke podman-load {ref}, i.e. docker save {ref} | podman load)"
            )
        data = json.loads(done.stdout)[0]
        image_id = data["Id"] if data["Id"].startswith("sha256:") else f"sha256:{data['Id']}"
        return ImageInfo(
            ref=ref,
            id=image_id,
            repo_digests=tuple(data.get("RepoDigests") or ()),
            labels=dict(data.get("Labels") or {}),
        )

    def command(
        self,
        image: str,
        argv: Sequence[str],
        *,
        name: str,
        ro: Mapping[str, str] = {},
        rw: Mapping[str, str] = {},
        gpu: bool = False,
        network: bool = False,
        environment: Mapping[str, str] | None = None,
        mac_address: str | None = None,
    ) -> list[str]:
        """The ``podman run`` argv (environment values are not in it: ``--env NAME`` takes
        them from podman's own environment)."""
        import resource

        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        args = [self.program, "run", "--rm", "--pull", "never", "--name", name]
        args += ["--user", "0:0", "--env", "HOME=/tmp"]
        args += ["--ulimit", f"nofile={nofile}:{nofile}"]
        args += ["--ulimit", f"nproc={PODMAN_NPROC}:{PODMAN_NPROC}"]
        if not network:
            args += ["--network", "none"]
        if mac_address:
            args += ["--mac-address", mac_address]
        if gpu:
            # under SLURM (--gres=gpu:N) CUDA_VISIBLE_DEVICES names the task's GPUs (indices
            # or UUIDs), which `nvidia-ctk cdi generate` also names its CDI devices by
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
            chosen = [d for d in visible.split(",") if d and d != "NoDevFiles"]
            for device in chosen or ["all"]:
                args += ["--device", f"nvidia.com/gpu={device}"]
        for host, inside in ro.items():
            check_mountable(host, what="read-only mount")
            args += ["--volume", f"{os.path.abspath(host)}:{inside}:ro"]
        for host, inside in rw.items():
            check_mountable(host, what="read-write mount")
            args += ["--volume", f"{os.path.abspath(host)}:{inside}:rw"]
        for key in environment or {}:
            args += ["--env", key]
        return [*args, image, *argv]

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
        import shutil
        import subprocess
        import time
        import uuid

        for host in [*ro, *rw]:
            if not os.path.exists(host):
                raise UserError(f"{host} does not exist: fix the path")
        if shutil.which(self.program) is None:
            raise UserError("podman is not on PATH: install it (apt-get install podman)")
        name = f"kilosort-docker-{uuid.uuid4().hex[:12]}"
        args = self.command(
            image,
            argv,
            name=name,
            ro=ro,
            rw=rw,
            gpu=gpu,
            network=network,
            environment=environment,
            mac_address=mac_address,
        )
        secrets = [s for s in redact if s]

        def clean(line: str) -> str:
            for secret in secrets:
                line = line.replace(secret, "***")
            return line

        log.info("podman run %s (gpu=%s, network=%s)", image, gpu, network)
        env = {**os.environ, **dict(environment or {})}
        last = "(no output)"
        started = time.monotonic()
        process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
        )
        try:
            for raw in process.stdout:
                line = clean(raw.rstrip())
                if line.strip():
                    last = line.strip()
                log.info("| %s", line)
            code = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            # --rm removes it when it ends; this covers a podman killed on the way
            subprocess.run(
                [self.program, "rm", "--force", "--ignore", name],
                capture_output=True,
                check=False,
            )
        seconds = time.monotonic() - started
        # podman-run(1) exit codes: 125 podman itself failed (e.g. no such image), 126 the
        # command could not be invoked, 127 it was not found: nothing ran in the image
        if code in (125, 126, 127):
            raise UserError(f"podman could not run {image}: {last}")
        return RunResult(code, last, seconds)


def load_from_docker(ref: str, *, program: str = "podman") -> str:
    """Copy image ``ref`` from the Docker engine into podman's storage (``docker save ref |
    podman load``); returns podman's image id. Raises UserError if either side fails."""
    import shutil
    import subprocess

    for tool in ("docker", program):
        if shutil.which(tool) is None:
            raise UserError(f"{tool} is not on PATH: install it to copy images into podman")
    save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    load = subprocess.run(
        [program, "load", "--quiet"],
        stdin=save.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    save.stdout.close()
    save_err = save.stderr.read().decode(errors="replace").strip()
    save.wait()
    if save.returncode != 0:
        said = save_err.splitlines()[-1] if save_err else f"exit status {save.returncode}"
        raise UserError(f"docker save {ref} failed: {said}: is {ref} in the Docker engine?")
    if load.returncode != 0:
        said = load.stderr.strip().splitlines()[-1] if load.stderr.strip() else load.returncode
        raise UserError(f"podman load failed: {said}")
    done = subprocess.run(
        [program, "image", "inspect", "--format", "{{.Id}}", ref],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise UserError(f"podman loaded {ref} but cannot find it: {done.stderr.strip()}")
    return done.stdout.strip()


def _apptainer() -> Runtime:
    from kilosort_docker.batch.apptainer import ApptainerRuntime

    return ApptainerRuntime()


RUNTIMES["podman"] = PodmanRuntime
#: Not run in CI (Apptainer cannot be installed there): kilosort_docker.batch.apptainer
RUNTIMES["apptainer"] = _apptainer

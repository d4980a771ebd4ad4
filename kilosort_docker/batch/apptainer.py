"""Apptainer (formerly Singularity): the image as a SIF file, and the command line of a sort.

Not run in CI: Apptainer is not packaged for Debian 12 and cannot be installed on the CI
machines; these functions are unit-tested for their shape only.

A Docker image becomes a SIF file on a machine that has both Docker and Apptainer, either
straight from the engine (Apptainer's ``docker-daemon`` bootstrap agent) or from a
``docker save`` archive copied to the cluster (``docker-archive``)::

    apptainer build kilosort4.sif docker-daemon://kilosortdocker/kilosort4:4.1.7
    docker save -o kilosort4.tar kilosortdocker/kilosort4:4.1.7   # elsewhere, then:
    apptainer build kilosort4.sif docker-archive://kilosort4.tar

or from a definition file (:func:`definition_file`). ``apptainer run IMAGE.sif ARGS`` runs the
image's ENTRYPOINT with ARGS, as ``docker run IMAGE ARGS`` does; ``--containall --cleanenv``
keeps the host's home, ``/tmp`` and environment out, ``--nv`` gives the GPUs
(Apptainer 1.x user guide: "Bind Paths and Mounts", "GPU Support", "Support for Docker and OCI
Containers").
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from kilosort_docker.batch.recordings import Row
from kilosort_docker.errors import UserError

log = logging.getLogger(__name__)

SIF_SUFFIX = ".sif"


def definition_file(ref: str) -> str:
    """An Apptainer definition file that builds a SIF from image ``ref`` of the local Docker
    engine (bootstrap agent ``docker-daemon``): ``apptainer build OUT.sif FILE.def``."""
    return (
        f"Bootstrap: docker-daemon\nFrom: {ref}\n\n%labels\n    org.kilosort-docker.source {ref}\n"
    )


def build_command(ref: str, sif: str | Path, *, archive: str | Path | None = None) -> list[str]:
    """``apptainer build SIF docker-daemon://REF`` (or ``docker-archive://ARCHIVE``, a
    ``docker save`` tar file, where the build host has no Docker engine)."""
    source = f"docker-archive://{archive}" if archive else f"docker-daemon://{ref}"
    return ["apptainer", "build", str(sif), source]


def instructions(ref: str, sif: str | Path) -> str:
    """The commands that make ``sif`` from ``ref``, one per line (for README and --dry-run)."""
    tar = Path(sif).with_suffix(".tar")
    return "\n".join(
        [
            f"# on a machine with Docker and Apptainer:\n{shlex.join(build_command(ref, sif))}",
            f"# or: docker save -o {tar} {ref}; copy {tar} to the cluster, then:",
            shlex.join(build_command(ref, sif, archive=tar)),
        ]
    )


def run_command(
    sif: str | Path,
    argv: Sequence[str],
    *,
    ro: Mapping[str, str] = {},
    rw: Mapping[str, str] = {},
    gpu: bool = False,
    program: str = "apptainer",
) -> list[str]:
    """``apptainer run`` of ``sif`` with ``argv`` (the image's ENTRYPOINT arguments), the
    bind mounts (``--bind host:container:ro|rw``), ``--nv`` for GPUs; the host's home,
    ``/tmp`` and environment left out (``--containall --cleanenv``)."""
    args = [program, "run", "--containall", "--cleanenv", "--env", "HOME=/tmp"]
    if gpu:
        args.append("--nv")
    for host, inside in ro.items():
        args += ["--bind", f"{host}:{inside}:ro"]
    for host, inside in rw.items():
        args += ["--bind", f"{host}:{inside}:rw"]
    return [*args, str(sif), *argv]


def check_row(row: Row, options) -> None:
    """An Apptainer row names its image as a SIF file that exists (``image`` column or
    ``--image``); UserError otherwise."""
    image = row.image
    if not image or not image.endswith(SIF_SUFFIX):
        raise UserError(
            f"row {row.index + 1}: --runtime apptainer runs a SIF file: give --image FILE.sif "
            "(make it with apptainer build, see README's On a cluster)"
        )
    if not Path(image).expanduser().is_file():
        raise UserError(f"row {row.index + 1}: SIF file {image} does not exist: build it first")


def task_argv(row: Row, options) -> list[str]:
    """The task's command for an Apptainer row: ``kilosort_docker.sorting`` with
    ``--runtime apptainer`` (the runtime that runs :func:`run_command`)."""
    from kilosort_docker.batch.script import sort_argv

    return sort_argv(row, options)


class ApptainerRuntime:
    """The sorting package's runtime protocol (``kilosort_docker.sorting.runtimes.Runtime``)
    over ``apptainer run``: the image is a SIF file, its id the file's sha256. Network: the
    host's (Apptainer needs root or a setuid build for ``--net --network none``); GPUs with
    ``--nv``. Not run in CI."""

    name = "apptainer"

    def __init__(self, program: str = "apptainer") -> None:
        self.program = program

    def image(self, ref: str):
        import hashlib

        from kilosort_docker.sorting.runtimes import ImageInfo

        path = Path(ref).expanduser()
        if path.suffix != SIF_SUFFIX or not path.is_file():
            raise UserError(
                f"image {ref} is not a SIF file here: build one (apptainer build X.sif "
                "docker-daemon://REF) and pass --image X.sif"
            )
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return ImageInfo(ref=str(path.resolve()), id=f"sha256:{digest.hexdigest()}")

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
    ):
        import os
        import shutil
        import subprocess
        import time

        from kilosort_docker.sorting.runtimes import RunResult

        if shutil.which(self.program) is None:
            raise UserError(f"{self.program} is not on PATH: install Apptainer on the node")
        args = run_command(image, argv, ro=ro, rw=rw, gpu=gpu, program=self.program)
        # APPTAINERENV_X sets X in the container (Apptainer user guide, "Environment")
        env = {**os.environ} | {f"APPTAINERENV_{k}": v for k, v in (environment or {}).items()}
        started, last = time.monotonic(), "(no output)"
        with subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            errors="replace",
        ) as process:
            for raw in process.stdout:
                line = raw.rstrip()
                for secret in filter(None, redact):
                    line = line.replace(secret, "***")
                if line.strip():
                    last = line.strip()
                log.info("| %s", line)
        return RunResult(process.returncode, last, time.monotonic() - started)

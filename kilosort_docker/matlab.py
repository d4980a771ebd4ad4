"""Running ``matlab -batch STATEMENT``, with a local MATLAB or in an image, and its license.

:func:`run_batch` is the one MATLAB runner: the Kilosort 3 sorters and ``invoke check-gpu``
both go through it. The license is given at run time only, never written into an image and
never logged.

Facts about MathWorks' images (``mathworks/matlab``; ``matlab/Dockerfile`` and
``matlab/build/run.sh``, ``utils.sh`` in https://github.com/mathworks-ref-arch/container-images):

* the entrypoint is ``tini -- /bin/run.sh`` with an empty ``CMD``; ``run.sh`` hands every
  argument it does not know to ``matlab``, so ``docker run IMAGE -batch "stmt"`` runs
  ``matlab -batch "stmt"``;
* ``MLM_LICENSE_FILE`` set to ``port@host`` licenses MATLAB from that license manager, any other
  value is taken as the path of a license file inside the container; without it the image
  falls back to online licensing (``-licmode online``), which needs a MathWorks login;
* ``run.sh`` prints ``Licensing MATLAB using the license manager <MLM_LICENSE_FILE>.`` before
  MATLAB starts, which is why every output line is redacted.

A host-locked license is tied to a MAC address; Docker gives a container one with
``docker run --mac-address``.
"""

from __future__ import annotations

import collections
import glob
import logging
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kilosort_docker.errors import UserError
from kilosort_docker.paths import LICENSE_MOUNT
from kilosort_docker.secrets import redact

if TYPE_CHECKING:
    from kilosort_docker.containers import Volumes

log = logging.getLogger(__name__)

_NETWORK_LICENSE = re.compile(r"^(?P<port>\d{1,5})@(?P<host>[A-Za-z0-9._-]+)$")
NO_LICENSE = (
    "no MATLAB license: set MLM_LICENSE_FILE to port@host or to a license file path "
    "(or pass --license)"
)


class MatlabError(RuntimeError):
    """MATLAB ran and exited non-zero. The message is ``<where> exited with <code>: <last
    output line>``, ``where`` being ``matlab`` (local) or the image."""

    def __init__(self, where: str, exit_code: int, last_line: str) -> None:
        super().__init__(f"{where} exited with {exit_code}: {last_line}")
        self.where, self.exit_code, self.last_line = where, exit_code, last_line


@dataclass(frozen=True)
class License:
    """A MATLAB license given at run time: a server (``port@host``) or a license file.

    The value is kept out of ``repr`` so that it never reaches a log.

    Attributes:
        value: ``port@host``, or the absolute path of a license file on this host.
        kind: ``server`` or ``file``.
    """

    value: str = field(repr=False)
    kind: str = "server"  # "server" or "file"

    @property
    def server(self) -> tuple[str, int] | None:
        """``(host, port)`` for a license server, else None."""
        m = _NETWORK_LICENSE.match(self.value)
        return (m["host"], int(m["port"])) if m else None

    @property
    def needs_network(self) -> bool:
        """A server is reached over the network; a file is not."""
        return self.kind == "server"

    def container_access(self) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        """(volumes, environment) that give a container this license at run time: a file is
        mounted read-only at :data:`~kilosort_docker.paths.LICENSE_MOUNT`; a server is passed
        as ``MLM_LICENSE_FILE``."""
        if self.kind == "file":
            return (
                {self.value: {"bind": LICENSE_MOUNT, "mode": "ro"}},
                {"MLM_LICENSE_FILE": LICENSE_MOUNT},
            )
        return {}, {"MLM_LICENSE_FILE": self.value}

    def reachable(self, *, timeout_s: float = 3.0) -> str | None:
        """None when the license looks usable, else a one-line reason (without the value).

        A server must accept a TCP connection on its port within ``timeout_s`` seconds; a
        file must be readable.
        """
        if self.kind == "file":
            return None if os.access(self.value, os.R_OK) else "the license file is not readable"
        host, port = self.server  # type: ignore[misc]
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return None
        except OSError as exc:
            return f"license server {port}@<host> does not answer ({type(exc).__name__})"


def resolve_license(value: str | None = None) -> License:
    """The license from ``value``, else from ``$MLM_LICENSE_FILE``.

    Raises:
        UserError: neither is set, or the value is neither ``port@host`` nor an existing file.
    """
    value = value or os.environ.get("MLM_LICENSE_FILE") or ""
    value = value.strip()
    if not value:
        raise UserError(NO_LICENSE)
    if _NETWORK_LICENSE.match(value):
        return License(value, "server")
    if Path(value).is_file():
        return License(str(Path(value).resolve()), "file")
    raise UserError(
        "MLM_LICENSE_FILE is neither port@host nor an existing file: set MLM_LICENSE_FILE "
        "to port@host or to a license file path"
    )


def local_matlab(matlab: str = "matlab") -> Path:
    """The MATLAB executable on PATH (or at ``matlab``); UserError if there is none."""
    found = shutil.which(matlab)
    if not found:
        raise UserError(
            f"{matlab} not found on PATH: install MATLAB, or run in the kilosort3 image instead"
        )
    return Path(found)


def host_license(license: str | None, matlab: Path) -> License | None:
    """The license for a host MATLAB: ``license`` or ``$MLM_LICENSE_FILE``, else None when
    the installation holds its own ``licenses/*.lic`` (``matlab`` is ``<root>/bin/matlab``).

    Raises:
        UserError: none of these exists.
    """
    if license or os.environ.get("MLM_LICENSE_FILE"):
        return resolve_license(license)
    root = matlab.resolve().parent.parent
    if glob.glob(str(root / "licenses" / "*.lic")):
        return None
    raise UserError(NO_LICENSE)


def quote(text: str) -> str:
    """``text`` as a MATLAB char literal: ``it's`` -> ``'it''s'``."""
    return "'" + text.replace("'", "''") + "'"


def run_batch(
    statement: str,
    *,
    license: License | None,
    image: str | None = None,
    matlab: str | os.PathLike = "matlab",
    matlab_command: Sequence[str] = (),
    mac_address: str | None = None,
    volumes: Volumes | None = None,
    environment: Mapping[str, str] | None = None,
    gpu: bool = True,
    cwd: str | os.PathLike | None = None,
    as_host_user: bool = True,
    client=None,
    tail_lines: int = 20,
) -> str:
    """Run ``matlab -batch STATEMENT`` to its end; return its output (license redacted).

    With ``image`` None it runs the local ``matlab`` (a subprocess, this process's environment
    plus ``environment`` and ``MLM_LICENSE_FILE``, in ``cwd``). Otherwise it runs ``image``
    through :func:`kilosort_docker.containers.run`, its entrypoint receiving
    ``[*matlab_command, "-batch", STATEMENT]`` (``matlab_command`` is empty for images built
    on ``mathworks/matlab``, whose entrypoint is MATLAB; ``("matlab",)`` for an image whose
    entrypoint is a shell). In a container:

    * the license comes at run time only (:meth:`License.container_access`): a file mounted
      read-only, a server as ``MLM_LICENSE_FILE``;
    * the network is on only for a license server or when ``mac_address`` is given (a
      host-locked license), otherwise ``network_mode="none"``;
    * ``gpu`` asks Docker for every GPU;
    * ``as_host_user`` runs as the caller (see :func:`kilosort_docker.containers.host_user`).

    Every output line is logged at INFO as ``| line``, with the license value replaced by
    ``***`` (so is the returned output).

    Args:
        statement: MATLAB code for ``-batch`` (quote paths with :func:`quote`).
        license: from :func:`resolve_license` or :func:`host_license`; None only for a local
            MATLAB that holds its own license.
        image: image to run in; None for the local MATLAB.
        matlab: local MATLAB executable (name on PATH or path); ignored with ``image``.
        matlab_command: argv before ``-batch`` in the container; ignored without ``image``.
        mac_address: the container's MAC address, for a host-locked license.
        volumes: extra bind mounts, ``{host_path: {"bind": path, "mode": "ro"|"rw"}}``.
        environment: extra variables (never logged).
        gpu: container only: pass every GPU.
        cwd: local MATLAB only: its working folder (default: this process's).
        as_host_user: container only: run as the caller's uid:gid (root: the image's user).
        client: docker SDK client (default :func:`kilosort_docker.engine.connect`).
        tail_lines: lines kept to name the last one in :class:`MatlabError`.

    Raises:
        MatlabError: MATLAB exited non-zero (its last output line is in the message).
        UserError: no local MATLAB; a container without a license; the image is missing or
            Docker refuses to run it.
    """
    if image is None:
        return _run_local(
            statement,
            license=license,
            matlab=str(matlab),
            environment=environment,
            cwd=cwd,
            tail_lines=tail_lines,
        )
    if license is None:
        raise UserError(NO_LICENSE)
    all_volumes = {str(k): dict(v) for k, v in (volumes or {}).items()}
    license_volumes, env = license.container_access()
    all_volumes.update(license_volumes)
    env.update(environment or {})
    from kilosort_docker import containers  # the docker SDK: only for containers, so a host
    # MATLAB runs where it is not installed

    result = containers.run(
        image,
        [*matlab_command, "-batch", statement],
        volumes=all_volumes,
        environment=env,
        gpu=gpu,
        network=license.needs_network or bool(mac_address),
        mac_address=mac_address,
        as_host_user=as_host_user,
        redact=(license.value,),
        tail_lines=tail_lines,
        client=client,
    )
    if result.exit_code != 0:
        raise MatlabError(image, result.exit_code, result.last_line)
    return result.output


def _run_local(
    statement: str,
    *,
    license: License | None,
    matlab: str,
    environment: Mapping[str, str] | None,
    cwd: str | os.PathLike | None,
    tail_lines: int,
) -> str:
    exe = local_matlab(matlab)
    env = {**os.environ, **(environment or {})}
    secrets: tuple[str, ...] = ()
    if license is not None:
        env["MLM_LICENSE_FILE"] = license.value
        secrets = (license.value,)
    log.info("matlab -batch (local %s)", exe)
    proc = subprocess.Popen(
        [str(exe), "-batch", statement],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    lines: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=max(tail_lines, 1))
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            text = line.rstrip("\n")
            text = redact(text, secrets)
            lines.append(text)
            tail.append(text)
            log.info("| %s", text)
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: do not leave MATLAB running
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    if code != 0:
        last = next((t.strip() for t in reversed(tail) if t.strip()), "(no output)")
        raise MatlabError("matlab", code, last)
    return "\n".join(lines)

"""Kilosort 3 runners: ``matlab -batch "run_kilosort3(DATA, OUT)"`` in the ``kilosort3`` image
or with a local ``matlab``. The MATLAB license is given at run time and never logged."""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from kilosort_docker.errors import UserError
from kilosort_docker.groundtruth.sorters.common import (
    DATA_MOUNT,
    OUT_MOUNT,
    SortError,
    SortResult,
    check_data_folder,
    run_container,
)
from kilosort_docker.paths import LICENSE_MOUNT, MATLAB_DIR, MATLAB_MOUNT

log = logging.getLogger(__name__)

KS3_INPUTS = ("recording.bin", "ops.mat", "chanMap.mat")
_NETWORK_LICENSE = re.compile(r"^(?P<port>\d{1,5})@(?P<host>[A-Za-z0-9._-]+)$")
_NO_LICENSE = (
    "no MATLAB license: set MLM_LICENSE_FILE to port@host or to a license file path "
    "(or pass --license)"
)


@dataclass(frozen=True)
class License:
    """A MATLAB license given at run time: a server (``port@host``) or a license file.

    The value is kept out of ``repr`` so that it never reaches a log.
    """

    value: str = field(repr=False)
    kind: str = "server"  # "server" or "file"

    @property
    def server(self) -> tuple[str, int] | None:
        """``(host, port)`` for a license server, else None."""
        m = _NETWORK_LICENSE.match(self.value)
        return (m["host"], int(m["port"])) if m else None

    def container_access(self) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        """(volumes, environment) that give a container this license at run time: a file is
        mounted read-only at :data:`LICENSE_MOUNT`; a server is passed as ``MLM_LICENSE_FILE``."""
        if self.kind == "file":
            return (
                {self.value: {"bind": LICENSE_MOUNT, "mode": "ro"}},
                {"MLM_LICENSE_FILE": LICENSE_MOUNT},
            )
        return {}, {"MLM_LICENSE_FILE": self.value}

    def reachable(self, *, timeout_s: float = 3.0) -> str | None:
        """None when the license looks usable, else a one-line reason.

        A server must accept a TCP connection on its port; a file must be readable.
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
        raise UserError(_NO_LICENSE)
    if _NETWORK_LICENSE.match(value):
        return License(value, "server")
    if Path(value).is_file():
        return License(str(Path(value).resolve()), "file")
    raise UserError(
        "MLM_LICENSE_FILE is neither port@host nor an existing file: set MLM_LICENSE_FILE "
        "to port@host or to a license file path"
    )


def matlab_statement(data_dir: str, out_dir: str, *, matlab_dir: str | None = None) -> str:
    """The ``-batch`` statement: add our MATLAB folder to the path, then run_kilosort3."""

    def q(s: str) -> str:
        return "'" + s.replace("'", "''") + "'"

    add = f"addpath({q(matlab_dir)}); " if matlab_dir else ""
    return f"{add}run_kilosort3({q(data_dir)}, {q(out_dir)})"


def _read_info(out_dir: Path) -> dict:
    path = out_dir / "ks_run.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def run_kilosort3_container(
    data_dir: Path | str,
    out_dir: Path | str,
    *,
    image: str,
    license: str | None = None,
    mac_address: str | None = None,
    matlab_command: tuple[str, ...] = (),
    client=None,
) -> SortResult:
    """Sort a simulation folder with Kilosort 3 inside the ``kilosort3`` image on every GPU.

    The data folder is mounted read-only at ``/data``, ``out_dir`` at ``/out``, this
    repository's ``matlab/`` at ``/opt/kilosort-docker/matlab``. A license file is mounted
    read-only at ``/licenses/license.lic``; a server is passed as ``MLM_LICENSE_FILE``. The
    container keeps its network only for a license server (or a host-locked license with
    ``mac_address``); with a license file it runs with no network.

    Args:
        image: image tag, e.g. ``kilosort3:3.0.2``.
        license: ``port@host`` or a license file; default ``$MLM_LICENSE_FILE``.
        mac_address: the licensed MAC address for a host-locked license.
        matlab_command: argv placed before ``-batch`` (empty when the image's entrypoint
            is MATLAB, as in ``mathworks/matlab``; ``("matlab",)`` otherwise).

    Raises:
        UserError: no license, missing inputs, no Docker engine, unknown image.
        SortError: MATLAB exited non-zero.
    """
    lic = resolve_license(license)
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    check_data_folder(data_dir, KS3_INPUTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    volumes = {
        str(data_dir): {"bind": DATA_MOUNT, "mode": "ro"},
        str(out_dir): {"bind": OUT_MOUNT, "mode": "rw"},
        str(MATLAB_DIR): {"bind": MATLAB_MOUNT, "mode": "ro"},
    }
    license_volumes, env = lic.container_access()
    volumes.update(license_volumes)
    stmt = matlab_statement(DATA_MOUNT, OUT_MOUNT, matlab_dir=MATLAB_MOUNT)
    start = time.perf_counter()
    run_container(
        image,
        [*matlab_command, "-batch", stmt],
        volumes=volumes,
        environment=env,
        gpu=True,
        network=lic.kind == "server" or bool(mac_address),
        mac_address=mac_address,
        client=client,
        redact=(lic.value,),
    )
    wall = time.perf_counter() - start
    info = _read_info(out_dir)
    return SortResult("kilosort3", "container", out_dir, float(info.get("seconds", wall)), info)


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
    the installation holds its own ``licenses/*.lic``.

    Raises:
        UserError: none of these exists.
    """
    if license or os.environ.get("MLM_LICENSE_FILE"):
        return resolve_license(license)
    root = matlab.resolve().parent.parent
    if glob.glob(str(root / "licenses" / "*.lic")):
        return None
    raise UserError(_NO_LICENSE)


def run_kilosort3_host(
    data_dir: Path | str,
    out_dir: Path | str,
    *,
    license: str | None = None,
    matlab: str = "matlab",
) -> SortResult:
    """Sort a simulation folder with Kilosort 3 using a local MATLAB (Kilosort 3 and
    npy-matlab on its path, or Kilosort 3's folder in ``$KILOSORT3_PATH``).

    Raises:
        UserError: no MATLAB, no license, missing inputs.
        SortError: MATLAB exited non-zero.
    """
    exe = local_matlab(matlab)
    lic = host_license(license, exe)
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    check_data_folder(data_dir, KS3_INPUTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if lic is not None:
        env["MLM_LICENSE_FILE"] = lic.value
    stmt = matlab_statement(str(data_dir), str(out_dir), matlab_dir=str(MATLAB_DIR))
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe), "-batch", stmt],
        env=env,
        cwd=out_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    last = "(no output)"
    assert proc.stdout is not None
    for line in proc.stdout:
        text = line.rstrip("\n")
        if lic is not None:
            text = text.replace(lic.value, "***")
        if text.strip():
            last = text.strip()
        log.info("| %s", text)
    code = proc.wait()
    wall = time.perf_counter() - start
    if code != 0:
        raise SortError(f"matlab exited with {code}: {last}")
    info = _read_info(out_dir)
    return SortResult("kilosort3", "host", out_dir, float(info.get("seconds", wall)), info)

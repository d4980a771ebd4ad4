"""Running ``matlab -batch STATEMENT``, with a local MATLAB or in an image, and its license.

:func:`run_batch` is the one MATLAB runner: the Kilosort 3 sorters and ``invoke check-gpu``
both go through it. The license is given at run time only, never written into an image and
never logged.

Facts about MathWorks' images (``mathworks/matlab``; ``matlab/Dockerfile`` and
``matlab/build/run.sh``, ``utils.sh`` in https://github.com/mathworks-ref-arch/container-images):

* the entrypoint is ``tini -- /bin/run.sh`` with an empty ``CMD``; ``run.sh`` hands every
  argument it does not know to ``matlab``, so ``docker run IMAGE -batch "stmt"`` runs
  ``matlab -batch "stmt"``;
* ``MLM_LICENSE_FILE`` holding a server form (``port@host``...) licenses MATLAB from that
  license manager, any other value is taken as a license file or folder inside the
  container; without it the image falls back to online licensing (``-licmode online``),
  which needs a MathWorks login;
* ``run.sh`` supports only the image's ``matlab`` user (uid 1000, ``HOME=/home/matlab``) or
  root; the current one refuses any other non-root user ("Running as user ... is not
  supported"), so containers run as the image's user and hand their outputs back;
* MathWorks' README for the image recommends ``--shm-size=512M``;
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
import posixpath
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

#: One FlexLM server: ``port@host`` or ``@host`` (the default port range, 27000-27009).
_SERVER = re.compile(r"^(?P<port>\d{1,5})?@(?P<host>[A-Za-z0-9._-]+)$")
#: The port probed for ``@host`` and for a ``SERVER`` line without a port (FlexLM's default
#: range starts at 27000; MathWorks' network license manager installs on 27000).
DEFAULT_PORT = 27000
#: Where a license directory is mounted (a license file goes to ``LICENSE_MOUNT``).
LICENSE_DIR_MOUNT = posixpath.dirname(LICENSE_MOUNT)
NO_LICENSE = (
    "no MATLAB license: set MLM_LICENSE_FILE to port@host, @host, p@a,p@b,p@c, a "
    "colon-separated list of these, a license file or a folder of .lic files (or pass --license)"
)
_BAD_FORM = (
    "MLM_LICENSE_FILE is not a license FlexLM accepts: give port@host, @host, a three-server "
    "triad p@a,p@b,p@c, a colon-separated list of these, an existing license file or a folder "
    "of .lic files"
)


class MatlabError(RuntimeError):
    """MATLAB ran and exited non-zero. The message is ``<where> exited with <code>: <last
    output line>``, ``where`` being ``matlab`` (local) or the image."""

    def __init__(self, where: str, exit_code: int, last_line: str) -> None:
        super().__init__(f"{where} exited with {exit_code}: {last_line}")
        self.where, self.exit_code, self.last_line = where, exit_code, last_line


@dataclass(frozen=True)
class License:
    """A MATLAB license given at run time, in any form FlexLM's ``MLM_LICENSE_FILE`` takes
    (FlexNet Publisher License Administration Guide, "license search path"; MathWorks'
    "Specify the License File" documentation):

    * ``server``: ``port@host``, ``@host``, a three-server triad ``p@a,p@b,p@c``, or a
      colon-separated list of these (tried in order); passed to the container unchanged;
    * ``file``: a license file, host-locked or naming its server in ``SERVER`` lines
      (``SERVER host hostid [port]``; ``USE_SERVER`` says to use it);
    * ``directory``: a folder whose ``*.lic`` files FlexLM reads.

    Files and folders are mounted read-only. The value and the server names are kept out of
    ``repr`` so that they never reach a log.

    Attributes:
        value: the server form as given, or the absolute path of the file or folder.
        kind: ``server``, ``file`` or ``directory``.
        servers: ``(host, port)`` of every server the license names (port None: default).
    """

    value: str = field(repr=False)
    kind: str = "server"  # "server", "file" or "directory"
    servers: tuple[tuple[str, int | None], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.kind == "server" and not self.servers:
            object.__setattr__(self, "servers", parse_servers(self.value) or ())

    @property
    def server(self) -> tuple[str, int] | None:
        """``(host, port)`` of the first server the license names, else None."""
        if not self.servers:
            return None
        host, port = self.servers[0]
        return host, port or DEFAULT_PORT

    @property
    def needs_network(self) -> bool:
        """True when the license names a server (a server form, or a file or folder whose
        ``SERVER`` lines name one); a host-locked file needs none."""
        return bool(self.servers)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Strings to redact from output: the value and every server's host."""
        return (self.value, *sorted({h for h, _ in self.servers}, key=len, reverse=True))

    def container_access(self) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        """(volumes, environment) that give a container this license at run time: a file is
        mounted read-only at :data:`~kilosort_docker.paths.LICENSE_MOUNT`, a folder at
        :data:`LICENSE_DIR_MOUNT`; a server form is passed as ``MLM_LICENSE_FILE`` as it is."""
        if self.kind == "file":
            return (
                {self.value: {"bind": LICENSE_MOUNT, "mode": "ro"}},
                {"MLM_LICENSE_FILE": LICENSE_MOUNT},
            )
        if self.kind == "directory":
            return (
                {self.value: {"bind": LICENSE_DIR_MOUNT, "mode": "ro"}},
                {"MLM_LICENSE_FILE": LICENSE_DIR_MOUNT},
            )
        return {}, {"MLM_LICENSE_FILE": self.value}

    def reachable(self, *, timeout_s: float = 3.0) -> str | None:
        """None when the license looks usable, else a one-line reason (without the value).

        Files must be readable. When the license names servers they are probed in order
        until one accepts a TCP connection within ``timeout_s`` seconds; which one answered
        is logged by its position and port (never the value, never a file's content).
        """
        if self.kind == "file" and not os.access(self.value, os.R_OK):
            return "the license file is not readable: fix its permissions or pass another one"
        if not self.servers:
            return None
        for number, (host, port) in enumerate(self.servers, 1):
            try:
                with socket.create_connection((host, port or DEFAULT_PORT), timeout=timeout_s):
                    log.info(
                        "license server %d of %d (port %d) answered",
                        number,
                        len(self.servers),
                        port or DEFAULT_PORT,
                    )
                    return None
            except OSError:
                continue
        which = (
            f"the license server (port {self.servers[0][1] or DEFAULT_PORT}) does not answer"
            if len(self.servers) == 1
            else f"none of the {len(self.servers)} license servers answers"
        )
        return (
            f"{which}: check the license manager and this machine's network, or pass another "
            "--license"
        )


def parse_servers(value: str) -> tuple[tuple[str, int | None], ...] | None:
    """The servers of a FlexLM server form, in the order FlexLM tries them; None when
    ``value`` is not one. Forms: ``port@host``, ``@host``, a triad ``p@a,p@b,p@c`` (three
    servers, each with its port), and a colon-separated list of these."""
    servers: list[tuple[str, int | None]] = []
    for item in value.split(":"):
        parts = item.split(",")
        if len(parts) not in (1, 3):
            return None
        for part in parts:
            m = _SERVER.match(part.strip())
            if not m or (len(parts) == 3 and not m["port"]):
                return None
            port = int(m["port"]) if m["port"] else None
            if port is not None and not 0 < port < 65536:
                return None
            servers.append((m["host"], port))
    return tuple(servers)


def file_servers(text: str) -> tuple[tuple[str, int | None], ...]:
    """The servers named in a license file's ``SERVER`` lines (``SERVER host hostid
    [port]``, FlexLM's license file syntax); empty for a host-locked file."""
    servers: list[tuple[str, int | None]] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].upper() == "SERVER":
            port = next((int(w) for w in words[3:4] if w.isdigit()), None)
            servers.append((words[1], port))
    return tuple(servers)


def _read_license_file(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        raise UserError(
            f"cannot read the license file {path.name}: fix its permissions or pass another one"
        ) from None


def resolve_license(value: str | None = None) -> License:
    """The license from ``value``, else from ``$MLM_LICENSE_FILE``, in any form FlexLM takes
    (see :class:`License`).

    Raises:
        UserError: neither is set; the value is no form FlexLM accepts; a file or a folder's
            ``.lic`` file cannot be read; a folder holds no ``.lic`` file.
    """
    source = "--license" if value else "MLM_LICENSE_FILE"
    value = value or os.environ.get("MLM_LICENSE_FILE") or ""
    value = value.strip()
    if not value:
        raise UserError(NO_LICENSE)
    servers = parse_servers(value) if "@" in value else None
    if servers:
        return License(value, "server", servers)
    path = Path(value)
    if path.is_file():
        return License(str(path.resolve()), "file", file_servers(_read_license_file(path)))
    if path.is_dir():
        files = sorted(path.glob("*.lic"))
        if not files:
            raise UserError(
                f"the license folder {path.name} holds no .lic file: put the license file "
                "there or pass the file itself"
            )
        found = tuple(s for f in files for s in file_servers(_read_license_file(f)))
        return License(str(path.resolve()), "directory", found)
    if "@" in value or ":" in value or "," in value:
        raise UserError(_BAD_FORM)
    raise UserError(
        f"the license file {source} names ({path.name}) does not exist: give an existing "
        "license file, a folder of .lic files, or a server as port@host"
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


#: MathWorks' README for ``mathworks/matlab`` recommends ``docker run --shm-size=512M``
#: (Docker's default ``/dev/shm`` is 64 MB).
SHM_SIZE = "512m"
#: Image label naming the release profile an image was built for.
PROFILE_LABEL = "io.kilosort-docker.profile"
#: Named volume holding the CUDA JIT cache across containers (one per host).
CUDA_CACHE_VOLUME = "kilosort-docker-cuda-cache"
CUDA_CACHE_MOUNT = "/var/cache/kilosort-docker/cuda"
#: CUDA_CACHE_MAXSIZE: 4 GiB (NVIDIA's CUDA environment variables: the default is far smaller
#: than MATLAB's JIT-compiled GPU libraries).
CUDA_CACHE_MAXSIZE = str(4 * 1024**3)
#: Where the rw folders of a MATLAB container are mounted to hand their files back.
_HANDBACK_MOUNT = "/kilosort-docker-handback"


def nvidia_smi_query(fields: Sequence[str], nvidia_smi: str = "nvidia-smi") -> list[list[str]]:
    """This host's GPUs, one row of ``fields`` each, from ``nvidia-smi --query-gpu=<fields>
    --format=csv,noheader`` (NVIDIA's nvidia-smi documentation); rows that lack a field or
    whose first field is empty are left out. Empty when nvidia-smi is absent or fails."""
    exe = shutil.which(nvidia_smi)
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
    return [r for r in rows if len(r) == len(fields) and r[0]]


def gpu_compute_capability(nvidia_smi: str = "nvidia-smi") -> str | None:
    """The highest compute capability (``"9.0"``) of this host's GPUs (see
    :func:`nvidia_smi_query`); None when nvidia-smi is absent, fails or prints nothing usable."""
    found = [r[0] for r in nvidia_smi_query(["compute_cap"], nvidia_smi) if _cc(r[0]) is not None]
    return max(found, key=_cc) if found else None  # type: ignore[arg-type]


def _cc(text: str | None) -> tuple[int, int] | None:
    m = re.fullmatch(r"(\d+)\.(\d+)", (text or "").strip())
    return (int(m[1]), int(m[2])) if m else None


def needs_forward_compatibility(gpu: str | None, release_max: str | None) -> bool:
    """True when the GPU's compute capability is newer than the release supports natively
    (MathWorks' "GPU Computing Requirements"); False when either is unknown."""
    g, r = _cc(gpu), _cc(release_max)
    return g is not None and r is not None and g > r


def image_profile(client, image: str):
    """The release profile of ``image`` (its ``io.kilosort-docker.profile`` label), or None
    when the image is not on the engine or carries no known profile.

    Raises UserError when the engine cannot answer (not an absent image: an error)."""
    import docker.errors

    from kilosort_docker.images.profiles import PROFILES

    try:
        labels = client.images.get(image).labels or {}
    except docker.errors.ImageNotFound:
        return None  # the run itself says the image is missing, in its own words
    except docker.errors.DockerException as exc:
        reason = getattr(exc, "explanation", None) or str(exc)
        raise UserError(f"the Docker engine could not inspect {image}: {reason}") from None
    return PROFILES.get(labels.get(PROFILE_LABEL, ""))


def forward_compatibility(
    client, image: str, gpu_cc: str | None
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(volumes, environment) for a GPU newer than the image's release supports: MATLAB's
    CUDA forward compatibility (``MW_CUDA_FORWARD_COMPATIBILITY=1``, MathWorks' "Forward
    Compatibility for GPU Devices"), and the CUDA JIT cache on the named volume
    :data:`CUDA_CACHE_VOLUME` (``CUDA_CACHE_PATH``, ``CUDA_CACHE_MAXSIZE``) so the long
    first JIT compile happens once per host. Empty when no forward compatibility is needed."""
    profile = image_profile(client, image)
    limit = profile.max_compute_capability if profile else None
    if not needs_forward_compatibility(gpu_cc, limit):
        return {}, {}
    log.info(
        "GPU compute capability %s is newer than %s supports (%s): turning on MATLAB's CUDA "
        "forward compatibility; JIT cache on volume %s",
        gpu_cc,
        profile.matlab_release,
        limit,
        CUDA_CACHE_VOLUME,
    )
    return (
        {CUDA_CACHE_VOLUME: {"bind": CUDA_CACHE_MOUNT, "mode": "rw"}},
        {
            "MW_CUDA_FORWARD_COMPATIBILITY": "1",
            "CUDA_CACHE_PATH": CUDA_CACHE_MOUNT,
            "CUDA_CACHE_MAXSIZE": CUDA_CACHE_MAXSIZE,
        },
    )


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
    client=None,
    tail_lines: int = 20,
    compute_capability: str | None = None,
) -> str:
    """Run ``matlab -batch STATEMENT`` to its end; return its output (license redacted).

    With ``image`` None it runs the local ``matlab`` (a subprocess, this process's environment
    plus ``environment`` and ``MLM_LICENSE_FILE``, in ``cwd``). Otherwise it runs ``image``
    through :func:`kilosort_docker.containers.run`, its entrypoint receiving
    ``[*matlab_command, "-batch", STATEMENT]`` (``matlab_command`` is empty for images built
    on ``mathworks/matlab``, whose entrypoint ``tini -- /bin/run.sh`` hands its arguments to
    MATLAB; ``("matlab",)`` for an image whose entrypoint is a shell). In a container:

    * it runs as the image's own user (``matlab``, ``HOME=/home/matlab``): MathWorks'
      ``run.sh`` supports only that user or root (``matlab/build/run.sh`` in
      mathworks-ref-arch/container-images). Every ``rw`` bind-mounted folder is made
      writable for it for the run, and afterwards a short root container (the same image,
      entrypoint ``chown -R``, no network) hands every file in it to the caller's uid:gid,
      also after a timeout, an interrupt or a lost engine (whenever MATLAB may have
      written something); the folder's mode is restored on every path out;
    * ``/dev/shm`` is :data:`SHM_SIZE` (MathWorks' README for the image recommends
      ``--shm-size=512M``);
    * the license comes at run time only (:meth:`License.container_access`);
    * the network is on only when the license names a server or ``mac_address`` is given
      (a host-locked license), otherwise ``network_mode="none"``;
    * ``gpu`` asks Docker for every GPU; when this host's GPU is newer than the image's
      release supports, CUDA forward compatibility is turned on (:func:`forward_compatibility`).

    Every output line is logged at INFO as ``| line``, with the license value and its server
    names replaced by ``***`` (so is the returned output).

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
        client: docker SDK client (default :func:`kilosort_docker.engine.connect`).
        tail_lines: lines kept to name the last one in :class:`MatlabError`.
        compute_capability: the GPU's compute capability; default: read with
            :func:`gpu_compute_capability` when ``gpu`` (container only).

    Raises:
        MatlabError: MATLAB exited non-zero (its last output line is in the message).
        UserError: no local MATLAB; a container without a license; the image is missing or
            Docker refuses to run it; the outputs could not be handed back.
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
    from kilosort_docker import containers, engine  # the docker SDK: only for containers, so
    # a host MATLAB runs where it is not installed

    client = client or engine.connect()
    all_volumes = {str(k): dict(v) for k, v in (volumes or {}).items()}
    license_volumes, env = license.container_access()
    all_volumes.update(license_volumes)
    containers.check_mounts(all_volumes)  # before any work: Docker would create a missing one
    env.update(environment or {})
    cc = compute_capability or (gpu_compute_capability() if gpu else None)
    if cc:
        fc_volumes, fc_env = forward_compatibility(client, image, cc)
        if fc_volumes:
            _prepare_cache(containers, client, image)
        all_volumes.update(fc_volumes)
        env.update(fc_env)
    outputs = [
        p for p, spec in all_volumes.items() if spec.get("mode", "rw") == "rw" and os.path.isabs(p)
    ]
    with containers.opened_for_container(outputs):
        try:
            result = containers.run(
                image,
                [*matlab_command, "-batch", statement],
                volumes=all_volumes,
                environment=env,
                gpu=gpu,
                network=license.needs_network or bool(mac_address),
                mac_address=mac_address,
                shm_size=SHM_SIZE,
                redact=license.secrets,
                tail_lines=tail_lines,
                client=client,
            )
        except containers.ContainerRefused:
            raise  # nothing ran, nothing was written: nothing to hand back
        except BaseException:
            # a timeout, an interrupt, a lost engine: MATLAB may have written files already
            _hand_back(containers, client, image, outputs, strict=False)
            raise
        _hand_back(containers, client, image, outputs, strict=result.exit_code == 0)
    if result.exit_code != 0:
        raise MatlabError(image, result.exit_code, result.last_line)
    return result.output


def _hand_back(containers, client, image: str, paths: Sequence[str], *, strict: bool) -> None:
    """Give every file under ``paths`` to this process's uid:gid with a short root container
    of ``image`` (entrypoint ``chown -R``, no network): the MATLAB container wrote them as
    the image's user, and the caller need not be root."""
    if not paths:
        return
    mounts = {p: {"bind": f"{_HANDBACK_MOUNT}/{i}", "mode": "rw"} for i, p in enumerate(paths)}
    owner = f"{os.getuid()}:{os.getgid()}"
    try:
        result = containers.run(
            image,
            [owner, *(m["bind"] for m in mounts.values())],
            entrypoint=["chown", "-R"],
            user="0",
            volumes=mounts,
            stream_to_log=False,
            client=client,
        )
        ok, why = result.exit_code == 0, result.last_line
    except UserError as exc:
        ok, why = False, str(exc)
    if not ok:
        message = (
            f"could not hand the outputs back to {owner} ({why}): run "
            f"`sudo chown -R {owner} {' '.join(paths)}`"
        )
        if strict:
            raise UserError(message)
        log.warning("%s", message)


def _prepare_cache(containers, client, image: str) -> None:
    """Make the CUDA cache volume writable for the image's user (a root ``chmod 1777``)."""
    result = containers.run(
        image,
        ["1777", CUDA_CACHE_MOUNT],
        entrypoint=["chmod"],
        user="0",
        volumes={CUDA_CACHE_VOLUME: {"bind": CUDA_CACHE_MOUNT, "mode": "rw"}},
        stream_to_log=False,
        client=client,
    )
    if result.exit_code != 0:
        log.warning("could not open the CUDA cache volume: %s", result.last_line)


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
        secrets = license.secrets
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

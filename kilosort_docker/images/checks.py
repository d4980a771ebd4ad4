"""Checks that run inside built images, with no MATLAB license.

Each check is defined on one image of the stack and also runs on that image's children
(``applies_to``), the way the stack table orders them. A check returns a ``Finding`` that
says what it found, so a failure names what to fix. Containers run with the network off and
are always removed.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import docker
import docker.errors
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

from kilosort_docker.images import stack
from kilosort_docker.images.pins import Pins
from kilosort_docker.images.profiles import PROFILES, Profile
from kilosort_docker.images.stack import ImageSpec
from kilosort_docker.images.tags import LABEL_PREFIX
from kilosort_docker.paths import KILOSORT_COMMIT_FILE, KILOSORT_DIR
from kilosort_docker.paths import MEX_MANIFEST_IN_IMAGE as MANIFEST_IN_IMAGE

log = logging.getLogger(__name__)

#: Libraries the GPU driver provides at run time (NVIDIA container runtime); ldd may miss them.
DRIVER_LIBRARIES = ("libcuda.so", "libnvidia-")
#: The most a kilosort4 image may weigh (CUDA builds of PyTorch are large), in GB.
KILOSORT4_SIZE_BUDGET_GB = 12.0

_SECRET_NAMES = re.compile(
    r"(^|/)(license\.(lic|dat)|[^/]*\.lic|\.netrc|\.git-credentials|\.docker/config\.json"
    r"|\.pypirc|credentials\.json)$"
)
_SECRET_CONTENT = re.compile(
    rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"
    # FlexLM (MATLAB) license lines: features of vendor MLM, or a license server with a hostid
    rb"|^(?:INCREMENT|FEATURE) \S+ MLM \S+"
    rb"|^SERVER \S+ (?:[0-9A-Fa-f]{12}|ID=\d+|ANY)\b"
    rb'|"auths"\s*:\s*\{\s*"[^"]+"\s*:\s*\{\s*"auth"\s*:\s*"[A-Za-z0-9+/=]{8,}',
    re.MULTILINE,
)
#: Paths whose contents are not scanned: package data that legitimately carries key markers.
_SKIP_CONTENT = re.compile(
    r"(^|/)(usr/share/doc|usr/lib/python3[^/]*/test|site-packages/.*/tests?)/"
)
_SCAN_LIMIT = 1 << 20


@dataclass(frozen=True)
class Finding:
    """What one check found on one image: ``ok``, and a one-line ``detail`` either way."""

    check: str
    image: str
    ok: bool
    detail: str


@dataclass
class Target:
    """An image under test: its reference, stack entry, labels, profile and the pins it was
    built from; runs throw-away containers in it."""

    client: docker.DockerClient
    ref: str
    spec: ImageSpec
    pins: Pins
    extra_secrets: tuple[str, ...] = ()
    _image: object = field(default=None, repr=False)
    _facts: dict = field(default_factory=dict, repr=False)

    def fact(self, key: str, compute: Callable[[Target], object]):
        """``compute(self)``, computed once per image: several checks share the manifest, the
        file listing and ldd's output, each of which costs a container."""
        if key not in self._facts:
            self._facts[key] = compute(self)
        return self._facts[key]

    @property
    def image(self):
        if self._image is None:
            self._image = self.client.images.get(self.ref)
        return self._image

    @property
    def labels(self) -> dict[str, str]:
        return self.image.labels or {}

    @property
    def profile(self) -> Profile | None:
        name = self.labels.get(f"{LABEL_PREFIX}.profile")
        return PROFILES.get(name) if name else None

    def sh(self, script: str, *, user: str | None = None) -> tuple[int, str]:
        """Run ``sh -c script`` in a container (network off); returns (exit code, output)."""
        container = self.client.containers.create(
            self.image.id,
            entrypoint=["sh", "-c", script],
            user=user or "",
            network_disabled=True,
        )
        try:
            container.start()
            status = container.wait(timeout=600)["StatusCode"]
            return status, container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)

    def read_file(self, path: str) -> bytes:
        """The bytes of ``path`` inside the image; raises FileNotFoundError if absent."""
        container = self.client.containers.create(self.image.id, entrypoint=["true"])
        try:
            stream, _ = container.get_archive(path)
            data = b"".join(stream)
        except docker.errors.NotFound:
            raise FileNotFoundError(path) from None
        finally:
            container.remove(force=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.next()
            handle = tar.extractfile(member) if member else None
            if handle is None:
                raise FileNotFoundError(path)
            return handle.read()


@dataclass(frozen=True)
class ImageCheck:
    """A check defined on stack image ``image``; it also runs on that image's children."""

    name: str
    image: str
    description: str
    run: Callable[[Target], tuple[bool, str]]

    def applies_to(self, spec: ImageSpec) -> bool:
        return self.image in {a.name for a in stack.ancestry(spec.name)}


# ---- the checks -------------------------------------------------------------------------


def _non_root(target: Target) -> tuple[bool, str]:
    user = target.image.attrs["Config"].get("User") or "root"
    code, out = target.sh("id -u; id -un")
    uid, name = (out.split() + ["?", "?"])[:2]
    ok = code == 0 and uid != "0"
    return ok, f"runs as {name} (uid {uid}, USER {user})"


def _toolboxes(target: Target) -> tuple[bool, str]:
    profile = target.profile
    if profile is None:
        return False, f"no {LABEL_PREFIX}.profile label: cannot tell the MATLAB root"
    folders = {
        "Parallel_Computing_Toolbox": "parallel",
        "Signal_Processing_Toolbox": "signal",
        "Statistics_and_Machine_Learning_Toolbox": "stats",
    }
    wanted = [folders[t] for t in profile.toolboxes]
    script = "; ".join(f'[ -d "{profile.matlab_root}/toolbox/{f}" ] && echo "{f}"' for f in wanted)
    _, out = target.sh(script + "; true")
    missing = sorted(set(wanted) - set(out.split()))
    if missing:
        return False, f"missing from {profile.matlab_root}/toolbox: {', '.join(missing)}"
    return True, f"{', '.join(wanted)} present in {profile.matlab_root}/toolbox"


def _kilosort_commit(target: Target) -> tuple[bool, str]:
    label = target.labels.get(f"{LABEL_PREFIX}.kilosort.commit", "")
    try:
        recorded = target.read_file(KILOSORT_COMMIT_FILE).decode().strip()
    except FileNotFoundError:
        return False, f"{KILOSORT_COMMIT_FILE} is missing"
    pin = target.pins.kilosort3.commit
    if recorded != label:
        return False, f"checked-out commit {recorded[:12]} differs from the label {label[:12]}"
    if not target.pins.kilosort3.matches(recorded):
        return False, f"checked-out commit {recorded[:12]} is not the pinned {pin}"
    return True, f"Kilosort at {recorded[:12]} = label = pin {pin}"


def _manifest(target: Target) -> dict:
    return target.fact("manifest", lambda t: json.loads(t.read_file(MANIFEST_IN_IMAGE)))


def _present(target: Target) -> list[str]:
    """Mex files of the manifest that are in the image (the other checks look at these)."""
    found = set(target.fact("ls", lambda t: t.sh(f"ls {KILOSORT_DIR}/CUDA")[1]).split())
    return [name for name in sorted(_manifest(target)["binaries"]) if name in found]


def _mex_present(target: Target) -> tuple[bool, str]:
    try:
        names = sorted(_manifest(target)["binaries"])
    except FileNotFoundError:
        return False, f"{MANIFEST_IN_IMAGE} is missing"
    present = set(_present(target))
    missing = [n for n in names if n not in present]
    if missing:
        return False, f"missing from {KILOSORT_DIR}/CUDA: {', '.join(missing)}"
    return True, f"all {len(names)} mex files present"


def _mex_checksums(target: Target) -> tuple[bool, str]:
    binaries = _manifest(target)["binaries"]
    _, out = target.sh(f"cd {KILOSORT_DIR}/CUDA && sha256sum *.mexa64")
    found = dict(reversed(line.split(maxsplit=1)) for line in out.splitlines() if "  " in line)
    found = {name.strip(): digest for name, digest in found.items()}
    present = [n for n in sorted(binaries) if n in found]
    bad = [n for n in present if found[n] != binaries[n]["sha256"]]
    if bad:
        return False, f"sha256 differs from the manifest: {', '.join(bad)}"
    return True, f"{len(present)} checksums match the manifest"


def _elf(data: bytes) -> ELFFile:
    return ELFFile(io.BytesIO(data))


def dynamic_symbols(data: bytes) -> set[str]:
    """Names of the defined dynamic symbols of an ELF shared object."""
    elf = _elf(data)
    section = elf.get_section_by_name(".dynsym")
    if section is None:
        return set()
    return {s.name for s in section.iter_symbols() if s["st_shndx"] != "SHN_UNDEF" and s.name}


def glibcxx_needed(data: bytes) -> set[str]:
    """GLIBCXX_* versions an ELF object needs (its version-needs section)."""
    needed = set()
    for section in _elf(data).iter_sections():
        if isinstance(section, GNUVerNeedSection):
            for _, auxiliaries in section.iter_versions():
                needed.update(a.name for a in auxiliaries if a.name.startswith("GLIBCXX_"))
    return needed


def glibcxx_provided(data: bytes) -> set[str]:
    """GLIBCXX_* versions a libstdc++ defines."""
    provided = set()
    for section in _elf(data).iter_sections():
        if isinstance(section, GNUVerDefSection):
            for _, auxiliaries in section.iter_versions():
                provided.update(a.name for a in auxiliaries if a.name.startswith("GLIBCXX_"))
    return provided


def _needed_libraries(data: bytes) -> list[str]:
    for section in _elf(data).iter_sections():
        if isinstance(section, DynamicSection):
            return [t.needed for t in section.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
    return []


def _mex_exports(target: Target) -> tuple[bool, str]:
    binaries = _present(target)
    lacking = []
    for name in binaries:
        if "mexFunction" not in dynamic_symbols(target.read_file(f"{KILOSORT_DIR}/CUDA/{name}")):
            lacking.append(name)
    if lacking:
        return False, f"do not export mexFunction: {', '.join(lacking)}"
    return True, f"all {len(binaries)} export mexFunction"


def _matlab_library_path(target: Target) -> str:
    profile = target.profile
    root = profile.matlab_root if profile else "/opt/matlab"
    return ":".join(f"{root}/{p}" for p in ("bin/glnxa64", "extern/bin/glnxa64", "sys/os/glnxa64"))


def _ldd(target: Target) -> dict[str, dict[str, str]]:
    """``{mex file: {library: resolved path or 'not found'}}`` as ldd sees it with MATLAB's
    library path (run once per image)."""
    return target.fact("ldd", _run_ldd)


def _run_ldd(target: Target) -> dict[str, dict[str, str]]:
    script = (
        f'export LD_LIBRARY_PATH="{_matlab_library_path(target)}"; '
        f'for f in {KILOSORT_DIR}/CUDA/*.mexa64; do echo "== $f"; ldd "$f"; done'
    )
    _, out = target.sh(script)
    result: dict[str, dict[str, str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("== "):
            current = PurePosixPath(line[3:]).name
            result[current] = {}
        elif current and "=>" in line:
            lib, _, where = line.strip().partition(" => ")
            result[current][lib.strip()] = where.split(" (")[0].strip()
    return result


def _mex_libraries(target: Target) -> tuple[bool, str]:
    unresolved = []
    for name, libs in sorted(_ldd(target).items()):
        for lib, where in libs.items():
            if where == "not found" and not lib.startswith(DRIVER_LIBRARIES):
                unresolved.append(f"{name}: {lib}")
    if unresolved:
        return False, f"ldd cannot resolve {'; '.join(unresolved)}"
    return True, "ldd resolves every library (the GPU driver's aside) with MATLAB's path"


def _mex_glibcxx(target: Target) -> tuple[bool, str]:
    problems, checked = [], 0
    ldd = _ldd(target)
    for name in _present(target):
        needed = glibcxx_needed(target.read_file(f"{KILOSORT_DIR}/CUDA/{name}"))
        if not needed:
            continue
        where = ldd.get(name, {}).get("libstdc++.so.6")
        if not where or where == "not found":
            problems.append(f"{name} needs libstdc++ but none is found")
            continue
        provided = glibcxx_provided(target.read_file(where))
        missing = sorted(needed - provided)
        checked += 1
        if missing:
            problems.append(f"{name} needs {', '.join(missing)}, not in {where}")
    if problems:
        return False, "; ".join(problems)
    return True, f"GLIBCXX needs of {checked} mex files met by the libstdc++ MATLAB loads"


def _kilosort4_versions(target: Target) -> tuple[bool, str]:
    code, out = target.sh(
        'python -c "import sys, kilosort, torch; from importlib.metadata import version; '
        "print(sys.version_info[0], sys.version_info[1], version('kilosort'), "
        "torch.__version__.split('+')[0])\""
    )
    parts = out.split()
    if code != 0 or len(parts) < 4:
        return False, f"python cannot import kilosort and torch: {out.strip()[-200:]}"
    major, minor, ks, torch_version = parts[-4:]
    problems = []
    if (int(major), int(minor)) < (3, 10):
        problems.append(f"Python {major}.{minor} < 3.10")
    if ks != target.pins.kilosort4_version:
        problems.append(f"kilosort {ks} != pinned {target.pins.kilosort4_version}")
    if torch_version != target.pins.torch_version:
        problems.append(f"torch {torch_version} != pinned {target.pins.torch_version}")
    detail = f"Python {major}.{minor}, kilosort {ks}, torch {torch_version}"
    return (not problems, "; ".join(problems) if problems else detail)


def _size_budget(target: Target) -> tuple[bool, str]:
    size = int(target.image.attrs.get("Size", 0)) / 1e9
    if target.spec.kilosort == "kilosort4":
        budget = KILOSORT4_SIZE_BUDGET_GB
    else:
        profile = target.profile
        budget = profile.image_size_budget_gb if profile else 0.0
    ok = size <= budget
    return ok, f"{size:.2f} GB {'within' if ok else 'over'} the {budget:.1f} GB budget"


class _Chunks(io.RawIOBase):
    """A file-like view of an iterator of byte chunks (``image.save()``)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._buffer = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size], self._buffer = self._buffer[:size], self._buffer[size:]
        return size


def scan_for_secrets(chunks: Iterable[bytes], *, extra: Iterable[str] = ()) -> list[str]:
    """Secrets found in a ``docker save`` stream: every layer, the image config and history.

    Looks for secret-looking file names (``*.lic``, ``.docker/config.json``, ...), private
    keys, FlexLM license lines, registry auths, and the ``extra`` strings. Returns one line
    per finding (``layer/path: what``), never the secret itself.
    """
    extras = [s.encode() for s in extra if s and len(s) >= 6]
    findings: list[str] = []

    def scan_bytes(where: str, data: bytes) -> None:
        if _SECRET_CONTENT.search(data):
            findings.append(f"{where}: looks like a key, license or registry login")
        for i, secret in enumerate(extras):
            if secret in data:
                findings.append(f"{where}: holds secret #{i + 1}")

    stream = io.BufferedReader(_Chunks(iter(chunks)), buffer_size=1 << 20)
    with tarfile.open(fileobj=stream, mode="r|") as outer:
        for member in outer:
            handle = outer.extractfile(member) if member.isfile() else None
            if handle is None:
                continue
            if member.name.endswith("layer.tar"):
                layer = member.name.split("/")[0][:12]
                with tarfile.open(fileobj=handle, mode="r|") as inner:
                    for entry in inner:
                        path = entry.name.lstrip("./")
                        if _SECRET_NAMES.search(path) and not path.endswith(".wh..wh..opq"):
                            findings.append(f"layer {layer}/{path}: a secret-looking file")
                        if (
                            entry.isfile()
                            and entry.size <= _SCAN_LIMIT
                            and not _SKIP_CONTENT.search(path)
                        ):
                            data = inner.extractfile(entry).read()
                            scan_bytes(f"layer {layer}/{path}", data)
            elif member.name.endswith(".json"):
                scan_bytes(f"image metadata {member.name[:20]}", handle.read())
    return findings


def _no_secrets(target: Target) -> tuple[bool, str]:
    findings = scan_for_secrets(target.image.save(), extra=target.extra_secrets)
    history = json.dumps(target.client.api.history(target.image.id)).encode()
    for i, secret in enumerate(s for s in target.extra_secrets if len(s) >= 6):
        if secret.encode() in history:
            findings.append(f"docker history: holds secret #{i + 1}")
    if findings:
        shown = "; ".join(findings[:5]) + (
            f" (+{len(findings) - 5} more)" if len(findings) > 5 else ""
        )
        return False, shown
    return True, "no license, key, token or registry login in any layer or the history"


CHECKS: tuple[ImageCheck, ...] = (
    ImageCheck("non-root", "matlab-toolboxes", "runs as a non-root user", _non_root),
    ImageCheck("non-root", "kilosort4", "runs as a non-root user", _non_root),
    ImageCheck(
        "toolboxes", "matlab-toolboxes", "the three toolboxes are in the MATLAB root", _toolboxes
    ),
    ImageCheck(
        "kilosort-commit",
        "kilosort3-code",
        "the checked-out Kilosort commit equals the pin and the label",
        _kilosort_commit,
    ),
    ImageCheck(
        "mex-present", "kilosort3", "every mex file of the manifest is present", _mex_present
    ),
    ImageCheck(
        "mex-checksums", "kilosort3", "every mex file matches its manifest checksum", _mex_checksums
    ),
    ImageCheck("mex-exports", "kilosort3", "every mex file exports mexFunction", _mex_exports),
    ImageCheck(
        "mex-libraries",
        "kilosort3",
        "ldd resolves every library but the GPU driver's",
        _mex_libraries,
    ),
    ImageCheck(
        "mex-glibcxx",
        "kilosort3",
        "the libstdc++ MATLAB loads provides every GLIBCXX version needed",
        _mex_glibcxx,
    ),
    ImageCheck(
        "kilosort4-versions",
        "kilosort4",
        "Python >= 3.10 with kilosort and torch at the pinned versions",
        _kilosort4_versions,
    ),
    ImageCheck(
        "no-secrets",
        "matlab-toolboxes",
        "no license, token or credential in any layer or the history",
        _no_secrets,
    ),
    ImageCheck(
        "no-secrets",
        "kilosort4",
        "no license, token or credential in any layer or the history",
        _no_secrets,
    ),
    ImageCheck("size-budget", "kilosort3", "image size within the profile's budget", _size_budget),
    ImageCheck("size-budget", "kilosort4", "image size within its budget", _size_budget),
)


def checks_for(spec: ImageSpec) -> list[ImageCheck]:
    """The checks that run on ``spec``: its own and its parents'."""
    return [check for check in CHECKS if check.applies_to(spec)]


def run_checks(
    client: docker.DockerClient,
    ref: str,
    *,
    pins: Pins,
    spec: ImageSpec | None = None,
    only: Iterable[str] | None = None,
    extra_secrets: Iterable[str] = (),
) -> list[Finding]:
    """Run every check that applies to image ``ref`` (its stack entry from the labels unless
    ``spec`` is given); ``only`` limits them by name. A check that crashes is a failure."""
    if spec is None:
        image = client.images.get(ref)
        spec = stack.get_image((image.labels or {}).get(f"{LABEL_PREFIX}.image", ""))
    target = Target(client, ref, spec, pins, tuple(extra_secrets))
    wanted = set(only) if only else None
    findings = []
    for check in checks_for(spec):
        if wanted and check.name not in wanted:
            continue
        try:
            ok, detail = check.run(target)
        except Exception as exc:  # a check that cannot run has failed, and says why
            ok, detail = False, f"could not run: {type(exc).__name__}: {exc}"
        log.info("%s %s on %s: %s", "PASS" if ok else "FAIL", check.name, ref, detail)
        findings.append(Finding(check.name, ref, ok, detail))
    return findings

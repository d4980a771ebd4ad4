"""Checks that run inside built images, with no MATLAB license.

Each image's entry in the stack table (:mod:`kilosort_docker.images.entries`) carries its own
checks; a parent's checks also run on its children. This module holds what they share: the
image under test (throw-away containers with the network off, always removed), the ELF readers,
the secret scan, the checks every root image carries, and the runner. A check returns
``(ok, detail)``; ``detail`` says what it found either way, so a failure names what to fix.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import docker
import docker.errors
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

from kilosort_docker import containers, secrets
from kilosort_docker.images.pins import Pins
from kilosort_docker.images.profiles import PROFILES, Profile
from kilosort_docker.images.spec import ImageCheck, ImageSpec, Stack
from kilosort_docker.images.tags import LABEL_PREFIX

log = logging.getLogger(__name__)

#: Paths whose contents are not scanned: package data that legitimately carries key markers.
_SKIP_CONTENT = r"(^|/)(usr/share/doc|usr/lib/python3[^/]*/test|site-packages/.*/tests?)/"
_SCAN_LIMIT = 1 << 20


@dataclass(frozen=True)
class Finding:
    """What one check found on one image: ``ok``, and a one-line ``detail`` either way."""

    check: str
    image: str
    ok: bool
    detail: str


@dataclass
class ImageUnderTest:
    """An image under test: its reference, stack entry, labels, profile and the pins it was
    built from; runs throw-away containers in it."""

    client: docker.DockerClient
    ref: str
    spec: ImageSpec
    pins: Pins
    extra_secrets: tuple[str, ...] = ()
    _image: object = field(default=None, repr=False)
    _facts: dict = field(default_factory=dict, repr=False)

    def fact(self, key: str, compute: Callable[[ImageUnderTest], object]):
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
        """Run ``sh -c script`` in a container (network off, at most 10 minutes); returns
        (exit code, output)."""
        done = containers.run(
            self.image.id,
            None,
            entrypoint=["sh", "-c", script],
            user=user,
            client=self.client,
            stream_to_log=False,
            timeout_s=600,
        )
        return done.exit_code, done.output

    def read_file(self, path: str) -> bytes:
        """The bytes of ``path`` inside the image; raises FileNotFoundError if absent."""
        with containers.created(self.image.id, client=self.client) as container:
            return containers.read_file(container, path)


# ---- checks every root image carries ------------------------------------------------------


def _non_root(target: ImageUnderTest) -> tuple[bool, str]:
    user = target.image.attrs["Config"].get("User") or "root"
    code, out = target.sh("id -u; id -un")
    uid, name = (out.split() + ["?", "?"])[:2]
    ok = code == 0 and uid != "0"
    return ok, f"runs as {name} (uid {uid}, USER {user})"


def _no_secrets(target: ImageUnderTest) -> tuple[bool, str]:
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


NON_ROOT = ImageCheck("non-root", "runs as a non-root user", _non_root)
NO_SECRETS = ImageCheck(
    "no-secrets", "no license, token or credential in any layer or the history", _no_secrets
)


def _size_budget(target: ImageUnderTest, budget: float) -> tuple[bool, str]:
    size = int(target.image.attrs.get("Size", 0)) / 1e9
    ok = size <= budget
    return ok, f"{size:.2f} GB {'within' if ok else 'over'} the {budget:.1f} GB budget"


# ---- ELF readers ----------------------------------------------------------------------------


def _elf(data: bytes) -> ELFFile:
    return ELFFile(io.BytesIO(data))


def dynamic_symbols(data: bytes) -> set[str]:
    """Names of the defined dynamic symbols of an ELF shared object."""
    elf = _elf(data)
    section = elf.get_section_by_name(".dynsym")
    if section is None:
        return set()
    return {s.name for s in section.iter_symbols() if s["st_shndx"] != "SHN_UNDEF" and s.name}


def _glibcxx_versions(data: bytes, kind: type) -> set[str]:
    """The GLIBCXX_* names in an ELF object's version sections of ``kind``."""
    found = set()
    for section in _elf(data).iter_sections():
        if isinstance(section, kind):
            for _, auxiliaries in section.iter_versions():
                found.update(a.name for a in auxiliaries if a.name.startswith("GLIBCXX_"))
    return found


def elf_glibcxx_needed(data: bytes) -> set[str]:
    """GLIBCXX_* versions an ELF object needs (its version-needs section)."""
    return _glibcxx_versions(data, GNUVerNeedSection)


def glibcxx_provided(data: bytes) -> set[str]:
    """GLIBCXX_* versions a libstdc++ defines (its version-definitions section)."""
    return _glibcxx_versions(data, GNUVerDefSection)


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
        if secrets.SECRET_CONTENT.search(data):
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
                        if secrets.is_secret_path(path) and not path.endswith(".wh..wh..opq"):
                            findings.append(f"layer {layer}/{path}: a secret-looking file")
                        if (
                            entry.isfile()
                            and entry.size <= _SCAN_LIMIT
                            and not re.search(_SKIP_CONTENT, path)
                        ):
                            data = inner.extractfile(entry).read()
                            scan_bytes(f"layer {layer}/{path}", data)
            elif member.name.endswith(".json"):
                scan_bytes(f"image metadata {member.name[:20]}", handle.read())
    return findings


# ---- the runner -----------------------------------------------------------------------------


def _stack(stack: Stack | None) -> Stack:
    if stack is not None:
        return stack
    from kilosort_docker.images.stack import STACK  # the table imports the entries, which
    # import this module for the shared checks

    return STACK


def checks_for(spec: ImageSpec, *, stack: Stack | None = None) -> list[ImageCheck]:
    """The checks that run on ``spec``: its parents' and its own, plus ``size-budget`` when the
    entry has a budget."""
    found = list(_stack(stack).checks_for(spec.name))
    if spec.size_budget_gb is not None:
        found.append(ImageCheck("size-budget", "image size within its budget", _budget_of(spec)))
    return found


def _budget_of(spec: ImageSpec) -> Callable[[ImageUnderTest], tuple[bool, str]]:
    def run(target: ImageUnderTest) -> tuple[bool, str]:
        return _size_budget(target, spec.size_budget_gb(target.profile))

    return run


def run_checks(
    client: docker.DockerClient,
    ref: str,
    *,
    pins: Pins,
    spec: ImageSpec | None = None,
    only: Iterable[str] | None = None,
    extra_secrets: Iterable[str] = (),
    stack: Stack | None = None,
) -> list[Finding]:
    """Run every check that applies to image ``ref`` (its stack entry from the labels unless
    ``spec`` is given); ``only`` limits them by name. A check that crashes is a failure."""
    if spec is None:
        image = client.images.get(ref)
        spec = _stack(stack).get((image.labels or {}).get(f"{LABEL_PREFIX}.image", ""))
    target = ImageUnderTest(client, ref, spec, pins, tuple(extra_secrets))
    wanted = set(only) if only else None
    findings = []
    for check in checks_for(spec, stack=stack):
        if wanted and check.name not in wanted:
            continue
        try:
            ok, detail = check.run(target)
        except Exception as exc:  # a check that cannot run has failed, and says why
            ok, detail = False, f"could not run: {type(exc).__name__}: {exc}"
        log.info("%s %s on %s: %s", "PASS" if ok else "FAIL", check.name, ref, detail)
        findings.append(Finding(check.name, ref, ok, detail))
    return findings

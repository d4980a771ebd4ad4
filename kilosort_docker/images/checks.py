"""Checks that run inside built images, with no MATLAB license.

Each image's entry in the stack table (:mod:`kilosort_docker.images.entries`) carries its own
checks; a parent's checks also run on its children. This module holds what they share: the
image under test (throw-away containers with the network off, always removed), the ELF readers,
the secret scan, the checks every root image carries, and the runner. A check returns
``(ok, detail)``; ``detail`` says what it found either way, so a failure names what to fix.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import docker
import docker.errors
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

from kilosort_docker import containers, secrets
from kilosort_docker.errors import UserError
from kilosort_docker.images.pins import Pins
from kilosort_docker.images.profiles import PROFILES, Profile
from kilosort_docker.images.spec import ImageCheck, ImageSpec, Stack
from kilosort_docker.images.tags import LABEL_PREFIX

log = logging.getLogger(__name__)

#: Paths whose contents are not scanned: package data that legitimately carries key markers.
_SKIP_CONTENT = r"(^|/)(usr/share/doc|usr/lib/python3[^/]*/test|site-packages/.*/tests?)/"
_SCAN_LIMIT = 1 << 20


class CheckCannotRun(Exception):
    """A check could not compare what it checks (a file missing or unreadable, a tool absent
    from the image): the runner reports the message as a failure, ``could not run: ...``."""


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
        """The bytes of the regular file ``path`` inside the image, following symbolic links
        (:func:`read_following_links`); raises FileNotFoundError if absent, BrokenLink if a
        link leads nowhere."""
        return self.read_resolved(path)[1]

    def read_resolved(self, path: str) -> tuple[str, bytes]:
        """``(the regular file path leads to, its bytes)`` inside the image."""
        with containers.created(self.image.id, client=self.client) as container:
            return read_following_links(container, path)

    def read_folder(self, folder: str) -> dict[str, bytes]:
        """``{name: bytes}`` of the regular files directly in ``folder`` inside the image, a
        symbolic link read as the file it leads to (one archive of the folder, one container).

        Raises:
            FileNotFoundError: ``folder`` is absent; BrokenLink: a link in it leads nowhere.
        """
        with containers.created(self.image.id, client=self.client) as container:
            chain = [folder]
            for _ in range(MAX_LINKS + 1):  # the folder itself may be a link
                data = containers.archive(container, chain[-1])
                with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                    first = tar.next()
                if first is None or not first.issym():
                    break
                chain.append(link_target(chain[-1], first.linkname))
            else:
                raise BrokenLink(f"{' -> '.join(chain[:4])} ...: more than {MAX_LINKS} links")
            folder = chain[-1]
            found: dict[str, bytes] = {}
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                members = tar.getmembers()
                top = members[0].name.rstrip("/") if members else ""
                for member in members:
                    name = member.name[len(top) + 1 :] if member.name != top else ""
                    if not name or "/" in name:
                        continue
                    if member.isfile() or member.islnk():
                        found[name] = tar.extractfile(member).read()
                    elif member.issym():
                        found[name] = read_following_links(container, f"{folder}/{name}")[1]
            return found


# ---- files in images, links followed -------------------------------------------------------

#: The most symbolic links followed for one path, as Linux's path walk allows (MAXSYMLINKS,
#: ``include/linux/namei.h``).
MAX_LINKS = 40


class BrokenLink(FileNotFoundError):
    """A symbolic link in an image leads to nothing, or round in a loop."""


def link_target(path: str, linkname: str) -> str:
    """Where the symbolic link ``path`` (absolute, inside an image) points: ``linkname``
    itself when absolute, else ``linkname`` relative to the link's folder; normalised
    (``..`` taken lexically; the engine resolves links among the folders of the result)."""
    joined = (
        linkname if linkname.startswith("/") else posixpath.join(posixpath.dirname(path), linkname)
    )
    return posixpath.normpath("/" + joined.lstrip("/"))


def read_following_links(container, path: str, *, max_links: int = MAX_LINKS) -> tuple[str, bytes]:
    """``(regular file path, bytes)`` of ``path`` in ``container``, following symbolic links.

    The engine's archive of a symbolic link holds the link, not its target (``docker cp``
    semantics), and a tar reader then looks for the target inside that one-entry archive
    (Python's tarfile: ``KeyError: linkname ... not found``). Here each link's target is
    read from the container's own filesystem instead: absolute targets from its root,
    relative ones from the link's folder, chains up to ``max_links`` links.

    Raises:
        FileNotFoundError: ``path`` is absent or not a regular file.
        BrokenLink: a link leads to nothing, to something not a regular file, or round a
            loop (the message shows the chain).
    """
    chain = [path]
    current = path
    for _ in range(max_links + 1):
        try:
            data = containers.archive(container, current)
        except FileNotFoundError:
            if len(chain) == 1:
                raise
            raise BrokenLink(f"{' -> '.join(chain)}: {current} does not exist") from None
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.next()
            if member is not None and member.issym():
                current = link_target(current, member.linkname)
                chain.append(current)
                continue
            if member is not None and member.isfile():
                return current, tar.extractfile(member).read()
        if len(chain) == 1:
            raise FileNotFoundError(f"{path} is not a regular file")
        raise BrokenLink(f"{' -> '.join(chain)}: not a regular file")
    raise BrokenLink(f"{' -> '.join(chain[:4])} ...: more than {max_links} symbolic links")


# ---- checks every root image carries ------------------------------------------------------


def _non_root(target: ImageUnderTest) -> tuple[bool, str]:
    user = target.image.attrs["Config"].get("User") or "root"
    code, out = target.sh("id -u; id -un")
    parts = out.split()
    if code != 0 or len(parts) != 2 or not parts[0].isdigit():
        shown = out.strip().splitlines()[-1][:200] if out.strip() else "no output"
        return False, f"could not tell the user (USER {user}): `id` exited {code}: {shown}"
    uid, name = parts
    return uid != "0", f"runs as {name} (uid {uid}, USER {user})"


def _no_secrets(target: ImageUnderTest) -> tuple[bool, str]:
    scan = scan_saved_image(target.image.save(), extra=target.extra_secrets)
    findings = list(scan.findings)
    history = json.dumps(target.client.api.history(target.image.id)).encode()
    for i, secret in enumerate(s for s in target.extra_secrets if len(s) >= 6):
        if secret.encode() in history:
            findings.append(f"docker history: holds secret #{i + 1}")
    findings += scan.incomplete
    if findings:
        shown = "; ".join(findings[:5]) + (
            f" (+{len(findings) - 5} more)" if len(findings) > 5 else ""
        )
        return False, shown
    return True, (
        f"no license, key, token or registry login in {scan.layers_scanned} of "
        f"{scan.layers_listed} layers ({scan.files_read} files read, "
        f"{scan.files_named_only} over {_SCAN_LIMIT >> 20} MiB checked by name), the "
        "image config or the history"
    )


NON_ROOT = ImageCheck("non-root", "runs as a non-root user", _non_root)
NO_SECRETS = ImageCheck(
    "no-secrets", "no license, token or credential in any layer or the history", _no_secrets
)


def _size_budget(target: ImageUnderTest, budget: float) -> tuple[bool, str]:
    size_bytes = target.image.attrs.get("Size")
    if not isinstance(size_bytes, int) or size_bytes <= 0:
        return False, f"the engine reports no size for the image (Size={size_bytes!r})"
    if not budget or budget <= 0:
        return False, (
            f"no size budget for this image (no {LABEL_PREFIX}.profile label naming a profile)"
        )
    size = size_bytes / 1e9
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


def glibcxx_key(version: str) -> tuple[int, ...]:
    """Sort key of a ``GLIBCXX_3.4.30`` version name (numeric, part by part)."""
    return tuple(int(p) for p in re.findall(r"\d+", version))


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


@dataclass(frozen=True)
class SecretScan:
    """What :func:`scan_saved_image` found and what it read.

    Attributes:
        findings: one line per secret found (``layer/path: what``), never the secret itself.
        incomplete: one line per thing it could not read (a layer ``manifest.json`` lists
            but the archive lacks or that is no tar, or no ``manifest.json`` at all); the
            scan did not cover the image unless this is empty.
        layers_listed: layers the saved image's ``manifest.json`` lists.
        layers_scanned: of those, layers read to their end.
        files_read: regular files whose contents were scanned.
        files_named_only: files over the size limit, checked by name only.
    """

    findings: tuple[str, ...]
    incomplete: tuple[str, ...]
    layers_listed: int
    layers_scanned: int
    files_read: int
    files_named_only: int


def _layer_id(name: str) -> str:
    """A short name for a layer: ``<id>/layer.tar`` (docker's own format) or
    ``blobs/sha256/<digest>`` (OCI layout, Docker 25 and later)."""
    parts = name.split("/")
    return (parts[-1] if parts[0] == "blobs" else parts[0])[:12]


def scan_for_secrets(chunks: Iterable[bytes], *, extra: Iterable[str] = ()) -> list[str]:
    """One line per secret found in a ``docker save`` stream (:func:`scan_saved_image`), and
    one per part of it that could not be read: empty only when the whole image was read
    and held no secret."""
    scan = scan_saved_image(chunks, extra=extra)
    return [*scan.findings, *scan.incomplete]


def scan_saved_image(chunks: Iterable[bytes], *, extra: Iterable[str] = ()) -> SecretScan:
    """Secrets found in a ``docker save`` stream: every layer, the image config and history.

    Looks for secret-looking file names (``*.lic``, ``.docker/config.json``, ...), private
    keys, FlexLM license lines, registry auths, and the ``extra`` strings. Reads both layouts
    ``docker save`` writes: ``<id>/layer.tar`` beside ``<id>.json``, and the OCI image layout
    (``blobs/sha256/<digest>``, layers possibly compressed). Every member is read: a tar is
    a layer, anything else metadata. The layers ``manifest.json`` lists are then counted
    against those read, so a layout this does not understand is incomplete, never clean.
    """
    extras = [s.encode() for s in extra if s and len(s) >= 6]
    findings: list[str] = []
    counts = {"read": 0, "named": 0}
    layers: set[str] = set()
    listed: list[str] | None = None

    def scan_bytes(where: str, data: bytes) -> None:
        if secrets.SECRET_CONTENT.search(data):
            findings.append(f"{where}: looks like a key, license or registry login")
        for i, secret in enumerate(extras):
            if secret in data:
                findings.append(f"{where}: holds secret #{i + 1}")

    def scan_layer(name: str, inner: tarfile.TarFile) -> None:
        layer = _layer_id(name)
        for entry in inner:
            path = entry.name.lstrip("./")
            if secrets.is_secret_path(path) and not path.endswith(".wh..wh..opq"):
                findings.append(f"layer {layer}/{path}: a secret-looking file")
            if not entry.isfile() or re.search(_SKIP_CONTENT, path):
                continue
            if entry.size > _SCAN_LIMIT:
                counts["named"] += 1
                continue
            counts["read"] += 1
            scan_bytes(f"layer {layer}/{path}", inner.extractfile(entry).read())
        layers.add(name)

    stream = io.BufferedReader(_Chunks(iter(chunks)), buffer_size=1 << 20)
    with tarfile.open(fileobj=stream, mode="r|") as outer:
        for member in outer:
            handle = outer.extractfile(member) if member.isfile() else None
            if handle is None:
                continue
            if member.size > _SCAN_LIMIT:  # only layers are this large
                try:
                    with tarfile.open(fileobj=handle, mode="r|*") as inner:
                        scan_layer(member.name, inner)
                except tarfile.TarError:
                    log.debug("%s is not a tar archive", member.name)
                continue
            data, path = handle.read(), member.name
            if path == "manifest.json":  # the saved image's index of its layers
                with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
                    listed = [layer for entry in json.loads(data) for layer in entry["Layers"]]
            try:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as inner:
                    scan_layer(member.name, inner)
            except tarfile.TarError:
                scan_bytes(f"image metadata {member.name[:40]}", data)
    if listed is None:
        incomplete = ["the saved image has no readable manifest.json: its layers are unknown"]
        listed = []
    else:
        incomplete = [
            f"layer {_layer_id(n)} ({n}) could not be read" for n in listed if n not in layers
        ]
    return SecretScan(
        tuple(findings),
        tuple(incomplete),
        len(listed),
        sum(1 for n in listed if n in layers),
        counts["read"],
        counts["named"],
    )


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
    ``spec`` is given); ``only`` limits them by name (UserError for a name that is not one
    of them). A check that crashes is a failure, and so is an image no check applies to."""
    if spec is None:
        image = client.images.get(ref)
        spec = _stack(stack).get((image.labels or {}).get(f"{LABEL_PREFIX}.image", ""))
    target = ImageUnderTest(client, ref, spec, pins, tuple(extra_secrets))
    applicable = checks_for(spec, stack=stack)
    wanted = set(only) if only else None
    unknown = sorted((wanted or set()) - {check.name for check in applicable})
    if unknown:
        raise UserError(
            f"no check {', '.join(unknown)} for {spec.name}: choose from "
            f"{', '.join(check.name for check in applicable)}"
        )
    if not applicable:  # nothing checked is no pass
        return [Finding("checks", ref, False, f"no check applies to {spec.name}")]
    findings = []
    for check in applicable:
        if wanted and check.name not in wanted:
            continue
        try:
            ok, detail = check.run(target)
        except CheckCannotRun as exc:
            ok, detail = False, f"could not run: {exc}"
        except Exception as exc:  # a check that cannot run has failed, and says why
            ok, detail = False, f"could not run: {type(exc).__name__}: {exc}"
        log.info("%s %s on %s: %s", "PASS" if ok else "FAIL", check.name, ref, detail)
        findings.append(Finding(check.name, ref, ok, detail))
    return findings

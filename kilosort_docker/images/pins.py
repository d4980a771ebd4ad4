"""Pinned upstream versions, read from ``kilosort-docker.toml`` and ``VERSION``.

``VERSION`` holds ``<Kilosort3 version>-<build>``, e.g. ``3.0.2-1``. The build number only
ever grows, so tags that carry it (``kilosort3:3.0.2-r2022b-b1``) are never reused.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import tomllib
from packaging.version import InvalidVersion, Version

from kilosort_docker.errors import UserError
from kilosort_docker.images import references
from kilosort_docker.paths import ROOT

log = logging.getLogger(__name__)

CONFIG_FILE = ROOT / "kilosort-docker.toml"
VERSION_FILE = ROOT / "VERSION"

_VERSION_RE = re.compile(r"^(?P<kilosort>\d+\.\d+(?:\.\d+)?)-(?P<build>[1-9]\d*)$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")
_FULL_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
#: git check-ref-format's rules for one tag name (git-check-ref-format(1)): no control
#: characters, space, ``~^:?*[\``, ``..``, ``@{``, and no ``/``-, ``.``- or ``.lock``-edges.
_TAG_NAME_RE = re.compile(r"^(?!.*(?:\.\.|@\{|//|/\.|\.lock/))[^\x00-\x20\x7f~^:?*\[\\]+$")


@dataclass(frozen=True)
class GitPin:
    """A git repository pinned at a commit (7 to 40 hex digits; a prefix is verified)."""

    repository: str
    commit: str
    tag: str | None = None
    version: str | None = None

    def matches(self, full_commit: str) -> bool:
        """True if ``full_commit`` (40 hex digits) is the pinned commit."""
        return full_commit.lower().startswith(self.commit.lower())

    def same_commit(self, commit: str) -> bool:
        """True if ``commit`` (7-40 hex digits, any case) names the pinned commit: a short and
        a full sha of one commit are the same pin."""
        return same_commit(self.commit, commit)


@dataclass(frozen=True)
class Release:
    """The project release in ``VERSION``: ``kilosort`` version and ``build`` number."""

    kilosort: str
    build: int

    def __str__(self) -> str:
        return f"{self.kilosort}-{self.build}"

    @classmethod
    def parse(cls, text: str) -> Release:
        """Parse ``3.0.2-1``; raises UserError naming the expected form."""
        match = _VERSION_RE.match(text.strip())
        if not match:
            raise UserError(
                f"malformed VERSION {text.strip()!r}: write <kilosort version>-<build>, "
                "e.g. 3.0.2-1"
            )
        return cls(match["kilosort"], int(match["build"]))


@dataclass(frozen=True)
class Pins:
    """Everything ``kilosort-docker.toml`` and ``VERSION`` pin."""

    kilosort3: GitPin
    npy_matlab: GitPin
    kilosort4_version: str
    torch_version: str
    spikeinterface_version: str
    python_base_image: str
    namespace: str
    source_url: str
    release: Release


def check_commit(value: object, where: str = "--kilosort-commit") -> str:
    """``value`` as a lower-case commit name (the canonical form: ``C43F524`` is ``c43f524``);
    raises UserError unless it is 7-40 hex digits."""
    text = str(value).strip().lower()
    if not _COMMIT_RE.match(text):
        raise UserError(f"{where}: commit {value!r} is not 7-40 hex digits: give a commit hash")
    return text


def check_full_commit(value: object, where: str) -> str:
    """``value`` as a lower-case 40-hex commit (what a git host's API must return); raises
    UserError naming ``where`` otherwise."""
    text = str(value).strip().lower() if isinstance(value, str) else ""
    if not _FULL_COMMIT_RE.match(text):
        raise UserError(
            f"{where}: {value!r} is not a commit (40 hex digits): check the API URL or mirror"
        )
    return text


def same_commit(a: str, b: str) -> bool:
    """True if the commit names ``a`` and ``b`` (7-40 hex digits, any case) name one commit:
    one is a prefix of the other."""
    a, b = a.strip().lower(), b.strip().lower()
    if not (_COMMIT_RE.match(a) and _COMMIT_RE.match(b)):
        return False
    return a.startswith(b) or b.startswith(a)


def check_tag_name(value: object, where: str) -> str:
    """``value`` as a git tag name (``v3.0.3``; a ``refs/tags/`` prefix is dropped); raises
    UserError if git would not accept it as a tag (git-check-ref-format(1))."""
    text = value.strip() if isinstance(value, str) else ""
    text = text.removeprefix("refs/tags/")
    if (
        not text
        or not _TAG_NAME_RE.match(text)
        or text.startswith(("-", "/", "."))
        or text.endswith(("/", ".", ".lock"))
    ):
        raise UserError(f"{where}: {value!r} is not a git tag name: check the tag")
    return text


def canonical_version(value: object, where: str) -> str:
    """``value`` (``4.1.7``, ``v4.1.07``) in PEP 440's normal form through ``packaging``
    (``4.1.7``); raises UserError if it is not a version."""
    text = value.strip() if isinstance(value, str) else ""
    try:
        return str(Version(text))
    except InvalidVersion:
        raise UserError(f"{where}: {value!r} is not a version: give e.g. 4.1.7") from None


def commit_folder(parent: Path, commit: str) -> Path:
    """``parent/<commit>``, or the folder already in ``parent`` named by another form of that
    commit (``c43f524`` for ``c43f52452e47...``): a short and a full sha find the same
    ``mex-binaries/<profile>/<commit>/``. Raises UserError if two folders name it."""
    if parent.is_dir():
        found = sorted(
            child
            for child in parent.iterdir()
            if child.is_dir() and same_commit(child.name, commit)
        )
        if len(found) > 1:
            names = ", ".join(child.name for child in found)
            raise UserError(
                f"{parent} holds several folders for commit {commit} ({names}): keep one"
            )
        if found:
            return found[0]
    return parent / commit


def with_commits(
    pins: Pins, *, kilosort_commit: str | None = None, npy_matlab_commit: str | None = None
) -> Pins:
    """``pins`` with other Kilosort or npy-matlab commits (testing a fix); a Kilosort commit
    drops the pinned tag. A commit that names the pinned one (a longer, shorter or upper-case
    sha of it) keeps the pin as written, tag included. Raises UserError unless each commit is
    7-40 hex digits."""
    if kilosort_commit:
        commit = check_commit(kilosort_commit)
        if pins.kilosort3.same_commit(commit):
            log.debug("--kilosort-commit %s is the pinned commit %s", commit, pins.kilosort3.commit)
        else:
            pins = replace(pins, kilosort3=replace(pins.kilosort3, commit=commit, tag=None))
    if npy_matlab_commit:
        commit = check_commit(npy_matlab_commit, "--npy-matlab-commit")
        if not pins.npy_matlab.same_commit(commit):
            pins = replace(pins, npy_matlab=replace(pins.npy_matlab, commit=commit))
    return pins


def load_pins(config_file: Path | None = None, version_file: Path | None = None) -> Pins:
    """Read the pins; raises UserError if a file is missing or a value is malformed."""
    config_file = config_file or CONFIG_FILE
    version_file = version_file or VERSION_FILE
    try:
        data = tomllib.loads(config_file.read_text())
        release = Release.parse(version_file.read_text())
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename} is missing: restore it from git") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{config_file.name} is not valid TOML ({exc}): fix it") from exc
    try:
        ks3, npy, ks4, images = (
            data["kilosort3"],
            data["npy_matlab"],
            data["kilosort4"],
            data["images"],
        )
        name = config_file.name
        pins = Pins(
            kilosort3=GitPin(
                repository=ks3["repository"],
                commit=check_commit(ks3["commit"], f"{name} [kilosort3]"),
                tag=check_tag_name(ks3["tag"], f"{name} [kilosort3] tag") if "tag" in ks3 else None,
                version=canonical_version(ks3["version"], f"{name} [kilosort3] version"),
            ),
            npy_matlab=GitPin(
                repository=npy["repository"],
                commit=check_commit(npy["commit"], f"{name} [npy_matlab]"),
            ),
            kilosort4_version=canonical_version(ks4["version"], f"{name} [kilosort4] version"),
            torch_version=canonical_version(ks4["torch"], f"{name} [kilosort4] torch"),
            spikeinterface_version=canonical_version(
                ks4["spikeinterface"], f"{name} [kilosort4] spikeinterface"
            ),
            python_base_image=references.check_reference(
                ks4["python_base_image"],
                what=f"{name} [kilosort4] python_base_image",
                fix=f"fix it in {name}",
            ),
            namespace=references.check_namespace(images["namespace"], flag=f"{name} [images]"),
            source_url=images["source"],
            release=release,
        )
    except KeyError as exc:
        raise UserError(f"{config_file.name} lacks the key {exc}: restore it from git") from exc
    if Version(pins.kilosort3.version) != Version(release.kilosort):
        raise UserError(
            f"VERSION says Kilosort {release.kilosort} but {config_file.name} pins "
            f"{pins.kilosort3.version}: run `invoke bump` to make them agree"
        )
    return pins

"""Pinned upstream versions, read from ``kilosort-docker.toml`` and ``VERSION``.

``VERSION`` holds ``<Kilosort3 version>-<build>``, e.g. ``3.0.2-1``. The build number only
ever grows, so tags that carry it (``kilosort3:3.0.2-r2022b-b1``) are never reused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import tomllib

from kilosort_docker.errors import UserError
from kilosort_docker.paths import ROOT

CONFIG_FILE = ROOT / "kilosort-docker.toml"
VERSION_FILE = ROOT / "VERSION"

_VERSION_RE = re.compile(r"^(?P<kilosort>\d+\.\d+(?:\.\d+)?)-(?P<build>[1-9]\d*)$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")


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
    python_base_image: str
    namespace: str
    source_url: str
    release: Release


def check_commit(value: object, where: str = "--kilosort-commit") -> str:
    """``value`` as a lower-case commit name; raises UserError unless it is 7-40 hex digits."""
    text = str(value).strip().lower()
    if not _COMMIT_RE.match(text):
        raise UserError(f"{where}: commit {value!r} is not 7-40 hex digits: give a commit hash")
    return text


def with_commits(
    pins: Pins, *, kilosort_commit: str | None = None, npy_matlab_commit: str | None = None
) -> Pins:
    """``pins`` with other Kilosort or npy-matlab commits (testing a fix); a Kilosort commit
    drops the pinned tag. Raises UserError unless each commit is 7-40 hex digits."""
    if kilosort_commit:
        commit = check_commit(kilosort_commit)
        pins = replace(pins, kilosort3=replace(pins.kilosort3, commit=commit, tag=None))
    if npy_matlab_commit:
        commit = check_commit(npy_matlab_commit, "--npy-matlab-commit")
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
        pins = Pins(
            kilosort3=GitPin(
                repository=ks3["repository"],
                commit=check_commit(ks3["commit"], f"{config_file.name} [kilosort3]"),
                tag=ks3.get("tag"),
                version=ks3["version"],
            ),
            npy_matlab=GitPin(
                repository=npy["repository"],
                commit=check_commit(npy["commit"], f"{config_file.name} [npy_matlab]"),
            ),
            kilosort4_version=ks4["version"],
            torch_version=ks4["torch"],
            python_base_image=ks4["python_base_image"],
            namespace=images["namespace"],
            source_url=images["source"],
            release=release,
        )
    except KeyError as exc:
        raise UserError(f"{config_file.name} lacks the key {exc}: restore it from git") from exc
    if pins.kilosort3.version != release.kilosort:
        raise UserError(
            f"VERSION says Kilosort {release.kilosort} but {config_file.name} pins "
            f"{pins.kilosort3.version}: run `invoke bump` to make them agree"
        )
    return pins

"""Bump the pins to a new Kilosort release: ``kilosort-docker.toml``, ``VERSION``, CHANGELOG.md.

The tag scheme: ``VERSION`` is ``<Kilosort3 version>-<build>`` and the build number only grows.
A new Kilosort3 version gives ``<new version>-<build+1>``; a new ``kilosort`` 4.x keeps the
Kilosort3 version and gives ``<version>-<build+1>``. The three files are written together or
not at all: all new contents go to temporary files first, then each replaces its original, and
a failure part-way puts back the ones already replaced.
"""

from __future__ import annotations

import datetime as dt
import difflib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tomlkit
import tomlkit.exceptions

from kilosort_docker.errors import UserError
from kilosort_docker.images.pins import ROOT, Release, load_pins
from kilosort_docker.release import upstream

log = logging.getLogger(__name__)

CONFIG_NAME = "kilosort-docker.toml"
VERSION_NAME = "VERSION"
CHANGELOG_NAME = "CHANGELOG.md"
FILES = (CONFIG_NAME, VERSION_NAME, CHANGELOG_NAME)

CHANGELOG_HEADER = """# Changelog

Releases of kilosort-docker. `VERSION` is `<Kilosort3 version>-<build>`, the build number only
grows, and each release is the git tag `v<VERSION>` (`invoke bump`, then `invoke release`).
"""


@dataclass(frozen=True)
class BumpPlan:
    """What a bump changes: the old and new release and each file's old and new text."""

    line: str
    old_release: Release
    new_release: Release
    summary: str
    old_texts: dict[str, str]
    new_texts: dict[str, str]

    def diff(self) -> str:
        """A unified diff of the three files (paths as in a git diff)."""
        chunks = []
        for name in FILES:
            chunks.extend(
                difflib.unified_diff(
                    self.old_texts[name].splitlines(keepends=True),
                    self.new_texts[name].splitlines(keepends=True),
                    fromfile=f"a/{name}",
                    tofile=f"b/{name}",
                )
            )
        return "".join(line if line.endswith("\n") else line + "\n" for line in chunks)


def changelog_entry(release: Release, items: list[str], date: dt.date) -> str:
    """A changelog section: ``## <release> (<date>)`` and one bullet per item."""
    bullets = "".join(f"- {item}\n" for item in items)
    return f"## {release} ({date.isoformat()})\n\n{bullets}"


def add_changelog_entry(text: str, entry: str) -> str:
    """``text`` with ``entry`` above its first release section (a new changelog if empty)."""
    if not text.strip():
        text = CHANGELOG_HEADER
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.startswith("## "):
            return "".join(lines[:index]) + entry + "\n" + "".join(lines[index:])
    return text.rstrip("\n") + "\n\n" + entry


def changelog_has(text: str, release: Release) -> bool:
    """True if the changelog has a section for ``release``."""
    return any(
        line.startswith("## ") and line[3:].split()[:1] == [str(release)]
        for line in text.splitlines()
    )


def _read(root: Path) -> dict[str, str]:
    texts = {}
    for name in FILES:
        path = root / name
        if name == CHANGELOG_NAME and not path.exists():
            texts[name] = ""
            continue
        try:
            texts[name] = path.read_text()
        except FileNotFoundError:
            raise UserError(f"{path} is missing: restore it from git") from None
    return texts


def plan_bump(
    root: Path = ROOT,
    kilosort: str | None = None,
    *,
    note: str | None = None,
    api_url: str = upstream.GITHUB_API,
    pypi_url: str = upstream.PYPI_URL,
    repository: str = upstream.REPOSITORY,
    today: dt.date | None = None,
) -> BumpPlan:
    """The new pins, VERSION and changelog for Kilosort ``kilosort`` (``3.0.3`` or ``4.1.8``).

    A 3.x version is looked up among the git tags and pinned at its commit; a 4.x version must
    be an installable release on PyPI. Without ``kilosort`` only the build number grows (a
    rebuild, e.g. for a new base image). ``note`` adds a line to the changelog entry.
    Raises UserError for anything else.
    """
    root = Path(root)
    texts = _read(root)
    pins = load_pins(root / CONFIG_NAME, root / VERSION_NAME)  # checks VERSION and the pins
    if kilosort:
        version = upstream.parse_version(kilosort)
        if version is None:
            raise UserError(f"--kilosort {kilosort!r} is not a version: give e.g. 3.0.3 or 4.1.8")
        if version.is_prerelease or version.is_devrelease or version.is_postrelease:
            raise UserError(
                f"--kilosort {kilosort}: pre-, post- and dev releases are not pinned; "
                "give a final release such as 3.0.3 or 4.1.8"
            )
        line = upstream.classify(version)
    else:
        version, line = None, "rebuild"
    try:
        doc = tomlkit.parse(texts[CONFIG_NAME])
    except tomlkit.exceptions.ParseError as exc:
        raise UserError(f"{CONFIG_NAME} is not valid TOML ({exc}): fix it") from None
    old = pins.release
    if line == upstream.KILOSORT3:
        _check_newer(version, pins.kilosort3.version, "Kilosort3")
        tag = upstream.find_tag(str(version), repository=repository, api_url=api_url)
        # The commit of the tag's ref (an annotated tag dereferenced), 40 hex digits.
        tag = upstream.tag_commit(tag, repository=repository, api_url=api_url)
        # Keep the pin's form: a short commit stays as short as it was (mex-binaries/ folders).
        width = max(len(pins.kilosort3.commit), 7)
        commit = tag.commit[:width]
        table = doc["kilosort3"]
        table["version"] = str(version)
        table["tag"] = tag.name
        table["commit"] = commit
        new = Release.parse(f"{version}-{old.build + 1}")  # VERSION takes X.Y or X.Y.Z
        summary = (
            f"Kilosort3 {pins.kilosort3.tag or pins.kilosort3.version} -> {tag.name} ({commit})"
        )
        items = [
            f"Kilosort3 {tag.name} (commit {tag.commit[:7]}), was "
            f"{pins.kilosort3.tag or pins.kilosort3.version} ({pins.kilosort3.commit[:7]})",
            f"kilosort {pins.kilosort4_version} (unchanged)",
        ]
    elif line == upstream.KILOSORT4:
        _check_newer(version, pins.kilosort4_version, "kilosort")
        upstream.pypi_has(str(version), pypi_url=pypi_url)
        doc["kilosort4"]["version"] = str(version)
        new = Release(old.kilosort, old.build + 1)
        summary = f"kilosort {pins.kilosort4_version} -> {version}"
        items = [
            f"kilosort {version} from PyPI (PyTorch {pins.torch_version}), was "
            f"{pins.kilosort4_version}",
            f"Kilosort3 {pins.kilosort3.tag or pins.kilosort3.version} "
            f"(commit {pins.kilosort3.commit[:7]}, unchanged)",
        ]
    elif line == "rebuild":
        new = Release(old.kilosort, old.build + 1)
        summary = f"rebuild of {old.kilosort} as build {new.build}"
        items = [
            f"Rebuild: Kilosort3 {pins.kilosort3.tag or pins.kilosort3.version} "
            f"(commit {pins.kilosort3.commit[:7]}) and kilosort {pins.kilosort4_version} unchanged"
        ]
    else:
        raise UserError(
            f"--kilosort {kilosort}: this project builds Kilosort 3.x and 4.x only; "
            "give a 3.x tag or a 4.x PyPI release"
        )
    if note:
        items.append(" ".join(note.split()))
    new_texts = {
        CONFIG_NAME: tomlkit.dumps(doc),
        VERSION_NAME: f"{new}\n",
        CHANGELOG_NAME: add_changelog_entry(
            texts[CHANGELOG_NAME],
            changelog_entry(new, items, today or dt.date.today()),
        ),
    }
    return BumpPlan(line, old, new, summary, texts, new_texts)


def _check_newer(version, pinned: str, what: str) -> None:
    base = upstream.parse_version(pinned)
    if base is not None and version <= base:
        raise UserError(
            f"{what} {version} is not newer than the pinned {pinned}: give a newer version "
            "(`invoke upstream` lists them)"
        )


def write(root: Path, plan: BumpPlan) -> None:
    """Write the plan's three files together, or change none of them.

    Raises UserError if a file changed since the plan was made or a write fails.
    """
    root = Path(root)
    current = _read(root)
    if current != plan.old_texts:
        raise UserError("the pins changed while bumping: run `invoke bump` again")
    temps: dict[str, Path] = {}
    replaced: list[str] = []
    name = FILES[0]
    try:
        for name in FILES:
            temps[name] = _write_temp(root / name, plan.new_texts[name])
        for name in FILES:
            os.replace(temps[name], root / name)
            replaced.append(name)
    except OSError as exc:
        _roll_back(root, plan, replaced)
        raise UserError(
            f"could not write {root / name} ({exc.strerror or exc}): nothing was changed; "
            "check the folder's permissions and free space"
        ) from None
    finally:
        for path in temps.values():
            if path.exists():
                path.unlink()
    log.info("bumped %s to %s", plan.old_release, plan.new_release)


def _write_temp(target: Path, text: str) -> Path:
    """``text`` in a temporary file beside ``target`` (same mode), flushed to disk."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    path = Path(name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists():
            shutil.copymode(target, path)
        else:
            path.chmod(0o644)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _roll_back(root: Path, plan: BumpPlan, replaced: list[str]) -> None:
    """Put back the old text of the files already replaced (in place if renaming fails)."""
    for name in reversed(replaced):
        target = root / name
        old = plan.old_texts[name]
        try:
            if name == CHANGELOG_NAME and not old:
                target.unlink(missing_ok=True)  # there was no changelog before
                continue
            restore = _write_temp(target, old)
            try:
                os.replace(restore, target)
            finally:
                restore.unlink(missing_ok=True)
        except OSError:
            try:
                target.write_text(old)
            except OSError:
                log.error("could not restore %s: restore it with `git checkout %s`", name, name)


def bump(
    root: Path = ROOT,
    kilosort: str | None = None,
    *,
    note: str | None = None,
    dry_run: bool = False,
    api_url: str = upstream.GITHUB_API,
    pypi_url: str = upstream.PYPI_URL,
    repository: str = upstream.REPOSITORY,
    today: dt.date | None = None,
) -> BumpPlan:
    """Plan the bump and, unless ``dry_run``, write it. Returns the plan (``plan.diff()``)."""
    plan = plan_bump(
        root,
        kilosort,
        note=note,
        api_url=api_url,
        pypi_url=pypi_url,
        repository=repository,
        today=today,
    )
    if not dry_run:
        write(root, plan)
    return plan

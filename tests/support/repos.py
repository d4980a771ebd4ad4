"""Git repositories made for the tests: fixture repositories and copies of the pin files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from .paths import REPO_ROOT

if TYPE_CHECKING:  # the benchmarks import tests.support without pytest
    import pytest

GIT_ENV = {
    "GIT_AUTHOR_NAME": "kilosort-docker tests",
    "GIT_AUTHOR_EMAIL": "tests@localhost",
    "GIT_COMMITTER_NAME": "kilosort-docker tests",
    "GIT_COMMITTER_EMAIL": "tests@localhost",
}

#: The files that pin a release (copied, never changed, by the bump and release tests).
PINNED_FILES = ("kilosort-docker.toml", "VERSION", "CHANGELOG.md")


def git(root: Path, *args: str) -> str:
    """``git ARGS`` in ``root`` as the tests' identity; returns stdout, stripped."""
    return subprocess.run(
        ["git", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    ).stdout.strip()


def make_repo(path: Path, files: dict[str, str], *, tag: str | None = None) -> str:
    """A git repository at ``path`` holding ``files``; returns the full commit."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    for name, text in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "--quiet", "-m", "fixture")
    if tag:
        git(path, "tag", "-a", tag, "-m", tag)
    return git(path, "rev-parse", "HEAD")


def make_git_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository in ``tmp_path/repo`` with the pin files committed; isolated from the
    user's git configuration."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in PINNED_FILES:
        shutil.copy2(REPO_ROOT / name, root / name)
    empty = tmp_path / "gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", *PINNED_FILES)
    git(root, "commit", "-q", "-m", "release 3.0.2-1")
    return root

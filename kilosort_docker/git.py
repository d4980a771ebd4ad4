"""Running git: the one wrapper every module uses (sources, tags, releases).

Prompts are off (``GIT_TERMINAL_PROMPT=0``), so a repository that wants a password fails at
once instead of waiting for input.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from kilosort_docker.errors import UserError

log = logging.getLogger(__name__)


class GitError(subprocess.CalledProcessError):
    """git exited non-zero; ``stderr`` holds what it printed there."""

    @property
    def message(self) -> str:
        """git's error message: the last line it printed on stderr."""
        return (self.stderr.strip().splitlines() or ["no message"])[-1]

    @property
    def detail(self) -> str:
        """All git printed, on one line, at most 200 characters."""
        return " ".join((self.stderr or self.stdout or "").split())[:200]


def run(*args: str, cwd: Path | None = None, input: str | None = None, check: bool = True):
    """``git ARGS`` in ``cwd``; returns the completed process (text output).

    Raises UserError if git is not installed, and :class:`GitError` (with git's output) on a
    non-zero exit when ``check``.
    """
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            input=input,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except FileNotFoundError as exc:
        raise UserError("git is not installed: install git (apt-get install git)") from exc
    if check and done.returncode != 0:
        raise GitError(done.returncode, ["git", *args], done.stdout, done.stderr)
    return done


def output(*args: str, cwd: Path | None = None) -> str:
    """The stripped standard output of ``git ARGS``; raises like :func:`run`."""
    return run(*args, cwd=cwd).stdout.strip()


def revision(repository: Path) -> str:
    """The commit checked out in ``repository`` (with ``-dirty`` for changes to tracked files),
    or ``unknown`` when it is not a git work tree or git is missing."""
    try:
        rev = output("-C", str(repository), "rev-parse", "HEAD")
        dirty = output("-C", str(repository), "status", "--porcelain", "--untracked-files=no")
    except (UserError, GitError):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev


def commit_time(repository: Path) -> int | None:
    """When the commit checked out in ``repository`` was made: its committer time in seconds
    since 1970 (``git log -1 --format=%ct``), or None when ``repository`` is not a git work tree
    with a commit, or git is missing.

    Local changes (a dirty tree) do not change it: it is the time of ``HEAD``.
    """
    try:
        stamp = output("-C", str(repository), "log", "-1", "--format=%ct", "HEAD")
    except (UserError, GitError):
        return None
    return int(stamp) if stamp.isdigit() else None

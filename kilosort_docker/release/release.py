"""Release: tag the commit that holds a new ``VERSION`` as ``v<VERSION>``, and push its images.

``release`` refuses a dirty tree, a ``VERSION`` that is already tagged, pins that disagree with
``VERSION``, a changelog without an entry for it, and failing tests. The tag is annotated and
carries the changelog entry; with ``push`` the images are pushed and, if that fails, the tag
is removed again so the release can be retried.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kilosort_docker import git
from kilosort_docker.errors import UserError
from kilosort_docker.images.pins import ROOT, Release, load_pins
from kilosort_docker.release.bump import CHANGELOG_NAME, CONFIG_NAME, VERSION_NAME, changelog_has

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleaseResult:
    """The release, its git tag, and what was done (False for a dry run)."""

    release: Release
    tag: str
    commit: str
    tagged: bool
    pushed: bool


def tag_name(release: Release) -> str:
    """The git tag of ``release``: ``v3.0.2-1``."""
    return f"v{release}"


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        return git.run("-C", str(root), *args, check=check)
    except git.GitError as exc:
        raise UserError(
            f"git {args[0]} failed ({exc.stderr[:200]}): fix the repository and retry"
        ) from None


def run_nox(root: Path = ROOT, sessions: tuple[str, ...] = ("lint", "tests")) -> bool:
    """Run ``nox -s <sessions>`` in ``root``; True if it passed (the default ``run_tests``)."""
    log.info("running nox -s %s", " ".join(sessions))
    result = subprocess.run([sys.executable, "-m", "nox", "-s", *sessions], cwd=root)
    return result.returncode == 0


def _changelog_entry(root: Path, release: Release) -> str:
    """The changelog section for ``release`` (without its heading); UserError if missing."""
    path = root / CHANGELOG_NAME
    text = path.read_text() if path.exists() else ""
    if not changelog_has(text, release):
        raise UserError(
            f"{CHANGELOG_NAME} has no entry for {release}: run `invoke bump`, or add a "
            f"'## {release}' section"
        )
    lines = text.splitlines()
    start = next(
        i
        for i, line in enumerate(lines)
        if line.startswith("## ") and line[3:].split()[:1] == [str(release)]
    )
    body = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        body.append(line)
    return "\n".join(body).strip()


def release(
    root: Path = ROOT,
    *,
    push: bool = False,
    dry_run: bool = False,
    run_tests: Callable[[], bool] | None = None,
    push_images: Callable[[Release], object] | None = None,
    echo: Callable[[str], None] = print,
) -> ReleaseResult:
    """Tag ``v<VERSION>`` at HEAD of the git repository ``root``; with ``push``, push images.

    ``run_tests`` returns True when the tests pass (default: ``nox -s lint tests``);
    ``push_images`` pushes the images of the release (required with ``push``). Raises UserError
    for a dirty tree, a tag that exists, inconsistent files or failing tests.
    """
    root = Path(root)
    inside = _git(root, "rev-parse", "--is-inside-work-tree", check=False)
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        raise UserError(f"{root} is not a git repository: run release in a clone of the project")
    pins = load_pins(root / CONFIG_NAME, root / VERSION_NAME)  # malformed or disagreeing: error
    rel = pins.release
    tag = tag_name(rel)
    entry = _changelog_entry(root, rel)
    if push and push_images is None:
        raise UserError("release --push needs a way to push images: pass push_images")

    dirty = _git(root, "status", "--porcelain").stdout.strip()
    if dirty:
        first = dirty.splitlines()[0].strip()
        raise UserError(
            f"the work tree is dirty ({len(dirty.splitlines())} changes, e.g. {first}): "
            "commit or stash them before releasing"
        )
    head = _git(root, "rev-parse", "--verify", "HEAD", check=False)
    if head.returncode != 0:
        raise UserError(f"{root} has no commit yet: commit the release first")
    commit = head.stdout.strip()
    exists = _git(root, "rev-parse", "-q", "--verify", f"refs/tags/{tag}", check=False)
    if exists.returncode == 0:
        raise UserError(
            f"{tag} already exists (VERSION {rel} is released): run `invoke bump` for a new "
            "build number"
        )

    if dry_run:
        echo(f"would run the tests, then tag {commit[:12]} as {tag} (annotated)")
        echo(f"would push the images of {rel}" if push else "would push nothing (no --push)")
        return ReleaseResult(rel, tag, commit, tagged=False, pushed=False)

    tests = run_tests or (lambda: run_nox(root))
    try:
        passed = tests()
    except UserError:
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200]
        raise UserError(
            f"the tests could not run ({type(exc).__name__}: {detail}): fix them before releasing"
        ) from None
    if not passed:
        raise UserError("the tests failed: fix them before releasing (nothing was tagged)")

    message = f"kilosort-docker {rel}\n\n{entry}\n"
    _tag(root, tag, message)
    echo(f"tagged {commit[:12]} as {tag}")
    pushed = False
    if push:
        try:
            push_images(rel)
        except BaseException:
            _git(root, "tag", "--delete", tag, check=False)
            log.error("pushing failed: removed the tag %s again so the release can be retried", tag)
            raise
        pushed = True
        echo(f"pushed the images of {rel}")
    echo(f"next: git push origin {tag}  (the release workflow builds and pushes on a tag push)")
    return ReleaseResult(rel, tag, commit, tagged=True, pushed=pushed)


def _tag(root: Path, tag: str, message: str) -> None:
    """Create the annotated tag ``tag`` at HEAD with ``message``."""
    try:
        git.run("-C", str(root), "tag", "--annotate", tag, "--file", "-", input=message)
    except git.GitError as exc:
        raise UserError(
            f"git could not create the tag {tag} ({exc.detail}): set user.name and "
            "user.email, then retry"
        ) from None

"""Fetch pinned upstream sources (Kilosort, npy-matlab) and check them against the pins.

Repositories are mirrored into a cache (``$XDG_CACHE_HOME/kilosort-docker/git``), the pinned
commit is resolved to its full 40-hex name, checked against the pin (and against the pinned
tag, where there is one), and exported without ``.git`` into a build context.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from kilosort_docker import git
from kilosort_docker.errors import UserError
from kilosort_docker.images.pins import GitPin

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kilosort-docker" / "git"


def mirror(repository: str, *, cache: Path | None = None) -> Path:
    """A bare mirror of ``repository`` (URL or local path), cloned or updated; returns its path.

    Raises UserError if the repository cannot be reached.
    """
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if Path(repository).expanduser().exists():
        repository = str(Path(repository).expanduser().resolve())
    key = hashlib.sha256(repository.encode()).hexdigest()[:16]
    target = cache / f"{Path(repository.rstrip('/')).stem}-{key}.git"
    source = _with_refs(Path(repository), cache / f"{target.stem}.source.git")
    try:
        if target.exists():
            log.info("updating mirror of %s", repository)
            git.output("--git-dir", str(target), "fetch", "--prune", "--tags", source)
        else:
            log.info("mirroring %s", repository)
            git.output("clone", "--mirror", "--quiet", source, str(target))
    except git.GitError as exc:
        raise UserError(
            f"cannot fetch {repository} ({exc.message}): check the network, or pass a local "
            "mirror with --kilosort-repo / --npy-matlab-repo"
        ) from None
    return target


def _with_refs(repository: Path, copy: Path) -> str:
    """``repository`` as git can clone it. A bare repository copied without its empty folders
    (``refs/`` holds nothing when every ref is in ``packed-refs``) is not recognised by git
    ("repository does not exist"): such a mirror is copied to ``copy`` with ``refs/``
    restored, and the copy is used. Anything else (a URL, a complete repository) is
    returned as it is."""
    if not repository.is_dir() or (repository / "refs").is_dir():
        return str(repository)
    if not ((repository / "HEAD").is_file() and (repository / "objects").is_dir()):
        return str(repository)
    log.warning(
        "%s has no refs/ folder (lost in a copy?): using a copy with it restored", repository
    )
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(repository, copy)
    for folder in (copy, *(p for p in copy.rglob("*") if p.is_dir())):
        folder.chmod(0o755)
    (copy / "refs" / "heads").mkdir(parents=True)
    (copy / "refs" / "tags").mkdir()
    return str(copy)


def resolve(pin: GitPin, git_dir: Path) -> str:
    """The full commit the pin names in ``git_dir``; raises UserError if absent or mismatched."""
    try:
        full = git.output(
            "--git-dir",
            str(git_dir),
            "rev-parse",
            "--verify",
            "--quiet",
            f"{pin.commit}^{{commit}}",
        )
    except git.GitError:
        raise UserError(
            f"commit {pin.commit} is not in {pin.repository}: fix the pin in "
            "kilosort-docker.toml or point at the right repository"
        ) from None
    if not pin.matches(full):
        raise UserError(f"{pin.commit} resolved to {full}, which is not the pinned commit")
    if pin.tag:
        try:
            tagged = git.output(
                "--git-dir",
                str(git_dir),
                "rev-parse",
                "--verify",
                "--quiet",
                f"refs/tags/{pin.tag}^{{commit}}",
            )
        except git.GitError:
            log.warning("tag %s is not in %s; using the pinned commit", pin.tag, pin.repository)
        else:
            if tagged != full:
                raise UserError(
                    f"tag {pin.tag} points at {tagged[:12]} but the pin says {pin.commit}: "
                    "run `invoke bump` or fix kilosort-docker.toml"
                )
    return full


def export(pin: GitPin, dest: Path, *, repository: str | None = None) -> str:
    """Export the pinned commit's tree (no ``.git``) into ``dest``; returns the full commit.

    ``repository`` overrides ``pin.repository`` (a mirror or a local path). Writes nothing
    into ``dest`` unless the commit checks out against the pin.
    """
    source = repository or pin.repository
    git_dir = mirror(source)
    full = resolve(pin, git_dir)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "src.tar"
        git.output("--git-dir", str(git_dir), "archive", "--format=tar", "-o", str(archive), full)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    log.info("exported %s at %s into %s", source, full[:12], dest)
    return full

"""Every command shown in README's shell blocks runs, and exits 0.

The commands are read from README.md's fenced ``sh`` blocks (continuation lines joined, comments
dropped), so a command added to README is run by default. ``invoke`` commands run as shown where
they change nothing, in their ``--dry-run`` form where they would build, push, tag or delete, and
in their ``--help`` form (which still refuses an unknown flag) where even a dry run needs a
license, a GPU, the Docker engine or mex binaries. They run with no Docker engine reachable
(``DOCKER_HOST=unix:///nonexistent``), no build record and upstream on 127.0.0.1 (the fake
GitHub/PyPI of ``tests.support``), so the dry runs prove they need none of these. Commands that
cannot run here are listed in :data:`NOT_RUN` with the reason.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import support

README = support.REPO_ROOT / "README.md"

#: Commands not run, exactly as README shows them (comments dropped), with the reason.
NOT_RUN_EXACT = {
    "bash scripts/setup-host.sh && invoke build": "installs Docker Engine and packages as root, "
    "then builds the whole stack from Docker Hub, MathWorks, GitHub and NVIDIA",
    "nox": "the full gate itself (lint, tests, slow, images): minutes, with the Docker engine",
    "mkdir -p out && chmod 0777 out": "prepares the output folder of the docker run recipe below",
}
#: Commands not run, by their first words, with the reason.
NOT_RUN_PREFIX = {
    "nox -s gpu": "sorts on an NVIDIA GPU (skips with the reason without one; tests/gpu/)",
    "docker run": "runs MATLAB in the kilosort3 image: needs a MATLAB license, a GPU and the image",
    "docker volume create": "creates a volume on the Docker engine for the docker run recipe",
    "sudo chown": "hands back files a container wrote as uid 1000 (root, after a docker run)",
    "git add": "stages a report or mex binaries made on a licensed GPU machine",
    "git commit": "commits to this repository",
    "apptainer build": "Apptainer is not packaged for Debian 12: not run in CI",
    "python -m kilosort_docker.groundtruth": "sorts in the kilosort4 image on the Docker engine "
    "(tests/test_groundtruth_container.py runs that route)",
}

DRY_RUN, AS_SHOWN, HELP = "dry run", "as shown", "help"
#: How each invoke task runs here, and for --help why its dry run cannot.
TASKS = {
    "build": (DRY_RUN, ""),
    "bases": (DRY_RUN, ""),
    "build-mex": (DRY_RUN, ""),
    "push": (HELP, "its dry run checks that the images to push exist on the Docker engine"),
    "acceptance": (DRY_RUN, ""),
    "bump": (DRY_RUN, ""),
    "release": (DRY_RUN, ""),
    "stack": (AS_SHOWN, ""),
    "profiles": (AS_SHOWN, ""),
    "upstream": (AS_SHOWN, ""),
    "clean": (HELP, "its dry run lists the project's images on the Docker engine"),
    "check-images": (HELP, "checks built images inside containers on the Docker engine"),
    "check-gpu": (HELP, "needs a MATLAB license and an NVIDIA GPU; it has nothing to dry-run"),
    "verify-mex": (HELP, "needs mex binaries; none are committed until a maintainer builds them"),
    "sort": (HELP, "its dry run reads the recording and probe files README's examples only name"),
    "sort-batch": (HELP, "submits to a SLURM cluster; its dry run needs sbatch and the recordings"),
    "batch-status": (HELP, "reads a submitted batch and asks SLURM (tests/test_batch_slurm.py)"),
    "podman-load": (HELP, "copies an image from the Docker engine into podman"),
}
#: Tasks that query upstream: pointed at the fake GitHub/PyPI on 127.0.0.1.
UPSTREAM_TASKS = ("bump", "upstream")
#: README's example paths, and what stands in for them here.
PLACEHOLDER_FOLDERS = ("/usr/local/cuda-11.2",)
PLACEHOLDER_FILES = ("/path/to/license.lic",)


def readme_commands(text: str) -> list[str]:
    """The commands of ``text``'s fenced ``sh`` blocks, one string each: continuation lines
    joined, comments and blank lines dropped, words re-quoted by :func:`shlex.join`."""
    commands = []
    for block in re.findall(r"^```(?:sh|bash|shell)\n(.*?)^```", text, re.M | re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(" ".join(words))
    return commands


def not_run_reason(command: str) -> str | None:
    if command in NOT_RUN_EXACT:
        return NOT_RUN_EXACT[command]
    for prefix, reason in NOT_RUN_PREFIX.items():
        if command == prefix or command.startswith(prefix + " "):
            return reason
    return None


def test_readme_has_commands_and_every_one_is_run_or_excused() -> None:
    commands = readme_commands(README.read_text())
    invoked = {c.split()[1] for c in commands if c.startswith("invoke ")}
    assert len(commands) > 20 and "build" in invoked
    unknown = [c for c in commands if not c.startswith("invoke ") and not not_run_reason(c)]
    assert not unknown, f"README commands neither run nor listed in NOT_RUN: {unknown}"
    unplanned = invoked - set(TASKS)
    assert not unplanned, f"add these tasks to TASKS (how to run them here): {unplanned}"
    # A listed exclusion that README no longer shows is stale.
    assert all(c in commands for c in NOT_RUN_EXACT)
    assert all(any(not_run_reason(c) == r for c in commands) for r in NOT_RUN_PREFIX.values())


def _argv(command: str, tmp_path: Path, upstream_url: str) -> tuple[list[str], str]:
    """The argv that runs README's ``invoke`` command here, and how it runs."""
    words = command.split()[1:]
    task = words[0]
    mode, _ = TASKS[task]
    for i, word in enumerate(words):
        if word in PLACEHOLDER_FOLDERS:
            words[i] = str(tmp_path / "placeholder-folder")
        elif word in PLACEHOLDER_FILES:
            words[i] = str(tmp_path / "placeholder.lic")
    if mode == DRY_RUN and "--dry-run" not in words:
        words.append("--dry-run")
    elif mode == HELP:
        words.append("--help")
    if task in UPSTREAM_TASKS and mode != HELP:
        words += ["--github-api", upstream_url, "--pypi-url", upstream_url]
    return [sys.executable, "-m", "invoke", *words], mode


@pytest.fixture
def readme_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """No Docker engine, no build record, no site settings, no token or proxy."""
    (tmp_path / "placeholder-folder").mkdir()
    (tmp_path / "placeholder.lic").write_text("SERVER licenseserver 0 27000\n")
    (tmp_path / "records").mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("INVOKE_KILOSORT_DOCKER_")
        and k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "GITHUB_TOKEN")
    }
    env |= {
        "DOCKER_HOST": "unix:///nonexistent",
        "KILOSORT_DOCKER_BUILD_RECORD_DIR": str(tmp_path / "records"),
        "PYTHONPATH": str(support.REPO_ROOT),
    }
    return env


def _clean_copy(tmp_path: Path) -> Path:
    """This working tree (tracked and new files) committed alone in a fresh repository, for
    ``invoke release --dry-run``, which refuses a dirty tree (as it should)."""
    root = support.REPO_ROOT
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    copy = tmp_path / "clean-copy"
    for name in filter(None, (n.decode() for n in listed)):
        source = root / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=no"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=copy, check=True)
    subprocess.run([*git, "add", "-A"], cwd=copy, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "copy"], cwd=copy, check=True)
    return copy


def _tree(*folders: Path) -> list[str]:
    return sorted(str(p) for folder in folders if folder.exists() for p in folder.rglob("*"))


def test_every_readme_command_runs(
    readme_env: dict[str, str], tmp_path: Path, fake_api: support.FakeAPI
) -> None:
    root = support.REPO_ROOT
    written = (root / "build", root / "mex-binaries", root / "benchmarks" / "acceptance")
    before = _tree(*written)
    commands = [c for c in readme_commands(README.read_text()) if c.startswith("invoke ")]
    copy = _clean_copy(tmp_path)

    def run(command: str) -> tuple[str, str | None]:
        argv, mode = _argv(command, tmp_path, fake_api.url)
        cwd, env = root, readme_env
        if argv[3] == "release":
            cwd, env = copy, readme_env | {"PYTHONPATH": str(copy)}
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            return mode, None
        return mode, (
            f"{command!r} ({mode}: {shlex.join(argv[3:])}) exited "
            f"{done.returncode}: {(done.stderr or done.stdout).strip()[-400:]}"
        )

    # Each distinct command once; a few at a time (each is mostly Python's start-up).
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, dict.fromkeys(commands)))
    ran = {mode for mode, _ in results}
    failures = [failure for _, failure in results if failure]
    assert not failures, "\n".join(failures)
    assert ran == {DRY_RUN, AS_SHOWN, HELP}
    assert _tree(*written) == before, "a README dry run wrote into the repository"


def test_every_invoke_command_in_readme_prose_names_real_flags() -> None:
    """Inline `invoke ...` spans (not run: the shell blocks above cover what runs) name a task
    and flags that exist; invoke's own parser refuses anything else."""
    from invoke.parser import ParseError, Parser

    # A fresh copy of tasks.py: building parser contexts consumes each task's help dict.
    spec = importlib.util.spec_from_file_location("readme_tasks", support.REPO_ROOT / "tasks.py")
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    spans = set(re.findall(r"`(invoke [a-z][^`]*)`", README.read_text()))
    assert "invoke bump --kilosort 4.1.8 --dry-run" in spans
    parser = Parser(contexts=tasks.ns.to_contexts())
    wrong = []
    for span in sorted(spans):
        try:
            parser.parse_argv(shlex.split(span)[1:])
        except ParseError as exc:
            wrong.append(f"{span}: {exc}")
    assert not wrong, wrong

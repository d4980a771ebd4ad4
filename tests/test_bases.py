"""``invoke bases``: kilosort4's Python base from Debian with debootstrap, and its use by
``invoke build``; unit tests (no engine) and one engine test of the whole offline route."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import docker.errors
import pytest

from kilosort_docker import paths
from kilosort_docker.errors import UserError
from kilosort_docker.images import bases
from tests import support


def _env(records: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_KILOSORT_DOCKER_")}
    return env | {
        "KILOSORT_DOCKER_BUILD_RECORD_DIR": str(records),
        "PYTHONPATH": str(support.REPO_ROOT),
        **extra,
    }


def _invoke(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=support.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- planning and bad input --------------------------------------------------------------------


def test_the_default_plan_names_debian_and_python_base_in_the_namespace() -> None:
    plan = bases.plan_bases(namespace="lab")
    assert plan.mirror == "http://deb.debian.org/debian" and plan.suite == "bookworm"
    assert plan.debian_ref == "lab/debian:bookworm"
    assert plan.python_ref == "lab/python-base:3.11-bookworm"
    assert not plan.force
    local = bases.plan_bases(mirror="file:///srv/debian/", suite="trixie", namespace="lab")
    assert (
        local.mirror == "file:///srv/debian" and local.python_ref == "lab/python-base:3.13-trixie"
    )


@pytest.mark.parametrize(
    ("mirror", "why"),
    [
        ("ftp://ftp.debian.org/debian", "is not an http"),
        ("deb.debian.org/debian", "is not an http"),
        ("http:///debian", "names no host"),
        ("file://host/srv/debian", "is not file:///"),
        ("http://deb.debian.org/ debian", "whitespace"),
    ],
)
def test_a_bad_mirror_url_is_one_line_naming_the_flag(mirror: str, why: str) -> None:
    with pytest.raises(UserError, match=why) as caught:
        bases.plan_bases(mirror=mirror)
    assert "\n" not in str(caught.value) and "--mirror" in str(caught.value)


def test_an_unknown_suite_or_a_bad_namespace_is_refused() -> None:
    with pytest.raises(UserError, match="--suite 'sid'.*bookworm, trixie"):
        bases.plan_bases(suite="sid")
    with pytest.raises(UserError, match="--namespace"):
        bases.plan_bases(namespace="Lab")


class _Images:
    """The images half of a Docker client: ``have`` holds the refs present."""

    def __init__(self, have: dict[str, str]) -> None:
        self.have = have

    def get(self, ref: str):
        if ref not in self.have:
            raise docker.errors.ImageNotFound(ref)
        return type("Image", (), {"id": self.have[ref]})()


class _Client:
    """A Docker client that has ``have`` and fails the test on any call that would change
    the engine (build, import, tag)."""

    def __init__(self, have: dict[str, str]) -> None:
        self.images = _Images(have)
        self.api = self

    def __getattr__(self, name: str):
        raise AssertionError(f"the engine was asked to {name}")


@pytest.mark.parametrize(
    ("euid", "which", "fix"),
    [
        (
            1000,
            "/usr/sbin/debootstrap",
            "debootstrap needs root: run `sudo invoke bases` (or as root)",
        ),
        (0, None, "debootstrap is not installed: `sudo apt-get install debootstrap`"),
    ],
)
def test_without_root_or_debootstrap_it_stops_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, euid: int, which: str | None, fix: str
) -> None:
    monkeypatch.setattr(bases.os, "geteuid", lambda: euid)
    monkeypatch.setattr(bases.shutil, "which", lambda name: which)
    monkeypatch.setattr(paths, "BUILD_RECORD_DIR", tmp_path)
    with pytest.raises(UserError) as caught:
        bases.make_bases(bases.plan_bases(namespace="lab"), _Client({}))
    assert str(caught.value) == fix
    assert not any(tmp_path.iterdir())  # nothing recorded


def test_existing_images_are_reused_and_recorded_without_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bases.os, "geteuid", lambda: 1000)  # not needed when nothing is made
    monkeypatch.setattr(paths, "BUILD_RECORD_DIR", tmp_path)
    plan = bases.plan_bases(namespace="lab")
    client = _Client({plan.debian_ref: "sha256:d", plan.python_ref: "sha256:p"})
    stages: list[str] = []
    result = bases.make_bases(plan, client, on_stage=stages.append)
    assert (result.debian_id, result.python_id) == ("sha256:d", "sha256:p")
    assert not result.built_debian and not result.built_python
    assert stages == [f"reusing {ref} (--force rebuilds it)" for ref in plan_refs(plan)]
    assert result.record == tmp_path / "bases.json"
    assert json.loads(result.record.read_text())["python_base"] == plan.python_ref
    assert bases.recorded_python_base(folder=tmp_path) == plan.python_ref


def plan_refs(plan: bases.BasesPlan) -> list[str]:
    return [plan.debian_ref, plan.python_ref]


def test_force_rebuilds_an_existing_tag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--force goes to debootstrap even though both images exist (here: stopped by root)."""
    monkeypatch.setattr(bases.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(paths, "BUILD_RECORD_DIR", tmp_path)
    plan = bases.plan_bases(namespace="lab", force=True)
    client = _Client({plan.debian_ref: "sha256:d", plan.python_ref: "sha256:p"})
    with pytest.raises(UserError, match="needs root"):
        bases.make_bases(plan, client)


def test_a_damaged_record_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    assert bases.recorded_python_base(folder=tmp_path) is None
    (tmp_path / "bases.json").write_text("{not json")
    with pytest.raises(UserError, match="damaged: delete it and run `invoke bases` again"):
        bases.recorded_python_base(folder=tmp_path)
    (tmp_path / "bases.json").write_text(json.dumps({"python_base": "Bad Ref"}))
    with pytest.raises(UserError, match="python_base"):
        bases.recorded_python_base(folder=tmp_path)


# --- the tasks ---------------------------------------------------------------------------------


def test_bases_dry_run_needs_no_engine_and_touches_nothing(tmp_path: Path) -> None:
    env = _env(tmp_path, DOCKER_HOST="unix:///nonexistent")
    done = _invoke("bases", "--dry-run", "--mirror", "http://127.0.0.1:9/debian", env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "kilosortdocker/debian:bookworm: debootstrap --variant=minbase bookworm from " in out
    assert "http://127.0.0.1:9/debian" in out
    assert "kilosortdocker/python-base:3.11-bookworm: docker/python-base/Dockerfile" in out
    assert "engine not asked" in out
    assert not any(tmp_path.iterdir())


def test_bases_bad_input_exits_1_with_one_line(tmp_path: Path) -> None:
    done = _invoke("bases", "--mirror", "ftp://x/debian", env=_env(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("error: --mirror 'ftp://x/debian' is not an http(s)://")
    assert not any(tmp_path.iterdir())


def test_build_uses_the_recorded_base_unless_a_flag_or_setting_says_otherwise(
    tmp_path: Path,
) -> None:
    bases.save_record(bases.plan_bases(namespace="lab"), folder=tmp_path)
    env = _env(tmp_path, DOCKER_HOST="unix:///nonexistent")
    done = _invoke("build", "--image", "kilosort4", "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    assert "FROM lab/python-base:3.11-bookworm" in done.stdout
    flag = _invoke("build", "--image", "kilosort4", "--dry-run", "--python-base", "x/py:1", env=env)
    assert "FROM x/py:1" in flag.stdout
    site = _invoke(
        "build",
        "--image",
        "kilosort4",
        "--dry-run",
        env=env | {"INVOKE_KILOSORT_DOCKER_PYTHON_BASE": "site/py:2"},
    )
    assert "FROM site/py:2" in site.stdout
    (tmp_path / "bases.json").unlink()
    default = _invoke("build", "--image", "kilosort4", "--dry-run", env=env)
    assert "FROM python:3.11-slim-bookworm" in default.stdout


# --- the engine --------------------------------------------------------------------------------


@pytest.mark.docker
def test_the_offline_route_builds_kilosort4_on_the_debian_python_base(
    docker_client, python_base, kilosort4_image, tmp_path: Path
) -> None:
    """``invoke bases`` (here: the session's bases, made by the same code when missing, then
    reused) gives a Python base from Debian alone; ``invoke build`` takes it from the record
    and the kilosort4 image is built on it: its layers start with the base's."""
    env = _env(tmp_path)
    done = _invoke("bases", "--namespace", support.NAMESPACE, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"reused {support.PYTHON_IMAGE} sha256:" in done.stdout
    assert json.loads((tmp_path / "bases.json").read_text())["python_base"] == python_base
    plan = _invoke("build", "--image", "kilosort4", "--dry-run", env=env)
    assert f"FROM {support.PYTHON_IMAGE}" in plan.stdout
    # The base really is Debian's python3, and kilosort4 really sits on it (no Docker Hub).
    base = docker_client.images.get(python_base)
    assert base.attrs["Config"]["Labels"]["org.opencontainers.image.base.name"] == (
        support.DEBIAN_IMAGE
    )
    debian_layers = docker_client.images.get(support.DEBIAN_IMAGE).attrs["RootFS"]["Layers"]
    base_layers = base.attrs["RootFS"]["Layers"]
    ks4_layers = docker_client.images.get(kilosort4_image).attrs["RootFS"]["Layers"]
    assert len(debian_layers) == 1 and base_layers[:1] == debian_layers
    assert ks4_layers[: len(base_layers)] == base_layers
    version = docker_client.containers.run(
        python_base, ["python3", "-c", "import sys; print(sys.version_info[:2])"], remove=True
    )
    assert version.strip() == b"(3, 11)"


@pytest.mark.docker
def test_a_missing_matlab_base_skips_its_images_and_builds_kilosort4(
    docker_client, python_base, kilosort4_image, wheelhouse, tmp_path: Path, monkeypatch
) -> None:
    """With the MATLAB base neither present nor pullable, ``invoke build`` still builds
    kilosort4 (from the layer cache of the session's kilosort4 image), tags none of the
    MATLAB images, records kilosort4 and fails naming what it skipped."""
    from kilosort_docker import commands
    from kilosort_docker.images import build as build_mod
    from kilosort_docker.images.options import BuildOptions
    from tests.support import leftovers

    namespace = f"{support.NAMESPACE}-keepgoing"
    missing = f"{support.NAMESPACE}/no-such-matlab:r2022b"
    monkeypatch.setattr(paths, "BUILD_RECORD_DIR", tmp_path)
    options = BuildOptions.from_flags(
        base_image=missing,
        python_base=python_base,
        wheelhouse=str(wheelhouse) if wheelhouse else None,
        ca_bundle=support.host_ca_bundle(),
        namespace=namespace,
    )
    with leftovers.TRACKER.recording() as made:
        try:
            with pytest.raises(build_mod.SkippedImages) as caught:
                commands.build(options=options)
            message = str(caught.value)
            assert "\n" not in message
            assert message.startswith(
                "built kilosort4 but skipped matlab-toolboxes, kilosort3-code, kilosort3: "
                f"base image {missing} is not present and cannot be pulled"
            ), message
            assert "--base-image" in message
            assert [b.step.spec.name for b in caught.value.built] == ["kilosort4"]
            tags = sorted(
                tag
                for image in docker_client.images.list()
                for tag in image.tags
                if tag.startswith(f"{namespace}/")
            )
            assert tags and all(t.startswith(f"{namespace}/kilosort4:") for t in tags), tags
            recorded = json.loads((tmp_path / "r2022b.json").read_text())
            assert [i["name"] for i in recorded["images"]] == ["kilosort4"]
        finally:
            leftovers.remove(docker_client, made)


def test_execute_skips_the_images_of_a_missing_base_and_builds_the_rest(monkeypatch) -> None:
    """Planning only: the engine calls are replaced; the engine test below builds for real."""
    import contextlib

    from kilosort_docker import commands
    from kilosort_docker.images import build as build_mod

    plan = commands.make_plan(base_image="lab/matlab:none", namespace="lab")
    assert [s.spec.name for s in plan.steps] == [
        "matlab-toolboxes",
        "kilosort3-code",
        "kilosort3",
        "kilosort4",
    ]

    def ensure_base(client, ref, *, hint):
        if ref == "lab/matlab:none":
            raise UserError(f"base image {ref} is missing: {hint}")

    built: list[str] = []
    monkeypatch.setattr(build_mod.engine, "ensure_base", ensure_base)
    monkeypatch.setattr(
        build_mod, "staged_context", lambda step, plan: contextlib.nullcontext((None, {}))
    )
    monkeypatch.setattr(
        build_mod, "_run_build", lambda c, step, *a, **k: built.append(step.spec.name) or "id"
    )
    monkeypatch.setattr(build_mod, "tag_all", lambda client, image_id, refs: None)
    client = type("C", (), {"images": _Images({"id": "sha256:1"})})()
    client.images.get = lambda ref: type("I", (), {"id": "sha256:1", "attrs": {}})()
    with pytest.raises(build_mod.SkippedImages) as caught:
        build_mod.execute(plan, client)
    assert built == ["kilosort4"]
    assert caught.value.skipped == ["matlab-toolboxes", "kilosort3-code", "kilosort3"]
    assert str(caught.value) == (
        "built kilosort4 but skipped matlab-toolboxes, kilosort3-code, kilosort3: "
        "base image lab/matlab:none is missing: use a mirror with --base-image"
    )
    # Every root's base missing: nothing can be built, the base's own error as before.
    only_matlab = commands.make_plan(base_image="lab/matlab:none", image=["kilosort3"])
    with pytest.raises(UserError, match="^base image lab/matlab:none is missing") as caught:
        build_mod.execute(only_matlab, client)
    assert not isinstance(caught.value, build_mod.SkippedImages)


def test_a_failure_after_skipped_images_still_names_them(monkeypatch) -> None:
    """kilosort4 fails to build after the MATLAB chain was skipped: the one line says both."""
    import contextlib

    from kilosort_docker import commands
    from kilosort_docker.images import build as build_mod

    plan = commands.make_plan(base_image="lab/matlab:none", namespace="lab")

    def ensure_base(client, ref, *, hint):
        if ref == "lab/matlab:none":
            raise UserError(f"base image {ref} is missing: {hint}")

    def run_build(client, step, *args, **kwargs):
        raise UserError(f"building {step.spec.name} failed: pip could not reach the index")

    monkeypatch.setattr(build_mod.engine, "ensure_base", ensure_base)
    monkeypatch.setattr(
        build_mod, "staged_context", lambda step, plan: contextlib.nullcontext((None, {}))
    )
    monkeypatch.setattr(build_mod, "_run_build", run_build)
    with pytest.raises(UserError) as caught:
        build_mod.execute(plan, object())
    assert str(caught.value) == (
        "building kilosort4 failed: pip could not reach the index (also skipped "
        "matlab-toolboxes, kilosort3-code, kilosort3: base image lab/matlab:none is missing: "
        "use a mirror with --base-image)"
    )


def test_a_recorded_python_base_that_is_gone_says_run_invoke_bases(tmp_path, monkeypatch) -> None:
    """`invoke bases` recorded a base that was deleted since: the fix is to make it again."""
    from kilosort_docker import commands
    from kilosort_docker.images import build as build_mod

    record = tmp_path / "bases.json"
    record.write_text(json.dumps({"python_base": "lab/python-base:3.11-bookworm"}))
    monkeypatch.setattr(bases, "record_path", lambda folder=None: record)
    hints: dict[str, str] = {}

    def ensure_base(client, ref, *, hint):
        hints[ref] = hint
        raise UserError(f"base image {ref} is missing: {hint}")

    monkeypatch.setattr(build_mod.engine, "ensure_base", ensure_base)
    plan = commands.make_plan(
        image=["kilosort4"], python_base="lab/python-base:3.11-bookworm", namespace="lab"
    )
    with pytest.raises(UserError, match=r"run `invoke bases` again \(\S*bases.json names it\)"):
        build_mod.execute(plan, object())
    plan = commands.make_plan(image=["kilosort4"], python_base="lab/other:1", namespace="lab")
    with pytest.raises(UserError, match="use a mirror with --python-base$"):
        build_mod.execute(plan, object())


def test_the_bases_carry_the_label_clean_finds_them_by(tmp_path, monkeypatch) -> None:
    """The Debian import and the Python base build both label their image
    ``io.kilosort-docker.base`` (what ``invoke clean --bases`` looks for)."""
    calls: dict[str, dict] = {}

    class API:
        def import_image(self, **kwargs):
            calls["import"] = kwargs
            return json.dumps({"status": "sha256:" + "1" * 64})

        def build(self, **kwargs):
            calls["build"] = kwargs
            return iter([{"aux": {"ID": "sha256:" + "2" * 64}}])

    monkeypatch.setattr(bases.build_mod, "tag_all", lambda client, image_id, refs: None)
    client = type("Client", (), {"api": API()})()
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    plan = bases.plan_bases(namespace="lab")
    bases.import_rootfs(client, rootfs, plan.debian_ref)
    bases.build_python_base(client, plan, on_line=lambda line: None)
    assert calls["import"]["changes"] == [f"LABEL {bases.BASE_LABEL}=debian"]
    assert calls["build"]["labels"][bases.BASE_LABEL] == "python-base"

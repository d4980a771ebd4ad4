"""Issue 11 items 1 and 6: references, registries, namespaces, compilers, commits, tags and
versions are checked (and put in one canonical form) before any work, dry runs included.

Each reported input is here beside at least one more of its kind; the command-line cases run
``invoke`` as a user would (``tests/test_bad_input.py`` has the rest).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import docker.errors
import pytest

from kilosort_docker import engine
from kilosort_docker.errors import UserError
from kilosort_docker.images import plan, push, record, references
from kilosort_docker.images.options import BuildOptions
from kilosort_docker.images.pins import (
    canonical_version,
    check_tag_name,
    commit_folder,
    load_pins,
    same_commit,
    with_commits,
)
from kilosort_docker.mex.gencode import check_host_compiler_name
from tests import support

ROOT = Path(__file__).resolve().parent.parent
PINNED = "c43f524"
FULL = "c43f52452e474024a75ffed4152bce1ebede4eed"  # the pinned commit of Kilosort v3.0.2
SHA256 = "sha256:" + "ab" * 32


def invoke(*args: str):
    return support.invoke(*args, env={"MLM_LICENSE_FILE": ""})


def one_error_line(result) -> str:
    """The single ``error: ...`` line of a refused command (no traceback, exit 1)."""
    return support.one_error_line(result, code=1)


# --- Docker's reference grammar ------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "kilosortdocker/kilosort3:3.0.2-r2022b-b1",
        "python:3.11-slim-bookworm",
        "127.0.0.1:5000/lab/kilosort3:latest",
        "localhost/kilosort4",
        "Registry.Example.org:443/lab/img:1.0",  # a domain may hold upper case
        "[::1]:5000/lab/img:x",
        f"mathworks/matlab@{SHA256}",
        f"docker.io/mathworks/matlab:r2022b@{SHA256}",
        "lab/my__img.v2-x:" + "t" * 128,
    ],
)
def test_references_docker_accepts(ref):
    assert references.check_reference(ref) == ref
    assert references.is_reference(ref)


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("MyLab/kilosort3:3.0.2-r2022b-b1", "repository name must be lowercase"),
        ("127.0.0.1:5000/MyLab/kilosort3:latest", "repository name must be lowercase"),
        ("lab/img:" + "t" * 129, "129 characters long; Docker allows 128"),
        ("lab/img:-moving", "is not letters, digits"),
        ("lab//img:1", "empty path component"),
        ("lab/img/:1", "empty path component"),
        ("my lab/img:1", "whitespace"),
        ("https://ghcr.io/lab/img:1", "scheme"),
        ("bad_host:5000/img:1", "not host[:port]"),
        ("127.0.0.1:99999/img:1", "not 1-65535"),
        ("lab/img@sha256:abc", "64 hex digits"),
        ("lab/" + "a" * 260 + ":1", "Docker allows 255"),
        ("lab/-img:1", "path component '-img'"),
        ("", "empty"),
    ],
)
def test_references_docker_refuses_are_one_line(ref, why):
    with pytest.raises(UserError, match="is not a valid image reference") as info:
        references.check_reference(ref, what="--image", fix="fix it")
    message = str(info.value)
    assert why in message and message.endswith(": fix it") and "\n" not in message
    assert not references.is_reference(ref)


@pytest.mark.parametrize("registry", ["127.0.0.1:5000", "ghcr.io", "localhost:5000", "[::1]:5000"])
def test_registry_is_host_and_port(registry):
    assert references.check_registry(registry) == registry


@pytest.mark.parametrize(
    ("registry", "why"),
    [
        ("127.0.0.1:5000/", "holds a '/'"),
        ("ghcr.io/lab", "holds a '/'"),
        ("https://ghcr.io", "has a scheme"),
        ("my registry", "not host[:port]"),
        ("host:port", "not host[:port]"),
        ("", "is empty"),
    ],
)
def test_registry_outside_the_grammar_is_refused(registry, why):
    with pytest.raises(UserError, match="give --registry as host\\[:port\\]") as info:
        references.check_registry(registry)
    assert why in str(info.value)


@pytest.mark.parametrize("namespace", ["kilosortdocker", "lab/team", "127.0.0.1:5000/lab"])
def test_namespaces_docker_accepts(namespace):
    assert references.check_namespace(namespace) == namespace


@pytest.mark.parametrize(
    ("namespace", "why", "suggested"),
    [
        ("MyLab", "must be lowercase", "mylab"),
        ("my lab", "whitespace", "my-lab"),
        ("lab/", "empty path component", "lab"),
        ("lab/team:1", "path component 'team:1'", "lab-team-1"),
    ],
)
def test_namespaces_docker_refuses(namespace, why, suggested):
    with pytest.raises(UserError, match="is not a repository namespace") as info:
        references.check_namespace(namespace)
    assert why in str(info.value) and f"e.g. {suggested}" in str(info.value)


# --- every place a reference is made -------------------------------------------------------


def test_build_options_check_the_namespace_and_base_images():
    with pytest.raises(UserError, match="--namespace 'MyLab'"):
        BuildOptions.from_flags(namespace="MyLab")
    with pytest.raises(UserError, match="--base-image 'MathWorks/matlab:r2022b'.*lowercase"):
        BuildOptions.from_flags(base_image="MathWorks/matlab:r2022b")
    with pytest.raises(UserError, match="--python-base 'python:3.11 slim'.*whitespace"):
        BuildOptions.from_flags(python_base="python:3.11 slim")


def test_plan_checks_tags_derived_from_versions_and_namespace():
    # Options made without from_flags (the build record's) are checked by the plan itself.
    with pytest.raises(UserError, match="planned tag of kilosort4.*lowercase"):
        plan.plan_for(BuildOptions(images=("kilosort4",), namespace="MyLab"))
    pins = load_pins()
    local = replace(pins, kilosort4_version="4.1.7+cpu")  # PEP 440 allows '+'; a tag does not
    with pytest.raises(UserError, match="planned tag of kilosort4 'kilosortdocker/kilosort4:4.1.7"):
        plan.plan_for(BuildOptions(images=("kilosort4",)), pins=local)
    long = replace(pins, kilosort4_version="4.1." + "7" * 130)
    with pytest.raises(UserError, match="Docker allows 128"):
        plan.plan_for(BuildOptions(images=("kilosort4",)), pins=long)


def test_push_targets_check_registry_namespace_and_remote_refs():
    the_plan = plan.plan_for(BuildOptions(images=("kilosort4",)))
    for registry in ("127.0.0.1:5000/", "https://127.0.0.1:5000"):
        with pytest.raises(UserError, match="--registry"):
            push.targets(the_plan, registry=registry, namespace=None)
    with pytest.raises(UserError, match="--namespace 'MyLab'"):
        push.targets(the_plan, registry="127.0.0.1:5000", namespace="MyLab")
    pairs = push.targets(the_plan, registry="127.0.0.1:5000", namespace="lab")
    assert pairs[0] == (
        the_plan.steps[0].refs[0],
        f"127.0.0.1:5000/lab/kilosort4:{the_plan.steps[0].tags[0]}",
    )


def test_a_build_record_with_a_bad_reference_is_not_a_record(tmp_path):
    good = record.BuildRecord(
        "r2022b",
        "3.0.2-1",
        (record.RecordedImage("kilosort4", ("lab/kilosort4:4.1.7-b1",), "sha256:1", {}),),
    )
    record.save(good, folder=tmp_path)
    assert record.load("r2022b", folder=tmp_path) is not None
    path = record.record_path("r2022b", folder=tmp_path)
    path.write_text(path.read_text().replace("lab/kilosort4", "Lab/kilosort4"))
    with pytest.raises(UserError, match="is not a build record.*'Lab/kilosort4:4.1.7-b1'"):
        record.load("r2022b", folder=tmp_path)


class _RefusingImages:
    """``client.images`` of an engine that answers every lookup with a 400 (a daemon error)."""

    def get(self, ref):
        raise docker.errors.APIError(
            "400 Client Error: Bad Request",
            explanation=f"no such image: {ref}: invalid reference format:\nrepository name must "
            "be lowercase",
        )


class _RefusingClient:
    images = _RefusingImages()


def test_a_daemon_error_while_looking_up_is_one_line():
    with pytest.raises(UserError, match="refused to look up MyLab/x:1 .*must be lowercase"):
        engine.image_exists(_RefusingClient(), "MyLab/x:1")


class _TagRefusingAPI:
    def __init__(self):
        self.tags: set[str] = set()
        self.removed: list[str] = []

    def tag(self, image, repository, tag, force=False):
        if len(self.tags) == 1:
            raise docker.errors.APIError("500 Server Error", explanation="disk full\nmore")
        self.tags.add(f"{repository}:{tag}")
        return True

    def push(self, repository, tag=None, **kwargs):
        return iter([{"status": "Pushed"}, {"aux": {"Tag": tag, "Digest": SHA256}}])

    def remove_image(self, ref, noprune=False):
        self.removed.append(ref)
        self.tags.discard(ref)


class _TagRefusingClient:
    """An engine where every local image exists, no remote one does, pushes succeed, and the
    second tag fails with a daemon error."""

    def __init__(self, local: set[str]):
        self.api = _TagRefusingAPI()
        self.local = local
        outer = self

        class Images:
            def get(self, ref):
                if ref in outer.local:
                    return object()
                raise docker.errors.ImageNotFound(f"no such image: {ref}")

        self.images = Images()


def test_a_daemon_error_while_tagging_is_one_line_and_leaves_no_remote_tag():
    the_plan = plan.plan_for(BuildOptions(images=("kilosort4",)))
    client = _TagRefusingClient(set(the_plan.steps[0].refs))
    with pytest.raises(UserError, match=r"refused tagging .*\(disk full more\): check --registry"):
        push.push(the_plan, client, registry="127.0.0.1:5000", namespace="lab")
    assert client.api.tags == set()
    assert len(client.api.removed) == 1


@pytest.mark.docker
def test_the_engine_refusing_a_lookup_is_one_line(docker_client):
    for ref in ("MyLab/kilosort3:latest", "x:" + "a" * 130):
        with pytest.raises(UserError, match="the Docker engine refused to look up") as info:
            engine.image_exists(docker_client, ref)
        assert "invalid reference format" in str(info.value)


# --- the command line: refused before any work ----------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("build", "--image", "kilosort4", "--namespace", "MyLab", "--dry-run"), "'MyLab'"),
        (("build", "--image", "kilosort4", "--namespace", "my lab", "--dry-run"), "whitespace"),
        (("push", "--namespace", "MyLab", "--registry", "127.0.0.1:5000"), "'MyLab'"),
        (("push", "--registry", "127.0.0.1:5000/", "--dry-run"), "holds a '/'"),
        (("check-images", "--namespace", "MyLab"), "'MyLab'"),
        (("check-images", "--image", "Kilosort3"), "unknown image 'Kilosort3'"),
        (
            (
                "check-gpu",
                "--image",
                "MyLab/Kilosort3:latest",
                "--license",
                "27000@lic.example.org",
            ),
            "--image 'MyLab/Kilosort3:latest' is not a valid image reference",
        ),
        (("check-gpu", "--image", "kilosort3:" + "t" * 129), "Docker allows 128"),
        (("build", "--dry-run", "--base-image", "MathWorks/matlab:r2022b"), "--base-image"),
    ],
)
def test_bad_references_are_one_line_before_any_work(args, expected):
    assert expected in one_error_line(invoke(*args))


@pytest.mark.parametrize("compiler", ["g++-10 curl", "G++-10", "g++;id", "--version"])
def test_malformed_host_compiler_is_refused_before_any_work(compiler):
    for task in ("build", "build-mex"):
        line = one_error_line(invoke(task, "--dry-run", f"--host-compiler={compiler}"))
        assert f"--host-compiler {compiler!r} is not a host compiler" in line


@pytest.mark.parametrize(
    "compiler",
    ["g++", "g++-10", "gcc-9", "/usr/bin/g++-9", "clang++-15", "x86_64-linux-gnu-g++-10"],
)
def test_host_compiler_names_are_accepted(compiler):
    assert check_host_compiler_name(compiler) == compiler


# --- item 6: one canonical form for commits, tags and versions -----------------------------


@pytest.mark.parametrize("given", [FULL, FULL.upper(), FULL[:12], PINNED.upper()])
def test_another_form_of_the_pinned_commit_is_the_pin(given):
    pins = load_pins()
    assert with_commits(pins, kilosort_commit=given) == pins  # tag kept, commit as pinned
    the_plan = plan.plan_for(BuildOptions(images=("kilosort3",), kilosort_commit=given))
    default = plan.plan_for(BuildOptions(images=("kilosort3",)))
    assert the_plan.pins.kilosort3.tag == "v3.0.2"
    assert the_plan.mex_binaries_folder == default.mex_binaries_folder
    assert the_plan.mex_binaries_folder.name == PINNED
    assert plan.describe(the_plan) == plan.describe(default)


def test_another_commit_drops_the_tag_and_is_lower_case():
    pins = with_commits(load_pins(), kilosort_commit="D7E1F30" + "1" * 33)
    assert (pins.kilosort3.commit, pins.kilosort3.tag) == ("d7e1f30" + "1" * 33, None)


def test_mex_binaries_folder_is_found_by_any_form_of_the_commit(tmp_path):
    (tmp_path / "r2022b" / PINNED).mkdir(parents=True)
    for given in (FULL, FULL[:12].upper()):
        the_plan = plan.plan_for(
            BuildOptions(images=("kilosort3",), kilosort_commit=given, mex_binaries=tmp_path)
        )
        assert the_plan.mex_binaries_folder == tmp_path / "r2022b" / PINNED
    assert commit_folder(tmp_path / "r2022b", FULL) == tmp_path / "r2022b" / PINNED
    other = "d7e1f30" + "1" * 33
    assert commit_folder(tmp_path / "r2022b", other) == tmp_path / "r2022b" / other
    (tmp_path / "r2022b" / FULL[:12]).mkdir()
    with pytest.raises(UserError, match="several folders for commit"):
        commit_folder(tmp_path / "r2022b", FULL)


def test_same_commit():
    assert same_commit(PINNED, FULL) and same_commit(FULL.upper(), PINNED)
    assert not same_commit(PINNED, "d7e1f30" + "1" * 33)
    assert not same_commit("refs/ta", "refs/tags/v3.0.3")


def test_dry_run_with_the_pinned_commit_in_full_is_the_pinned_plan():
    # Issue 11: the full sha made the plan look in mex-binaries/r2022b/<full sha> and drop v3.0.2.
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}

    def dry_run(*extra: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "invoke", "build", "--image", "kilosort3", "--dry-run", *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    pinned = dry_run()
    assert f"Kilosort v3.0.2 from https://github.com/MouseLand/Kilosort.git at {PINNED}" in pinned
    assert dry_run("--kilosort-commit", FULL) == pinned
    assert dry_run("--kilosort-commit", FULL[:12].upper()) == pinned


@pytest.mark.parametrize(
    ("text", "canonical"), [("4.1.7", "4.1.7"), ("v4.1.07", "4.1.7"), ("4.1.7.0", "4.1.7.0")]
)
def test_versions_go_through_packaging(text, canonical):
    assert canonical_version(text, "x") == canonical


@pytest.mark.parametrize("text", ["4.1.x", "", "latest"])
def test_non_versions_are_refused(text):
    with pytest.raises(UserError, match="is not a version"):
        canonical_version(text, "kilosort-docker.toml [kilosort4] version")


def test_tag_names_are_git_ref_names():
    assert check_tag_name("refs/tags/v3.0.3", "x") == "v3.0.3"
    for bad in ("v3..0", "v3 0", "v3^", "-v3", "v3.lock", "", "refs/tags/"):
        with pytest.raises(UserError, match="is not a git tag name"):
            check_tag_name(bad, "x")


def test_pins_are_read_in_canonical_form(pinned_root):
    config = pinned_root / "kilosort-docker.toml"
    text = config.read_text()
    config.write_text(
        text.replace('commit = "c43f524"', 'commit = "C43F524"').replace(
            'version = "4.1.7"', 'version = "v4.1.07"'
        )
    )
    pins = load_pins(config, pinned_root / "VERSION")
    assert (pins.kilosort3.commit, pins.kilosort4_version) == ("c43f524", "4.1.7")
    config.write_text(text.replace('namespace = "kilosortdocker"', 'namespace = "KilosortDocker"'))
    with pytest.raises(UserError, match=r"kilosort-docker.toml \[images\] 'KilosortDocker'"):
        load_pins(config, pinned_root / "VERSION")
    config.write_text(text.replace('tag = "v3.0.2"', 'tag = "v3.0.2 final"'))
    with pytest.raises(UserError, match="is not a git tag name"):
        load_pins(config, pinned_root / "VERSION")


def test_support_namespace_is_valid():
    assert references.check_namespace(support.NAMESPACE) == support.NAMESPACE


def test_release_push_checks_the_registry_before_the_tests_run():
    from kilosort_docker import commands

    with pytest.raises(UserError, match="--registry '127.0.0.1:5000/' holds a '/'"):
        commands.release_record(registry="127.0.0.1:5000/")

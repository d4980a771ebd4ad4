"""Images are data: a new image is one entry (plus its docker/ folder); build options are
declared once and the tasks derive from them; the build record remembers what was built."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from kilosort_docker import commands, paths
from kilosort_docker.errors import UserError
from kilosort_docker.images import build, checks, plan, record, stack
from kilosort_docker.images.options import BuildOptions, flag_help, option_fields, site_defaults
from kilosort_docker.images.pins import load_pins
from kilosort_docker.images.profiles import get_profile
from kilosort_docker.images.spec import ExternalBase, ImageCheck, ImageSpec, Stack

TOY_CHECK = ImageCheck("toy-greeting", "the toy says hello", lambda target: (True, "hello"))


def toy_images() -> tuple[ImageSpec, ImageSpec]:
    """A root on an external base and a child of kilosort4, described by data alone."""
    root = ImageSpec(
        name="toy-root",
        title="a toy root image",
        base=ExternalBase("a toy base", ref=lambda ctx: "toy/base:1", flag="--toy-base"),
        per_profile=False,
        needs_license=False,
        buildargs=lambda ctx: {"GREETING": "hello", "KILOSORT4": ctx.pins.kilosort4_version},
        describe=lambda ctx: ["a toy line"],
        version=lambda ctx: "0.1",
        labels=lambda ctx: {"io.kilosort-docker.toy": "yes"},
        checks=(TOY_CHECK,),
        size_budget_gb=lambda profile: 0.5,
    )
    child = ImageSpec(
        name="toy-child",
        title="a toy image built from kilosort4",
        parent="kilosort4",
        per_profile=False,
        buildargs=lambda ctx: {"PARENT_REF": ctx.refs["kilosort4"]},
    )
    return root, child


def test_a_toy_image_registered_from_data_alone_gets_a_plan():
    root, child = toy_images()
    toy_stack = stack.STACK.with_image(root).with_image(child)
    pins = load_pins()
    the_plan = plan.make_plan(
        get_profile(), pins, images=["toy-root", "toy-child"], stack=toy_stack, revision="r",
        created="c",
    )  # fmt: skip
    assert [s.spec.name for s in the_plan.steps] == ["kilosort4", "toy-root", "toy-child"]
    toy = the_plan.step("toy-root")
    assert toy.base_image == "toy/base:1"
    assert toy.buildargs == {"BASE_IMAGE": "toy/base:1", "GREETING": "hello", "KILOSORT4": "4.1.7"}
    assert toy.refs == [
        f"{pins.namespace}/toy-root:0.1-b{pins.release.build}",
        f"{pins.namespace}/toy-root:0.1",
        f"{pins.namespace}/toy-root:latest",
    ]
    assert toy.labels["io.kilosort-docker.toy"] == "yes"
    assert "io.kilosort-docker.profile" not in toy.labels
    assert toy.context_extras == ("a toy line",)
    kid = the_plan.step("toy-child")
    assert kid.base_image == the_plan.step("kilosort4").refs[0]
    assert kid.buildargs["PARENT_REF"] == kid.base_image
    # its checks: its own, and a parent's checks run on the child
    assert [c.name for c in checks.checks_for(root, stack=toy_stack)] == [
        "toy-greeting",
        "size-budget",
    ]
    assert {"non-root", "kilosort4-versions", "no-secrets"} <= {
        c.name for c in checks.checks_for(child, stack=toy_stack)
    }
    assert "size-budget" not in {c.name for c in checks.checks_for(child, stack=toy_stack)}
    # and the default stack is untouched
    assert "toy-root" not in [s.name for s in stack.STACK]


def test_a_stack_refuses_an_orphan_or_a_duplicate():
    root, child = toy_images()
    with pytest.raises(ValueError, match="parent kilosort4 must come before it"):
        Stack((child,))
    with pytest.raises(ValueError, match="listed twice"):
        Stack((root, root))
    with pytest.raises(ValueError, match="exactly one of parent and base"):
        ImageSpec(name="x", title="x")


def test_staging_is_the_entry_s_own(tmp_path, monkeypatch):
    staged = []

    def stage(the_plan, context):
        staged.append(sorted(p.name for p in context.iterdir()))
        (context / "extra.txt").write_text("x")
        return {"ADDED": "1"}

    folder = tmp_path / "toy-root"
    folder.mkdir()
    (folder / "Dockerfile").write_text("FROM scratch\n")
    (folder / "license.lic").write_text("SERVER x 0123456789ab 27000\n")
    root, _ = toy_images()
    toy = replace(root, stage=stage)
    monkeypatch.setattr(paths, "DOCKER_DIR", tmp_path)
    monkeypatch.setattr("kilosort_docker.images.spec.DOCKER_DIR", tmp_path)
    the_plan = plan.make_plan(get_profile(), load_pins(), images=["toy-root"],
                              stack=Stack((toy,)), revision="r", created="c")  # fmt: skip
    with build.staged_context(the_plan.steps[0], the_plan) as (context, args):
        assert (context / "extra.txt").is_file()
        assert not (context / "license.lic").exists()  # secrets never reach a context
        assert args["ADDED"] == "1" and args["GREETING"] == "hello"
    assert staged == [["Dockerfile"]]


@pytest.mark.parametrize("module", ["plan.py", "build.py", "checks.py"])
def test_no_image_name_is_tested_in_plan_build_or_checks(module):
    """What differs per image lives in its entry: no ``x.name == "<literal>"`` remains."""
    tree = ast.parse((paths.ROOT / "kilosort_docker" / "images" / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            names = [s for s in sides if isinstance(s, ast.Attribute) and s.attr == "name"]
            literals = [s for s in sides if isinstance(s, ast.Constant)]
            assert not (names and literals), f"{module}:{node.lineno} tests an image name"


def test_each_option_is_declared_once_and_every_task_shows_its_help():
    helps = flag_help()
    assert helps["python_base"].startswith("base image for kilosort4")
    assert set(site_defaults()) >= {"base_image", "namespace", "wheelhouse", "cuda_toolkit"}
    out = subprocess.run(
        [sys.executable, "-m", "invoke", "--help", "build"],
        cwd=paths.ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for spec in option_fields():
        flag = "--" + (spec.metadata.get("flag") or spec.name).replace("_", "-")
        assert flag in out, flag
    assert helps["gencode"].split(",")[0] in out


def test_options_refuse_what_is_not_there(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        BuildOptions.from_flags(wheelhouse=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="unknown build option"):
        BuildOptions.from_flags(pythonbase="x")
    opts = BuildOptions.from_flags(python_base="x", image=["kilosort4"], gencode=None)
    assert opts.python_base_image == "x" and opts.images == ("kilosort4",) and opts.gencode == ()
    assert BuildOptions.from_dict(json.loads(json.dumps(opts.to_dict()))) == opts


def test_site_settings_come_from_invoke_configuration(tmp_path):
    """A site writes its mirrors once (invoke.yaml or INVOKE_KILOSORT_DOCKER_*); a flag wins."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "invoke.yaml").write_text(
        "kilosort_docker:\n  python_base: mirror.example.org/python:3.11\n  namespace: mylab\n"
    )
    env = {"INVOKE_KILOSORT_DOCKER_MPM_URL": "http://127.0.0.1:9/mpm"}

    def dry_run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "invoke", "--search-root", str(paths.ROOT),
             "--config", str(project / "invoke.yaml"), "build", "--dry-run", *args],
            cwd=project, capture_output=True, text=True, env={**_env(), **env},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = dry_run()
    assert "FROM mirror.example.org/python:3.11" in out
    assert "tag mylab/kilosort4:4.1.7" in out
    assert "MPM_URL=http://127.0.0.1:9/mpm" in out
    out = dry_run("--python-base", "other/python:3.11", "--namespace", "lab2")
    assert "FROM other/python:3.11" in out and "tag lab2/kilosort4:4.1.7" in out


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}


class _Built:
    def __init__(self, step, image_id):
        self.step, self.image_id = step, image_id


def test_the_build_record_remembers_the_options_of_each_image(tmp_path, monkeypatch):
    """An image built with --kilosort-commit is checked and pushed as built, not as pinned."""
    monkeypatch.setattr(paths, "BUILD_RECORD_DIR", tmp_path)
    options = BuildOptions.from_flags(image=["kilosort3-code"], kilosort_commit="abcdef1")
    the_plan = plan.plan_for(options)
    rel = str(the_plan.pins.release)
    built = [_Built(s, f"sha256:{i}") for i, s in enumerate(the_plan.steps)]
    record.save(record.from_build(options, rel, built, profile="r2022b"))
    # a later build of another image keeps the first one's entries and options
    k4 = plan.plan_for(BuildOptions.from_flags(image=["kilosort4"], namespace="lab"))
    record.save(record.from_build(k4.options, rel, [_Built(k4.steps[0], "sha256:k4")],
                                  profile="r2022b"))  # fmt: skip
    loaded = record.load("r2022b")
    assert [i.name for i in loaded.images] == ["matlab-toolboxes", "kilosort3-code", "kilosort4"]
    assert loaded.image("kilosort3-code").options.kilosort_commit == "abcdef1"

    _, chosen = commands.built_plan(images=["kilosort3-code"])
    step, pins = chosen[-1]
    assert step.spec.name == "kilosort3-code" and pins.kilosort3.commit == "abcdef1"
    assert step.refs == list(loaded.image("kilosort3-code").refs)
    _, chosen = commands.built_plan(images=["kilosort4"])
    assert chosen[0][0].refs[0].startswith("lab/kilosort4:")
    # another namespace means other images: plan those from the defaults
    _, chosen = commands.built_plan(images=["kilosort3-code"], namespace="other")
    assert chosen[-1][1].kilosort3.commit == load_pins().kilosort3.commit

    with_digest = loaded.with_digests(
        {"127.0.0.1:5000/lab/kilosort4:4.1.7": "sha256:d1"},
        {"127.0.0.1:5000/lab/kilosort4:4.1.7": k4.steps[0].refs[1]},
    )
    record.save(with_digest, merge=False)
    assert record.load("r2022b").image("kilosort4").digests == {
        "127.0.0.1:5000/lab/kilosort4:4.1.7": "sha256:d1"
    }


def test_a_broken_build_record_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "BUILD_RECORD_DIR", tmp_path)
    (tmp_path / "r2022b.json").write_text("{not json")
    with pytest.raises(UserError, match="delete it and run `invoke build` again"):
        record.load("r2022b")


def test_release_push_needs_a_record_of_this_release(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "BUILD_RECORD_DIR", tmp_path)
    with pytest.raises(UserError, match="run `invoke build` first"):
        commands.push(require_record=True, dry_run=True)
    old = record.BuildRecord(profile="r2022b", release="3.0.1-1", images=())
    record.save(old, merge=False)
    with pytest.raises(UserError, match="record is of release 3.0.1-1"):
        commands.push(require_record=True, dry_run=True)


def test_record_path_is_per_profile():
    assert record.record_path("r2021a").name == "r2021a.json"
    assert record.record_path("r2021a", folder=Path("/x")) == Path("/x/r2021a.json")


def test_every_task_flag_has_help():
    """`invoke --help <task>` explains every flag of every task."""
    import tasks

    for name in tasks.ns.task_names:
        task = tasks.ns[name]
        params = list(task.argspec(task.body).parameters)
        missing = [p for p in params if not task.help.get(p)]
        assert not missing, f"{name}: no help for {missing}"
        assert task.__doc__ or task.body.__doc__, name


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("kilosort_docker:\n  wheelhouse: 5\n", "kilosort_docker.wheelhouse must be a string"),
        ("kilosort_docker:\n  namespace: [a, b]\n", "kilosort_docker.namespace must be a string"),
        ("kilosort_docker:\n  namspace: mylab\n", "unknown setting kilosort_docker.namspace"),
        ("kilosort_docker:\n  wheelhouse: /nonexistent\n", "kilosort_docker.wheelhouse"),
    ],
)
def test_a_bad_site_setting_is_one_line_naming_it(tmp_path, setting, expected):
    config = tmp_path / "invoke.yaml"
    config.write_text(setting)
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(paths.ROOT),
         "--config", str(config), "build", "--dry-run", "--image", "kilosort4"],
        cwd=tmp_path, capture_output=True, text=True, env=_env(),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def test_release_push_checks_the_record_before_anything_else(tmp_path):
    """`release --push` (dry run or not) refuses at once when nothing was built for VERSION."""
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "release", "--dry-run", "--push"],
        cwd=paths.ROOT, capture_output=True, text=True,
        env={**_env(), "KILOSORT_DOCKER_BUILD_RECORD_DIR": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 1
    assert "run `invoke build` first" in done.stderr

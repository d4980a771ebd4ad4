"""Unit tests of the stack table, profiles, pins, tags, labels and the build plan."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kilosort_docker import paths
from kilosort_docker.errors import UserError
from kilosort_docker.images import plan, stack, tags
from kilosort_docker.images.pins import Release, load_pins
from kilosort_docker.images.profiles import PROFILES, Gencode, get_profile


@pytest.fixture
def pins():
    return load_pins()


def test_build_order_puts_parents_first():
    names = [s.name for s in stack.build_order()]
    for spec in stack.STACK:
        if spec.parent:
            assert names.index(spec.parent) < names.index(spec.name)
    assert [s.name for s in stack.build_order(["kilosort3"])] == [
        "matlab-toolboxes",
        "kilosort3-code",
        "kilosort3",
    ]
    assert [s.name for s in stack.build_order(["kilosort4"])] == ["kilosort4"]


def test_every_image_has_a_dockerfile():
    for spec in stack.STACK:
        assert (spec.dockerfile_dir / "Dockerfile").is_file(), spec.name


def test_every_root_has_an_external_base_and_no_cycles():
    for spec in stack.STACK:
        assert (spec.parent is None) == (spec.external_base is not None)
        assert len(stack.ancestry(spec.name)) <= len(stack.STACK)


def test_default_profile_is_r2022b_with_cuda_11_2():
    profile = get_profile()
    assert (profile.name, profile.cuda, profile.matlab_root) == (
        "r2022b",
        "11.2",
        "/opt/matlab/R2022b",
    )
    assert [g.flag() for g in profile.gencode][-1] == "-gencode=arch=compute_80,code=compute_80"
    assert profile.gencode[-1].is_ptx and not profile.gencode[0].is_ptx


def test_cuda_mismatch_refused_unless_overridden():
    with pytest.raises(UserError, match="expects CUDA 11.2"):
        get_profile("r2022b", cuda="12.2")
    assert get_profile("r2022b", cuda="12.2", allow_cuda_mismatch=True).cuda == "12.2"
    assert get_profile("R2022B", cuda="11.2").name == "r2022b"


def test_gencode_parse():
    assert Gencode.parse("compute_90,sm_90") == Gencode("compute_90", "sm_90")
    assert Gencode.parse("arch=compute_90,code=compute_90").is_ptx
    assert Gencode("compute_86", "sm_86").number == 86
    with pytest.raises(UserError, match="compute_XY"):
        Gencode.parse("sm90")


def test_release_parse():
    assert str(Release.parse("3.0.2-7\n")) == "3.0.2-7"
    for bad in ("3.0.2", "v3.0.2-1", "3.0.2-0", "3.0.2-x"):
        with pytest.raises(UserError, match="malformed VERSION"):
            Release.parse(bad)


def test_version_and_pins_agree(tmp_path):
    config = tmp_path / "k.toml"
    config.write_text(paths.ROOT.joinpath("kilosort-docker.toml").read_text())
    version = tmp_path / "VERSION"
    version.write_text("3.0.3-2\n")
    with pytest.raises(UserError, match="invoke bump"):
        load_pins(config, version)
    config.write_text(config.read_text().replace('commit = "c43f524"', 'commit = "zz"'))
    version.write_text("3.0.2-2\n")
    with pytest.raises(UserError, match="hex digits"):
        load_pins(config, version)


def test_tags_carry_versions_and_build(pins):
    profile = get_profile()
    ks3, ks4 = stack.get_image("kilosort3"), stack.get_image("kilosort4")
    build = pins.release.build
    assert tags.tags(ks3, profile, pins) == [
        f"{pins.kilosort3.version}-r2022b-b{build}",
        f"{pins.kilosort3.version}-r2022b",
        "latest",
    ]
    assert tags.tags(ks3, get_profile("r2021a"), pins)[-1] != "latest"
    assert tags.tags(ks4, get_profile("r2021a"), pins)[:2] == [
        f"{pins.kilosort4_version}-b{build}",
        pins.kilosort4_version,
    ]
    assert tags.tags(stack.get_image("matlab-toolboxes"), profile, pins)[1] == "r2022b"


def test_labels(pins):
    profile = get_profile()
    labels = tags.labels(
        stack.get_image("kilosort3"),
        profile,
        pins,
        base_name="x/kilosort3-code:1",
        revision="abc",
        created="2026-01-01T00:00:00Z",
    )
    assert labels["org.opencontainers.image.base.name"] == "x/kilosort3-code:1"
    assert labels["org.opencontainers.image.revision"] == "abc"
    assert labels["io.kilosort-docker.cuda.version"] == "11.2"
    assert labels["io.kilosort-docker.matlab.release"] == "R2022b"
    ks4 = tags.labels(stack.get_image("kilosort4"), profile, pins, base_name="python",
                      revision="abc", created="now")  # fmt: skip
    assert "io.kilosort-docker.matlab.release" not in ks4
    assert ks4["io.kilosort-docker.torch.version"] == pins.torch_version


def test_created_honours_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert tags.created_timestamp() == "1970-01-01T00:00:00Z"


def test_plan_chains_children_to_parents_immutable_tag(pins):
    the_plan = plan.make_plan(get_profile(), pins, revision="r", created="c")
    code = the_plan.step("kilosort3-code")
    final = the_plan.step("kilosort3")
    assert final.base_image == code.refs[0] == f"kilosortdocker/kilosort3-code:{code.tags[0]}"
    assert final.buildargs["BASE_IMAGE"] == final.base_image
    assert the_plan.step("matlab-toolboxes").base_image == "mathworks/matlab:r2022b"
    assert the_plan.step("kilosort3-code").buildargs["KILOSORT_COMMIT"] == pins.kilosort3.commit


def test_plan_overrides(pins):
    profile = get_profile().with_overrides(
        base_image="mirror.local/matlab:r2022b", mpm_url="http://127.0.0.1:1/mpm"
    )
    options = plan.BuildOptions(python_base_image="local/python:3.11", namespace="lab")
    the_plan = plan.make_plan(profile, pins, options=options, revision="r", created="c")
    assert the_plan.step("matlab-toolboxes").base_image == "mirror.local/matlab:r2022b"
    assert the_plan.step("matlab-toolboxes").buildargs["MPM_URL"] == "http://127.0.0.1:1/mpm"
    assert the_plan.step("kilosort4").base_image == "local/python:3.11"
    assert all(step.repository.startswith("lab/") for step in the_plan.steps)


def test_every_profile_is_consistent():
    for profile in PROFILES.values():
        assert profile.matlab_release.lower() == profile.name
        assert profile.base_image.endswith(profile.name)
        assert profile.gencode[-1].is_ptx
        assert replace(profile).cuda == profile.cuda

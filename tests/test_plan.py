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


#: Runfile sha256 of each profile's CUDA toolkit: the public values in Spack's `cuda` package
#: recipe (spack/spack, var/spack/repos/builtin/packages/cuda/package.py).
SPACK_CUDA_RUNFILES = {
    "r2021a": (
        "11.0.3/local_installers/cuda_11.0.3_450.51.06_linux.run",
        "b079c4e408adf88c3f1ffb8418a97dc4227c37935676b4bf4ca0beec6c328cc0",
    ),
    "r2022b": (
        "11.2.2/local_installers/cuda_11.2.2_460.32.03_linux.run",
        "0a2e477224af7f6003b49edfd2bfee07667a8148fe3627cfd2765f6ad72fa19d",
    ),
    "r2024a": (
        "12.2.0/local_installers/cuda_12.2.0_535.54.03_linux.run",
        "ecf3d2afadcbac029f0f4505785810d52d006e4b87ba79ff3f984336a2bbf518",
    ),
}


@pytest.mark.parametrize("name", sorted(SPACK_CUDA_RUNFILES))
def test_every_profile_pins_its_cuda_runfile(name):
    # URL and checksum name the same file, and that file is the profile's CUDA major.minor.
    profile = get_profile(name)
    tail, sha256 = SPACK_CUDA_RUNFILES[name]
    assert profile.cuda_installer_url == (
        f"https://developer.download.nvidia.com/compute/cuda/{tail}"
    )
    assert tail.startswith(profile.cuda + ".")
    assert profile.cuda_installer_sha256 == sha256


def test_dry_run_compiles_with_the_downloaded_toolkit(pins):
    # With a pinned sha256 a new user's `invoke build` can build kilosort3: no warning, and
    # the stage gets URL and checksum (docker/kilosort3/install-cuda.sh checks them).
    for name, (tail, sha256) in SPACK_CUDA_RUNFILES.items():
        step = plan.make_plan(get_profile(name), pins).step("kilosort3")
        assert not any("cannot be built" in line for line in step.context_extras)
        assert any("from NVIDIA's installer" in line for line in step.context_extras)
        assert step.buildargs["CUDA_INSTALLER_SHA256"] == sha256
        assert step.buildargs["CUDA_INSTALLER_URL"].endswith(tail)


def test_profiles_table_marks_unverified_profiles():
    from rich.console import Console

    from kilosort_docker.ui import profiles_table

    console = Console(width=250, record=True)
    console.print(profiles_table("r2022b"))
    text = console.export_text()
    rows = {line.split("│")[1].strip(): line for line in text.splitlines()
            if line.startswith("│")}  # fmt: skip
    assert "UNVERIFIED: inferred" in rows["r2024a (inferred)"]
    assert "UNVERIFIED" not in rows["r2022b (default)"] and "verified" in rows["r2022b (default)"]
    assert "UNVERIFIED: values inferred" in text


def test_r2024a_is_an_ubuntu_22_04_profile_marked_unverified():
    # MathWorks' R2024a image is built on Ubuntu 22.04 (its gcc is 11, which CUDA 12.2
    # accepts); the values are inferred, not read off the image, so the profile says so.
    profile = get_profile("r2024a")
    assert (profile.ubuntu, profile.host_compiler, profile.cuda) == ("22.04", "g++-11", "12.2")
    assert profile.verified is False
    assert all(p.verified for name, p in PROFILES.items() if name != "r2024a")


# --- issue 11 item 6: the pinned commit in any form is the pin --------------------------------


@pytest.mark.parametrize(
    "given",
    ["c43f52452e474024a75ffed4152bce1ebede4eed", "C43F52452E474024A75FFED4152BCE1EBEDE4EED"]
    + ["c43f52452e47"],
)
def test_the_pinned_commit_in_full_keeps_the_tag_and_mex_folder(pins, given):
    default = plan.plan_for(plan.BuildOptions(images=("kilosort3",)), pins=pins)
    given_plan = plan.plan_for(
        plan.BuildOptions(images=("kilosort3",), kilosort_commit=given), pins=pins
    )
    assert given_plan.pins == pins
    assert given_plan.mex_binaries_folder == default.mex_binaries_folder
    assert given_plan.mex_binaries_folder.name == "c43f524"
    assert given_plan.step("kilosort3-code").buildargs["KILOSORT_COMMIT"] == "c43f524"
    assert "Kilosort v3.0.2 from" in plan.describe(given_plan)


def test_a_tag_made_from_a_version_is_checked(pins):
    odd = replace(pins, kilosort3=replace(pins.kilosort3, version="3.0.2+local"))
    with pytest.raises(UserError, match="planned tag of kilosort3-code.*3.0.2\\+local-r2022b"):
        plan.plan_for(plan.BuildOptions(images=("kilosort3",)), pins=odd)

"""The real upstream sources, from the local mirrors an air-gapped site would use: Kilosort at
tag v3.0.2 and npy-matlab at the pinned commit, fetched and checked against the pins."""

from __future__ import annotations

import shutil

import pytest

from kilosort_docker import commands
from kilosort_docker.images import build, checks, sources
from kilosort_docker.images.pins import load_pins
from kilosort_docker.mex import get_spec
from tests import support
from tests.support import leftovers

#: The CUDA sources Kilosort's own CUDA/mexGPUall.m builds at v3.0.2 (mexNvidia_quicksort.cu is
#: #included by mexMPnu8.cu; mexClusteringFull.cu and mexRECONSTRUCT.cu are not built).
KILOSORT_302_BUILT = {
    "spikedetector3", "spikedetector3PC", "mexThSpkPC", "mexGetSpikes2", "mexSVDsmall2",
    "mexWtW2", "mexFilterPCs", "mexClustering2", "mexDistances2", "mexMPnu8",
}  # fmt: skip


_removes_what_it_builds = leftovers.removing_after_module(f"{support.NAMESPACE}-mirrors")


def test_mirrors_give_the_pinned_commits(shared_mirrors, git_cache, tmp_path):
    pins = load_pins()
    ks = sources.export(pins.kilosort3, tmp_path / "ks", repository=str(shared_mirrors["Kilosort"]))
    assert ks.startswith(pins.kilosort3.commit) and len(ks) == 40
    npy = sources.export(
        pins.npy_matlab, tmp_path / "npy", repository=str(shared_mirrors["npy-matlab"])
    )
    assert npy == pins.npy_matlab.commit
    assert (tmp_path / "npy" / "npy-matlab" / "readNPY.m").is_file()
    # the mex list this project compiles is exactly what the real mexGPUall.m builds
    cuda = tmp_path / "ks" / "CUDA"
    assert (cuda / "mexGPUall.m").is_file()
    spec = get_spec(pins.kilosort3.version)
    names = {s.name for s in spec.sources if not s.diagnostic}
    assert names == KILOSORT_302_BUILT
    for name in names:
        assert (cuda / f"{name}.cu").is_file(), name
        assert f"{name}.cu" in (cuda / "mexGPUall.m").read_text(), name


def test_a_wrong_pin_is_refused_against_the_real_mirror(shared_mirrors, git_cache, tmp_path):
    pins = load_pins()
    wrong = pins.kilosort3.__class__(
        repository=pins.kilosort3.repository, commit="0fa64dc", tag="v3.0.2", version="3.0.2"
    )
    with pytest.raises(Exception, match="0fa64dc"):
        sources.export(wrong, tmp_path / "ks", repository=str(shared_mirrors["Kilosort"]))
    assert not (tmp_path / "ks").exists() or not any((tmp_path / "ks").iterdir())


@pytest.mark.docker
def test_kilosort3_code_builds_from_the_real_sources(
    docker_client, matlab_standin, mpm_server, shared_mirrors, git_cache
):
    """kilosort3-code from the mirrors on the stand-in MATLAB base, with the pin checks on:
    the image holds Kilosort v3.0.2's code and passes its commit check."""
    plan = commands.make_plan(
        images=["kilosort3-code"],
        base_image=matlab_standin,
        mpm_url=f"{mpm_server}/mpm",
        kilosort_repo=str(shared_mirrors["Kilosort"]),
        npy_matlab_repo=str(shared_mirrors["npy-matlab"]),
        namespace=f"{support.NAMESPACE}-mirrors",
    )
    built = build.execute(plan, docker_client)
    ref = built[-1].step.refs[0]
    findings = checks.run_checks(docker_client, ref, pins=plan.pins, only=["kilosort-commit"])
    assert [f.ok for f in findings] == [True], findings
    assert plan.pins.kilosort3.commit in findings[0].detail
    image = docker_client.images.get(ref)
    assert image.labels["io.kilosort-docker.kilosort.commit"].startswith("c43f524")
    listing = docker_client.containers.run(
        image.id,
        entrypoint=["ls", "/opt/kilosort/CUDA", "/opt/npy-matlab/npy-matlab"],
        remove=True,
        network_disabled=True,
    ).decode()
    assert "mexGPUall.m" in listing and "mexMPnu8.cu" in listing and "readNPY.m" in listing


def test_a_bare_mirror_copied_without_its_empty_folders_still_works(git_cache, tmp_path):
    """A bare mirror whose refs/ folder was lost in a copy (every ref in packed-refs, as in the
    shared mirrors) is not a repository to git; the build uses a copy with refs/ put back."""
    commit = support.make_repo(tmp_path / "work", {"CUDA/a.cu": "// a\n"})
    bare = tmp_path / "mirror.git"
    support.git(tmp_path, "clone", "--quiet", "--bare", str(tmp_path / "work"), str(bare))
    support.git(bare, "pack-refs", "--all")
    shutil.rmtree(bare / "refs")
    pin = load_pins().npy_matlab.__class__(repository="x", commit=commit)
    assert sources.export(pin, tmp_path / "out", repository=str(bare)) == commit
    assert (tmp_path / "out" / "CUDA" / "a.cu").read_text() == "// a\n"
    assert not (bare / "refs").exists()  # the mirror itself is left as it was

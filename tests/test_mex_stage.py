"""The mex files compiled for real in the kilosort3 image's build stage (nvcc + g++), against
the stand-in mex API, and `build-mex` keeping them in mex-binaries/ without overwriting."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from kilosort_docker import commands, mex
from kilosort_docker.errors import UserError
from kilosort_docker.images import build, mexstage
from kilosort_docker.images.profiles import Gencode
from tests import support
from tests.support import leftovers

pytestmark = pytest.mark.docker

SOURCES = support.STANDINS / "cuda-sources"
GENCODE = (
    Gencode("compute_75", "sm_75"),
    Gencode("compute_80", "sm_80"),
    Gencode("compute_80", "compute_80"),
)
NAMESPACE = f"{support.NAMESPACE}-compile"


_removes_what_it_builds = leftovers.removing_after_module(NAMESPACE)


@pytest.fixture(scope="module")
def cuda_toolkit(tmp_path_factory):
    """A CUDA toolkit folder: this machine's (CUDA 13 here) plus cuobjdump if it lacks one."""
    import os

    roots = [Path(p) for p in (os.environ.get("CUDA_HOME"), "/usr/local/cuda") if p]
    root = next((r.resolve() for r in roots if (r / "bin" / "nvcc").is_file()), None)
    if root is None:
        pytest.skip("no CUDA toolkit (set CUDA_HOME or install one in /usr/local/cuda)")
    folder = tmp_path_factory.mktemp("toolkit") / "cuda"
    shutil.copytree(root, folder, symlinks=True)
    if not (folder / "bin" / "cuobjdump").exists():
        cuobjdump = mex.find_tool("cuobjdump")
        if cuobjdump is None:
            pytest.skip("no cuobjdump (pip install nvidia-cuda-cuobjdump)")
        shutil.copy2(cuobjdump, folder / "bin" / "cuobjdump")
    return folder


@pytest.fixture(scope="module")
def compile_repo(tmp_path_factory):
    """A Kilosort-shaped fixture repository whose CUDA/ holds the test's own sources."""
    files = {f"CUDA/{p.name}": p.read_text() for p in SOURCES.glob("*.cu")}
    files["README.md"] = "Fixture standing in for MouseLand/Kilosort (test CUDA sources).\n"
    path = tmp_path_factory.mktemp("repos") / "Kilosort"
    return path, support.make_repo(path, files)


@pytest.fixture(scope="module")
def stage_inputs(
    docker_client, matlab_standin, mpm_server, fixture_repos, cuda_toolkit, git_cache
) -> SimpleNamespace:
    """What every compiling build here needs: the engine, the stand-in MATLAB base, the MPM
    server, npy-matlab's fixture repository and this machine's CUDA toolkit."""
    return SimpleNamespace(
        client=docker_client,
        matlab_standin=matlab_standin,
        mpm_server=mpm_server,
        npy_matlab=fixture_repos["npy_matlab"],
        cuda_toolkit=cuda_toolkit,
    )


def compile_plan(inputs: SimpleNamespace, compile_repo, mex_root, **extra):
    version = mexstage.toolkit_version(inputs.cuda_toolkit)
    the_plan = commands.make_plan(
        images=["kilosort3"],
        base_image=inputs.matlab_standin,
        mpm_url=f"{inputs.mpm_server}/mpm",
        kilosort_repo=str(compile_repo[0]),
        kilosort_commit=compile_repo[1],
        npy_matlab_repo=str(inputs.npy_matlab[0]),
        npy_matlab_commit=inputs.npy_matlab[1],
        cuda=version,
        allow_cuda_mismatch=True,
        cuda_toolkit=str(inputs.cuda_toolkit),
        host_compiler="g++",
        mex_spec=str(SOURCES / "spec.json"),
        mex_binaries=str(mex_root),
        namespace=NAMESPACE,
        **extra,
    )
    # CUDA 13 cannot emit R2022b's sm_35..sm_70: use targets it has, SASS and PTX.
    return replace(the_plan, profile=replace(the_plan.profile, gencode=GENCODE))


@pytest.fixture(scope="module")
def compiled(stage_inputs, compile_repo, tmp_path_factory):
    mex_root = tmp_path_factory.mktemp("no-committed-binaries")
    the_plan = compile_plan(stage_inputs, compile_repo, mex_root)
    events = build.BuildEvents()
    built = build.execute(the_plan, stage_inputs.client, events=events)
    return the_plan, built[-1], events


def test_stage_compiles_in_parallel_and_ships_only_binaries(docker_client, compiled):
    _, final, events = compiled
    log = "\n".join(events.log_lines)
    assert "mex: compiling with" in log
    assert "nvcc" in log and "-dlink" in log  # the dynamic-parallelism path ran
    container = docker_client.containers.create(
        final.image_id,
        entrypoint=[
            "sh",
            "-c",
            "ls /opt/kilosort/CUDA/*.mexa64; ls -d /usr/local/cuda* "
            "2>&1; cat /opt/kilosort-docker/mex-manifest.json",
        ],
        network_disabled=True,
    )
    try:
        container.start()
        assert container.wait(timeout=120)["StatusCode"] == 0
        out = container.logs().decode()
    finally:
        container.remove(force=True)
    for name in ("mexScale", "mexAxpy", "mexTree", "mexGPUExample"):
        assert f"/opt/kilosort/CUDA/{name}.mexa64" in out
    assert "No such file" in out  # no CUDA toolkit in the final image
    manifest = json.loads(out[out.index("{") :])
    assert f"release {manifest['cuda_version']}" in manifest["nvcc_version"]
    assert manifest["gencode"] == [str(mex.as_gencode(g)) for g in GENCODE]


def test_binaries_hold_exactly_the_requested_sass_and_ptx(docker_client, compiled):
    _, final, _ = compiled
    container = docker_client.containers.create(final.image_id, entrypoint=["true"])
    try:
        data = b"".join(container.get_archive("/opt/kilosort-docker/mex-manifest.json")[0])
    finally:
        container.remove(force=True)
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        manifest = json.load(tar.extractfile(tar.next()))
    assert {entry["dynamic"] for entry in manifest["binaries"].values()} == {True, False}
    for name, entry in manifest["binaries"].items():
        assert entry["sass"] == ["sm_75", "sm_80"], name
        if entry["dynamic"]:  # device-linked: its PTX stays with the relocatable code
            assert (entry["ptx"], entry["relocatable_ptx"]) == ([], ["compute_80"]), name
        else:
            assert entry["ptx"] == ["compute_80"], name


def test_build_mex_keeps_binaries_and_never_overwrites(
    stage_inputs, compile_repo, tmp_path, monkeypatch
):
    the_plan = compile_plan(stage_inputs, compile_repo, tmp_path)
    monkeypatch.setattr(commands, "make_plan", lambda **kwargs: the_plan)
    folder = commands.build_mex()
    assert folder == tmp_path / the_plan.profile.name / compile_repo[1]
    assert [p for p in mex.verify_manifest(folder) if p.severity == "error"] == []
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(UserError, match="--force"):
        commands.build_mex()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # those binaries now serve the image build: no toolkit needed
    prebuilt = replace(
        the_plan, options=replace(the_plan.options, compile_mex=False, cuda_toolkit=None)
    )
    events = build.BuildEvents()
    build.execute(prebuilt, stage_inputs.client, events=events)
    assert any("using committed binaries" in line for line in events.log_lines)


def test_compile_error_names_the_file_and_changes_nothing(stage_inputs, tmp_path):
    files = {f"CUDA/{p.name}": p.read_text() for p in SOURCES.glob("*.cu")}
    files["CUDA/mexScale.cu"] = files["CUDA/mexScale.cu"] + "\nthis is not C++;\n"
    repo = tmp_path / "broken-repo"
    commit = support.make_repo(repo, files)
    existing = tmp_path / "mex" / "r2022b" / commit
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("untouched")
    the_plan = compile_plan(stage_inputs, (repo, commit), tmp_path / "mex", compile_mex=True)
    events = build.BuildEvents()
    with pytest.raises(UserError, match="building kilosort3 failed"):
        build.execute(the_plan, stage_inputs.client, events=events)
    assert any("mexScale.cu" in line and "error" in line for line in events.log_lines)
    assert (existing / "keep.txt").read_text() == "untouched"


def test_toolkit_version_must_match_unless_overridden(cuda_toolkit, tmp_path):
    version = mexstage.toolkit_version(cuda_toolkit)
    the_plan = commands.make_plan(
        images=["kilosort3"],
        cuda_toolkit=str(cuda_toolkit),
        mex_binaries=str(tmp_path),
        compile_mex=True,
    )
    if version == the_plan.profile.cuda:
        pytest.skip("this machine's toolkit is the profile's version")
    with pytest.raises(UserError, match=f"is CUDA {version} but the build expects"):
        mexstage.stage(the_plan, tmp_path / "context")

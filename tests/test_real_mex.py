"""Kilosort v3.0.2's real CUDA sources compiled in the kilosort3 image's mex-build stage.

The kilosort3 image is built from the shared mirrors (Kilosort at tag v3.0.2, the pinned
npy-matlab) on the stand-in MATLAB base, with profile r2022b's gencode list (compute_35/sm_35
... compute_80/sm_80 and compute_80 PTX), a real nvcc (Debian's CUDA 11.8, passed as
``--cuda-toolkit DIR`` like an installed toolkit, with ``--cuda 11.8 --allow-cuda-mismatch``)
and g++-11. The mex API is the stand-in (tests/standins/mexapi, not MathWorks' code): the
binaries prove the build, not what they compute inside MATLAB.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from kilosort_docker import commands, containers, mex, paths
from kilosort_docker.images import build, checks, mexstage, sources
from tests import support
from tests.support import leftovers
from tests.test_real_sources import KILOSORT_302_BUILT

pytestmark = pytest.mark.docker

NAMESPACE = f"{support.NAMESPACE}-realmex"


_removes_what_it_builds = leftovers.removing_after_module(NAMESPACE)


#: MATLAB R2022b's mexcuda targets (its `mexcuda -v` output): SASS for these, PTX compute_80.
R2022B_SASS = ["sm_35", "sm_50", "sm_60", "sm_70", "sm_80"]
R2022B_PTX = ["compute_80"]
#: MATLAB's GPU example, which the project builds beside Kilosort's own as a diagnostic.
DIAGNOSTIC = {"mexGPUExample"}


@pytest.fixture(scope="module")
def cuda118(docker_client, debian_base, tmp_path_factory) -> Path:
    """Debian's CUDA 11.8 as a runfile-style toolkit folder (tests/support/toolkits.py)."""
    return support.debian_cuda_toolkit(
        docker_client, debian_base, tmp_path_factory.mktemp("cuda118")
    )


@pytest.fixture(scope="module")
def matlab_with_cudart(docker_client, matlab_standin, cuda118, tmp_path_factory):
    """The stand-in MATLAB base with the CUDA 11 runtime in <matlabroot>/bin/glnxa64, where
    MATLAB ships its own (tests/support/toolkits.py); the tag is removed afterwards."""
    context = tmp_path_factory.mktemp("matlab-cudart")
    ref = f"{NAMESPACE}/matlab-standin-cudart:r2022b"
    yield support.standin_with_cudart(docker_client, matlab_standin, cuda118, context, ref=ref)
    with contextlib.suppress(Exception):
        docker_client.api.remove_image(ref)


@pytest.fixture(scope="module")
def real_kilosort3(
    docker_client,
    matlab_with_cudart,
    mpm_server,
    shared_mirrors,
    git_cache,
    cuda118,
    tmp_path_factory,
):
    """kilosort3 built from the mirrors with the real sources compiled for R2022b's targets;
    its mex files and manifest copied out of the image. The tags are removed afterwards, and
    the images they leave untagged with them (see ``_removes_what_it_builds``)."""
    the_plan = support.real_kilosort3_plan(
        shared_mirrors,
        cuda118,
        namespace=NAMESPACE,
        base_image=matlab_with_cudart,
        mpm_url=f"{mpm_server}/mpm",
        mex_binaries=str(tmp_path_factory.mktemp("no-committed-binaries")),
    )
    events = build.BuildEvents()
    try:
        built = build.execute(the_plan, docker_client, events=events)
        final = built[-1]
        extracted = tmp_path_factory.mktemp("extracted")
        with containers.created(final.image_id, client=docker_client) as container:
            data = containers.archive(container, f"{paths.KILOSORT_DIR}/CUDA")
            manifest = containers.read_file(container, paths.MEX_MANIFEST_IN_IMAGE)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(extracted, filter="tar")
        folder = extracted / "mex"
        folder.mkdir()
        for binary in (extracted / "CUDA").glob("*.mexa64"):
            shutil.copy2(binary, folder / binary.name)
        (folder / mex.MEX_MANIFEST_NAME).write_bytes(manifest)
        real_cuda = tmp_path_factory.mktemp("real") / "ks"
        sources.export(
            the_plan.pins.kilosort3, real_cuda, repository=str(shared_mirrors["Kilosort"])
        )
        yield SimpleNamespace(
            plan=the_plan,
            final=final,
            events=events,
            folder=folder,
            manifest=json.loads(manifest),
            real_cuda=real_cuda / "CUDA",
        )
    finally:
        for step in the_plan.steps:
            for ref in step.refs:
                with contextlib.suppress(Exception):  # never built, or already gone
                    docker_client.api.remove_image(ref)


def _cuobjdump(cuda118: Path, *args: str) -> str:
    result = subprocess.run(
        [str(cuda118 / "bin" / "cuobjdump"), *args], capture_output=True, text=True
    )
    if result.returncode != 0 and "No PTX file" not in result.stderr:
        raise AssertionError(f"cuobjdump {args} failed: {result.stderr}")
    return result.stdout


def _archs(listing: str, kind: str) -> list[str]:
    """``sm_XY`` of every ``ELF file`` / ``PTX file`` line of a cuobjdump listing, sorted."""
    found = re.findall(rf"^{kind} file\s+\d+: \S*?\.(sm_\d+)\.(?:cubin|ptx)$", listing, re.M)
    return sorted(set(found), key=lambda a: int(a[3:]))


def test_the_toolkit_is_a_real_cuda_11_8_in_runfile_layout(cuda118):
    out = subprocess.run(
        [str(cuda118 / "bin" / "nvcc"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert "release 11.8, V11.8.89" in out
    assert mexstage.toolkit_version(cuda118) == "11.8"
    for part in ("bin/nvcc.profile", "bin/ptxas", "bin/fatbinary", "bin/nvlink", "bin/cudafe++"):
        assert (cuda118 / part).is_file(), part
    assert (cuda118 / "nvvm/bin/cicc").is_file()
    assert (cuda118 / "nvvm/libdevice/libdevice.10.bc").is_file()
    assert (cuda118 / "include/crt/host_config.h").is_file()
    assert (cuda118 / "lib64/libcudadevrt.a").is_file()
    assert (cuda118 / "lib64/libcudart.so.11.0").resolve().is_file()
    assert not list(cuda118.rglob("libcublas*"))  # the big static libraries are left out


def test_the_image_holds_the_ten_real_mex_files_and_no_toolkit(docker_client, real_kilosort3):
    log = "\n".join(real_kilosort3.events.log_lines)
    assert "mex: compiling with" in log and "release 11.8" in log
    names = {p.stem for p in real_kilosort3.folder.glob("*.mexa64")}
    assert names == KILOSORT_302_BUILT | DIAGNOSTIC
    manifest = real_kilosort3.manifest
    assert {e["mex"] for e in manifest["binaries"].values()} == names
    assert manifest["kilosort_commit"].startswith("c43f524")
    assert manifest["cuda_version"] == "11.8" and "release 11.8" in manifest["nvcc_version"]
    assert manifest["host_compiler"] == "g++-11"
    assert manifest["host_compiler_version"].startswith("11.")
    assert manifest["gencode"] == [
        "compute_35,sm_35",
        "compute_50,sm_50",
        "compute_60,sm_60",
        "compute_70,sm_70",
        "compute_80,sm_80",
        "compute_80,compute_80",
    ]
    for name, entry in manifest["binaries"].items():
        data = (real_kilosort3.folder / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert entry["diagnostic"] == (entry["mex"] in DIAGNOSTIC), name
        if entry["mex"] in KILOSORT_302_BUILT:  # compiled from Kilosort v3.0.2's own file
            real = real_kilosort3.real_cuda / f"{entry['mex']}.cu"
            assert entry["source_sha256"] == hashlib.sha256(real.read_bytes()).hexdigest(), name
    out = docker_client.containers.run(
        real_kilosort3.final.image_id,
        entrypoint=[
            "sh",
            "-c",
            "ls -d /usr/local/cuda* 2>&1; command -v nvcc cuobjdump || echo no-cuda-tools",
        ],
        remove=True,
        network_disabled=True,
    ).decode()
    assert "No such file" in out and "no-cuda-tools" in out  # no CUDA toolkit in the image


def test_each_binary_holds_exactly_r2022b_sass_and_compute_80_ptx(cuda118, real_kilosort3):
    for name, entry in real_kilosort3.manifest["binaries"].items():
        path = str(real_kilosort3.folder / name)
        assert _archs(_cuobjdump(cuda118, "--list-elf", path), "ELF") == R2022B_SASS, name
        assert entry["sass"] == R2022B_SASS, name
        ptx = _archs(_cuobjdump(cuda118, "--list-ptx", path), "PTX")
        if entry["dynamic"]:
            # device-linked: the loaded image is SASS only; the compute_80 PTX stays with the
            # relocatable device code (cuobjdump -all), which the driver JIT-compiles
            relocatable = _archs(_cuobjdump(cuda118, "--list-ptx", "-all", path), "PTX")
            assert ptx == [] and "sm_80" in relocatable, name
            assert entry["relocatable_ptx"] == R2022B_PTX, name
        else:
            assert ptx == ["sm_80"], name  # cuobjdump names compute_80 PTX "*.sm_80.ptx"
            assert entry["ptx"] == R2022B_PTX, name


def test_mexMPnu8_has_stable_mode_and_dynamic_parallelism(real_kilosort3):
    entries = {e["mex"]: e for e in real_kilosort3.manifest["binaries"].values()}
    mpnu8 = entries["mexMPnu8"]
    assert mpnu8["dynamic"] and "ENABLE_STABLEMODE" in mpnu8["defines"]
    compile_line, *_ = mpnu8["commands"]
    assert " -dc " in compile_line and "-DENABLE_STABLEMODE" in compile_line
    assert any("-dlink" in c and "-lcudadevrt" in c for c in mpnu8["commands"])
    data = (real_kilosort3.folder / "mexMPnu8.mexa64").read_bytes()
    # mexNvidia_quicksort.cu's kernel, #included only under ENABLE_STABLEMODE (mexMPnu8.cu)
    assert b"cdp_simple_quicksort" in data
    # and a device-side launch, which only the device runtime (cudadevrt) provides
    assert b"cudaGetParameterBuffer" in data
    for name in KILOSORT_302_BUILT - {"mexMPnu8"}:
        assert not entries[name]["dynamic"] and " -c " in entries[name]["commands"][0], name
        assert (
            b"cdp_simple_quicksort" not in (real_kilosort3.folder / f"{name}.mexa64").read_bytes()
        )


def test_undefined_symbols_resolve_against_the_standin_libraries(cuda118, real_kilosort3, tmp_path):
    """Every mex file loads with RTLD_NOW (all its undefined symbols bound) against the stand-in
    MATLAB libraries and the toolkit's CUDA runtime; without the stand-in libmwgpu it cannot."""
    root = support.make_matlab_root(tmp_path / "matlab")
    libdirs = [root / "bin" / "glnxa64", cuda118 / "lib64"]
    loader = (
        "import ctypes, sys\n"
        "for path in sys.argv[1:]:\n"
        "    ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)\n"
        "    print('loaded', path)\n"
    )
    binaries = sorted(str(p) for p in real_kilosort3.folder.glob("*.mexa64"))

    def load(dirs):
        env = {"LD_LIBRARY_PATH": ":".join(map(str, dirs)), "LD_BIND_NOW": "1"}
        return subprocess.run(
            [sys.executable, "-c", loader, *binaries], capture_output=True, text=True, env=env
        )

    result = load(libdirs)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("loaded") == len(binaries) == 11
    (root / "bin" / "glnxa64" / "libmwgpu.so").unlink()
    assert "libmwgpu.so" in load(libdirs).stderr


def test_verify_mex_passes_on_the_extracted_binaries(real_kilosort3, tmp_path):
    assert commands.verify_mex(folder=str(real_kilosort3.folder))
    # an H200 (9.0) runs them through the compute_80 PTX, an A100 (8.0) from SASS
    assert commands.verify_mex(folder=str(real_kilosort3.folder), compute_capability="9.0")
    assert commands.verify_mex(folder=str(real_kilosort3.folder), compute_capability="8.0")
    tampered = tmp_path / "tampered"
    shutil.copytree(real_kilosort3.folder, tampered)
    data = bytearray((tampered / "mexWtW2.mexa64").read_bytes())
    data[-1] ^= 0xFF
    (tampered / "mexWtW2.mexa64").write_bytes(bytes(data))
    assert not commands.verify_mex(folder=str(tampered))


def test_the_image_checks_pass_on_the_real_binaries(docker_client, real_kilosort3):
    step = real_kilosort3.final.step
    findings = checks.run_checks(
        docker_client, step.refs[0], pins=real_kilosort3.plan.pins, spec=step.spec
    )
    names = {f.check for f in findings}
    assert {"mex-present", "mex-checksums", "mex-exports", "mex-libraries"} <= names
    assert [f for f in findings if not f.ok] == []

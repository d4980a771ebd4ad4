"""Kilosort's CUDA mex files, built the way MATLAB's ``mexcuda`` builds them, without MATLAB.

``mexcuda`` only runs nvcc and g++ against MATLAB's headers and libraries, which the
``mathworks/matlab`` image holds; no license is needed to run those commands. This package
holds the data (which sources, which per-file flags) and turns it into the exact nvcc / g++
command lines, a Makefile for ``make -j"$(nproc)"``, a JSON manifest beside the binaries,
and a prediction of how each binary runs on a GPU of a given compute capability.

Modules: :mod:`~kilosort_docker.mex.gencode` (targets, per-toolkit limits),
:mod:`~kilosort_docker.mex.sources` (mex lists, ``specs/kilosort-<version>.json``),
:mod:`~kilosort_docker.mex.toolchain` (toolchain, :class:`MexPlan`),
:mod:`~kilosort_docker.mex.commands` (commands, Makefile),
:mod:`~kilosort_docker.mex.binaries` (cuobjdump, readelf, checksums),
:mod:`~kilosort_docker.mex.runtime` (native / PTX JIT / none),
:mod:`~kilosort_docker.mex.manifest`, :mod:`~kilosort_docker.mex.make` (the build),
:mod:`~kilosort_docker.mex.cli` (``python3 -m kilosort_docker.mex``) and
:mod:`~kilosort_docker.mex.pyz` (the zipapp the build stage runs).

Standard library only, Python >= 3.8 (Ubuntu 20.04's python3 in the build stage).

Sources: Kilosort3 ``CUDA/mexGPUall.m`` at v3.0.2 (commit c43f524) for the file list and
flags; ``mexcuda -v`` output of MATLAB R2022b for the command shape; NVIDIA's CUDA compiler
driver (nvcc) documentation for gencode, relocatable device code and binary compatibility.
"""

from kilosort_docker.mex.binaries import (
    device_code,
    device_code_mismatch,
    expected_device_code,
    find_tool,
    host_compiler_version,
    nvcc_version,
    parse_cuobjdump,
    parse_glibcxx,
    readelf_glibcxx_needed,
    relocatable_ptx,
    sha256_file,
)
from kilosort_docker.mex.cli import main
from kilosort_docker.mex.commands import (
    MAKE_VARIABLES,
    Step,
    dry_run,
    expand,
    mex_steps,
    plan_steps,
    render_makefile,
    write_makefile,
)
from kilosort_docker.mex.errors import MexBuildError
from kilosort_docker.mex.gencode import (
    Gencode,
    as_gencode,
    newest_gcc,
    parse_cuda_version,
    supported_architectures,
    validate_gencode,
    validate_host_compiler,
)
from kilosort_docker.mex.make import build, first_error, run_make
from kilosort_docker.mex.manifest import (
    MANIFEST_SCHEMA,
    MEX_MANIFEST_NAME,
    Problem,
    build_manifest,
    check_sources,
    load_manifest,
    verify_manifest,
    write_manifest,
)
from kilosort_docker.mex.pyz import write_zipapp
from kilosort_docker.mex.runtime import (
    RuntimePrediction,
    parse_compute_capability,
    predict_directory,
    predict_runtime,
)
from kilosort_docker.mex.sources import (
    MATLAB_GPU_EXAMPLE,
    MEX_EXT,
    MexSource,
    MexSpec,
    get_spec,
    kilosort_versions,
)
from kilosort_docker.mex.toolchain import MexPlan, Toolchain, toolchain_from_profile

__all__ = [
    "MANIFEST_SCHEMA",
    "MAKE_VARIABLES",
    "MATLAB_GPU_EXAMPLE",
    "MEX_EXT",
    "MEX_MANIFEST_NAME",
    "Gencode",
    "MexBuildError",
    "MexPlan",
    "MexSource",
    "MexSpec",
    "Problem",
    "RuntimePrediction",
    "Step",
    "Toolchain",
    "as_gencode",
    "build",
    "build_manifest",
    "check_sources",
    "device_code",
    "device_code_mismatch",
    "dry_run",
    "expand",
    "expected_device_code",
    "find_tool",
    "first_error",
    "get_spec",
    "host_compiler_version",
    "kilosort_versions",
    "load_manifest",
    "main",
    "mex_steps",
    "nvcc_version",
    "parse_compute_capability",
    "parse_cuda_version",
    "parse_cuobjdump",
    "parse_glibcxx",
    "plan_steps",
    "predict_directory",
    "predict_runtime",
    "readelf_glibcxx_needed",
    "relocatable_ptx",
    "render_makefile",
    "run_make",
    "sha256_file",
    "newest_gcc",
    "supported_architectures",
    "toolchain_from_profile",
    "validate_gencode",
    "validate_host_compiler",
    "verify_manifest",
    "write_makefile",
    "write_manifest",
    "write_zipapp",
]

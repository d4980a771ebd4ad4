"""What the kilosort3 image's mex-build stage receives, and getting its binaries back out.

Committed binaries in ``mex-binaries/<profile>/<kilosort commit>/`` are used when their
manifest names the same profile and Kilosort commit and every checksum holds; the stage checks
the checksums again (``SHA256SUMS``) and needs no CUDA toolkit. Otherwise the stage compiles:
it gets a CUDA toolkit (a folder from the build host, or NVIDIA's installer checked against the
profile's sha256), the build plan (``plan.json``) and ``mex.pyz`` (the ``kilosort_docker.mex``
package as one zipapp, :func:`kilosort_docker.mex.write_zipapp`), and runs ``make -j$(nproc)``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from kilosort_docker import mex, paths
from kilosort_docker.errors import UserError

if TYPE_CHECKING:
    from kilosort_docker.images.plan import BuildPlan

log = logging.getLogger(__name__)

DOCKER_DIR = paths.DOCKER_DIR / "kilosort3"
STAGE_SRC_DIR = "/tmp/mex/src"


def toolkit_version(folder: Path) -> str:
    """MAJOR.MINOR of the CUDA toolkit in ``folder`` (from ``bin/nvcc --version``).

    Raises UserError if there is no working nvcc there.
    """
    nvcc = folder / "bin" / "nvcc"
    if nvcc.is_file() and nvcc.read_bytes()[:4] != b"\x7fELF":
        raise UserError(
            f"{nvcc} is a wrapper script, not the compiler: pass the toolkit folder itself "
            "(the one whose bin/nvcc is a program, e.g. /usr/local/cuda-13.0)"
        )
    try:
        out = subprocess.run(
            [str(nvcc), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        raise UserError(f"no working nvcc in {folder}/bin: pass a CUDA toolkit folder") from None
    match = re.search(r"release (\d+\.\d+)", out)
    if not match:
        raise UserError(f"cannot read the CUDA version from {nvcc} --version")
    return match[1]


def mex_plan(plan: BuildPlan) -> mex.MexPlan:
    """The mex build plan (commands, gencode, spec) for the build's profile and options.

    Raises UserError where the toolkit cannot emit a requested target.
    """
    options = plan.options
    if options.mex_spec:
        spec = mex.MexSpec.from_dict(json.loads(options.mex_spec.read_text()))
    else:
        spec = mex.get_spec(plan.pins.kilosort3.version, ensure_determ=options.ensure_determ)
    chain = mex.toolchain_from_profile(
        plan.profile, options.gencode, host_compiler=options.host_compiler
    )
    return mex.MexPlan(
        chain, spec, src_dir=STAGE_SRC_DIR, kilosort_commit=plan.pins.kilosort3.commit
    )


def committed_problems(plan: BuildPlan) -> list[str] | None:
    """None if there are no committed binaries for this build; else what is wrong with them
    (an empty list: usable)."""
    folder = plan.mex_binaries_folder
    if not folder.is_dir():
        return None
    problems = mex.verify_manifest(
        folder, profile=plan.profile.name, kilosort_commit=plan.pins.kilosort3.commit
    )
    return [
        f"{p.binary}: {p.message}" if p.binary else p.message
        for p in problems
        if p.severity == "error"
    ]


def stage(plan: BuildPlan, context: Path) -> str:
    """Fill the build context's ``mex/`` and ``mex-toolkit/``; returns ``prebuilt`` or
    ``compile``.

    Raises UserError if committed binaries fail their manifest (nothing is used or changed),
    or if compiling is needed and no CUDA toolkit source is available.
    """
    dest, toolkit = context / "mex", context / "mex-toolkit"
    dest.mkdir(parents=True, exist_ok=True)
    (toolkit / "cuda").mkdir(parents=True, exist_ok=True)
    shutil.copy2(DOCKER_DIR / "stage.sh", dest / "stage.sh")
    shutil.copy2(DOCKER_DIR / "install-cuda.sh", toolkit / "install-cuda.sh")
    folder = plan.mex_binaries_folder
    problems = None if plan.options.compile_mex else committed_problems(plan)
    if problems:
        raise UserError(
            f"committed mex binaries in {folder} fail their manifest ({'; '.join(problems)}): "
            "rebuild them with `invoke build-mex --force`, or remove the folder to compile"
        )
    if problems is not None:
        manifest = mex.load_manifest(folder)
        prebuilt = dest / "prebuilt"
        prebuilt.mkdir()
        sums = []
        for name, entry in sorted(manifest["binaries"].items()):
            shutil.copy2(folder / name, prebuilt / name)
            sums.append(f"{entry['sha256']}  {name}\n")
        shutil.copy2(folder / mex.MEX_MANIFEST_NAME, prebuilt / mex.MEX_MANIFEST_NAME)
        (prebuilt / "SHA256SUMS").write_text("".join(sums))
        (toolkit / "mode").write_text("none\n")
        log.info("using committed mex binaries from %s", folder)
        return "prebuilt"

    build_plan = mex_plan(plan)
    options, profile = plan.options, plan.profile
    if options.cuda_toolkit:
        found = toolkit_version(options.cuda_toolkit)
        if found != profile.cuda:
            raise UserError(
                f"the toolkit in {options.cuda_toolkit} is CUDA {found} but the build expects "
                f"{profile.cuda}: pass --cuda {found} --allow-cuda-mismatch, or a CUDA "
                f"{profile.cuda} toolkit"
            )
        shutil.copytree(options.cuda_toolkit, toolkit / "cuda", symlinks=True, dirs_exist_ok=True)
        (toolkit / "mode").write_text("context\n")
    elif profile.cuda_installer_url and profile.cuda_installer_sha256:
        (toolkit / "mode").write_text("runfile\n")
    else:
        raise UserError(
            f"profile {profile.name} pins no sha256 for NVIDIA's CUDA {profile.cuda} installer, "
            "so the mex files cannot be compiled from it: pass --cuda-toolkit DIR (an "
            f"installed CUDA {profile.cuda}), or commit binaries with `invoke build-mex`"
        )
    compile_dir = dest / "compile"
    compile_dir.mkdir()
    mex.write_zipapp(compile_dir / "mex.pyz")
    (compile_dir / "plan.json").write_text(build_plan.to_json())
    log.info("the mex-build stage will compile %d mex files", len(build_plan.spec.sources))
    return "compile"

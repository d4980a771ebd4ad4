"""The JSON manifest kept beside built mex files, and checking binaries against it.

``manifest.json`` (schema 1) records, per binary: sha256 and size, the source's and its
helpers' sha256, the flags, the exact commands, the SASS and PTX inside (``cuobjdump``) and
the GLIBCXX versions it needs (``readelf -V``); and for the build: profile, Kilosort version
and commit, CUDA and nvcc versions, host compiler and its version, gencode list, toolchain.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kilosort_docker.errors import UserError
from kilosort_docker.mex.binaries import (
    device_code,
    device_code_mismatch,
    find_tool,
    host_compiler_version,
    nvcc_version,
    readelf_glibcxx_needed,
    relocatable_ptx,
    sha256_file,
)
from kilosort_docker.mex.commands import mex_steps
from kilosort_docker.mex.gencode import arch_key, as_gencode
from kilosort_docker.mex.sources import MEX_EXT, MexSource
from kilosort_docker.mex.toolchain import MexPlan

log = logging.getLogger(__name__)

#: File name of the manifest inside a folder of mex binaries.
MEX_MANIFEST_NAME = "manifest.json"
#: Version of the manifest's layout; :func:`load_manifest` refuses any other.
MANIFEST_SCHEMA = 1


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`verify_manifest`; ``severity`` is ``error`` or ``warning``;
    ``binary`` is the file name it concerns, or empty for the whole folder."""

    severity: str
    binary: str
    message: str

    def __str__(self) -> str:
        where = f"{self.binary}: " if self.binary else ""
        return f"{self.severity}: {where}{self.message}"


def source_path(plan: MexPlan, source: MexSource, relative: str | None = None) -> Path:
    """Where ``source``'s ``.cu`` file is (``relative`` given: that helper, in the same folder)
    under the plan's Kilosort folder or MATLAB root."""
    root = plan.src_dir if source.root == "SRC_DIR" else plan.toolchain.matlab_root
    if relative is None:
        return Path(root) / source.source
    return Path(root) / os.path.dirname(source.source) / relative


def check_sources(plan: MexPlan) -> None:
    """Raise UserError naming the first missing source, ``#include``d helper, or MATLAB file
    the commands read (``c_mexapi_version.c``, ``c_exportsmexfileversion.map``)."""
    for source in plan.spec.sources:
        paths = [source_path(plan, source)]
        paths += [source_path(plan, source, inc) for inc in source.includes]
        for path in paths:
            if not path.is_file():
                where = "--src-dir" if source.root == "SRC_DIR" else "the MATLAB root"
                raise UserError(
                    f"missing mex source {path} (for {source.name}): check that {where} "
                    "points at the right folder"
                )
    required = [
        Path(plan.toolchain.matlab_root) / "extern/version/c_mexapi_version.c",
        Path(plan.toolchain.matlab_root) / "extern/lib/glnxa64/c_exportsmexfileversion.map",
    ]
    for path in required:
        if not path.is_file():
            raise UserError(f"missing MATLAB file {path}: check the MATLAB root")


def build_manifest(
    out_dir: str | os.PathLike,
    plan: MexPlan,
    *,
    out_var: str | None = None,
    obj_var: str = "obj",
    cuobjdump: str | None = None,
    nvcc: str | None = None,
) -> dict:
    """The manifest of the binaries in ``out_dir`` built from ``plan`` (not written).

    ``out_var`` / ``obj_var`` are the OUT_DIR / OBJ_DIR values the commands were run with
    (recorded in the commands; default: ``out_dir``). Raises UserError for a missing binary,
    a missing cuobjdump/nvcc, or a binary whose SASS/PTX differ from its gencode list. Logs a
    warning for a device-linked binary with no PTX at all (no JIT fallback on newer GPUs).
    """
    out_dir = Path(out_dir)
    chain = plan.toolchain
    nvcc = nvcc or find_tool("nvcc", chain.cuda_root)
    cuobjdump = cuobjdump or find_tool("cuobjdump", chain.cuda_root)
    if not nvcc:
        raise UserError(f"nvcc not found in {chain.cuda_root}/bin or PATH: check CUDA_ROOT")
    if not cuobjdump:
        raise UserError(
            "cuobjdump not found: install the CUDA toolkit's cuobjdump "
            "(or pip install nvidia-cuda-cuobjdump)"
        )
    variables = plan.variables(out_dir=out_var or str(out_dir), obj_dir=obj_var)
    binaries = {}
    for source in plan.spec.sources:
        binary = out_dir / f"{source.name}{MEX_EXT}"
        if not binary.is_file():
            raise UserError(f"missing binary {binary}: the build did not produce it; rebuild")
        sass, ptx = device_code(binary, cuobjdump=cuobjdump)
        mismatch = device_code_mismatch(chain, source, sass, ptx)
        if mismatch:
            raise UserError(f"{binary.name} {mismatch}: rebuild it with that gencode list")
        wanted_ptx = {t.code for t in chain.gencode if t.is_ptx}
        kept_ptx = (
            sorted(set(relocatable_ptx(binary, cuobjdump=cuobjdump)) & wanted_ptx, key=arch_key)
            if source.dynamic
            else []
        )
        if source.dynamic and not ptx and not kept_ptx and wanted_ptx:
            log.warning(
                "%s is device-linked (-dynamic): it holds SASS %s and no PTX, so GPUs newer "
                "than its SASS cannot run it",
                binary.name,
                ", ".join(sass),
            )
        src = source_path(plan, source)
        binaries[binary.name] = {
            "mex": source.name,
            "sha256": sha256_file(binary),
            "size": binary.stat().st_size,
            "source": source.source,
            "source_sha256": sha256_file(src) if src.is_file() else None,
            "includes": {
                inc: sha256_file(source_path(plan, source, inc)) for inc in source.includes
            },
            "defines": list(source.defines),
            "large_array_dims": source.large_array_dims,
            "dynamic": source.dynamic,
            "diagnostic": source.diagnostic,
            "commands": [s.shell(variables) for s in mex_steps(chain, source)],
            "sass": list(sass),
            "ptx": list(ptx),
            "relocatable_ptx": kept_ptx,
            "glibcxx": list(readelf_glibcxx_needed(binary)),
        }
    return {
        "schema": MANIFEST_SCHEMA,
        "profile": chain.profile,
        "kilosort_version": plan.spec.kilosort_version,
        "kilosort_commit": plan.kilosort_commit,
        "cuda_version": chain.cuda_version,
        "nvcc_version": nvcc_version(nvcc),
        "host_compiler": chain.host_compiler,
        "host_compiler_version": host_compiler_version(chain.host_compiler),
        "gencode": [str(t) for t in chain.gencode],
        "toolchain": chain.to_dict(),
        "binaries": binaries,
    }


def write_manifest(out_dir: str | os.PathLike, plan: MexPlan, **kwargs: object) -> Path:
    """Build the manifest (:func:`build_manifest`, same keywords and errors) and write it as
    ``<out_dir>/manifest.json`` (through a temporary file and a rename); returns its path."""
    manifest = build_manifest(out_dir, plan, **kwargs)  # type: ignore[arg-type]
    path = Path(out_dir) / MEX_MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    log.info("wrote %s (%d binaries)", path, len(manifest["binaries"]))
    return path


def load_manifest(directory: str | os.PathLike) -> dict:
    """Read ``<directory>/manifest.json``; raises UserError if absent, unreadable or of
    another schema."""
    path = Path(directory) / MEX_MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UserError(
            f"no {MEX_MANIFEST_NAME} in {directory}: build the mex files first"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"unreadable manifest {path} ({exc}): rebuild the mex files") from exc
    if data.get("schema") != MANIFEST_SCHEMA or "binaries" not in data:
        raise UserError(f"manifest {path} has an unknown schema: rebuild the mex files")
    return data


def verify_manifest(
    directory: str | os.PathLike,
    *,
    profile: str | None = None,
    kilosort_commit: str | None = None,
    gencode: Iterable[object] | None = None,
) -> list[Problem]:
    """Check the binaries in ``directory`` against its manifest; [] means all is well.

    Errors: no/unreadable manifest, a listed binary missing, a size or sha256 mismatch, and
    (when given) a different profile, Kilosort commit (prefix match either way) or gencode
    list. Warnings: a ``.mexa64`` the manifest does not list. Never raises for a bad
    directory: each finding is a :class:`Problem`.
    """
    directory = Path(directory)
    try:
        manifest = load_manifest(directory)
    except UserError as exc:
        return [Problem("error", "", str(exc))]
    problems = []
    if profile is not None and manifest.get("profile") != profile:
        problems.append(
            Problem("error", "", f"built for profile {manifest.get('profile')!r}, not {profile!r}")
        )
    if kilosort_commit is not None:
        have = str(manifest.get("kilosort_commit", ""))
        if not (have and (have.startswith(kilosort_commit) or kilosort_commit.startswith(have))):
            problems.append(
                Problem("error", "", f"built from Kilosort {have!r}, not {kilosort_commit!r}")
            )
    if gencode is not None:
        want = [str(as_gencode(t)) for t in gencode]
        if manifest.get("gencode") != want:
            problems.append(
                Problem("error", "", f"gencode {manifest.get('gencode')} is not {want}")
            )
    listed = manifest["binaries"]
    for name, entry in sorted(listed.items()):
        path = directory / name
        if not path.is_file():
            problems.append(Problem("error", name, "listed in the manifest but missing"))
            continue
        size = path.stat().st_size
        if size != entry.get("size"):
            problems.append(
                Problem("error", name, f"size {size} bytes, manifest says {entry.get('size')}")
            )
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            problems.append(
                Problem(
                    "error",
                    name,
                    f"sha256 {digest[:12]}... does not match the manifest's "
                    f"{str(entry.get('sha256'))[:12]}...",
                )
            )
    for path in sorted(directory.glob(f"*{MEX_EXT}")):
        if path.name not in listed:
            problems.append(Problem("warning", path.name, "not listed in the manifest"))
    return problems

"""``kilosort3``: Kilosort3 with its CUDA mex files, ready to sort on a GPU.

The mex files come from the throw-away ``mex-build`` stage of ``docker/kilosort3/Dockerfile``:
committed binaries checked against their manifest, or compiled there with nvcc and g++ the way
MATLAB's ``mexcuda`` would (:mod:`kilosort_docker.images.mexstage`). The CUDA toolkit never
reaches this image. Its checks read the mex files from inside: present, matching the manifest,
exporting ``mexFunction`` (MATLAB's MEX entry point), every library resolved by ``ldd``, every
``GLIBCXX`` version provided by the libstdc++ MATLAB loads (a mex built by a newer g++ fails
to load with "GLIBCXX_3.4.NN not found").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from kilosort_docker import mex, paths
from kilosort_docker.images import checks, mexstage
from kilosort_docker.images.checks import ImageUnderTest

# The Kilosort3 images share their tags and labels.
from kilosort_docker.images.entries.kilosort3_code import labels, version  # noqa: F401
from kilosort_docker.images.spec import ImageCheck, ImageSpec, PlanContext

if TYPE_CHECKING:
    from kilosort_docker.images.plan import BuildPlan

#: Libraries the GPU driver provides at run time (NVIDIA container runtime); ldd may miss them.
DRIVER_LIBRARIES = ("libcuda.so", "libnvidia-")


def buildargs(ctx: PlanContext) -> dict[str, str]:
    """The stage's build args; raises UserError where the profile's CUDA cannot emit a
    ``--gencode`` target or does not accept the host compiler (``--host-compiler`` or the
    profile's own), dry runs included."""
    profile, options = ctx.profile, ctx.options
    if options.gencode:
        mex.toolchain_from_profile(profile, options.gencode, host_compiler=options.host_compiler)
    else:  # the host compiler is checked always (its own, or --host-compiler)
        mex.validate_host_compiler(profile.cuda, options.host_compiler or profile.host_compiler)
    return {
        "TOOLKIT_BASE_IMAGE": ctx.refs["matlab-toolboxes"],
        "KILOSORT_DIR": paths.KILOSORT_DIR,
        "CUDA_ROOT": profile.cuda_root,
        "HOST_COMPILER": options.host_compiler or profile.host_compiler,
        "CUDA_INSTALLER_URL": profile.cuda_installer_url or "",
        "CUDA_INSTALLER_SHA256": profile.cuda_installer_sha256 or "",
    }


def describe(ctx: PlanContext) -> list[str]:
    profile, options = ctx.profile, ctx.options
    folder = ctx.mex_binaries_folder
    shown = folder.relative_to(paths.ROOT) if folder.is_relative_to(paths.ROOT) else folder
    lines = []
    if folder.is_dir() and not options.compile_mex:
        lines.append(f"mex files from {shown} (checked against its manifest)")
    elif options.cuda_toolkit or profile.cuda_installer_sha256:
        source = options.cuda_toolkit or f"NVIDIA's installer {profile.cuda_installer_url}"
        lines.append(
            f"mex files compiled in the mex-build stage with CUDA {profile.cuda} from {source}"
        )
    else:
        lines.append(
            f"WARNING: no committed mex binaries in {shown} and no pinned sha256 for NVIDIA's "
            f"CUDA {profile.cuda} installer: this image cannot be built; pass --cuda-toolkit "
            "DIR or commit binaries with `invoke build-mex`"
        )
    if options.gencode or options.ensure_determ:
        lines.append(
            "compile options: "
            + ", ".join(
                [*(f"--gencode {g}" for g in options.gencode)]
                + (["ENSURE_DETERM"] if options.ensure_determ else [])
            )
        )
    return lines


def stage(plan: BuildPlan, context: Path) -> dict[str, str]:
    mexstage.stage(plan, context)
    return {}


def _manifest(target: ImageUnderTest) -> dict:
    return target.fact("manifest", lambda t: json.loads(t.read_file(paths.MEX_MANIFEST_IN_IMAGE)))


def _present(target: ImageUnderTest) -> list[str]:
    """Mex files of the manifest that are in the image (the other checks look at these)."""
    found = set(target.fact("ls", lambda t: t.sh(f"ls {paths.KILOSORT_DIR}/CUDA")[1]).split())
    return [name for name in sorted(_manifest(target)["binaries"]) if name in found]


def _mex_present(target: ImageUnderTest) -> tuple[bool, str]:
    try:
        names = sorted(_manifest(target)["binaries"])
    except FileNotFoundError:
        return False, f"{paths.MEX_MANIFEST_IN_IMAGE} is missing"
    present = set(_present(target))
    missing = [n for n in names if n not in present]
    if missing:
        return False, f"missing from {paths.KILOSORT_DIR}/CUDA: {', '.join(missing)}"
    return True, f"all {len(names)} mex files present"


def _mex_checksums(target: ImageUnderTest) -> tuple[bool, str]:
    binaries = _manifest(target)["binaries"]
    _, out = target.sh(f"cd {paths.KILOSORT_DIR}/CUDA && sha256sum *.mexa64")
    found = dict(reversed(line.split(maxsplit=1)) for line in out.splitlines() if "  " in line)
    found = {name.strip(): digest for name, digest in found.items()}
    present = [n for n in sorted(binaries) if n in found]
    bad = [n for n in present if found[n] != binaries[n]["sha256"]]
    if bad:
        return False, f"sha256 differs from the manifest: {', '.join(bad)}"
    return True, f"{len(present)} checksums match the manifest"


def _mex_exports(target: ImageUnderTest) -> tuple[bool, str]:
    binaries = _present(target)
    lacking = []
    for name in binaries:
        if "mexFunction" not in checks.dynamic_symbols(
            target.read_file(f"{paths.KILOSORT_DIR}/CUDA/{name}")
        ):
            lacking.append(name)
    if lacking:
        return False, f"do not export mexFunction: {', '.join(lacking)}"
    return True, f"all {len(binaries)} export mexFunction"


def _matlab_library_path(target: ImageUnderTest) -> str:
    profile = target.profile
    root = profile.matlab_root if profile else "/opt/matlab"
    return ":".join(f"{root}/{p}" for p in ("bin/glnxa64", "extern/bin/glnxa64", "sys/os/glnxa64"))


def _ldd(target: ImageUnderTest) -> dict[str, dict[str, str]]:
    """``{mex file: {library: resolved path or 'not found'}}`` as ldd sees it with MATLAB's
    library path (run once per image)."""
    return target.fact("ldd", _run_ldd)


def _run_ldd(target: ImageUnderTest) -> dict[str, dict[str, str]]:
    script = (
        f'export LD_LIBRARY_PATH="{_matlab_library_path(target)}"; '
        f'for f in {paths.KILOSORT_DIR}/CUDA/*.mexa64; do echo "== $f"; ldd "$f"; done'
    )
    _, out = target.sh(script)
    result: dict[str, dict[str, str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("== "):
            current = PurePosixPath(line[3:]).name
            result[current] = {}
        elif current and "=>" in line:
            lib, _, where = line.strip().partition(" => ")
            result[current][lib.strip()] = where.split(" (")[0].strip()
    return result


def _mex_libraries(target: ImageUnderTest) -> tuple[bool, str]:
    unresolved = []
    for name, libs in sorted(_ldd(target).items()):
        for lib, where in libs.items():
            if where == "not found" and not lib.startswith(DRIVER_LIBRARIES):
                unresolved.append(f"{name}: {lib}")
    if unresolved:
        return False, f"ldd cannot resolve {'; '.join(unresolved)}"
    return True, "ldd resolves every library (the GPU driver's aside) with MATLAB's path"


def _mex_glibcxx(target: ImageUnderTest) -> tuple[bool, str]:
    problems, checked = [], 0
    ldd = _ldd(target)
    for name in _present(target):
        needed = checks.elf_glibcxx_needed(target.read_file(f"{paths.KILOSORT_DIR}/CUDA/{name}"))
        if not needed:
            continue
        where = ldd.get(name, {}).get("libstdc++.so.6")
        if not where or where == "not found":
            problems.append(f"{name} needs libstdc++ but none is found")
            continue
        provided = checks.glibcxx_provided(target.read_file(where))
        missing = sorted(needed - provided)
        checked += 1
        if missing:
            problems.append(f"{name} needs {', '.join(missing)}, not in {where}")
    if problems:
        return False, "; ".join(problems)
    return True, f"GLIBCXX needs of {checked} mex files met by the libstdc++ MATLAB loads"


def size_budget_gb(profile) -> float:
    """The profile's budget for a MATLAB image, in GB."""
    return profile.image_size_budget_gb if profile else 0.0


NAME = "kilosort3"
TITLE = "Kilosort3 with its CUDA mex files, ready to sort on a GPU"
PARENT = "kilosort3-code"
CHECKS = (
    ImageCheck("mex-present", "every mex file of the manifest is present", _mex_present),
    ImageCheck("mex-checksums", "every mex file matches its manifest checksum", _mex_checksums),
    ImageCheck("mex-exports", "every mex file exports mexFunction", _mex_exports),
    ImageCheck("mex-libraries", "ldd resolves every library but the GPU driver's", _mex_libraries),
    ImageCheck(
        "mex-glibcxx",
        "the libstdc++ MATLAB loads provides every GLIBCXX version needed",
        _mex_glibcxx,
    ),
)
IMAGE = ImageSpec.from_module(sys.modules[__name__])

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

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kilosort_docker import mex, paths
from kilosort_docker.images import checks, mexstage
from kilosort_docker.images.checks import ImageUnderTest

# The Kilosort3 images share their tags and labels.
from kilosort_docker.images.entries.kilosort3_code import labels, version  # noqa: F401
from kilosort_docker.images.spec import ImageCheck, ImageSpec, PlanContext
from kilosort_docker.images.tags import LABEL_PREFIX

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


#: Where the mex files are, inside the image.
CUDA_DIR = f"{paths.KILOSORT_DIR}/CUDA"
#: The libstdc++ MATLAB ships and loads before the system's (``<matlabroot>`` + this): MATLAB
#: puts ``sys/os/glnxa64`` on its library path. MathWorks' image Dockerfile removes it "to
#: force MATLAB to use the system libraries" (mathworks-ref-arch/container-images,
#: matlab/Dockerfile: ``rm -f ${MATLAB_INSTALL_LOCATION}/sys/os/glnxa64/libstdc++.*``);
#: older images and other installs keep it.
MATLAB_LIBSTDCXX = "sys/os/glnxa64/libstdc++.so.6"


def _manifest(target: ImageUnderTest) -> dict[str, dict]:
    """The manifest's ``binaries`` (``{mex file: {"sha256": ...}}``); raises CheckCannotRun
    when it is missing, lists no mex file, or lacks a sha256."""
    return target.fact("manifest", _load_manifest)


def _load_manifest(target: ImageUnderTest) -> dict[str, dict]:
    where = paths.MEX_MANIFEST_IN_IMAGE
    try:
        manifest = json.loads(target.read_file(where))
    except FileNotFoundError as exc:
        raise checks.CheckCannotRun(f"no mex manifest: {exc}") from None
    except ValueError as exc:
        raise checks.CheckCannotRun(f"{where} is not JSON: {exc}") from None
    binaries = manifest.get("binaries") if isinstance(manifest, dict) else None
    if not isinstance(binaries, dict) or not binaries:
        raise checks.CheckCannotRun(f"{where} lists no mex files")
    bad = [
        name
        for name, entry in binaries.items()
        if not isinstance(entry, dict)
        or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256", "")))
    ]
    if bad:
        raise checks.CheckCannotRun(f"{where} gives no sha256 for {', '.join(sorted(bad))}")
    return binaries


def _mex_files(target: ImageUnderTest) -> dict[str, bytes]:
    """``{name: bytes}`` of the ``*.mexa64`` files in Kilosort's ``CUDA/`` folder (links
    followed); raises CheckCannotRun when the folder is absent or a link is broken."""

    def read(t: ImageUnderTest) -> dict[str, bytes]:
        try:
            found = t.read_folder(CUDA_DIR)
        except FileNotFoundError as exc:
            raise checks.CheckCannotRun(f"cannot read {CUDA_DIR}: {exc}") from None
        return {name: data for name, data in found.items() if name.endswith(".mexa64")}

    return target.fact("mex-files", read)


def _coverage(target: ImageUnderTest) -> tuple[list[str], list[str]]:
    """``(mex files of the manifest in the image, those missing)``, sorted."""
    names, files = sorted(_manifest(target)), _mex_files(target)
    return [n for n in names if n in files], [n for n in names if n not in files]


def _mex_present(target: ImageUnderTest) -> tuple[bool, str]:
    names = sorted(_manifest(target))
    present, missing = _coverage(target)
    # The mex files Kilosort's own CUDA/mexGPUall.m builds, by the project's mex spec.
    expected = {f"{s.name}.mexa64" for s in mex.get_spec(target.pins.kilosort3.version).sources}
    required = {
        f"{s.name}.mexa64"
        for s in mex.get_spec(target.pins.kilosort3.version, diagnostic=False).sources
    }
    unlisted = sorted(required - set(names))
    problems = []
    if missing:
        problems.append(f"missing from {CUDA_DIR}: {', '.join(missing)}")
    if unlisted:
        problems.append(f"the manifest lacks {', '.join(unlisted)}")
    summary = f"{len(present)} of {len(names)} mex files of the manifest in {CUDA_DIR}"
    if problems:
        return False, f"{summary}; " + "; ".join(problems)
    extra = sorted(set(names) - expected)
    note = f" (not built by Kilosort: {', '.join(extra)})" if extra else ""
    return True, f"{summary}, every one Kilosort {target.pins.kilosort3.version} builds{note}"


def _mex_checksums(target: ImageUnderTest) -> tuple[bool, str]:
    binaries, files = _manifest(target), _mex_files(target)
    present, missing = _coverage(target)
    bad = [n for n in present if hashlib.sha256(files[n]).hexdigest() != binaries[n]["sha256"]]
    summary = f"{len(present) - len(bad)} of {len(binaries)} mex files match the manifest's sha256"
    problems = [f"sha256 differs from the manifest: {', '.join(bad)}"] if bad else []
    if missing:
        problems.append(f"not in the image, not compared: {', '.join(missing)}")
    return (False, f"{summary}; " + "; ".join(problems)) if problems else (True, summary)


def _mex_exports(target: ImageUnderTest) -> tuple[bool, str]:
    files = _mex_files(target)
    present, missing = _coverage(target)
    lacking = [n for n in present if "mexFunction" not in checks.dynamic_symbols(files[n])]
    total = len(present) + len(missing)
    summary = f"{len(present) - len(lacking)} of {total} mex files export mexFunction"
    problems = [f"do not export mexFunction: {', '.join(lacking)}"] if lacking else []
    if missing:
        problems.append(f"not in the image, not read: {', '.join(missing)}")
    return (False, f"{summary}; " + "; ".join(problems)) if problems else (True, summary)


def _matlab_root(target: ImageUnderTest) -> str:
    profile = target.profile
    if profile is None:
        raise checks.CheckCannotRun(
            f"no {LABEL_PREFIX}.profile label naming a profile: cannot tell MATLAB's root"
        )
    return profile.matlab_root


def _matlab_library_path(target: ImageUnderTest) -> str:
    root = _matlab_root(target)
    return ":".join(f"{root}/{p}" for p in ("bin/glnxa64", "extern/bin/glnxa64", "sys/os/glnxa64"))


@dataclass(frozen=True)
class _Ldd:
    """ldd's view of one mex file: its exit status, ``{library: resolved path or 'not
    found'}`` and its output lines."""

    exit_code: int | None
    libraries: dict[str, str]
    lines: tuple[str, ...]


def _ldd(target: ImageUnderTest) -> dict[str, _Ldd]:
    """ldd's view of every mex file with MATLAB's library path (run once per image); raises
    CheckCannotRun when ldd cannot run in the image."""
    return target.fact("ldd", _run_ldd)


def _run_ldd(target: ImageUnderTest) -> dict[str, _Ldd]:
    script = (
        f'export LD_LIBRARY_PATH="{_matlab_library_path(target)}"; '
        'command -v ldd >/dev/null 2>&1 || { echo "ldd is not in the image"; exit 127; }; '
        f'cd "{CUDA_DIR}" || exit 2; '
        'for f in *.mexa64; do echo "== $f"; ldd "./$f" 2>&1; echo "== exit $?"; done'
    )
    code, out = target.sh(script)
    if code != 0:
        last = out.strip().splitlines()[-1] if out.strip() else "no output"
        raise checks.CheckCannotRun(f"ldd could not run in the image (exit {code}): {last}")
    result: dict[str, _Ldd] = {}
    current, libraries, lines = None, {}, []
    for line in out.splitlines():
        if line.startswith("== exit ") and current:
            result[current] = _Ldd(int(line[8:]), libraries, tuple(lines))
            current = None
        elif line.startswith("== "):
            current, libraries, lines = line[3:], {}, []
        elif current:
            lines.append(line.strip())
            if "=>" in line:
                lib, _, where = line.strip().partition(" => ")
                libraries[lib.strip()] = where.split(" (")[0].strip()
    return result


def _mex_libraries(target: ImageUnderTest) -> tuple[bool, str]:
    present, missing = _coverage(target)
    ldd = _ldd(target)
    unresolved, failed = [], []
    for name in present:
        seen = ldd.get(name)
        if seen is None or seen.exit_code != 0:
            why = (seen.lines[0] if seen and seen.lines else "no output") if seen else "not run"
            failed.append(f"{name} ({why})")
            continue
        for lib, where in seen.libraries.items():
            if where == "not found" and not lib.startswith(DRIVER_LIBRARIES):
                unresolved.append(f"{name}: {lib}")
    clean = len(present) - len(failed) - len({u.split(":")[0] for u in unresolved})
    summary = (
        f"ldd resolves every library (the GPU driver's aside) of {clean} of "
        f"{len(present) + len(missing)} mex files with MATLAB's path"
    )
    problems = []
    if unresolved:
        problems.append(f"ldd cannot resolve {'; '.join(unresolved)}")
    if failed:
        problems.append(f"ldd failed on {'; '.join(failed)}")
    if missing:
        problems.append(f"not in the image, not checked: {', '.join(missing)}")
    return (False, f"{summary}; " + "; ".join(problems)) if problems else (True, summary)


def _libstdcxx(target: ImageUnderTest, present: list[str]) -> tuple[dict[str, str], str]:
    """``({mex file: libstdc++ path MATLAB loads for it}, how it was chosen)``: MATLAB's own
    ``sys/os/glnxa64/libstdc++.so.6`` when the image has it (MATLAB loads it first), else
    the system's as ldd resolves it with MATLAB's library path."""
    own = f"{_matlab_root(target)}/{MATLAB_LIBSTDCXX}"
    try:
        target.read_resolved(own)
    except checks.BrokenLink as exc:
        raise checks.CheckCannotRun(f"MATLAB's libstdc++ is a broken link: {exc}") from None
    except FileNotFoundError:
        ldd = _ldd(target)
        chosen = {
            name: ldd[name].libraries.get("libstdc++.so.6", "") for name in present if name in ldd
        }
        return chosen, "the system's as ldd resolves it; MATLAB's own is removed"
    return dict.fromkeys(present, own), "MATLAB's own, which it loads first"


def _mex_glibcxx(target: ImageUnderTest) -> tuple[bool, str]:
    files = _mex_files(target)
    present, missing = _coverage(target)
    needs = {n: checks.elf_glibcxx_needed(files[n]) for n in present}
    needy = [n for n in present if needs[n]]
    problems = [f"not in the image, not read: {', '.join(missing)}"] if missing else []
    highest = max((v for n in needy for v in needs[n]), key=checks.glibcxx_key, default=None)
    if not needy:
        total = len(present) + len(missing)
        summary = f"{len(present)} of {total} mex files read; none needs a GLIBCXX version"
        return (False, f"{summary}; " + "; ".join(problems)) if problems else (True, summary)
    chosen, how = _libstdcxx(target, needy)
    provided: dict[str, tuple[str, set[str]]] = {}
    met = 0
    for name in needy:
        where = chosen.get(name)
        if not where or where == "not found":
            problems.append(f"{name} needs libstdc++ but ldd finds none")
            continue
        if where not in provided:
            resolved, data = target.read_resolved(where)
            provided[where] = (resolved, checks.glibcxx_provided(data))
        resolved, versions = provided[where]
        lacking = sorted(needs[name] - versions, key=checks.glibcxx_key)
        if lacking:
            shown = where if resolved == where else f"{where} -> {resolved}"
            problems.append(f"{name} needs {', '.join(lacking)}, not in {shown} ({how})")
        else:
            met += 1
    libraries = ", ".join(
        where if resolved == where else f"{where} -> {resolved}"
        for where, (resolved, _) in sorted(provided.items())
    )
    summary = (
        f"GLIBCXX needs (up to {highest}) of {met} of {len(needy)} mex files that have any "
        f"({len(present) + len(missing)} in the manifest) met by "
        f"{libraries or 'no libstdc++'} ({how})"
    )
    return (False, f"{summary}; " + "; ".join(problems)) if problems else (True, summary)


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

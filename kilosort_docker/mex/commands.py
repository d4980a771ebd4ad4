"""The nvcc and g++ commands ``mexcuda`` runs for each mex file, and a Makefile running them.

The command shape is the one ``mexcuda -v`` prints in MATLAB R2022b on Linux (MathWorks,
https://www.mathworks.com/help/parallel-computing/mexcuda.html): ``nvcc -c`` of the ``.cu``
file and of MATLAB's ``c_mexapi_version.c``, for ``-dynamic`` an ``nvcc -dlink`` against
``cudadevrt`` (NVIDIA, CUDA Compiler Driver NVCC, "Using Separate Compilation in CUDA"), then
a g++ link against MATLAB's libraries with its export map. Paths are make variables
(:data:`MAKE_VARIABLES`) so one Makefile serves any MATLAB / CUDA / source folder.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from kilosort_docker.mex.sources import MEX_EXT, MexSource
from kilosort_docker.mex.toolchain import MexPlan, Toolchain

#: mexcuda's API-release defines (``-R2017b`` API, the default since R2018a).
_API_DEFINES = ("-DMATLAB_DEFAULT_RELEASE=R2017b", "-DUSE_MEX_CMD")
_HOST_DEFINES = "--compiler-options=-D_GNU_SOURCE,-DMATLAB_MEX_FILE"
_HOST_OPTIONS = "--compiler-options=-fexceptions,-fPIC,-fno-omit-frame-pointer,-pthread,-fwrapv"
_OPTIM = ("-std=c++11", "-O2", "-DNDEBUG")
#: Libraries every mex links, in mexcuda's order (the GPU library is appended per profile).
_MATLAB_LIBS = ("-lMatlabDataArray", "-lmx", "-lmex", "-lmat", "-lm", "-lc", "-lstdc++")

#: Make variables the generated commands refer to; their defaults come from the plan
#: (:meth:`kilosort_docker.mex.toolchain.MexPlan.variables`).
MAKE_VARIABLES = ("MATLAB_ROOT", "CUDA_ROOT", "SRC_DIR", "OUT_DIR", "OBJ_DIR", "NVCC", "HOST_CXX")


@dataclass(frozen=True)
class Step:
    """One command: a compile, a device link or the final link, with make-variable paths.

    ``argv`` tokens may contain ``$(VAR)`` references (see :data:`MAKE_VARIABLES`) and, for
    the final link, the shell glob ``libcudart.so.*`` exactly as mexcuda passes it.
    ``kind`` is ``compile``, ``compile-version``, ``dlink`` or ``link``; ``output`` is the file
    it writes and ``inputs`` its make prerequisites.
    """

    kind: str
    mex: str
    output: str
    inputs: tuple[str, ...]
    argv: tuple[str, ...]

    def shell(self, variables: Mapping[str, str] | None = None) -> str:
        """The command as one shell line, with make variables expanded when given."""
        text = " ".join(_quote(a) for a in self.argv)
        return expand(text, variables) if variables is not None else text


_SAFE = re.compile(r"^[A-Za-z0-9_./=,:+@%*$()\-]+$")


def _quote(token: str) -> str:
    return token if _SAFE.match(token) else shlex.quote(token)


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Replace ``$(VAR)`` references (recursively, as make does, up to 10 levels) with their
    values; unknown variables stay as they are."""
    for _ in range(10):
        new = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], m[0]), text)
        if new == text:
            break
        text = new
    return text


def _compile_flags(chain: Toolchain, source: MexSource) -> list[str]:
    # mexcuda passes -DMX_COMPAT_64 whether or not -largeArrayDims is given: large array
    # dimensions are the default of its -R2017b API (MathWorks, mex and mexcuda reference,
    # "-largeArrayDims" / "-R2017b"; `mexcuda -v mexGPUExample.cu` shows it).
    flags = [f"-D{d}" for d in source.defines]
    flags.append("-DMX_COMPAT_64")
    flags += [*_API_DEFINES, _HOST_DEFINES]
    flags += [
        "-I$(MATLAB_ROOT)/extern/include",
        "-I$(MATLAB_ROOT)/simulink/include",
        "-I$(MATLAB_ROOT)/toolbox/parallel/gpu/extern/include/",
        "-I$(CUDA_ROOT)/include",
    ]
    return flags


def mex_steps(chain: Toolchain, source: MexSource) -> tuple[Step, ...]:
    """The commands mexcuda runs for one mex file, in order, with make-variable paths.

    Shape (R2022b, Linux): ``nvcc -c`` (``-dc`` for ``-dynamic``) with the user defines,
    ``-DMX_COMPAT_64`` (always: the default API's large array dims), mexcuda's API defines,
    host defines, MATLAB's and CUDA's include folders, the gencode list and the host options;
    ``c_mexapi_version.c`` compiled with the same defines and
    ``-DMATLAB_MEXCMD_RELEASE=R2017b``; for ``-dynamic`` an ``nvcc -dlink`` against
    ``cudadevrt``; then the g++ link with MATLAB's version script.
    Returns 3 steps (4 for ``-dynamic``); the last writes ``$(OUT_DIR)/<name>.mexa64``.
    """
    obj = f"$(OBJ_DIR)/{source.name}"
    stem = os.path.splitext(os.path.basename(source.source))[0]
    main_obj = f"{obj}/{stem}.o"
    version_obj = f"{obj}/c_mexapi_version.o"
    ccbin = ("-ccbin", "$(HOST_CXX)")
    flags = _compile_flags(chain, source)
    gencode = [t.flag() for t in chain.gencode]
    host = [_HOST_OPTIONS, *_OPTIM]
    steps = [
        Step(
            "compile",
            source.name,
            main_obj,
            (source.source_var, *source.include_vars()),
            (
                "$(NVCC)",
                "-dc" if source.dynamic else "-c",
                *ccbin,
                *flags,
                *gencode,
                *host,
                source.source_var,
                "-o",
                main_obj,
            ),
        ),
        Step(
            "compile-version",
            source.name,
            version_obj,
            ("$(MATLAB_ROOT)/extern/version/c_mexapi_version.c",),
            (
                "$(NVCC)",
                "-c",
                *ccbin,
                *flags,
                *host,
                "-DMATLAB_MEXCMD_RELEASE=R2017b",
                "$(MATLAB_ROOT)/extern/version/c_mexapi_version.c",
                "-o",
                version_obj,
            ),
        ),
    ]
    objects = [main_obj, version_obj]
    if source.dynamic:
        dlink_obj = f"{obj}/{source.name}_dlink.o"
        steps.append(
            Step(
                "dlink",
                source.name,
                dlink_obj,
                (main_obj,),
                (
                    "$(NVCC)",
                    "-dlink",
                    *ccbin,
                    *gencode,
                    "--compiler-options=-fPIC",
                    main_obj,
                    "-L$(CUDA_ROOT)/lib64",
                    "-lcudadevrt",
                    "-o",
                    dlink_obj,
                ),
            )
        )
        objects.insert(1, dlink_obj)
    binary = f"$(OUT_DIR)/{source.name}{MEX_EXT}"
    devrt = ("-lcudadevrt",) if source.dynamic else ()
    steps.append(
        Step(
            "link",
            source.name,
            binary,
            tuple(objects),
            (
                "$(HOST_CXX)",
                "-pthread",
                "-Wl,--no-undefined",
                "-shared",
                "-O",
                "-Wl,--version-script,$(MATLAB_ROOT)/extern/lib/glnxa64/c_exportsmexfileversion.map",
                *objects,
                "-L$(CUDA_ROOT)/lib64",
                "-L$(MATLAB_ROOT)/bin/glnxa64",
                "-L$(MATLAB_ROOT)/extern/bin/glnxa64",
                *_MATLAB_LIBS,
                f"-l{chain.gpu_mex_library}",
                *devrt,
                "$(CUDA_ROOT)/lib64/libcudart.so.*",
                "-o",
                binary,
            ),
        )
    )
    return tuple(steps)


def plan_steps(plan: MexPlan) -> dict[str, tuple[Step, ...]]:
    """Mex name -> its commands, for every source of the plan's spec (spec order)."""
    return {s.name: mex_steps(plan.toolchain, s) for s in plan.spec.sources}


def dry_run(plan: MexPlan, *, out_dir: str = "mex-out", obj_dir: str = "obj") -> str:
    """The commands of the whole build as shell lines, variables expanded (``--dry-run``):
    a ``#`` header line, then per mex a ``# <name>`` line and its commands."""
    variables = plan.variables(out_dir=out_dir, obj_dir=obj_dir)
    lines = [
        f"# Kilosort {plan.spec.kilosort_version} ({plan.kilosort_commit}), "
        f"profile {plan.toolchain.profile}, CUDA {plan.toolchain.cuda_version}"
    ]
    for name, steps in plan_steps(plan).items():
        lines.append(f"# {name}")
        lines += [step.shell(variables) for step in steps]
    return "\n".join(lines) + "\n"


def render_makefile(plan: MexPlan, *, out_dir: str = "mex-out", obj_dir: str = "obj") -> str:
    """A Makefile for ``make -j"$(nproc)"``: one rule per command, paths as make variables.

    Override any of :data:`MAKE_VARIABLES` on the make command line (not through the
    environment). Output is synchronised per target (``--output-sync``) so a failing
    compile's message stays together; make stops starting jobs after the first failure and
    removes its partial output (``.DELETE_ON_ERROR``); make's own last line names the target
    that failed (GNU make manual, "Special Built-in Target Names" and "Output During Parallel
    Execution"). Raises UserError for a gencode list the toolkit cannot emit.
    """
    plan = replace(plan, toolchain=plan.toolchain.validated())
    variables = plan.variables(out_dir=out_dir, obj_dir=obj_dir)
    lines = [
        "# Generated by kilosort_docker.mex -- do not edit.",
        f"# Kilosort {plan.spec.kilosort_version} ({plan.kilosort_commit}), profile "
        f"{plan.toolchain.profile}, CUDA {plan.toolchain.cuda_version}, gencode "
        + " ".join(str(t) for t in plan.toolchain.gencode),
        '# Run: make -j"$(nproc)" [MATLAB_ROOT=...] [CUDA_ROOT=...] [SRC_DIR=...] [OUT_DIR=...]',
        "",
    ]
    # Plain '=': the make command line overrides these, the environment does not (a stray
    # CUDA_ROOT or MATLAB_ROOT in a base image must not redirect the build).
    lines += [f"{name} = {_make_escape(variables[name])}" for name in MAKE_VARIABLES]
    lines += [
        "",
        "MAKEFLAGS += --output-sync=target",
        ".DELETE_ON_ERROR:",
        "SHELL := /bin/sh",
        "",
    ]
    steps = plan_steps(plan)
    binaries = [f"$(OUT_DIR)/{name}{MEX_EXT}" for name in steps]
    lines += [".PHONY: all clean", "all: " + " ".join(binaries), ""]
    for name, mex in steps.items():
        lines.append(f"{name}: $(OUT_DIR)/{name}{MEX_EXT}")
        lines.append(f".PHONY: {name}")
        for step in mex:
            lines.append(f"{step.output}: {' '.join(step.inputs)}")
            lines.append("\t@mkdir -p $(@D)")
            lines.append(f"\t@echo '[{step.kind}] {name}: {step.output}'")
            lines.append("\t" + _make_escape(step.shell()))
        lines.append("")
    lines += ["clean:", "\trm -rf $(OBJ_DIR) " + " ".join(binaries), ""]
    return "\n".join(lines)


def _make_escape(text: str) -> str:
    # Dollar signs other than $(VAR) references reach the shell doubled.
    return re.sub(r"\$(?!\()", "$$", text)


def write_makefile(
    plan: MexPlan, path: str | os.PathLike, *, out_dir: str = "mex-out", obj_dir: str = "obj"
) -> Path:
    """Write :func:`render_makefile` to ``path``; returns the path."""
    path = Path(path)
    path.write_text(render_makefile(plan, out_dir=out_dir, obj_dir=obj_dir))
    return path

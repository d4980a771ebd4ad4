"""Kilosort's CUDA mex files, built the way ``mexcuda`` builds them, without MATLAB running.

``mexcuda`` only runs nvcc and g++ against MATLAB's headers and libraries, which the
``mathworks/matlab`` image holds; no license is needed to run those commands. This module
holds the data (which sources, which per-file flags) and turns it into:

* the exact nvcc / g++ command lines mexcuda would run (R2022b shape, see FACTS.md),
* a Makefile so the build stage compiles with ``make -j"$(nproc)"`` (one job per core; the
  first failure stops the build and the compiler's message names the file),
* a JSON manifest beside the binaries (checksums, commands, nvcc version, the SASS and PTX
  inside each binary read with ``cuobjdump``, the GLIBCXX versions each one needs),
* a prediction, for a GPU's compute capability, of whether each binary runs natively, through
  PTX JIT, or not at all.

Standard library only, Python >= 3.8 (Ubuntu 20.04's python3, as in the R2022b image): the
build stage copies this single file and runs it with ``python3 mex.py ...`` where no
third-party package (nor the rest of ``kilosort_docker``) is installed.
Host code passes a :class:`kilosort_docker.images.profiles.Profile` to
:func:`toolchain_from_profile`.

Sources: Kilosort3 ``CUDA/mexGPUall.m`` (v3.0.2, commit c43f524) for the file list and flags;
``mexcuda -v`` output of MATLAB R2022b for the command shape; NVIDIA's CUDA compiler driver
documentation for gencode, relocatable device code and binary compatibility rules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

try:  # host side: the project's one-line error type
    from kilosort_docker.errors import UserError
except ImportError:  # build stage: this file runs alone

    class UserError(Exception):  # type: ignore[no-redef]
        """A problem the user can fix; its message is one line that names the fix."""


log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1
MEX_EXT = ".mexa64"

#: mexcuda's API-release defines (``-R2017b`` API, the default since R2018a).
_API_DEFINES = ("-DMATLAB_DEFAULT_RELEASE=R2017b", "-DUSE_MEX_CMD")
_HOST_DEFINES = "--compiler-options=-D_GNU_SOURCE,-DMATLAB_MEX_FILE"
_HOST_OPTIONS = "--compiler-options=-fexceptions,-fPIC,-fno-omit-frame-pointer,-pthread,-fwrapv"
_OPTIM = ("-std=c++11", "-O2", "-DNDEBUG")
#: Libraries every mex links, in mexcuda's order (the GPU library is appended per profile).
_MATLAB_LIBS = ("-lMatlabDataArray", "-lmx", "-lmex", "-lmat", "-lm", "-lc", "-lstdc++")

#: Make variables the generated commands refer to; their defaults come from the plan.
MAKE_VARIABLES = ("MATLAB_ROOT", "CUDA_ROOT", "SRC_DIR", "OUT_DIR", "OBJ_DIR", "NVCC", "HOST_CXX")


class MexBuildError(UserError):
    """The compiler or linker failed; the message names the file and the first error."""


# --------------------------------------------------------------------------------------------
# Gencode targets and what each CUDA toolkit can emit
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One nvcc ``-gencode`` target: ``arch`` is ``compute_XY``, ``code`` ``sm_XY`` or PTX.

    The profiles use it too (``kilosort_docker.images.profiles.Gencode``); :func:`as_target` also
    converts a ``compute_80,sm_80`` string or any object with ``arch`` and ``code``.
    """

    arch: str
    code: str

    @property
    def is_ptx(self) -> bool:
        """True for embedded PTX (``code=compute_XY``), False for SASS (``code=sm_XY``)."""
        return self.code.startswith("compute_")

    @property
    def number(self) -> int:
        """The architecture number of ``code`` without suffix: 80 for ``sm_80``/``sm_90a``."""
        return int(re.sub(r"[a-z]$", "", self.code.split("_", 1)[1]))

    def flag(self) -> str:
        """The nvcc flag, ``-gencode=arch=compute_80,code=sm_80``."""
        return f"-gencode=arch={self.arch},code={self.code}"

    def __str__(self) -> str:
        return f"{self.arch},{self.code}"

    @classmethod
    def parse(cls, text: str) -> Target:
        """Parse ``compute_80,sm_80``, ``arch=compute_80,code=sm_80`` or ``sm_80`` / ``compute_80``.

        A lone ``sm_80`` means SASS for compute_80; a lone ``compute_80`` means PTX. Raises
        UserError for anything else.
        """
        text = text.strip()
        if text.startswith("-gencode="):
            text = text[len("-gencode=") :]
        parts = [p.split("=", 1)[-1].strip() for p in text.split(",")]
        if len(parts) == 1 and re.fullmatch(r"(sm|compute)_\d+[a-z]?", parts[0]):
            number = parts[0].split("_", 1)[1]
            parts = [f"compute_{number}", parts[0]]
        if (
            len(parts) != 2
            or not re.fullmatch(r"compute_\d+[a-z]?", parts[0])
            or not re.fullmatch(r"(sm|compute)_\d+[a-z]?", parts[1])
        ):
            raise UserError(
                f"bad gencode {text!r}: write it as compute_XY,sm_XY (SASS) "
                "or compute_XY,compute_XY (PTX)"
            )
        return cls(parts[0], parts[1])


def as_target(value: object) -> Target:
    """A :class:`Target` from a Target, a ``profiles.Gencode`` (duck-typed) or a string."""
    if isinstance(value, Target):
        return value
    if isinstance(value, str):
        return Target.parse(value)
    arch, code = getattr(value, "arch", None), getattr(value, "code", None)
    if isinstance(arch, str) and isinstance(code, str):
        return Target.parse(f"{arch},{code}")
    raise TypeError(f"not a gencode target: {value!r}")


#: First CUDA toolkit (major, minor) that can emit each architecture. Source: CUDA release
#: notes ("new architectures supported") and ``nvcc --list-gpu-code`` of each toolkit.
_ARCH_ADDED: dict[int, tuple[int, int]] = {
    30: (6, 0), 32: (6, 0), 35: (5, 0), 37: (6, 0), 50: (6, 0), 52: (6, 5), 53: (7, 0),
    60: (8, 0), 61: (8, 0), 62: (8, 0), 70: (9, 0), 72: (10, 0), 75: (10, 0), 80: (11, 0),
    86: (11, 1), 87: (11, 4), 88: (13, 0), 89: (11, 8), 90: (11, 8), 100: (12, 8),
    101: (12, 8), 103: (12, 9), 110: (13, 0), 120: (12, 8), 121: (12, 9),
}  # fmt: skip
#: First CUDA toolkit that can no longer emit it (CUDA 11 drops sm_3x < 35, 12 drops
#: sm_35/37, 13 drops everything below sm_75; sm_101 was renamed sm_110 in 13.0).
_ARCH_REMOVED: dict[int, tuple[int, int]] = {
    30: (11, 0), 32: (11, 0), 35: (12, 0), 37: (12, 0), 50: (13, 0), 52: (13, 0),
    53: (13, 0), 60: (13, 0), 61: (13, 0), 62: (13, 0), 70: (13, 0), 72: (13, 0),
    101: (13, 0),
}  # fmt: skip


def parse_version(text: str) -> tuple[int, int]:
    """``"11.2"`` (or ``"11.2.152"``) -> ``(11, 2)``; raises UserError for anything else."""
    match = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\d+)?\s*", text)
    if not match:
        raise UserError(f"bad CUDA version {text!r}: write it as MAJOR.MINOR, e.g. 11.2")
    return int(match[1]), int(match[2])


def supported_architectures(cuda_version: str) -> tuple[int, ...]:
    """The architecture numbers (``35``, ``80``, ...) CUDA ``cuda_version`` can target, sorted."""
    version = parse_version(cuda_version)
    return tuple(
        sorted(
            number
            for number, added in _ARCH_ADDED.items()
            if added <= version and version < _ARCH_REMOVED.get(number, (999, 0))
        )
    )


def _fmt_version(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def validate_gencode(cuda_version: str, targets: Iterable[object]) -> tuple[Target, ...]:
    """Check each target against what CUDA ``cuda_version`` can emit; returns them as Targets.

    Raises UserError naming the toolkit's limits and the fix, e.g. "CUDA 11.2 cannot target
    sm_90 (supports sm_35..sm_86): drop it or use a profile with CUDA >= 11.8". Suffixed
    targets (``sm_90a``) need CUDA 12.0; family targets (``sm_100f``) need CUDA 12.9.
    """
    version = parse_version(cuda_version)
    supported = supported_architectures(cuda_version)
    limits = f"sm_{supported[0]}..sm_{supported[-1]}" if supported else "no known targets"
    checked = []
    for value in targets:
        target = as_target(value)
        number = target.number
        virtual = int(re.sub(r"[a-z]$", "", target.arch.split("_", 1)[1]))
        if virtual > number or (target.is_ptx and virtual != number):
            raise UserError(
                f"bad gencode {target}: the virtual architecture {target.arch} does not fit "
                f"{target.code}; use compute_{number},{target.code}"
            )
        if number not in supported:
            name = target.code if not target.is_ptx else f"compute_{number} (PTX)"
            if number in _ARCH_ADDED and version < _ARCH_ADDED[number]:
                fix = f"use a profile with CUDA >= {_fmt_version(_ARCH_ADDED[number])}"
            elif number in _ARCH_REMOVED and version >= _ARCH_REMOVED[number]:
                last = _ARCH_REMOVED[number]
                newest = f"{last[0] - 1}.x" if last[1] == 0 else f"< {_fmt_version(last)}"
                fix = f"use a profile with CUDA {newest}"
            else:
                fix = "check the architecture number"
            raise UserError(
                f"CUDA {_fmt_version(version)} cannot target {name} (supports {limits}): "
                f"drop it or {fix}"
            )
        suffix = target.code[-1] if target.code[-1].isalpha() else ""
        needs = {"a": (12, 0), "f": (12, 9)}.get(suffix)
        if needs and version < needs:
            raise UserError(
                f"CUDA {_fmt_version(version)} cannot target {target.code} ({suffix!r}-suffixed "
                f"targets need CUDA >= {_fmt_version(needs)}): drop it or use a newer profile"
            )
        if target not in checked:
            checked.append(target)
    if not checked:
        raise UserError("empty gencode list: give at least one target, e.g. compute_80,sm_80")
    return tuple(checked)


# --------------------------------------------------------------------------------------------
# Mex specs: which sources, which flags
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MexSource:
    """One mex file and the mexcuda flags it is built with.

    Attributes:
        name: the mex function name; the binary is ``<name>.mexa64``.
        source: path of the ``.cu`` file relative to the make variable ``root``.
        root: ``SRC_DIR`` (Kilosort's ``CUDA`` folder) or ``MATLAB_ROOT`` (MATLAB's example).
        defines: extra ``-D`` macros (``ENABLE_STABLEMODE``), without the ``-D``.
        large_array_dims: mexcuda ``-largeArrayDims`` (adds ``-DMX_COMPAT_64``).
        dynamic: mexcuda ``-dynamic``: relocatable device code (``-dc``), then ``nvcc -dlink``
            against ``cudadevrt`` and a link with ``-lcudadevrt``.
        includes: helper sources the ``.cu`` ``#include``s (same folder); checked for presence,
            hashed into the manifest, and make prerequisites.
        diagnostic: built to check the toolchain, not used by Kilosort.
    """

    name: str
    source: str
    root: str = "SRC_DIR"
    defines: tuple[str, ...] = ()
    large_array_dims: bool = True
    dynamic: bool = False
    includes: tuple[str, ...] = ()
    diagnostic: bool = False

    def __post_init__(self) -> None:
        if self.root not in ("SRC_DIR", "MATLAB_ROOT"):
            raise ValueError(f"{self.name}: root must be SRC_DIR or MATLAB_ROOT, not {self.root}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ValueError(f"bad mex name {self.name!r}")
        names = {d.split("=", 1)[0] for d in self.defines}
        if "ENSURE_DETERM" in names and "ENABLE_STABLEMODE" not in names:
            raise UserError(
                f"{self.name}: ENSURE_DETERM requires ENABLE_STABLEMODE: add both defines"
            )

    @property
    def source_var(self) -> str:
        """The source path with its make variable, ``$(SRC_DIR)/mexMPnu8.cu``."""
        return f"$({self.root})/{self.source}"

    def include_vars(self) -> tuple[str, ...]:
        folder = os.path.dirname(self.source)
        return tuple(f"$({self.root})/{os.path.join(folder, inc)}" for inc in self.includes)


@dataclass(frozen=True)
class MexSpec:
    """The mex files of one Kilosort version, in ``mexGPUall.m`` order.

    ``kilosort_version`` is the tag without ``v`` (``3.0.2``). Serialises with
    :meth:`to_dict` / :meth:`from_dict` (for the build stage and for test specs).
    """

    kilosort_version: str
    sources: tuple[MexSource, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate mex names in spec {self.kilosort_version}: {names}")
        if not names:
            raise ValueError("a mex spec needs at least one source")

    def source(self, name: str) -> MexSource:
        for item in self.sources:
            if item.name == name:
                return item
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "kilosort_version": self.kilosort_version,
            "sources": [asdict(s) for s in self.sources],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> MexSpec:
        sources = []
        for item in data["sources"]:
            item = dict(item)
            for key in ("defines", "includes"):
                item[key] = tuple(item.get(key, ()))
            sources.append(MexSource(**item))
        return cls(str(data["kilosort_version"]), tuple(sources))


#: MATLAB's own GPU mex example, built as a toolchain diagnostic (plain ``mexcuda`` call).
MATLAB_GPU_EXAMPLE = MexSource(
    name="mexGPUExample",
    source="toolbox/parallel/gpu/extern/src/mex/mexGPUExample.cu",
    root="MATLAB_ROOT",
    large_array_dims=False,
    diagnostic=True,
)

_KS3_PLAIN = (
    "spikedetector3",
    "spikedetector3PC",
    "mexThSpkPC",
    "mexGetSpikes2",
    "mexSVDsmall2",
    "mexWtW2",
    "mexFilterPCs",
    "mexClustering2",
    "mexDistances2",
)


def _kilosort_spec(version: str, plain: Sequence[str], *, ensure_determ: bool) -> MexSpec:
    defines = ("ENABLE_STABLEMODE", "ENSURE_DETERM") if ensure_determ else ("ENABLE_STABLEMODE",)
    sources = [MexSource(name, f"{name}.cu") for name in plain]
    sources.append(
        MexSource(
            "mexMPnu8",
            "mexMPnu8.cu",
            defines=defines,
            dynamic=True,
            includes=("mexNvidia_quicksort.cu",),
        )
    )
    return MexSpec(version, tuple(sources))


#: Kilosort versions with a known mex list -> the plain (non-dynamic) mex names.
_SPEC_LISTS: dict[str, tuple[str, ...]] = {
    "3.0.2": _KS3_PLAIN,
    "3.0.1": _KS3_PLAIN,
    "3.0": _KS3_PLAIN,
    "2.5.2": tuple(n for n in _KS3_PLAIN if n != "spikedetector3PC"),
    "2.5": tuple(n for n in _KS3_PLAIN if n != "spikedetector3PC"),
}


def kilosort_versions() -> tuple[str, ...]:
    """Kilosort versions :func:`get_spec` knows."""
    return tuple(_SPEC_LISTS)


def get_spec(
    version: str = "3.0.2", *, ensure_determ: bool = False, diagnostic: bool = True
) -> MexSpec:
    """The mex spec of a Kilosort version (``3.0.2``, ``v3.0.2``, ``2.5``...).

    ``ensure_determ`` adds ``-DENSURE_DETERM`` to mexMPnu8 (deterministic, ~2x slower
    subtraction; Kilosort issue 660). ``diagnostic`` appends MATLAB's ``mexGPUExample``.
    Raises UserError for an unknown version, naming the known ones.
    """
    key = version.strip().lstrip("v")
    if key not in _SPEC_LISTS:
        raise UserError(
            f"no mex spec for Kilosort {version!r}: choose one of {', '.join(_SPEC_LISTS)}"
        )
    spec = _kilosort_spec(key, _SPEC_LISTS[key], ensure_determ=ensure_determ)
    if diagnostic:
        spec = replace(spec, sources=spec.sources + (MATLAB_GPU_EXAMPLE,))
    return spec


# --------------------------------------------------------------------------------------------
# Toolchain and plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Toolchain:
    """What the commands need from a profile (kept here so the stage needs no other module).

    Attributes:
        profile: profile name recorded in the manifest (``r2022b``).
        matlab_root: MATLAB's install folder (``/opt/matlab/R2022b``).
        cuda_root: CUDA toolkit folder (``/usr/local/cuda-11.2``).
        cuda_version: toolkit version, MAJOR.MINOR; the gencode list is checked against it.
        host_compiler: C++ compiler for ``nvcc -ccbin`` and for the link (``g++-10``).
        gencode: nvcc targets, in order.
        gpu_mex_library: MATLAB's GPU mex library (``mwgpu``, ``gpumexbinder`` from R2024a).
    """

    profile: str
    matlab_root: str
    cuda_root: str
    cuda_version: str
    host_compiler: str
    gencode: tuple[Target, ...]
    gpu_mex_library: str = "mwgpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "gencode", tuple(as_target(g) for g in self.gencode))

    def validated(self) -> Toolchain:
        """Self with a checked, de-duplicated gencode list; raises UserError (see
        :func:`validate_gencode`)."""
        return replace(self, gencode=validate_gencode(self.cuda_version, self.gencode))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["gencode"] = [str(t) for t in self.gencode]
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> Toolchain:
        data = dict(data)
        data["gencode"] = tuple(Target.parse(t) for t in data["gencode"])
        return cls(**data)


def toolchain_from_profile(
    profile: object,
    extra_gencode: Iterable[object] = (),
    *,
    matlab_root: str | None = None,
    cuda_root: str | None = None,
    host_compiler: str | None = None,
) -> Toolchain:
    """A validated Toolchain from a ``profiles.Profile`` (duck-typed) plus extra targets.

    ``extra_gencode`` holds ``--gencode`` values (strings like ``compute_90,compute_90`` or
    Gencode objects), appended after the profile's. Raises UserError where the profile's
    CUDA version cannot emit a target.
    """
    chain = Toolchain(
        profile=profile.name,  # type: ignore[attr-defined]
        matlab_root=matlab_root or profile.matlab_root,  # type: ignore[attr-defined]
        cuda_root=cuda_root or profile.cuda_root,  # type: ignore[attr-defined]
        cuda_version=profile.cuda,  # type: ignore[attr-defined]
        host_compiler=host_compiler or profile.host_compiler,  # type: ignore[attr-defined]
        gencode=tuple(profile.gencode) + tuple(extra_gencode),  # type: ignore[attr-defined]
        gpu_mex_library=getattr(profile, "gpu_mex_library", "mwgpu"),
    )
    return chain.validated()


@dataclass(frozen=True)
class BuildPlan:
    """Everything needed to write the Makefile and the manifest: toolchain, spec, sources.

    ``src_dir`` is Kilosort's ``CUDA`` folder; ``kilosort_commit`` is recorded in the
    manifest. Serialise with :meth:`to_json` / :meth:`from_json` to hand it to the stage.
    """

    toolchain: Toolchain
    spec: MexSpec
    src_dir: str
    kilosort_commit: str = "unknown"

    def with_paths(
        self,
        *,
        matlab_root: str | None = None,
        cuda_root: str | None = None,
        src_dir: str | None = None,
    ) -> BuildPlan:
        """A copy with other MATLAB / CUDA / source folders (make variable overrides)."""
        chain = replace(
            self.toolchain,
            matlab_root=matlab_root or self.toolchain.matlab_root,
            cuda_root=cuda_root or self.toolchain.cuda_root,
        )
        return replace(self, toolchain=chain, src_dir=src_dir or self.src_dir)

    def to_json(self) -> str:
        return json.dumps(
            {
                "toolchain": self.toolchain.to_dict(),
                "spec": self.spec.to_dict(),
                "src_dir": self.src_dir,
                "kilosort_commit": self.kilosort_commit,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> BuildPlan:
        data = json.loads(text)
        return cls(
            Toolchain.from_dict(data["toolchain"]),
            MexSpec.from_dict(data["spec"]),
            data["src_dir"],
            data.get("kilosort_commit", "unknown"),
        )

    def variables(self, *, out_dir: str = "mex-out", obj_dir: str = "obj") -> dict[str, str]:
        """Make variable values: the defaults written into the Makefile."""
        return {
            "MATLAB_ROOT": self.toolchain.matlab_root,
            "CUDA_ROOT": self.toolchain.cuda_root,
            "SRC_DIR": self.src_dir,
            "OUT_DIR": out_dir,
            "OBJ_DIR": obj_dir,
            "NVCC": "$(CUDA_ROOT)/bin/nvcc",
            "HOST_CXX": self.toolchain.host_compiler,
        }


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One command: a compile, a device link or the final link, with make-variable paths.

    ``argv`` tokens may contain ``$(VAR)`` references (see :data:`MAKE_VARIABLES`) and, for
    the final link, the shell glob ``libcudart.so.*`` exactly as mexcuda passes it.
    ``kind`` is ``compile``, ``compile-version``, ``dlink`` or ``link``.
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
    """Replace ``$(VAR)`` references (recursively, as make does) with their values."""
    for _ in range(10):
        new = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], m[0]), text)
        if new == text:
            break
        text = new
    return text


def _compile_flags(chain: Toolchain, source: MexSource) -> list[str]:
    flags = [f"-D{d}" for d in source.defines]
    if source.large_array_dims:
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
    ``-DMX_COMPAT_64`` (``-largeArrayDims``), mexcuda's API defines, host defines, MATLAB's and
    CUDA's include folders, the gencode list and the host options; ``c_mexapi_version.c``
    compiled with the same defines and ``-DMATLAB_MEXCMD_RELEASE=R2017b``; for ``-dynamic`` an
    ``nvcc -dlink`` against ``cudadevrt``; then the g++ link with MATLAB's version script.
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


def plan_steps(plan: BuildPlan) -> dict[str, tuple[Step, ...]]:
    """Mex name -> its commands, for every source of the plan's spec (spec order)."""
    return {s.name: mex_steps(plan.toolchain, s) for s in plan.spec.sources}


def dry_run(plan: BuildPlan, *, out_dir: str = "mex-out", obj_dir: str = "obj") -> str:
    """The commands of the whole build as shell lines, variables expanded (``--dry-run``)."""
    variables = plan.variables(out_dir=out_dir, obj_dir=obj_dir)
    lines = [
        f"# Kilosort {plan.spec.kilosort_version} ({plan.kilosort_commit}), "
        f"profile {plan.toolchain.profile}, CUDA {plan.toolchain.cuda_version}"
    ]
    for name, steps in plan_steps(plan).items():
        lines.append(f"# {name}")
        lines += [step.shell(variables) for step in steps]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Makefile
# --------------------------------------------------------------------------------------------


def render_makefile(plan: BuildPlan, *, out_dir: str = "mex-out", obj_dir: str = "obj") -> str:
    """A Makefile for ``make -j"$(nproc)"``: one rule per command, paths as make variables.

    Override any of :data:`MAKE_VARIABLES` on the make command line (not through the
    environment). Output is synchronised
    per target (``--output-sync``) so a failing compile's message stays together; make stops
    starting jobs after the first failure and removes its partial output
    (``.DELETE_ON_ERROR``); make's own last line names the target that failed.
    """
    plan = replace(plan, toolchain=plan.toolchain.validated())
    variables = plan.variables(out_dir=out_dir, obj_dir=obj_dir)
    lines = [
        "# Generated by kilosort_docker/mex.py -- do not edit.",
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
    plan: BuildPlan, path: str | os.PathLike, *, out_dir: str = "mex-out", obj_dir: str = "obj"
) -> Path:
    """Write :func:`render_makefile` to ``path``; returns the path."""
    path = Path(path)
    path.write_text(render_makefile(plan, out_dir=out_dir, obj_dir=obj_dir))
    return path


# --------------------------------------------------------------------------------------------
# Inspecting binaries
# --------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_tool(name: str, cuda_root: str | None = None) -> str | None:
    """Path of a CUDA tool (``nvcc``, ``cuobjdump``): ``<cuda_root>/bin``, PATH, then the
    ``nvidia-cuda-cuobjdump`` style pip wheels (``site-packages/nvidia/*/bin``)."""
    if cuda_root:
        candidate = Path(cuda_root) / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    for entry in sys.path:
        base = Path(entry or ".") / "nvidia"
        if base.is_dir():
            for candidate in sorted(base.glob(f"*/bin/{name}")):
                if os.access(candidate, os.X_OK):
                    return str(candidate)
    return None


def nvcc_version(nvcc: str) -> str:
    """``release 11.2, V11.2.152`` from ``nvcc --version``; raises UserError if nvcc fails."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise UserError(f"cannot run {nvcc} --version ({exc}): check CUDA_ROOT") from exc
    match = re.search(r"release [\d.]+, V[\d.]+", out.stdout)
    return match[0] if match else out.stdout.strip().splitlines()[-1]


def parse_cuobjdump(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """SASS and PTX targets from ``cuobjdump --list-elf --list-ptx`` output.

    Lines look like ``ELF file    1: mexA.1.sm_80.cubin`` and ``PTX file    1: mexA.1.sm_80.ptx``
    (cuobjdump names PTX by ``sm_``). Returns (``("sm_75", "sm_80")``, ``("compute_80",)``),
    each sorted by architecture number and de-duplicated.
    """
    sass: set[str] = set()
    ptx: set[str] = set()
    for line in text.splitlines():
        match = re.match(r"\s*(ELF|PTX) file\s+\d+:\s*(\S+)\s*$", line)
        if not match:
            continue
        arch = re.search(r"\.sm_(\d+[a-z]?)\.(cubin|ptx)$", match[2])
        if not arch:
            continue
        (sass if match[1] == "ELF" else ptx).add(arch[1])
    key = _arch_key
    return (
        tuple(f"sm_{a}" for a in sorted(sass, key=key)),
        tuple(f"compute_{a}" for a in sorted(ptx, key=key)),
    )


def _arch_key(text: str) -> tuple[int, str]:
    match = re.match(r"(?:sm_|compute_)?(\d+)([a-z]?)$", text)
    return (int(match[1]), match[2]) if match else (0, text)


def device_code(path: str | os.PathLike, *, cuobjdump: str) -> tuple[tuple[str, ...], ...]:
    """(SASS, PTX) targets inside a binary, via ``cuobjdump --list-elf --list-ptx``.

    Only the fatbinaries the CUDA runtime loads are listed (not ``-all``): for relocatable
    device code that is the device-linked image. Raises UserError if cuobjdump fails for any
    reason other than the binary holding no device code.
    """
    result = subprocess.run(
        [cuobjdump, "--list-elf", "--list-ptx", str(path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        if "does not contain device code" in result.stderr:
            return (), ()
        raise UserError(
            f"cuobjdump failed on {path}: {result.stderr.strip().splitlines()[-1:]}: "
            "check that it is a CUDA binary"
        )
    return parse_cuobjdump(result.stdout)


def relocatable_ptx(path: str | os.PathLike, *, cuobjdump: str) -> tuple[str, ...]:
    """PTX targets kept with a binary's relocatable device code (``cuobjdump -all``).

    A device-linked (``-dynamic``) mex holds SASS only in the image the runtime lists, but the
    PTX of its ``-dc`` objects stays in the file, and the runtime JIT-compiles it: on an H200
    (9.0) a device-linked binary with only sm_80 SASS ran (tests/gpu/ptx_jit_check.py). The
    listing also holds the CUDA device runtime's own PTX (cudadevrt), so callers keep only the
    targets their gencode list asked for.
    """
    result = subprocess.run(
        [cuobjdump, "--list-ptx", "-all", str(path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        return ()
    return parse_cuobjdump(result.stdout)[1]


def parse_glibcxx(text: str) -> tuple[str, ...]:
    """``GLIBCXX_3.4.NN`` names in ``readelf -V`` / ``objdump -T`` output or raw strings,
    sorted by version and de-duplicated."""
    names = set(re.findall(r"GLIBCXX_\d+(?:\.\d+)*", text))
    return tuple(sorted(names, key=lambda n: tuple(int(p) for p in n[8:].split("."))))


def glibcxx_needed(path: str | os.PathLike) -> tuple[str, ...]:
    """GLIBCXX symbol versions a shared object needs (``readelf -V``; without binutils, the
    version names in its dynamic string table, found by scanning the file)."""
    readelf = shutil.which("readelf")
    if readelf:
        result = subprocess.run(
            [readelf, "-V", "--wide", str(path)], capture_output=True, text=True
        )
        if result.returncode == 0:
            section = result.stdout.split("Version needs section", 1)
            return parse_glibcxx(section[1] if len(section) == 2 else "")
    data = Path(path).read_bytes()
    return parse_glibcxx(data.decode("latin-1"))


def expected_device_code(chain: Toolchain, source: MexSource) -> tuple[tuple[str, ...], ...]:
    """(SASS, PTX) a binary should hold for its gencode list.

    A ``-dynamic`` mex is device-linked: ``nvcc -dlink`` links SASS only, so its runtime image
    holds no PTX whatever the gencode list (seen with nvcc 13 and cuobjdump). Such a binary
    has no PTX-JIT fallback for GPUs newer than its SASS. :func:`device_code_mismatch` also
    accepts the PTX for it, in case an older toolkit keeps it.
    """
    sass = sorted({t.code for t in chain.gencode if not t.is_ptx}, key=_arch_key)
    ptx = sorted({t.code for t in chain.gencode if t.is_ptx}, key=_arch_key)
    return tuple(sass), (() if source.dynamic else tuple(ptx))


def device_code_mismatch(
    chain: Toolchain, source: MexSource, sass: Sequence[str], ptx: Sequence[str]
) -> str | None:
    """Why a binary's (SASS, PTX) do not fit its gencode list, or None if they do.

    SASS must be exactly the gencode's ``sm_`` targets; PTX exactly its ``compute_`` targets,
    except for a ``-dynamic`` (device-linked) mex, whose PTX may be absent (see
    :func:`expected_device_code`).
    """
    want_sass, want_ptx = expected_device_code(chain, source)
    all_ptx = tuple(sorted({t.code for t in chain.gencode if t.is_ptx}, key=_arch_key))
    ptx_ok = tuple(ptx) == want_ptx or (source.dynamic and tuple(ptx) == all_ptx)
    if tuple(sass) == want_sass and ptx_ok:
        return None
    return (
        f"holds SASS {list(sass)} and PTX {list(ptx)} but its gencode list asks for "
        f"SASS {list(want_sass)} and PTX {list(all_ptx if source.dynamic else want_ptx)}"
    )


def host_compiler_version(compiler: str) -> str:
    """``g++-10 -dumpfullversion`` (e.g. ``10.3.0``), or ``unknown`` if it cannot be run."""
    try:
        out = subprocess.run([compiler, "-dumpfullversion"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


# --------------------------------------------------------------------------------------------
# Runtime prediction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimePrediction:
    """Whether a binary runs on a GPU of compute capability ``compute_capability``.

    ``mode`` is ``native`` (a SASS image fits), ``ptx-jit`` (no SASS fits, but PTX as old as
    or older than the GPU is embedded; the driver compiles it at first load, which needs a
    driver at least as new as the toolkit) or ``none`` ("no kernel image is available").
    ``via`` is the image used (``sm_80``, ``compute_80``) or empty.
    """

    binary: str
    compute_capability: str
    mode: str
    via: str = ""

    @property
    def runs(self) -> bool:
        return self.mode != "none"


def parse_compute_capability(text: str) -> tuple[int, int]:
    """``"9.0"`` or ``"90"`` or ``"sm_90"`` -> ``(9, 0)``; raises UserError otherwise."""
    text = re.sub(r"^(sm_|compute_)", "", text.strip().lower())  # no str.removeprefix: 3.8
    match = re.fullmatch(r"(\d+)\.(\d)", text) or re.fullmatch(r"(\d+)(\d)", text)
    if not match:
        raise UserError(f"bad compute capability {text!r}: write it as X.Y, e.g. 9.0")
    return int(match[1]), int(match[2])


def predict_runtime(
    sass: Iterable[str], ptx: Iterable[str], compute_capability: str, *, binary: str = ""
) -> RuntimePrediction:
    """Apply CUDA's binary compatibility rules for a device of ``compute_capability`` (X.Y).

    SASS ``sm_AB`` runs natively on devices of the same major version with minor >= B
    (``sm_90a`` only on exactly 9.0); PTX ``compute_AB`` is JIT-compiled on any device with
    AB <= XY (``compute_90a`` only on 9.0). Native wins over JIT; the newest fitting image is
    reported. Source: CUDA C++ Programming Guide, "Binary Compatibility" / "PTX Compatibility".
    """
    major, minor = parse_compute_capability(compute_capability)
    device = major * 10 + minor
    cc = f"{major}.{minor}"

    def fits_sass(code: str) -> bool:
        number, suffix = _arch_key(code)
        if suffix == "a":
            return number == device
        return number // 10 == major and number % 10 <= minor

    def fits_ptx(code: str) -> bool:
        number, suffix = _arch_key(code)
        return number == device if suffix == "a" else number <= device

    native = sorted((c for c in sass if fits_sass(c)), key=_arch_key)
    if native:
        return RuntimePrediction(binary, cc, "native", native[-1])
    jit = sorted((c for c in ptx if fits_ptx(c)), key=_arch_key)
    if jit:
        return RuntimePrediction(binary, cc, "ptx-jit", jit[-1])
    return RuntimePrediction(binary, cc, "none")


def predict_directory(
    directory: str | os.PathLike, compute_capability: str
) -> list[RuntimePrediction]:
    """:func:`predict_runtime` for every binary of a manifest: its recorded SASS and PTX, and
    for a device-linked mex the PTX kept with its relocatable code (:func:`relocatable_ptx`)."""
    manifest = load_manifest(directory)
    return [
        predict_runtime(
            entry["sass"],
            [*entry["ptx"], *entry.get("relocatable_ptx", [])],
            compute_capability,
            binary=name,
        )
        for name, entry in sorted(manifest["binaries"].items())
    ]


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`verify_manifest`; ``severity`` is ``error`` or ``warning``."""

    severity: str
    binary: str
    message: str

    def __str__(self) -> str:
        where = f"{self.binary}: " if self.binary else ""
        return f"{self.severity}: {where}{self.message}"


def _source_path(plan: BuildPlan, source: MexSource, relative: str | None = None) -> Path:
    root = plan.src_dir if source.root == "SRC_DIR" else plan.toolchain.matlab_root
    if relative is None:
        return Path(root) / source.source
    return Path(root) / os.path.dirname(source.source) / relative


def check_sources(plan: BuildPlan) -> None:
    """Raise UserError naming the first missing source or ``#include``d helper."""
    for source in plan.spec.sources:
        paths = [_source_path(plan, source)]
        paths += [_source_path(plan, source, inc) for inc in source.includes]
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
    plan: BuildPlan,
    *,
    out_var: str | None = None,
    obj_var: str = "obj",
    cuobjdump: str | None = None,
    nvcc: str | None = None,
) -> dict:
    """The manifest of the binaries in ``out_dir`` built from ``plan`` (not written).

    ``out_var`` / ``obj_var`` are the OUT_DIR / OBJ_DIR values the commands were run with
    (recorded in the commands; default: ``out_dir``). Raises UserError for a missing binary,
    a missing cuobjdump/nvcc, or a binary whose SASS/PTX differ from its gencode list.
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
            sorted(set(relocatable_ptx(binary, cuobjdump=cuobjdump)) & wanted_ptx, key=_arch_key)
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
        src = _source_path(plan, source)
        binaries[binary.name] = {
            "mex": source.name,
            "sha256": sha256_file(binary),
            "size": binary.stat().st_size,
            "source": source.source,
            "source_sha256": sha256_file(src) if src.is_file() else None,
            "includes": {
                inc: sha256_file(_source_path(plan, source, inc)) for inc in source.includes
            },
            "defines": list(source.defines),
            "large_array_dims": source.large_array_dims,
            "dynamic": source.dynamic,
            "diagnostic": source.diagnostic,
            "commands": [s.shell(variables) for s in mex_steps(chain, source)],
            "sass": list(sass),
            "ptx": list(ptx),
            "relocatable_ptx": kept_ptx,
            "glibcxx": list(glibcxx_needed(binary)),
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


def write_manifest(out_dir: str | os.PathLike, plan: BuildPlan, **kwargs: object) -> Path:
    """Build the manifest (:func:`build_manifest`, same keywords) and write it as
    ``<out_dir>/manifest.json``; returns its path."""
    manifest = build_manifest(out_dir, plan, **kwargs)  # type: ignore[arg-type]
    path = Path(out_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    log.info("wrote %s (%d binaries)", path, len(manifest["binaries"]))
    return path


def load_manifest(directory: str | os.PathLike) -> dict:
    """Read ``<directory>/manifest.json``; raises UserError if absent or unreadable."""
    path = Path(directory) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UserError(f"no {MANIFEST_NAME} in {directory}: build the mex files first") from exc
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
        want = [str(as_target(t)) for t in gencode]
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


# --------------------------------------------------------------------------------------------
# Running the build
# --------------------------------------------------------------------------------------------

_ERROR_PATTERNS = (
    re.compile(r"^(?P<file>[^\s:()]+)\((?P<line>\d+)\): (?:catastrophic )?error: (?P<msg>.*)$"),
    re.compile(r"^(?P<file>[^\s:()]+):(?P<line>\d+):(?:\d+:)? (?:fatal )?error: (?P<msg>.*)$"),
    re.compile(r"^make: \*\*\* No rule to make target '(?P<file>[^']+)'.*$"),
    re.compile(r"^(?P<file>nvlink|ld|/usr/bin/ld)(?: error)?\s*:\s*(?P<msg>.*)$"),
)


def first_error(output: str) -> str:
    """The first compiler/linker error in make output, as ``file:line: message`` (one line)."""
    for line in output.splitlines():
        line = line.strip()
        for pattern in _ERROR_PATTERNS:
            match = pattern.match(line)
            if match:
                parts = match.groupdict()
                where = parts["file"] + (f":{parts['line']}" if parts.get("line") else "")
                msg = parts.get("msg") or "no rule to make it (missing file)"
                return f"{where}: {msg}"
    failed = re.findall(r"^make: \*\*\* \[[^\]]*?:\s*(\S+)\] Error", output, re.M)
    if failed:
        return f"{failed[0]}: command failed (see the output above)"
    tail = [ln for ln in output.splitlines() if ln.strip()]
    return tail[-1] if tail else "make failed with no output"


def run_make(
    makefile: str | os.PathLike,
    variables: Mapping[str, str] | None = None,
    *,
    jobs: int | None = None,
    targets: Sequence[str] = (),
    echo: bool = True,
) -> str:
    """Run ``make -f makefile -jN VAR=value... targets``; returns the combined output.

    ``jobs`` defaults to one per core (``os.cpu_count()``). With ``echo`` the output goes to
    stderr as it comes. Raises MexBuildError naming the first error's file and message.
    """
    jobs = jobs or os.cpu_count() or 1
    argv = ["make", "-f", str(makefile), f"-j{jobs}"]
    argv += [f"{k}={v}" for k, v in (variables or {}).items()]
    argv += list(targets)
    log.info("running %s", " ".join(shlex.quote(a) for a in argv))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    chunks = []
    assert proc.stdout is not None
    for line in proc.stdout:
        chunks.append(line)
        if echo:
            sys.stderr.write(line)
    output = "".join(chunks)
    if proc.wait() != 0:
        raise MexBuildError(f"mex build failed: {first_error(output)}")
    return output


def build(
    plan: BuildPlan,
    out_dir: str | os.PathLike,
    *,
    jobs: int | None = None,
    replace_existing: bool = False,
    echo: bool = True,
    cuobjdump: str | None = None,
) -> dict:
    """Compile every mex of ``plan`` into ``out_dir`` with its manifest; returns the manifest.

    Work happens in a temporary folder beside ``out_dir`` and moves into place only after the
    build and the manifest succeed, so a failure leaves an existing ``out_dir`` untouched.
    A non-empty ``out_dir`` is refused unless ``replace_existing``. Raises UserError for bad
    gencodes or missing sources (before compiling), MexBuildError for compiler errors.
    """
    out_dir = Path(out_dir).absolute()
    plan = replace(plan, toolchain=plan.toolchain.validated())
    check_sources(plan)
    if out_dir.exists() and any(out_dir.iterdir()) and not replace_existing:
        raise UserError(
            f"{out_dir} already holds files: choose another folder or pass replace_existing "
            "(--replace) to swap them after a successful build"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        staged, obj = work / "bin", work / "obj"
        makefile = write_makefile(plan, work / "Makefile", out_dir=str(staged), obj_dir=str(obj))
        run_make(makefile, jobs=jobs, echo=echo)
        write_manifest(staged, plan, out_var=str(out_dir), obj_var="obj", cuobjdump=cuobjdump)
        problems = [p for p in verify_manifest(staged) if p.severity == "error"]
        if problems:
            raise UserError(f"fresh build does not match its manifest: {problems[0]}")
        previous = work / "previous"
        if out_dir.exists():
            out_dir.rename(previous)
        try:
            staged.rename(out_dir)
        except OSError:
            if previous.exists():
                previous.rename(out_dir)  # put the old binaries back before giving up
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return load_manifest(out_dir)


# --------------------------------------------------------------------------------------------
# Command line (also the build stage's entry point: python3 mex.py ...)
# --------------------------------------------------------------------------------------------


def _plan_from_args(args: argparse.Namespace) -> BuildPlan:
    if args.plan:
        plan = BuildPlan.from_json(Path(args.plan).read_text())
    else:
        if args.profile:
            try:
                from kilosort_docker.images.profiles import get_profile
            except ImportError as exc:
                raise UserError(
                    "--profile needs the kilosort_docker package: pass --plan or the "
                    "toolchain flags instead"
                ) from exc
            chain = toolchain_from_profile(get_profile(args.profile), args.gencode or ())
        else:
            if not (args.matlab_root and args.cuda_root and args.cuda_version):
                raise UserError(
                    "give --plan FILE, --profile NAME, or --matlab-root, --cuda-root and "
                    "--cuda-version"
                )
            chain = Toolchain(
                profile=args.profile_name or "custom",
                matlab_root=args.matlab_root,
                cuda_root=args.cuda_root,
                cuda_version=args.cuda_version,
                host_compiler=args.host_compiler or "g++",
                gencode=tuple(Target.parse(g) for g in (args.gencode or [])),
                gpu_mex_library=args.gpu_mex_library,
            ).validated()
        if args.spec:
            spec = MexSpec.from_dict(json.loads(Path(args.spec).read_text()))
        else:
            spec = get_spec(
                args.kilosort_version,
                ensure_determ=args.ensure_determ,
                diagnostic=not args.no_diagnostic,
            )
        plan = BuildPlan(chain, spec, args.src_dir or "Kilosort/CUDA", args.kilosort_commit)
    if args.plan and args.gencode:
        chain = replace(
            plan.toolchain,
            gencode=plan.toolchain.gencode + tuple(Target.parse(g) for g in args.gencode),
        )
        plan = replace(plan, toolchain=chain)
    plan = plan.with_paths(
        matlab_root=args.matlab_root, cuda_root=args.cuda_root, src_dir=args.src_dir
    )
    return replace(plan, toolchain=plan.toolchain.validated())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mex.py", description="Build Kilosort's CUDA mex files the way mexcuda does."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plan", help="build plan JSON (from the `plan` command)")
    common.add_argument("--profile", help="profile name (host side only)")
    common.add_argument("--profile-name", help="profile name to record (with toolchain flags)")
    common.add_argument("--matlab-root")
    common.add_argument("--cuda-root")
    common.add_argument("--cuda-version")
    common.add_argument("--host-compiler")
    common.add_argument("--gpu-mex-library", default="mwgpu")
    common.add_argument("--gencode", action="append", help="compute_XY,sm_XY (repeatable)")
    common.add_argument("--kilosort-version", default="3.0.2")
    common.add_argument("--kilosort-commit", default="unknown")
    common.add_argument("--spec", help="mex spec JSON instead of a Kilosort version")
    common.add_argument("--ensure-determ", action="store_true")
    common.add_argument("--no-diagnostic", action="store_true", help="skip mexGPUExample")
    common.add_argument("--src-dir", help="Kilosort's CUDA folder")
    common.add_argument("--out-dir", default="mex-out")
    common.add_argument("--obj-dir", default="obj")

    sub.add_parser("plan", parents=[common], help="write the build plan JSON to stdout")
    sub.add_parser("commands", parents=[common], help="print the commands (dry run)")
    mk = sub.add_parser("makefile", parents=[common], help="write a Makefile")
    mk.add_argument("-o", "--output", default="Makefile")
    man = sub.add_parser("manifest", parents=[common], help="write the manifest into --out-dir")
    man.add_argument("--cuobjdump")
    bld = sub.add_parser("build", parents=[common], help="compile + manifest, atomically")
    bld.add_argument("-j", "--jobs", type=int)
    bld.add_argument("--replace", action="store_true")
    ver = sub.add_parser("verify", help="check a folder against its manifest")
    ver.add_argument("directory")
    ver.add_argument("--compute-capability", help="predict how each binary runs, e.g. 9.0")
    ver.add_argument("--expect-profile")
    ver.add_argument("--expect-commit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for a UserError)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "verify":
            problems = verify_manifest(
                args.directory, profile=args.expect_profile, kilosort_commit=args.expect_commit
            )
            for problem in problems:
                print(problem)
            if args.compute_capability and not any(p.severity == "error" for p in problems):
                for pred in predict_directory(args.directory, args.compute_capability):
                    print(f"{pred.binary}: {pred.mode}" + (f" ({pred.via})" if pred.via else ""))
            return 1 if any(p.severity == "error" for p in problems) else 0
        plan = _plan_from_args(args)
        if args.command == "plan":
            print(plan.to_json())
        elif args.command == "commands":
            sys.stdout.write(dry_run(plan, out_dir=args.out_dir, obj_dir=args.obj_dir))
        elif args.command == "makefile":
            write_makefile(plan, args.output, out_dir=args.out_dir, obj_dir=args.obj_dir)
        elif args.command == "manifest":
            write_manifest(args.out_dir, plan, obj_var=args.obj_dir, cuobjdump=args.cuobjdump)
            problems = verify_manifest(args.out_dir)
            for problem in problems:
                print(problem)
        elif args.command == "build":
            build(plan, args.out_dir, jobs=args.jobs, replace_existing=args.replace)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

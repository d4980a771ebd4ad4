"""nvcc ``-gencode`` targets, and which ones each CUDA toolkit can emit.

A target pairs a virtual architecture (``compute_XY``, the PTX instruction set) with what goes
into the binary: SASS for a real GPU (``sm_XY``) or the PTX itself (``compute_XY``). Source:
NVIDIA's CUDA Compiler Driver NVCC documentation, "GPU Compilation" and "Virtual
Architectures" (https://docs.nvidia.com/cuda/cuda-compiler-driver-nvcc/), and each toolkit's
release notes and ``nvcc --list-gpu-code`` for the architecture tables below.

The image profiles use :class:`Gencode` as their target type
(``kilosort_docker.images.profiles``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from kilosort_docker.errors import UserError


@dataclass(frozen=True)
class Gencode:
    """One nvcc ``-gencode`` target: ``arch`` is ``compute_XY``, ``code`` ``sm_XY`` or PTX.

    ``XY`` is the architecture number (compute capability X.Y), optionally with a suffix
    (``sm_90a``: architecture-specific; ``sm_100f``: family-specific). :func:`as_gencode` also
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
    def parse(cls, text: str) -> Gencode:
        """Parse ``compute_80,sm_80``, ``arch=compute_80,code=sm_80`` or ``sm_80`` / ``compute_80``.

        A leading ``-gencode=`` is accepted. A lone ``sm_80`` means SASS for compute_80; a lone
        ``compute_80`` means PTX. Raises UserError for anything else.
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


def as_gencode(value: object) -> Gencode:
    """A :class:`Gencode` from a Gencode, a string (:meth:`Gencode.parse`) or any object with
    string ``arch`` and ``code`` attributes. Raises UserError for a bad string, TypeError for
    anything else."""
    if isinstance(value, Gencode):
        return value
    if isinstance(value, str):
        return Gencode.parse(value)
    arch, code = getattr(value, "arch", None), getattr(value, "code", None)
    if isinstance(arch, str) and isinstance(code, str):
        return Gencode.parse(f"{arch},{code}")
    raise TypeError(f"not a gencode target: {value!r}")


def arch_key(text: str) -> tuple[int, str]:
    """Sort key of an architecture name: ``sm_90a`` / ``compute_90a`` / ``90a`` -> ``(90, "a")``.

    Names that are not architectures sort first, as ``(0, text)``.
    """
    match = re.match(r"(?:sm_|compute_)?(\d+)([a-z]?)$", text)
    return (int(match[1]), match[2]) if match else (0, text)


#: First CUDA toolkit (major, minor) that can emit each architecture. Source: CUDA release
#: notes ("new architectures supported") and ``nvcc --list-gpu-code`` of each toolkit.
_ARCH_ADDED: dict[int, tuple[int, int]] = {
    30: (6, 0), 32: (6, 0), 35: (5, 0), 37: (6, 0), 50: (6, 0), 52: (6, 5), 53: (7, 0),
    60: (8, 0), 61: (8, 0), 62: (8, 0), 70: (9, 0), 72: (10, 0), 75: (10, 0), 80: (11, 0),
    86: (11, 1), 87: (11, 4), 88: (13, 0), 89: (11, 8), 90: (11, 8), 100: (12, 8),
    101: (12, 8), 103: (12, 9), 110: (13, 0), 120: (12, 8), 121: (12, 9),
}  # fmt: skip
#: First CUDA toolkit that can no longer emit it (CUDA 11 drops sm_3x < 35, 12 drops
#: sm_35/37, 13 drops everything below sm_75; sm_101 was renamed sm_110 in 13.0). Source: the
#: CUDA 11.0, 12.0 and 13.0 release notes ("Deprecated or Dropped Features").
_ARCH_REMOVED: dict[int, tuple[int, int]] = {
    30: (11, 0), 32: (11, 0), 35: (12, 0), 37: (12, 0), 50: (13, 0), 52: (13, 0),
    53: (13, 0), 60: (13, 0), 61: (13, 0), 62: (13, 0), 70: (13, 0), 72: (13, 0),
    101: (13, 0),
}  # fmt: skip


def parse_cuda_version(text: str) -> tuple[int, int]:
    """A CUDA toolkit version: ``"11.2"`` (or ``"11.2.152"``) -> ``(11, 2)``.

    Raises UserError for anything else.
    """
    match = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\d+)?\s*", text)
    if not match:
        raise UserError(f"bad CUDA version {text!r}: write it as MAJOR.MINOR, e.g. 11.2")
    return int(match[1]), int(match[2])


def supported_architectures(cuda_version: str) -> tuple[int, ...]:
    """The architecture numbers (``35``, ``80``, ...) CUDA ``cuda_version`` can target, sorted.

    Raises UserError for a malformed version (:func:`parse_cuda_version`).
    """
    version = parse_cuda_version(cuda_version)
    return tuple(
        sorted(
            number
            for number, added in _ARCH_ADDED.items()
            if added <= version and version < _ARCH_REMOVED.get(number, (999, 0))
        )
    )


def _fmt_version(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def validate_gencode(cuda_version: str, targets: Iterable[object]) -> tuple[Gencode, ...]:
    """Check each target against what CUDA ``cuda_version`` can emit; returns them as Gencodes.

    ``targets`` holds anything :func:`as_gencode` accepts; duplicates are dropped, order kept.
    Raises UserError naming the toolkit's limits and the fix, e.g. "CUDA 11.2 cannot target
    sm_90 (supports sm_35..sm_86): drop it or use a profile with CUDA >= 11.8"; also for a
    virtual architecture newer than its code, and for an empty list. Suffixed targets
    (``sm_90a``) need CUDA 12.0; family targets (``sm_100f``) need CUDA 12.9.
    """
    version = parse_cuda_version(cuda_version)
    supported = supported_architectures(cuda_version)
    limits = f"sm_{supported[0]}..sm_{supported[-1]}" if supported else "no known targets"
    checked: list[Gencode] = []
    for value in targets:
        target = as_gencode(value)
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


#: Newest GCC major version each CUDA toolkit (major, minor) accepts as host compiler: nvcc's
#: ``crt/host_config.h`` stops with "unsupported GNU version! gcc versions later than N are not
#: supported!" above it. Source: NVIDIA, ``include/crt/host_config.h`` of each toolkit, and the
#: CUDA Installation Guide for Linux, "Supported Linux distributions" (GCC column). Toolkits
#: not listed are not judged.
_NEWEST_GCC: dict[tuple[int, int], int] = {
    (11, 0): 9,  # the profiles' toolkits, checked against their host_config.h
    (11, 2): 10,
    (11, 8): 11,  # Debian's nvidia-cuda-toolkit 11.8 (its nvcc needs g++-11 or older)
    (12, 2): 12,
    (13, 0): 15,  # this project's test machines' toolkit
}


def newest_gcc(cuda_version: str) -> int | None:
    """The newest GCC major version CUDA ``cuda_version`` accepts, None where not known."""
    return _NEWEST_GCC.get(parse_cuda_version(cuda_version))


#: A host compiler: GCC, clang or the system's c++, optionally version-suffixed (``g++-10``,
#: ``clang++-15``) or target-prefixed (``x86_64-linux-gnu-g++-10``, as Debian names them), as a
#: name or an absolute path. nvcc takes it as ``-ccbin`` (NVCC documentation, "--compiler-bindir")
#: and the mex-build stage installs a missing one with apt-get, so anything else is refused.
_HOST_COMPILER_RE = re.compile(
    r"(?:/[A-Za-z0-9._+-]+)*/?"
    r"(?:[a-z0-9_]+(?:-[a-z0-9_]+)*-)??"
    r"(?:g\+\+|gcc|c\+\+|clang\+\+|clang)(?:-\d+(?:\.\d+)*)?"
)


def check_host_compiler_name(compiler: str, *, flag: str = "--host-compiler") -> str:
    """``compiler`` unchanged if it names a host compiler (``g++``, ``g++-10``, ``gcc-9``,
    ``clang++-15``, ``/usr/bin/g++-9``); raises UserError for anything else (a space, an option,
    a shell word), before any work."""
    if not isinstance(compiler, str) or not _HOST_COMPILER_RE.fullmatch(compiler):
        raise UserError(
            f"{flag} {compiler!r} is not a host compiler: give g++-N or gcc-N (e.g. g++-10), "
            "g++, clang++-N, or an absolute path to one"
        )
    return compiler


def compiler_gcc_major(compiler: str) -> int | None:
    """The GCC major version named by ``g++-N`` / ``gcc-N`` (a path is allowed), else None:
    a bare ``g++`` (or another compiler) cannot be judged without running it."""
    match = re.fullmatch(r"(?:g\+\+|gcc)-(\d+)", compiler.strip().rsplit("/", 1)[-1])
    return int(match[1]) if match else None


def validate_host_compiler(cuda_version: str, compiler: str) -> str:
    """Check that CUDA ``cuda_version``'s nvcc accepts ``compiler`` as host compiler; returns
    it unchanged. Raises UserError naming the range, e.g. "CUDA 11.2 accepts gcc up to 10, not
    g++-12: use --host-compiler g++-10 (or older)". Compilers whose version the name does not
    give (``g++``, ``clang++``) and toolkits not in the table are accepted."""
    check_host_compiler_name(compiler)
    major = compiler_gcc_major(compiler)
    newest = newest_gcc(cuda_version)
    if major is not None and newest is not None and major > newest:
        version = _fmt_version(parse_cuda_version(cuda_version))
        raise UserError(
            f"CUDA {version} accepts gcc up to {newest}, not {compiler} (nvcc stops with "
            f"'unsupported GNU version'): use --host-compiler g++-{newest} or older"
        )
    return compiler

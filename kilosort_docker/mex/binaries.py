"""Looking inside built mex files: checksums, the SASS and PTX they hold, GLIBCXX needs.

Device code is listed with ``cuobjdump`` (NVIDIA, CUDA Binary Utilities,
https://docs.nvidia.com/cuda/cuda-binary-utilities/); symbol versions with GNU binutils'
``readelf -V``. What a binary should hold for its gencode list follows nvcc's rules (NVIDIA,
CUDA Compiler Driver NVCC, "GPU Compilation" and "Using Separate Compilation in CUDA").
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from kilosort_docker.errors import UserError
from kilosort_docker.mex.gencode import arch_key
from kilosort_docker.mex.sources import MexSource
from kilosort_docker.mex.toolchain import Toolchain


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 (64 characters) of a file, read in 1 MiB chunks; OSError if unreadable."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_tool(name: str, cuda_root: str | None = None) -> str | None:
    """Path of a CUDA tool (``nvcc``, ``cuobjdump``): ``<cuda_root>/bin``, PATH, then the
    ``nvidia-cuda-cuobjdump`` style pip wheels (``site-packages/nvidia/*/bin``); None if
    none is found."""
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
    return (
        tuple(f"sm_{a}" for a in sorted(sass, key=arch_key)),
        tuple(f"compute_{a}" for a in sorted(ptx, key=arch_key)),
    )


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
    targets their gencode list asked for. Returns () if cuobjdump fails.
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


def readelf_glibcxx_needed(path: str | os.PathLike) -> tuple[str, ...]:
    """GLIBCXX symbol versions a shared object needs, from the "Version needs section" of
    ``readelf -V --wide``; without binutils, the version names in its dynamic string table,
    found by scanning the file. Raises OSError if the file cannot be read."""
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
    has no PTX-JIT fallback in that image; see :func:`relocatable_ptx` for the PTX kept
    beside it. :func:`device_code_mismatch` also accepts the PTX for it, in case an older
    toolkit keeps it.
    """
    sass = sorted({t.code for t in chain.gencode if not t.is_ptx}, key=arch_key)
    ptx = sorted({t.code for t in chain.gencode if t.is_ptx}, key=arch_key)
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
    all_ptx = tuple(sorted({t.code for t in chain.gencode if t.is_ptx}, key=arch_key))
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

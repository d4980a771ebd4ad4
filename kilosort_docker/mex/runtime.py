"""Will a mex file run on a given GPU: natively, through PTX JIT, or not at all?

Applies CUDA's compatibility rules (NVIDIA, CUDA C++ Programming Guide, "Binary
Compatibility" and "PTX Compatibility",
https://docs.nvidia.com/cuda/cuda-c-programming-guide/#binary-compatibility) to the SASS and
PTX a manifest records for each binary. ``tests/gpu/ptx_jit_check.py`` checks the
predictions on a real GPU.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from kilosort_docker.errors import UserError
from kilosort_docker.mex.gencode import arch_key
from kilosort_docker.mex.manifest import load_manifest


@dataclass(frozen=True)
class RuntimePrediction:
    """Whether a binary runs on a GPU of compute capability ``compute_capability`` (``9.0``).

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
        """True unless ``mode`` is ``none``."""
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
    reported. Raises UserError for a bad compute capability (:func:`parse_compute_capability`).
    """
    major, minor = parse_compute_capability(compute_capability)
    device = major * 10 + minor
    cc = f"{major}.{minor}"

    def fits_sass(code: str) -> bool:
        number, suffix = arch_key(code)
        if suffix == "a":
            return number == device
        return number // 10 == major and number % 10 <= minor

    def fits_ptx(code: str) -> bool:
        number, suffix = arch_key(code)
        return number == device if suffix == "a" else number <= device

    native = sorted((c for c in sass if fits_sass(c)), key=arch_key)
    if native:
        return RuntimePrediction(binary, cc, "native", native[-1])
    jit = sorted((c for c in ptx if fits_ptx(c)), key=arch_key)
    if jit:
        return RuntimePrediction(binary, cc, "ptx-jit", jit[-1])
    return RuntimePrediction(binary, cc, "none")


def predict_directory(
    directory: str | os.PathLike, compute_capability: str
) -> list[RuntimePrediction]:
    """:func:`predict_runtime` for every binary of a manifest (sorted by file name): its
    recorded SASS and PTX, and for a device-linked mex the PTX kept with its relocatable code
    (``relocatable_ptx``). Raises UserError if the manifest is missing or unreadable."""
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

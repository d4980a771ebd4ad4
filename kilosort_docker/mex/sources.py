"""Which ``.cu`` files become mex files, and with which ``mexcuda`` flags.

Each Kilosort version's list is a data file, ``specs/kilosort-<version>.json``, transcribed
from Kilosort's ``CUDA/mexGPUall.m`` at that tag (for v3.0.2, commit c43f524:
https://github.com/MouseLand/Kilosort/blob/v3.0.2/CUDA/mexGPUall.m): nine plain
``mexcuda -largeArrayDims`` calls and ``mexMPnu8`` with ``-dynamic -DENABLE_STABLEMODE``.
The files are read with :func:`pkgutil.get_data`, so they load from a zipapp too. A file has
the shape of :meth:`MexSpec.to_dict` (plus an ``upstream`` note); fields a source leaves out
take :class:`MexSource`'s defaults. The flags are mexcuda's, as documented by MathWorks
(https://www.mathworks.com/help/parallel-computing/mexcuda.html).
"""

from __future__ import annotations

import json
import os
import pkgutil
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from kilosort_docker.errors import UserError

#: File name extension of a Linux (glnxa64) mex binary.
MEX_EXT = ".mexa64"

#: Kilosort versions with a spec file, newest first (the order error messages list them).
KILOSORT_VERSIONS = ("3.0.2", "3.0.1", "3.0", "2.5.2", "2.5")


@dataclass(frozen=True)
class MexSource:
    """One mex file and the mexcuda flags it is built with.

    Attributes:
        name: the mex function name; the binary is ``<name>.mexa64``.
        source: path of the ``.cu`` file relative to the make variable ``root``.
        root: ``SRC_DIR`` (Kilosort's ``CUDA`` folder) or ``MATLAB_ROOT`` (MATLAB's example).
        defines: extra ``-D`` macros (``ENABLE_STABLEMODE``), without the ``-D``.
        large_array_dims: whether the mexcuda call gives ``-largeArrayDims`` (recorded in the
            manifest; ``-DMX_COMPAT_64`` is passed either way, as mexcuda does).
        dynamic: mexcuda ``-dynamic``: relocatable device code (``-dc``), then ``nvcc -dlink``
            against ``cudadevrt`` and a link with ``-lcudadevrt``.
        includes: helper sources the ``.cu`` ``#include``s (same folder); checked for presence,
            hashed into the manifest, and make prerequisites.
        diagnostic: built to check the toolchain, not used by Kilosort.

    Raises ValueError for a bad ``root`` or ``name``, UserError for ``ENSURE_DETERM`` without
    ``ENABLE_STABLEMODE`` (Kilosort's ``mexMPnu8.cu`` only honours the first inside the second).
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
        """The ``#include``d helpers with their make variable,
        ``("$(SRC_DIR)/mexNvidia_quicksort.cu",)``."""
        folder = os.path.dirname(self.source)
        return tuple(f"$({self.root})/{os.path.join(folder, inc)}" for inc in self.includes)


@dataclass(frozen=True)
class MexSpec:
    """The mex files of one Kilosort version, in ``mexGPUall.m`` order.

    ``kilosort_version`` is the tag without ``v`` (``3.0.2``). Serialises with
    :meth:`to_dict` / :meth:`from_dict` (the spec files, the build stage's plan, test specs).
    Raises ValueError for duplicate names or an empty list.
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
        """The source called ``name``; raises KeyError if the spec has none."""
        for item in self.sources:
            if item.name == name:
                return item
        raise KeyError(name)

    def to_dict(self) -> dict:
        """``{"kilosort_version": ..., "sources": [{field: value, ...}, ...]}`` (JSON-ready)."""
        return {
            "kilosort_version": self.kilosort_version,
            "sources": [asdict(s) for s in self.sources],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> MexSpec:
        """Inverse of :meth:`to_dict`; missing source fields take their defaults, other
        top-level keys are ignored. Raises KeyError/TypeError for a malformed mapping."""
        sources = []
        for item in data["sources"]:
            item = dict(item)
            for key in ("defines", "includes"):
                item[key] = tuple(item.get(key, ()))
            sources.append(MexSource(**item))
        return cls(str(data["kilosort_version"]), tuple(sources))


#: MATLAB's own GPU mex example, built as a toolchain diagnostic (plain ``mexcuda`` call).
#: Source: MathWorks, "Run MEX-Functions Containing CUDA Code" (the mexGPUExample.cu file
#: shipped under ``toolbox/parallel/gpu/extern/src/mex``).
MATLAB_GPU_EXAMPLE = MexSource(
    name="mexGPUExample",
    source="toolbox/parallel/gpu/extern/src/mex/mexGPUExample.cu",
    root="MATLAB_ROOT",
    large_array_dims=False,
    diagnostic=True,
)


def kilosort_versions() -> tuple[str, ...]:
    """Kilosort versions :func:`get_spec` knows, newest first."""
    return KILOSORT_VERSIONS


def _load_spec(version: str) -> MexSpec:
    name = f"specs/kilosort-{version}.json"
    data = pkgutil.get_data(__package__ or "kilosort_docker.mex", name)
    if data is None:
        raise FileNotFoundError(f"kilosort_docker.mex cannot read its data file {name}")
    spec = MexSpec.from_dict(json.loads(data.decode("utf-8")))
    if spec.kilosort_version != version:
        raise ValueError(f"{name} holds Kilosort {spec.kilosort_version}, not {version}")
    return spec


def get_spec(
    version: str = "3.0.2", *, ensure_determ: bool = False, diagnostic: bool = True
) -> MexSpec:
    """The mex spec of a Kilosort version (``3.0.2``, ``v3.0.2``, ``2.5``...).

    ``ensure_determ`` adds ``-DENSURE_DETERM`` to the stable-mode mex (``mexMPnu8``:
    deterministic, ~2x slower subtraction; Kilosort issue 660). ``diagnostic`` appends
    MATLAB's ``mexGPUExample``. Raises UserError for an unknown version, naming the known
    ones.
    """
    key = version.strip().lstrip("v")
    if key not in KILOSORT_VERSIONS:
        raise UserError(
            f"no mex spec for Kilosort {version!r}: choose one of {', '.join(KILOSORT_VERSIONS)}"
        )
    spec = _load_spec(key)
    if ensure_determ:
        spec = replace(
            spec,
            sources=tuple(
                replace(s, defines=(*s.defines, "ENSURE_DETERM"))
                if "ENABLE_STABLEMODE" in s.defines
                else s
                for s in spec.sources
            ),
        )
    if diagnostic:
        spec = replace(spec, sources=spec.sources + (MATLAB_GPU_EXAMPLE,))
    return spec

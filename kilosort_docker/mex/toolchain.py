"""The toolchain a mex build uses (MATLAB, CUDA, host compiler, gencode) and the build plan.

:class:`MexPlan` is what the host hands to the build stage as ``plan.json``: the toolchain,
the mex spec and the Kilosort source folder. Host code makes the toolchain from an image
profile (``kilosort_docker.images.profiles.Profile``) with :func:`toolchain_from_profile`;
the stage needs nothing but this package.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace

from kilosort_docker.mex.gencode import (
    Gencode,
    as_gencode,
    validate_gencode,
    validate_host_compiler,
)
from kilosort_docker.mex.sources import MexSpec


@dataclass(frozen=True)
class Toolchain:
    """What the commands need from a profile.

    Attributes:
        profile: profile name recorded in the manifest (``r2022b``).
        matlab_root: MATLAB's install folder (``/opt/matlab/R2022b``).
        cuda_root: CUDA toolkit folder (``/usr/local/cuda-11.2``).
        cuda_version: toolkit version, MAJOR.MINOR; the gencode list is checked against it.
        host_compiler: C++ compiler for ``nvcc -ccbin`` and for the link (``g++-10``).
        gencode: nvcc targets, in order; anything :func:`as_gencode` accepts, stored as
            :class:`Gencode`.
        gpu_mex_library: MATLAB's GPU mex library (``mwgpu``, ``gpumexbinder`` from R2024a).
    """

    profile: str
    matlab_root: str
    cuda_root: str
    cuda_version: str
    host_compiler: str
    gencode: tuple[Gencode, ...]
    gpu_mex_library: str = "mwgpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "gencode", tuple(as_gencode(g) for g in self.gencode))

    def validated(self) -> Toolchain:
        """Self with a checked, de-duplicated gencode list and a checked host compiler; raises
        UserError (see :func:`validate_gencode` and :func:`validate_host_compiler`)."""
        validate_host_compiler(self.cuda_version, self.host_compiler)
        return replace(self, gencode=validate_gencode(self.cuda_version, self.gencode))

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict; gencode as ``["compute_80,sm_80", ...]``."""
        data = asdict(self)
        data["gencode"] = [str(t) for t in self.gencode]
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> Toolchain:
        """Inverse of :meth:`to_dict`; raises UserError for a bad gencode string."""
        data = dict(data)
        data["gencode"] = tuple(Gencode.parse(t) for t in data["gencode"])
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

    The profile needs ``name``, ``matlab_root``, ``cuda_root``, ``cuda``, ``host_compiler``
    and ``gencode`` (``gpu_mex_library`` is optional). ``extra_gencode`` holds ``--gencode``
    values (strings like ``compute_90,compute_90`` or Gencode objects), appended after the
    profile's. Raises UserError where the profile's CUDA version cannot emit a target or does
    not accept the host compiler.
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
class MexPlan:
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
    ) -> MexPlan:
        """A copy with other MATLAB / CUDA / source folders (make variable overrides);
        None keeps the current value."""
        chain = replace(
            self.toolchain,
            matlab_root=matlab_root or self.toolchain.matlab_root,
            cuda_root=cuda_root or self.toolchain.cuda_root,
        )
        return replace(self, toolchain=chain, src_dir=src_dir or self.src_dir)

    def to_json(self) -> str:
        """The plan as indented JSON (``plan.json`` in the build stage)."""
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
    def from_json(cls, text: str) -> MexPlan:
        """Inverse of :meth:`to_json`; raises ValueError (json) or KeyError for bad input."""
        data = json.loads(text)
        return cls(
            Toolchain.from_dict(data["toolchain"]),
            MexSpec.from_dict(data["spec"]),
            data["src_dir"],
            data.get("kilosort_commit", "unknown"),
        )

    def variables(self, *, out_dir: str = "mex-out", obj_dir: str = "obj") -> dict[str, str]:
        """Make variable values: the defaults written into the Makefile (see
        :data:`kilosort_docker.mex.commands.MAKE_VARIABLES`)."""
        return {
            "MATLAB_ROOT": self.toolchain.matlab_root,
            "CUDA_ROOT": self.toolchain.cuda_root,
            "SRC_DIR": self.src_dir,
            "OUT_DIR": out_dir,
            "OBJ_DIR": obj_dir,
            "NVCC": "$(CUDA_ROOT)/bin/nvcc",
            "HOST_CXX": self.toolchain.host_compiler,
        }

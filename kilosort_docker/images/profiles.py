"""Release profiles: which MATLAB release, base image, CUDA toolkit and compiler go together.

A profile pins everything that must agree for Kilosort3's CUDA mex files to build and load:
the MATLAB release and its ``mathworks/matlab`` base image, the Ubuntu version that image is
built on (mex files must be compiled on the same OS as the runtime, or they fail with
"GLIBCXX_3.4.NN not found"), the CUDA toolkit version that release's ``mexcuda`` expects, the
host compiler and the gencode list. The values are data, in ``profiles.toml`` beside this
module, whose comments name their sources (MathWorks' GPU computing requirements and
``mexcuda -v`` output, MathWorks' matlab-dockerfile repository, NVIDIA's CUDA archive).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import tomllib

from kilosort_docker.errors import UserError
from kilosort_docker.mex.gencode import Gencode

log = logging.getLogger(__name__)

DEFAULT_PROFILE = "r2022b"

#: Toolboxes Kilosort3 needs, as MPM product names.
TOOLBOXES: tuple[str, ...] = (
    "Parallel_Computing_Toolbox",
    "Signal_Processing_Toolbox",
    "Statistics_and_Machine_Learning_Toolbox",
)


def _gencodes(*sass: int, ptx: int) -> tuple[Gencode, ...]:
    targets = [Gencode(f"compute_{cc}", f"sm_{cc}") for cc in sass]
    targets.append(Gencode(f"compute_{ptx}", f"compute_{ptx}"))
    return tuple(targets)


@dataclass(frozen=True)
class Profile:
    """A MATLAB release and everything that must match it.

    Attributes:
        name: profile key, lower case (``r2022b``).
        matlab_release: MATLAB's own spelling (``R2022b``).
        base_image: the image the MATLAB layer starts from (``mathworks/matlab:r2022b``).
        ubuntu: Ubuntu version of that base image; the mex build stage uses the same OS.
        cuda: CUDA toolkit version (major.minor) this release's ``mexcuda`` expects.
        host_compiler: C++ compiler nvcc uses as host compiler and mex uses to link.
        gencode: nvcc targets mexcuda builds for; the last is PTX for GPUs newer than the SASS.
        gpu_mex_library: MATLAB's GPU mex library (``mwgpu``; ``gpumexbinder`` from R2024a).
        image_size_budget_gb: the most the final Kilosort3 image may weigh, in GB (1e9 bytes).
        mpm_url: where the MATLAB Package Manager binary is downloaded from.
        cuda_installer_url: NVIDIA's runfile installer for ``cuda`` (toolkit only is installed).
        cuda_installer_sha256: its pinned sha256 (every shipped profile pins one); None means
            compiling needs ``--cuda-toolkit DIR``.
        verified: False where a field is inferred rather than read off MathWorks' images.
        max_compute_capability: the newest GPU compute capability (``"X.Y"``) the release
            supports natively (MathWorks' "GPU Computing Requirements"); a newer GPU needs
            MATLAB's CUDA forward compatibility.
    """

    name: str
    matlab_release: str
    base_image: str
    ubuntu: str
    cuda: str
    host_compiler: str
    gencode: tuple[Gencode, ...]
    gpu_mex_library: str = "mwgpu"
    image_size_budget_gb: float = 16.0
    mpm_url: str = "https://www.mathworks.com/mpm/glnxa64/mpm"
    cuda_installer_url: str | None = None
    cuda_installer_sha256: str | None = None
    verified: bool = True
    toolboxes: tuple[str, ...] = field(default=TOOLBOXES)
    max_compute_capability: str | None = None

    @property
    def matlab_root(self) -> str:
        """MATLAB's install folder inside the image (``/opt/matlab/R2022b``)."""
        return f"/opt/matlab/{self.matlab_release}"

    @property
    def cuda_root(self) -> str:
        """Where the build stage installs the CUDA toolkit."""
        return f"/usr/local/cuda-{self.cuda}"

    def with_overrides(
        self, *, base_image: str | None = None, mpm_url: str | None = None
    ) -> Profile:
        """A copy with a mirrored or air-gapped base image and MPM address."""
        changes: dict[str, str] = {}
        if base_image:
            changes["base_image"] = base_image
        if mpm_url:
            changes["mpm_url"] = mpm_url
        return replace(self, **changes) if changes else self


#: The profiles' data: one table per profile (see its comments for the sources).
PROFILES_FILE = Path(__file__).with_name("profiles.toml")


def _load_profiles(text: str) -> dict[str, Profile]:
    """``{name: Profile}`` from the TOML text of :data:`PROFILES_FILE` (``sass`` and ``ptx``
    give the gencode list)."""
    profiles = {}
    for name, row in tomllib.loads(text).items():
        row = dict(row)
        gencode = _gencodes(*row.pop("sass"), ptx=row.pop("ptx"))
        profiles[name] = Profile(name=name, gencode=gencode, **row)
    return profiles


PROFILES: dict[str, Profile] = _load_profiles(PROFILES_FILE.read_text())


def get_profile(
    name: str = DEFAULT_PROFILE,
    *,
    cuda: str | None = None,
    allow_cuda_mismatch: bool = False,
) -> Profile:
    """Look up a profile by name (case-insensitive) and check a requested CUDA version.

    Raises UserError for an unknown profile (naming the known ones) or for a CUDA version
    other than the one the MATLAB release's mexcuda expects, unless ``allow_cuda_mismatch``.
    """
    key = name.strip().lower()
    if key not in PROFILES:
        known = ", ".join(sorted(PROFILES))
        raise UserError(
            f"unknown profile {name!r}: choose one of {known} (`invoke profiles` lists them)"
        )
    profile = PROFILES[key]
    if cuda is not None and not re.fullmatch(r"\d+\.\d+(\.\d+)?", cuda):
        raise UserError(
            f"--cuda {cuda!r} is not a CUDA version: write it as X.Y, e.g. --cuda {profile.cuda}"
        )
    if cuda is not None and cuda != profile.cuda:
        if not allow_cuda_mismatch:
            raise UserError(
                f"CUDA {cuda} does not match MATLAB {profile.matlab_release}, whose mexcuda "
                f"expects CUDA {profile.cuda}: use --cuda {profile.cuda} "
                "(or --allow-cuda-mismatch if you know the mex files will load)"
            )
        log.warning(
            "building %s with CUDA %s instead of %s, at your request",
            profile.matlab_release,
            cuda,
            profile.cuda,
        )
        profile = replace(profile, cuda=cuda)
    if not profile.verified:
        log.warning("profile %s holds inferred values; check them before release", key)
    return profile

"""Release profiles: which MATLAB release, base image, CUDA toolkit and compiler go together.

A profile pins everything that must agree for Kilosort3's CUDA mex files to build and load:
the MATLAB release and its ``mathworks/matlab`` base image, the Ubuntu version that image is
built on (mex files must be compiled on the same OS as the runtime, or they fail with
"GLIBCXX_3.4.NN not found"), the CUDA toolkit version that release's ``mexcuda`` expects, the
host compiler and the gencode list. Source: MathWorks' release notes and ``mexcuda -v`` output,
summarised in the project's FACTS.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

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
        cuda_installer_sha256: its pinned sha256; None until a maintainer has checked one, in
            which case compiling needs ``--cuda-toolkit DIR``.
        verified: False where a field is inferred rather than read off MathWorks' images.
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


_NVIDIA = "https://developer.download.nvidia.com/compute/cuda/"

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="r2021a",
            matlab_release="R2021a",
            base_image="mathworks/matlab:r2021a",
            ubuntu="20.04",
            cuda="11.0",
            host_compiler="g++-8",
            cuda_installer_url=_NVIDIA + "11.0.3/local_installers/cuda_11.0.3_450.51.06_linux.run",
            gencode=_gencodes(35, 50, 60, 70, 80, ptx=80),
        ),
        Profile(
            name="r2022b",
            matlab_release="R2022b",
            base_image="mathworks/matlab:r2022b",
            ubuntu="20.04",
            cuda="11.2",
            host_compiler="g++-10",
            cuda_installer_url=_NVIDIA + "11.2.2/local_installers/cuda_11.2.2_460.32.03_linux.run",
            gencode=_gencodes(35, 50, 60, 70, 80, ptx=80),
        ),
        Profile(
            name="r2024a",
            matlab_release="R2024a",
            base_image="mathworks/matlab:r2024a",
            ubuntu="22.04",
            cuda="12.2",
            host_compiler="g++-11",
            cuda_installer_url=_NVIDIA + "12.2.2/local_installers/cuda_12.2.2_535.104.05_linux.run",
            gencode=_gencodes(50, 60, 70, 80, 90, ptx=90),
            gpu_mex_library="gpumexbinder",
            verified=False,
        ),
    )
}


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

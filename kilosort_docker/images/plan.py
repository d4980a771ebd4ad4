"""The build plan: which images, in which order, with which build args, tags and labels.

``make_plan`` derives everything from the stack table, a profile and the pins; the plan is
what ``invoke build --dry-run`` prints and what ``build.execute`` carries out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kilosort_docker.images import stack, tags
from kilosort_docker.images.pins import Pins
from kilosort_docker.images.profiles import Profile
from kilosort_docker.images.stack import ImageSpec
from kilosort_docker.paths import KILOSORT_DIR, MEX_BINARIES_DIR, NPY_MATLAB_DIR, ROOT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    """What a build may change beyond the profile and the pins.

    Attributes:
        python_base_image: base of the ``kilosort4`` image (default from the pins).
        kilosort_repository / npy_matlab_repository: a mirror or local path to fetch from.
        wheelhouse: a folder of wheels pip may install from (air-gapped sites, CPU torch).
        mex_binaries: where committed mex binaries live (``mex-binaries/``).
        ca_bundle: a PEM bundle of CA certificates pip trusts in the build (a TLS-inspecting
            proxy); public certificates only, never a private key.
        cuda_toolkit: an installed CUDA toolkit folder to compile the mex files with, instead of
            NVIDIA's installer (air-gapped sites; the tests use the machine's toolkit).
        host_compiler: host compiler for nvcc and the link, instead of the profile's.
        gencode: extra nvcc targets (``compute_90,sm_90``) appended to the profile's list.
        ensure_determ: compile mexMPnu8 with ENSURE_DETERM (deterministic, ~2x slower).
        mex_spec: a mex spec JSON instead of Kilosort's own list (tests compile their sources).
        compile_mex: compile even when committed binaries exist (``invoke build-mex``).
        no_cache: build without Docker's layer cache.
        namespace: repository namespace (default from the pins).
    """

    python_base_image: str | None = None
    kilosort_repository: str | None = None
    npy_matlab_repository: str | None = None
    wheelhouse: Path | None = None
    mex_binaries: Path = MEX_BINARIES_DIR
    ca_bundle: Path | None = None
    cuda_toolkit: Path | None = None
    host_compiler: str | None = None
    gencode: tuple[str, ...] = ()
    ensure_determ: bool = False
    mex_spec: Path | None = None
    compile_mex: bool = False
    no_cache: bool = False
    namespace: str | None = None


@dataclass(frozen=True)
class BuildStep:
    """One image to build: its spec, references, ``FROM`` image, build args and labels."""

    spec: ImageSpec
    repository: str
    tags: tuple[str, ...]
    base_image: str
    buildargs: Mapping[str, str]
    labels: Mapping[str, str]
    context_extras: tuple[str, ...] = field(default=())

    @property
    def refs(self) -> list[str]:
        """Full references, immutable tag first."""
        return [f"{self.repository}:{tag}" for tag in self.tags]


@dataclass(frozen=True)
class BuildPlan:
    """The ordered build steps for one profile."""

    profile: Profile
    pins: Pins
    options: BuildOptions
    steps: tuple[BuildStep, ...]

    def step(self, name: str) -> BuildStep:
        for step in self.steps:
            if step.spec.name == name:
                return step
        raise KeyError(name)


def mex_binaries_folder(options: BuildOptions, profile: Profile, pins: Pins) -> Path:
    """``mex-binaries/<profile>/<kilosort commit>/``: where ``invoke build-mex`` keeps them."""
    return options.mex_binaries / profile.name / pins.kilosort3.commit


def _buildargs(
    spec: ImageSpec,
    profile: Profile,
    pins: Pins,
    base: str,
    options: BuildOptions,
    refs: dict[str, str],
) -> tuple[dict[str, str], tuple[str, ...]]:
    args = {"BASE_IMAGE": base}
    extras: list[str] = []
    if spec.name == "matlab-toolboxes":
        args |= {
            "MATLAB_RELEASE": profile.matlab_release,
            "MATLAB_ROOT": profile.matlab_root,
            "MATLAB_PRODUCTS": " ".join(profile.toolboxes),
            "MPM_URL": profile.mpm_url,
        }
    elif spec.name == "kilosort3-code":
        args |= {
            "KILOSORT_VERSION": pins.kilosort3.version,
            "KILOSORT_COMMIT": pins.kilosort3.commit,
            "NPY_MATLAB_COMMIT": pins.npy_matlab.commit,
            "KILOSORT_DIR": KILOSORT_DIR,
            "NPY_MATLAB_DIR": NPY_MATLAB_DIR,
        }
        ks_repo = options.kilosort_repository or pins.kilosort3.repository
        npy_repo = options.npy_matlab_repository or pins.npy_matlab.repository
        extras += [
            f"Kilosort {pins.kilosort3.tag or pins.kilosort3.version} from {ks_repo} at "
            f"{pins.kilosort3.commit}",
            f"npy-matlab from {npy_repo} at {pins.npy_matlab.commit}",
            "matlab/ (start-up adds Kilosort and npy-matlab to the path)",
        ]
    elif spec.name == "kilosort3":
        args |= {
            "TOOLKIT_BASE_IMAGE": refs["matlab-toolboxes"],
            "KILOSORT_DIR": KILOSORT_DIR,
            "CUDA_ROOT": profile.cuda_root,
            "HOST_COMPILER": options.host_compiler or profile.host_compiler,
            "CUDA_INSTALLER_URL": profile.cuda_installer_url or "",
            "CUDA_INSTALLER_SHA256": profile.cuda_installer_sha256 or "",
        }
        folder = mex_binaries_folder(options, profile, pins)
        shown = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
        if folder.is_dir() and not options.compile_mex:
            extras.append(f"mex files from {shown} (checked against its manifest)")
        elif options.cuda_toolkit or profile.cuda_installer_sha256:
            source = options.cuda_toolkit or f"NVIDIA's installer {profile.cuda_installer_url}"
            extras.append(
                f"mex files compiled in the mex-build stage with CUDA {profile.cuda} from {source}"
            )
        else:
            extras.append(
                f"WARNING: no committed mex binaries in {shown} and no pinned sha256 for NVIDIA's "
                f"CUDA {profile.cuda} installer: this image cannot be built; pass --cuda-toolkit "
                "DIR or commit binaries with `invoke build-mex`"
            )
        if options.gencode or options.ensure_determ:
            extras.append(
                "compile options: "
                + ", ".join(
                    [*(f"--gencode {g}" for g in options.gencode)]
                    + (["ENSURE_DETERM"] if options.ensure_determ else [])
                )
            )
    elif spec.name == "kilosort4":
        args |= {
            "KILOSORT4_VERSION": pins.kilosort4_version,
            "TORCH_VERSION": pins.torch_version,
        }
        if options.wheelhouse:
            extras.append(f"wheels from {options.wheelhouse}")
        if options.ca_bundle:
            extras.append(f"CA bundle {options.ca_bundle} for pip")
    return args, tuple(extras)


def make_plan(
    profile: Profile,
    pins: Pins,
    *,
    images: list[str] | None = None,
    options: BuildOptions | None = None,
    revision: str | None = None,
    created: str | None = None,
) -> BuildPlan:
    """The build plan for ``images`` (all if None) and their parents.

    Raises UserError for an unknown image name.
    """
    options = options or BuildOptions()
    namespace = options.namespace or pins.namespace
    revision = revision or tags.git_revision()
    created = created or tags.created_timestamp()
    steps: list[BuildStep] = []
    refs: dict[str, str] = {}
    for spec in stack.build_order(images):
        if spec.parent is not None:
            base = refs[spec.parent]
        elif spec.external_base == "matlab":
            base = profile.base_image
        else:
            base = options.python_base_image or pins.python_base_image
        repo = tags.repository(spec, namespace)
        image_tags = tuple(tags.tags(spec, profile, pins))
        buildargs, extras = _buildargs(spec, profile, pins, base, options, refs)
        step = BuildStep(
            spec=spec,
            repository=repo,
            tags=image_tags,
            base_image=base,
            buildargs=buildargs,
            labels=tags.labels(
                spec, profile, pins, base_name=base, revision=revision, created=created
            ),
            context_extras=extras,
        )
        refs[spec.name] = step.refs[0]
        steps.append(step)
    return BuildPlan(profile=profile, pins=pins, options=options, steps=tuple(steps))


def describe(plan: BuildPlan) -> str:
    """The plan as plain text: images in order, base, build args, context extras and tags."""
    lines = [
        f"Build plan: profile {plan.profile.name} (MATLAB {plan.profile.matlab_release}, "
        f"CUDA {plan.profile.cuda}, {plan.profile.host_compiler}), release {plan.pins.release}",
    ]
    for number, step in enumerate(plan.steps, 1):
        lines.append(f"{number}. {step.spec.name}  (docker/{step.spec.name}/Dockerfile)")
        lines.append(f"   FROM {step.base_image}")
        for key, value in step.buildargs.items():
            lines.append(f"   --build-arg {key}={value}")
        for extra in step.context_extras:
            lines.append(f"   + {extra}")
        for ref in step.refs:
            lines.append(f"   tag {ref}")
    return "\n".join(lines)

"""The build plan: which images, in which order, with which build args, tags and labels.

``make_plan`` derives everything from the stack table, a profile and the pins; the plan is
what ``invoke build --dry-run`` prints and what ``build.execute`` carries out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kilosort_docker.images import references, tags
from kilosort_docker.images.options import BuildOptions
from kilosort_docker.images.pins import Pins, load_pins, with_commits
from kilosort_docker.images.profiles import Profile, get_profile
from kilosort_docker.images.spec import ImageSpec, PlanContext, Stack
from kilosort_docker.images.stack import STACK

__all__ = ["BuildOptions", "BuildPlan", "BuildStep", "describe", "make_plan", "plan_for"]

log = logging.getLogger(__name__)


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
    """The ordered build steps for one profile.

    ``source_date_epoch`` (seconds since 1970) is the time the images are dated with (their
    ``created`` label, :func:`tags.source_date_epoch`); the build gives every file of a staged
    context that time, so the layers a ``COPY`` makes do not depend on when the context was
    staged. None where the caller gave ``created`` itself: file times are left alone.
    """

    profile: Profile
    pins: Pins
    options: BuildOptions
    steps: tuple[BuildStep, ...]
    source_date_epoch: int | None = None

    @property
    def mex_binaries_folder(self) -> Path:
        """``mex-binaries/<profile>/<kilosort commit>/``: where ``invoke build-mex`` keeps the
        mex files of this plan's profile and Kilosort commit."""
        return PlanContext(self.profile, self.pins, self.options).mex_binaries_folder

    def step(self, name: str) -> BuildStep:
        for step in self.steps:
            if step.spec.name == name:
                return step
        raise KeyError(name)


def plan_for(options: BuildOptions, *, pins: Pins | None = None) -> BuildPlan:
    """The build plan for ``options``: its profile (checked against ``options.cuda``, with the
    base image and MPM overrides) and the pins from ``kilosort-docker.toml`` and ``VERSION``
    (with any commit overrides). Raises UserError for bad input."""
    profile = get_profile(
        options.profile, cuda=options.cuda, allow_cuda_mismatch=options.allow_cuda_mismatch
    ).with_overrides(base_image=options.base_image, mpm_url=options.mpm_url)
    pins = with_commits(
        pins or load_pins(),
        kilosort_commit=options.kilosort_commit,
        npy_matlab_commit=options.npy_matlab_commit,
    )
    return make_plan(profile, pins, options=options)


def make_plan(
    profile: Profile,
    pins: Pins,
    *,
    images: list[str] | None = None,
    options: BuildOptions | None = None,
    stack: Stack = STACK,
    revision: str | None = None,
    created: str | None = None,
) -> BuildPlan:
    """The build plan for ``images`` (all if None; else ``options.images``) and their parents,
    from the entries of ``stack``.

    ``created`` (RFC 3339) defaults to :func:`tags.created_timestamp`: ``SOURCE_DATE_EPOCH``
    or this repository's last commit time, never the current time, so planning twice with
    nothing changed gives the same labels (and the build the same image IDs).

    Raises UserError for an unknown image name, for a reference (tag or base image) that
    Docker's grammar refuses, and when no stable ``created`` time can be found (see
    :func:`tags.source_date_epoch`), before any work.
    """
    options = options or BuildOptions()
    images = images if images is not None else (list(options.images) or None)
    namespace = options.namespace or pins.namespace
    revision = revision or tags.git_revision()
    epoch = None
    if created is None:
        epoch = tags.source_date_epoch()
        created = tags.rfc3339(epoch)
    steps: list[BuildStep] = []
    refs: dict[str, str] = {}
    for spec in stack.build_order(images):
        ctx = PlanContext(profile, pins, options, dict(refs))
        base = refs[spec.parent] if spec.parent is not None else spec.base.ref(ctx)
        step = BuildStep(
            spec=spec,
            repository=tags.repository(spec, namespace),
            tags=tuple(tags.tags(spec, profile, pins)),
            base_image=base,
            buildargs={"BASE_IMAGE": base, **spec.buildargs(ctx)},
            labels=tags.labels(
                spec, profile, pins, base_name=base, revision=revision, created=created
            ),
            context_extras=tuple(spec.describe(ctx)),
        )
        _check_step(step, spec.parent is None)
        refs[spec.name] = step.refs[0]
        steps.append(step)
    return BuildPlan(
        profile=profile,
        pins=pins,
        options=options,
        steps=tuple(steps),
        source_date_epoch=epoch,
    )


def _check_step(step: BuildStep, root: bool) -> None:
    """Raise UserError unless Docker's reference grammar accepts every reference of ``step``:
    its tags (made from the namespace, the pins' versions and the profile) and, for a root, its
    base image (the profile's or ``--base-image``/``--python-base``)."""
    if root:
        flag = step.spec.base.flag if step.spec.base else "--base-image"
        references.check_reference(
            step.base_image,
            what=f"the base image of {step.spec.name}",
            fix=f"give {flag} as [registry/]name[:tag], lowercase, or fix the profile",
        )
    for ref in step.refs:
        references.check_reference(
            ref,
            what=f"the planned tag of {step.spec.name}",
            fix="fix --namespace, or the version or profile name the tag is made of "
            "(kilosort-docker.toml, profiles.toml)",
        )


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

"""What an entry of the image stack is: an image, its parent, and everything that makes it
different from the others, carried as data.

Each image of the stack is one module in :mod:`kilosort_docker.images.entries` that defines an
:class:`ImageSpec`, plus its ``docker/<name>/`` folder. The plan, the build and the checks only
read these fields; none of them asks which image it is looking at. :class:`Stack` orders the
entries, in the manner of jupyter/docker-stacks' table of images and parents.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from kilosort_docker.errors import UserError
from kilosort_docker.images.options import BuildOptions
from kilosort_docker.images.pins import Pins, commit_folder
from kilosort_docker.images.profiles import Profile
from kilosort_docker.paths import DOCKER_DIR

if TYPE_CHECKING:
    from kilosort_docker.images.plan import BuildPlan
    from kilosort_docker.images.probes import ImageUnderTest


@dataclass(frozen=True)
class PlanContext:
    """What an entry sees while the plan is made: the profile, the pins, the options, and the
    immutable reference of every image planned before it (``refs["matlab-toolboxes"]``)."""

    profile: Profile
    pins: Pins
    options: BuildOptions = field(default_factory=BuildOptions)
    refs: Mapping[str, str] = field(default_factory=dict)

    @property
    def mex_binaries_folder(self) -> Path:
        """``mex-binaries/<profile>/<kilosort commit>/``: where ``invoke build-mex`` keeps them
        (an existing folder named by a shorter or longer sha of the commit is that folder)."""
        return commit_folder(
            self.options.mex_binaries / self.profile.name, self.pins.kilosort3.commit
        )


@dataclass(frozen=True)
class ExternalBase:
    """A root image's base from outside the stack.

    Attributes:
        label: how ``invoke stack`` shows it (``mathworks/matlab:<release>``).
        ref: the reference to build ``FROM`` for a plan.
        flag: the option that overrides it, named when the base cannot be found.
    """

    label: str
    ref: Callable[[PlanContext], str]
    flag: str


@dataclass(frozen=True)
class ImageCheck:
    """A check that runs inside a built image (and inside the images built from it).

    ``run`` returns ``(ok, detail)``: ``detail`` is one line saying what was found either way.
    """

    name: str
    description: str
    run: Callable[[ImageUnderTest], tuple[bool, str]]


def _no_buildargs(ctx: PlanContext) -> dict[str, str]:
    return {}


def _no_lines(ctx: PlanContext) -> list[str]:
    return []


def _nothing_to_stage(plan: BuildPlan, context: Path) -> dict[str, str]:
    return {}


def _profile_tag(ctx: PlanContext) -> str:
    return ctx.profile.name


def _no_labels(ctx: PlanContext) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class ImageSpec:
    """One image of the stack.

    Attributes:
        name: repository name under the namespace, and the folder ``docker/<name>/``.
        title: one line for ``org.opencontainers.image.title``/``description``.
        parent: the stack image this one is built ``FROM``, or None for a root.
        base: for a root, the external image it starts from.
        per_profile: True if the image depends on the MATLAB release (tags and labels carry it).
        needs_license: True if running it needs a MATLAB license (building never does).
        buildargs: the image's own build args (``BASE_IMAGE`` is added for every image).
        describe: extra lines for the dry run (what the context will hold, warnings).
        stage: fills the build context (a copy of ``docker/<name>/``) with what the image
            needs; returns build args to add or replace (the full commit fetched). Raises
            UserError when something is missing.
        version: the moving tag (``3.0.2-r2022b``); the immutable tag appends ``-b<build>``.
        labels: the image's own ``io.kilosort-docker.*`` labels.
        checks: checks defined on this image; they also run on its children.
        size_budget_gb: the most the image may weigh in GB (1e9 bytes), from its profile;
            None: no budget is checked.
    """

    name: str
    title: str
    parent: str | None = None
    base: ExternalBase | None = None
    per_profile: bool = True
    needs_license: bool = True
    buildargs: Callable[[PlanContext], Mapping[str, str]] = _no_buildargs
    describe: Callable[[PlanContext], Sequence[str]] = _no_lines
    stage: Callable[[BuildPlan, Path], Mapping[str, str]] = _nothing_to_stage
    version: Callable[[PlanContext], str] = _profile_tag
    labels: Callable[[PlanContext], Mapping[str, str]] = _no_labels
    checks: tuple[ImageCheck, ...] = ()
    size_budget_gb: Callable[[Profile | None], float] | None = None

    def __post_init__(self) -> None:
        if (self.parent is None) == (self.base is None):
            raise ValueError(f"image {self.name}: give exactly one of parent and base")

    @classmethod
    def from_module(cls, module: ModuleType) -> ImageSpec:
        """The entry an image's module describes (:mod:`kilosort_docker.images.entries`).

        Its constants ``NAME``, ``TITLE``, then ``PARENT`` or ``BASE`` (and optionally
        ``PER_PROFILE``, ``NEEDS_LICENSE``, ``CHECKS``), and its functions named after the
        fields (``buildargs``, ``describe``, ``stage``, ``version``, ``labels``,
        ``size_budget_gb``); what it does not define keeps the default.
        """
        constants = {
            "name": "NAME",
            "title": "TITLE",
            "parent": "PARENT",
            "base": "BASE",
            "per_profile": "PER_PROFILE",
            "needs_license": "NEEDS_LICENSE",
            "checks": "CHECKS",
        }
        functions = ("buildargs", "describe", "stage", "version", "labels", "size_budget_gb")
        values = {k: getattr(module, c) for k, c in constants.items() if hasattr(module, c)}
        values |= {key: getattr(module, key) for key in functions if hasattr(module, key)}
        return cls(**values)

    @property
    def external_base(self) -> str | None:
        """How a root's base is shown (``mathworks/matlab:<release>``); None for a child."""
        return self.base.label if self.base else None

    @property
    def dockerfile_dir(self) -> Path:
        return DOCKER_DIR / self.name


@dataclass(frozen=True)
class Stack:
    """The images, parents before children. Raises ValueError for a duplicate name or a parent
    that is not listed before its child."""

    images: tuple[ImageSpec, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for spec in self.images:
            if spec.name in seen:
                raise ValueError(f"image {spec.name} is listed twice")
            if spec.parent is not None and spec.parent not in seen:
                raise ValueError(f"image {spec.name}: parent {spec.parent} must come before it")
            seen.add(spec.name)

    def __iter__(self):
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def with_image(self, spec: ImageSpec) -> Stack:
        """A stack with ``spec`` appended (its parent must already be in the stack)."""
        return Stack((*self.images, spec))

    def get(self, name: str) -> ImageSpec:
        """The entry called ``name``; raises UserError naming the known images."""
        for spec in self.images:
            if spec.name == name:
                return spec
        known = ", ".join(spec.name for spec in self.images)
        raise UserError(
            f"unknown image {name!r}: choose one of {known} (`invoke stack` lists them)"
        )

    def ancestry(self, name: str) -> list[ImageSpec]:
        """The image and its parents, root first."""
        chain = [self.get(name)]
        while chain[0].parent is not None:
            chain.insert(0, self.get(chain[0].parent))
        return chain

    def build_order(self, names: Sequence[str] | None = None) -> list[ImageSpec]:
        """The images to build for ``names`` (all if None or empty), parents before children;
        each image appears once."""
        wanted: set[str] = set()
        for name in names or [spec.name for spec in self.images]:
            wanted.update(spec.name for spec in self.ancestry(name))
        return [spec for spec in self.images if spec.name in wanted]

    def children(self, name: str) -> list[ImageSpec]:
        """Images built, directly or not, from ``name``."""
        return [
            spec
            for spec in self.images
            if spec.name != name and name in {a.name for a in self.ancestry(spec.name)}
        ]

    def checks_for(self, name: str) -> list[ImageCheck]:
        """The checks that run on image ``name``: its parents' first, then its own."""
        return [check for spec in self.ancestry(name) for check in spec.checks]

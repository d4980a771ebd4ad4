"""The image stack: one table of images and their parents.

Build order, build arguments, tags, labels and the image checks all derive from ``STACK``,
in the manner of jupyter/docker-stacks. An image's ``parent`` is another image of the stack
or, for a root, an external base (``"matlab"``: the profile's ``mathworks/matlab`` image;
``"python"``: a Python base image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kilosort_docker.errors import UserError
from kilosort_docker.paths import DOCKER_DIR

ExternalBase = Literal["matlab", "python"]


@dataclass(frozen=True)
class ImageSpec:
    """One image of the stack.

    Attributes:
        name: repository name under the namespace, and the folder ``docker/<name>/``.
        title: one line for ``org.opencontainers.image.title``/``description``.
        parent: the stack image this one is built ``FROM``, or None for a root.
        external_base: for a root, which external base it starts from.
        kilosort: which Kilosort line the image carries (``None`` for the MATLAB layer).
        per_profile: True if the image depends on the MATLAB release (tags carry it).
        needs_license: True if running it needs a MATLAB license (building never does).
    """

    name: str
    title: str
    parent: str | None = None
    external_base: ExternalBase | None = None
    kilosort: Literal["kilosort3", "kilosort4"] | None = None
    per_profile: bool = True
    needs_license: bool = True

    @property
    def dockerfile_dir(self) -> Path:
        return DOCKER_DIR / self.name


STACK: tuple[ImageSpec, ...] = (
    ImageSpec(
        name="matlab-toolboxes",
        title="MATLAB with the Parallel Computing, Signal Processing and Statistics toolboxes",
        external_base="matlab",
    ),
    ImageSpec(
        name="kilosort3-code",
        title="Kilosort3 and npy-matlab at pinned commits on MATLAB with its toolboxes",
        parent="matlab-toolboxes",
        kilosort="kilosort3",
    ),
    ImageSpec(
        name="kilosort3",
        title="Kilosort3 with its CUDA mex files, ready to sort on a GPU",
        parent="kilosort3-code",
        kilosort="kilosort3",
    ),
    ImageSpec(
        name="kilosort4",
        title="Kilosort 4 (Python, PyTorch) for GPU or CPU; no license needed",
        external_base="python",
        kilosort="kilosort4",
        per_profile=False,
        needs_license=False,
    ),
)

BY_NAME: dict[str, ImageSpec] = {spec.name: spec for spec in STACK}


def get_image(name: str) -> ImageSpec:
    """The stack entry called ``name``; raises UserError naming the known images."""
    try:
        return BY_NAME[name]
    except KeyError:
        known = ", ".join(BY_NAME)
        raise UserError(
            f"unknown image {name!r}: choose one of {known} (`invoke stack` lists them)"
        ) from None


def ancestry(name: str) -> list[ImageSpec]:
    """The image and its parents, root first."""
    chain = [get_image(name)]
    while chain[0].parent is not None:
        chain.insert(0, BY_NAME[chain[0].parent])
    return chain


def build_order(names: list[str] | None = None) -> list[ImageSpec]:
    """The images to build for ``names`` (all if None), parents before children.

    Order follows ``STACK``, which lists parents first; each image appears once.
    """
    wanted: set[str] = set()
    for name in names or list(BY_NAME):
        wanted.update(spec.name for spec in ancestry(name))
    return [spec for spec in STACK if spec.name in wanted]


def children(name: str) -> list[ImageSpec]:
    """Images built, directly or not, from ``name``."""
    return [
        spec
        for spec in STACK
        if spec.name != name and name in {a.name for a in ancestry(spec.name)}
    ]

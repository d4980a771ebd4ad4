"""The image stack: one table of images and their parents.

Build order, build arguments, tags, labels and the image checks all derive from ``STACK``, in
the manner of jupyter/docker-stacks. Each entry is a module of
:mod:`kilosort_docker.images.entries` carrying what makes its image different; a root names its
external base (the profile's ``mathworks/matlab`` image, a Python image).
"""

from __future__ import annotations

from kilosort_docker.images.entries import kilosort3, kilosort3_code, kilosort4, matlab_toolboxes
from kilosort_docker.images.spec import ImageSpec, Stack

__all__ = ["STACK", "ImageSpec", "Stack", "ancestry", "build_order", "children", "get_image"]

STACK = Stack((matlab_toolboxes.IMAGE, kilosort3_code.IMAGE, kilosort3.IMAGE, kilosort4.IMAGE))


def get_image(name: str) -> ImageSpec:
    """The stack entry called ``name``; raises UserError naming the known images."""
    return STACK.get(name)


def ancestry(name: str) -> list[ImageSpec]:
    """The image and its parents, root first."""
    return STACK.ancestry(name)


def build_order(names: list[str] | None = None) -> list[ImageSpec]:
    """The images to build for ``names`` (all if None), parents before children."""
    return STACK.build_order(names)


def children(name: str) -> list[ImageSpec]:
    """Images built, directly or not, from ``name``."""
    return STACK.children(name)

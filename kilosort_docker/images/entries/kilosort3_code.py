"""``kilosort3-code``: Kilosort3 and npy-matlab at the pinned commits on the MATLAB layer.

The sources are fetched and checked against the pins on the build host
(:mod:`kilosort_docker.images.sources`), exported into the context without ``.git``, and
checked again by the Dockerfile, which records the commit as a file and a label. MATLAB's
start-up (``matlab/startup.m``) puts both on the path."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kilosort_docker import paths, secrets
from kilosort_docker.images import sources
from kilosort_docker.images.checks import ImageUnderTest
from kilosort_docker.images.spec import ImageCheck, ImageSpec, PlanContext
from kilosort_docker.images.tags import LABEL_PREFIX

if TYPE_CHECKING:
    from kilosort_docker.images.plan import BuildPlan

#: The MATLAB code copied into the image (tests point this at a copy).
MATLAB_DIR = paths.MATLAB_DIR


def buildargs(ctx: PlanContext) -> dict[str, str]:
    return {
        "KILOSORT_VERSION": ctx.pins.kilosort3.version,
        "KILOSORT_COMMIT": ctx.pins.kilosort3.commit,
        "NPY_MATLAB_COMMIT": ctx.pins.npy_matlab.commit,
        "KILOSORT_DIR": paths.KILOSORT_DIR,
        "NPY_MATLAB_DIR": paths.NPY_MATLAB_DIR,
    }


def describe(ctx: PlanContext) -> list[str]:
    pins, options = ctx.pins, ctx.options
    ks_repo = options.kilosort_repository or pins.kilosort3.repository
    npy_repo = options.npy_matlab_repository or pins.npy_matlab.repository
    return [
        f"Kilosort {pins.kilosort3.tag or pins.kilosort3.version} from {ks_repo} at "
        f"{pins.kilosort3.commit}",
        f"npy-matlab from {npy_repo} at {pins.npy_matlab.commit}",
        "matlab/ (start-up adds Kilosort and npy-matlab to the path)",
    ]


def stage(plan: BuildPlan, context: Path) -> dict[str, str]:
    """Export both sources at their checked commits into ``src/`` and copy ``matlab/``;
    the build args then carry the full 40-hex commits."""
    options, pins = plan.options, plan.pins
    args = {}
    for key, pin, repo, folder in (
        ("KILOSORT_COMMIT", pins.kilosort3, options.kilosort_repository, "kilosort"),
        ("NPY_MATLAB_COMMIT", pins.npy_matlab, options.npy_matlab_repository, "npy-matlab"),
    ):
        full = sources.export(pin, context / "src" / folder, repository=repo)
        (context / "src" / f"{folder}.commit").write_text(full + "\n")
        args[key] = full
    secrets.copy_without_secrets(MATLAB_DIR, context / "matlab")
    return args


def _kilosort_commit(target: ImageUnderTest) -> tuple[bool, str]:
    label = target.labels.get(f"{LABEL_PREFIX}.kilosort.commit", "")
    try:
        recorded = target.read_file(paths.KILOSORT_COMMIT_FILE).decode().strip()
    except FileNotFoundError:
        return False, f"{paths.KILOSORT_COMMIT_FILE} is missing"
    pin = target.pins.kilosort3.commit
    if not recorded:
        return False, f"{paths.KILOSORT_COMMIT_FILE} is empty"
    if not label:
        return False, f"no {LABEL_PREFIX}.kilosort.commit label to compare the checkout with"
    if recorded != label:
        return False, f"checked-out commit {recorded[:12]} differs from the label {label[:12]}"
    if not target.pins.kilosort3.matches(recorded):
        return False, f"checked-out commit {recorded[:12]} is not the pinned {pin}"
    return True, f"Kilosort at {recorded[:12]} = label = pin {pin}"


def version(ctx: PlanContext) -> str:
    """The moving tag of the Kilosort3 images: ``<kilosort version>-<profile>``."""
    return f"{ctx.pins.kilosort3.version}-{ctx.profile.name}"


def labels(ctx: PlanContext) -> dict[str, str]:
    """The Kilosort version label (the commit label is set by the Dockerfile from the commit
    actually checked out)."""
    return {f"{LABEL_PREFIX}.kilosort.version": ctx.pins.kilosort3.version}


NAME = "kilosort3-code"
TITLE = "Kilosort3 and npy-matlab at pinned commits on MATLAB with its toolboxes"
PARENT = "matlab-toolboxes"
CHECKS = (
    ImageCheck(
        "kilosort-commit",
        "the checked-out Kilosort commit equals the pin and the label",
        _kilosort_commit,
    ),
)
IMAGE = ImageSpec.from_module(sys.modules[__name__])

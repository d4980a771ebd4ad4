"""``kilosort4``: Kilosort 4 (Python, PyTorch) from PyPI on a Python base, for GPU or CPU.

It also carries SpikeInterface (core, no extras) at the pinned version, the one the host's
``groundtruth`` extra pins: SpikeInterface's container runner (``run_sorter(..., docker_image=
...)``, SpikeInterface 0.105 ``sorters/runsorter.py``) loads the recording and runs
``run_sorter_local`` inside the image, and would otherwise pip install SpikeInterface from
GitHub at run time (or fail with ``installation_mode="no-install"``).

No license is needed to build or run it. Wheels from ``--wheelhouse`` (e.g. a CPU-only torch)
and a CA bundle for pip (a TLS-inspecting proxy) are staged into the context when given.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kilosort_docker.errors import UserError
from kilosort_docker.images import checks
from kilosort_docker.images.checks import ImageUnderTest
from kilosort_docker.images.spec import ExternalBase, ImageCheck, ImageSpec, PlanContext
from kilosort_docker.images.tags import LABEL_PREFIX

if TYPE_CHECKING:
    from kilosort_docker.images.plan import BuildPlan

#: The most a kilosort4 image may weigh (CUDA builds of PyTorch are large), in GB.
SIZE_BUDGET_GB = 12.0


def buildargs(ctx: PlanContext) -> dict[str, str]:
    return {
        "KILOSORT4_VERSION": ctx.pins.kilosort4_version,
        "TORCH_VERSION": ctx.pins.torch_version,
        "SPIKEINTERFACE_VERSION": ctx.pins.spikeinterface_version,
    }


def describe(ctx: PlanContext) -> list[str]:
    lines = []
    if ctx.options.wheelhouse:
        lines.append(f"wheels from {ctx.options.wheelhouse}")
    if ctx.options.ca_bundle:
        lines.append(f"CA bundle {ctx.options.ca_bundle} for pip")
    return lines


def stage(plan: BuildPlan, context: Path) -> dict[str, str]:
    """Copy the wheelhouse's wheels into ``wheels/`` and the CA bundle into ``certs/`` (both
    folders exist, empty, when not given); raises UserError for a wheelhouse with no wheels."""
    wheels = context / "wheels"
    wheels.mkdir(exist_ok=True)
    if plan.options.wheelhouse:
        found = sorted(Path(plan.options.wheelhouse).glob("*.whl"))
        if not found:
            raise UserError(
                f"wheelhouse {plan.options.wheelhouse} holds no .whl files: "
                "point --wheelhouse at a folder of wheels"
            )
        for wheel in found:
            shutil.copy2(wheel, wheels / wheel.name)
    certs = context / "certs"
    certs.mkdir(exist_ok=True)
    if plan.options.ca_bundle:
        shutil.copy2(plan.options.ca_bundle, certs / "ca-bundle.pem")
    return {}


def _kilosort4_versions(target: ImageUnderTest) -> tuple[bool, str]:
    code, out = target.sh(
        'python -c "import sys, kilosort, torch; from importlib.metadata import version; '
        "print(sys.version_info[0], sys.version_info[1], version('kilosort'), "
        "torch.__version__.split('+')[0])\""
    )
    parts = out.split()
    if code != 0 or len(parts) < 4:
        return False, f"python cannot import kilosort and torch: {out.strip()[-200:]}"
    major, minor, ks, torch_version = parts[-4:]
    problems = []
    if (int(major), int(minor)) < (3, 10):
        problems.append(f"Python {major}.{minor} < 3.10")
    if ks != target.pins.kilosort4_version:
        problems.append(f"kilosort {ks} != pinned {target.pins.kilosort4_version}")
    if torch_version != target.pins.torch_version:
        problems.append(f"torch {torch_version} != pinned {target.pins.torch_version}")
    detail = f"Python {major}.{minor}, kilosort {ks}, torch {torch_version}"
    return (not problems, "; ".join(problems) if problems else detail)


def _spikeinterface_version(target: ImageUnderTest) -> tuple[bool, str]:
    # The two imports SpikeInterface's runner tries in the container before it decides to pip
    # install (SpikeInterface 0.105 sorters/runsorter.py, run_sorter_container), with the
    # network off as the checks run, and the kilosort4 wrapper it then calls.
    # And pandas, without which its reader of Kilosort's output (KiloSortSortingExtractor,
    # extractors/phykilosortextractors.py) fails in the container after the sort.
    code, out = target.sh(
        'python -c "import spikeinterface, pandas; from spikeinterface.sorters import '
        "run_sorter_local, Kilosort4Sorter; print('spikeinterface', spikeinterface.__version__, "
        'Kilosort4Sorter.is_installed())"'
    )
    parts = out.split()
    if code != 0 or len(parts) < 3 or parts[-3] != "spikeinterface":
        return False, (
            f"python cannot import spikeinterface's sorters and pandas: {out.strip()[-200:]}"
        )
    found, kilosort_found = parts[-2], parts[-1]
    pinned = target.pins.spikeinterface_version
    problems = []
    if found != pinned:
        problems.append(f"spikeinterface {found} != pinned {pinned}")
    if kilosort_found != "True":
        problems.append("spikeinterface's Kilosort4Sorter does not find kilosort and torch")
    detail = f"spikeinterface {found} and pandas; its Kilosort4Sorter finds kilosort and torch"
    return (not problems, "; ".join(problems) if problems else detail)


def version(ctx: PlanContext) -> str:
    """The moving tag: the pinned ``kilosort`` version."""
    return ctx.pins.kilosort4_version


def labels(ctx: PlanContext) -> dict[str, str]:
    """The Kilosort, PyTorch and SpikeInterface versions."""
    return {
        f"{LABEL_PREFIX}.kilosort.version": ctx.pins.kilosort4_version,
        f"{LABEL_PREFIX}.torch.version": ctx.pins.torch_version,
        f"{LABEL_PREFIX}.spikeinterface.version": ctx.pins.spikeinterface_version,
    }


def size_budget_gb(profile) -> float:
    """A PyTorch image's budget, whatever the profile (CUDA builds of PyTorch are large)."""
    return SIZE_BUDGET_GB


NAME = "kilosort4"
TITLE = "Kilosort 4 (Python, PyTorch) for GPU or CPU, SpikeInterface-ready; no license needed"
BASE = ExternalBase(
    label="python image (kilosort-docker.toml: python_base_image)",
    ref=lambda ctx: ctx.options.python_base_image or ctx.pins.python_base_image,
    flag="--python-base",
)
PER_PROFILE = False
NEEDS_LICENSE = False
CHECKS = (
    checks.NON_ROOT,
    ImageCheck(
        "kilosort4-versions",
        "Python >= 3.10 with kilosort and torch at the pinned versions",
        _kilosort4_versions,
    ),
    ImageCheck(
        "spikeinterface",
        "spikeinterface at the pinned version; its container runner's imports work",
        _spikeinterface_version,
    ),
    checks.NO_SECRETS,
)
IMAGE = ImageSpec.from_module(sys.modules[__name__])

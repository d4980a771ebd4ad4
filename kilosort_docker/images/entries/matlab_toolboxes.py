"""``matlab-toolboxes``: MathWorks' MATLAB image plus the toolboxes Kilosort3 needs, added with
MATLAB Package Manager (``mpm install --release=... --destination=... --products ...``, as
MathWorks documents for ``mathworks/matlab`` images). No license is needed to build it."""

from __future__ import annotations

import sys

from kilosort_docker.images import checks
from kilosort_docker.images.checks import ImageUnderTest
from kilosort_docker.images.spec import ExternalBase, ImageCheck, ImageSpec, PlanContext
from kilosort_docker.images.tags import LABEL_PREFIX

#: MPM product name -> its folder under ``<matlabroot>/toolbox``.
TOOLBOX_FOLDERS = {
    "Parallel_Computing_Toolbox": "parallel",
    "Signal_Processing_Toolbox": "signal",
    "Statistics_and_Machine_Learning_Toolbox": "stats",
}


def buildargs(ctx: PlanContext) -> dict[str, str]:
    profile = ctx.profile
    return {
        "MATLAB_RELEASE": profile.matlab_release,
        "MATLAB_ROOT": profile.matlab_root,
        "MATLAB_PRODUCTS": " ".join(profile.toolboxes),
        "MPM_URL": profile.mpm_url,
    }


def _toolboxes(target: ImageUnderTest) -> tuple[bool, str]:
    profile = target.profile
    if profile is None:
        return False, f"no {LABEL_PREFIX}.profile label: cannot tell the MATLAB root"
    wanted = [TOOLBOX_FOLDERS[t] for t in profile.toolboxes]
    script = "; ".join(f'[ -d "{profile.matlab_root}/toolbox/{f}" ] && echo "{f}"' for f in wanted)
    _, out = target.sh(script + "; true")
    missing = sorted(set(wanted) - set(out.split()))
    summary = f"{len(wanted) - len(missing)} of {len(wanted)} toolboxes in {profile.matlab_root}"
    if not wanted:  # nothing compared is no pass
        return False, f"profile {profile.name} names no toolboxes"
    if missing:
        return False, f"{summary}/toolbox; missing: {', '.join(missing)}"
    return True, f"{summary}/toolbox ({', '.join(wanted)})"


NAME = "matlab-toolboxes"
TITLE = (
    "MATLAB with the Parallel Computing, Signal Processing, and Statistics and Machine Learning "
    "toolboxes"
)
BASE = ExternalBase(
    label="mathworks/matlab:<release>",
    ref=lambda ctx: ctx.profile.base_image,
    flag="--base-image",
)
CHECKS = (
    checks.NON_ROOT,
    ImageCheck("toolboxes", "the three toolboxes are in the MATLAB root", _toolboxes),
    checks.NO_SECRETS,
)
IMAGE = ImageSpec.from_module(sys.modules[__name__])

"""Invoke tasks for kilosort-docker: a thin front end over the ``kilosort_docker`` package.

Run ``invoke --list`` for the tasks and ``invoke <task> --help`` for each one's flags.
"""

from __future__ import annotations

import functools

from invoke import Exit, task

from kilosort_docker import commands, ui
from kilosort_docker.errors import UserError
from kilosort_docker.images.pins import ROOT
from kilosort_docker.images.profiles import DEFAULT_PROFILE
from kilosort_docker.release import bump as bump_mod
from kilosort_docker.release import release as release_mod
from kilosort_docker.release import upstream as upstream_mod

BUILD_HELP = {
    "profile": f"release profile (default {DEFAULT_PROFILE}; `invoke profiles` lists them)",
    "image": "build only this image and its parents (repeatable; `invoke stack` lists them)",
    "dry_run": "print the plan (images, order, build args, tags) and build nothing",
    "no_cache": "build without Docker's layer cache",
    "cuda": "CUDA toolkit version; must match the profile unless --allow-cuda-mismatch",
    "allow_cuda_mismatch": "accept a CUDA version the MATLAB release does not expect (experts)",
    "base_image": "MATLAB base image instead of the profile's (a mirror or air-gapped registry)",
    "mpm_url": "where to download MPM from instead of MathWorks (a mirror)",
    "python_base": "base image for kilosort4 instead of the pinned Python image",
    "kilosort_repo": "fetch Kilosort from this URL or local path instead of GitHub",
    "kilosort_commit": "build this Kilosort commit instead of the pinned one (testing a fix)",
    "npy_matlab_repo": "fetch npy-matlab from this URL or local path instead of GitHub",
    "npy_matlab_commit": "build this npy-matlab commit instead of the pinned one",
    "wheelhouse": "folder of wheels pip may install from in the kilosort4 image",
    "ca_bundle": "PEM file of CA certificates pip should trust while building (TLS proxy)",
    "mex_binaries": "folder of committed mex binaries (default mex-binaries/)",
    "cuda_toolkit": "compile with this installed CUDA toolkit folder instead of NVIDIA's installer",
    "host_compiler": "host compiler for nvcc and the link instead of the profile's",
    "gencode": "add an nvcc target, e.g. compute_80,compute_80 (repeatable; checked against CUDA)",
    "ensure_determ": "compile mexMPnu8 with ENSURE_DETERM (deterministic, about 2x slower)",
    "namespace": "repository namespace (default from kilosort-docker.toml)",
    "verbose": "show debug logging",
}


def _user_errors(func):
    """Turn a UserError into invoke's Exit: one line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            raise Exit(f"error: {exc}", code=1) from None

    return wrapper


def _flags(**kwargs):
    verbose = kwargs.pop("verbose", False)
    ui.setup_logging(verbose)
    return kwargs


@task(iterable=["image", "gencode"], help=BUILD_HELP, auto_shortflags=False)
@_user_errors
def build(
    c,
    profile: str = DEFAULT_PROFILE,
    image=None,
    dry_run: bool = False,
    no_cache: bool = False,
    cuda: str | None = None,
    allow_cuda_mismatch: bool = False,
    base_image: str | None = None,
    mpm_url: str | None = None,
    python_base: str | None = None,
    kilosort_repo: str | None = None,
    kilosort_commit: str | None = None,
    npy_matlab_repo: str | None = None,
    npy_matlab_commit: str | None = None,
    wheelhouse: str | None = None,
    mex_binaries: str | None = None,
    ca_bundle: str | None = None,
    cuda_toolkit: str | None = None,
    host_compiler: str | None = None,
    gencode=None,
    ensure_determ: bool = False,
    namespace: str | None = None,
    verbose: bool = False,
):
    """Build the Kilosort image stack (or --image NAME and its parents) on the Docker engine."""
    flags = _flags(**{k: v for k, v in locals().items() if k != "c"})
    flags["images"] = flags.pop("image") or None
    flags["gencode"] = flags.pop("gencode") or None
    commands.build(**flags)


MEX_FLAGS = (
    "profile",
    "cuda",
    "allow_cuda_mismatch",
    "base_image",
    "mpm_url",
    "kilosort_repo",
    "kilosort_commit",
    "npy_matlab_repo",
    "npy_matlab_commit",
    "mex_binaries",
    "cuda_toolkit",
    "host_compiler",
    "gencode",
    "ensure_determ",
    "no_cache",
    "verbose",
)


@task(
    iterable=["gencode"],
    auto_shortflags=False,
    help={
        **{k: BUILD_HELP[k] for k in MEX_FLAGS},
        "dry_run": "print the nvcc and g++ commands mexcuda would run, and build nothing",
        "force": "replace binaries already in mex-binaries/<profile>/<commit>/",
    },
)
@_user_errors
def build_mex(
    c,
    profile: str = DEFAULT_PROFILE,
    dry_run: bool = False,
    force: bool = False,
    cuda: str | None = None,
    allow_cuda_mismatch: bool = False,
    base_image: str | None = None,
    mpm_url: str | None = None,
    kilosort_repo: str | None = None,
    kilosort_commit: str | None = None,
    npy_matlab_repo: str | None = None,
    npy_matlab_commit: str | None = None,
    mex_binaries: str | None = None,
    cuda_toolkit: str | None = None,
    host_compiler: str | None = None,
    gencode=None,
    ensure_determ: bool = False,
    no_cache: bool = False,
    verbose: bool = False,
):
    """Compile Kilosort's CUDA mex files (no MATLAB license) into mex-binaries/ (maintainers)."""
    flags = _flags(**{k: v for k, v in locals().items() if k != "c"})
    flags["gencode"] = flags.pop("gencode") or None
    commands.build_mex(**flags)


@task(
    auto_shortflags=False,
    help={
        "profile": BUILD_HELP["profile"],
        "folder": "check this folder instead of mex-binaries/<profile>/<pinned commit>/",
        "compute_capability": "say how each binary runs on a GPU of this compute capability, "
        "e.g. 9.0 (natively, through PTX JIT, or not at all)",
    },
)
@_user_errors
def verify_mex(
    c,
    profile: str = DEFAULT_PROFILE,
    folder: str | None = None,
    compute_capability: str | None = None,
):
    """Check mex binaries against their manifest, and whether they run on a given GPU."""
    ui.setup_logging()
    if not commands.verify_mex(
        folder=folder, profile=profile, compute_capability=compute_capability
    ):
        raise Exit("error: mex binaries fail verification (see above)", code=1)


@task(
    iterable=["image"],
    auto_shortflags=False,
    help={
        **{k: BUILD_HELP[k] for k in ("profile", "image", "namespace", "verbose")},
        "registry": "registry host[:port] to push to (default Docker Hub)",
        "dry_run": "print what would be pushed, and push nothing",
    },
)
@_user_errors
def push(
    c,
    registry: str | None = None,
    profile: str = DEFAULT_PROFILE,
    image=None,
    namespace: str | None = None,
    dry_run: bool = False,
    verbose: bool = False,
):
    """Push built images to Docker Hub or --registry; credentials from env or `docker login`."""
    flags = _flags(**{k: v for k, v in locals().items() if k != "c"})
    flags["images"] = flags.pop("image") or None
    commands.push(**flags)


@task
def stack(c):
    """List the images of the stack with their parents."""
    ui.console.print(ui.stack_table())


@task
def profiles(c):
    """List the release profiles: MATLAB release, base image, Ubuntu, CUDA, compiler."""
    ui.console.print(ui.profiles_table(DEFAULT_PROFILE))


@task(
    auto_shortflags=False,
    help={
        "profile": "remove only this profile's images (default: all of the project's images)",
        "dry_run": "list what would be removed, and remove nothing",
    },
)
@_user_errors
def clean(c, profile: str | None = None, dry_run: bool = False):
    """Remove the images this project built (found by their labels)."""
    ui.setup_logging()
    commands.clean(profile=profile, dry_run=dry_run)


UPSTREAM_HELP = {
    "github_api": f"GitHub API base URL (default {upstream_mod.GITHUB_API}; a mirror)",
    "pypi_url": f"PyPI base URL (default {upstream_mod.PYPI_URL})",
    "verbose": "show debug logging",
}


@task(auto_shortflags=False, help=UPSTREAM_HELP)
@_user_errors
def upstream(
    c,
    github_api: str = upstream_mod.GITHUB_API,
    pypi_url: str = upstream_mod.PYPI_URL,
    verbose: bool = False,
):
    """List Kilosort releases newer than the pins (MouseLand/Kilosort tags, kilosort on PyPI).

    Set GITHUB_TOKEN for a higher GitHub rate limit; it is never printed.
    """
    ui.setup_logging(verbose)
    reports = upstream_mod.newer_releases(ROOT, api_url=github_api, pypi_url=pypi_url)
    print(upstream_mod.describe(reports))


@task(
    auto_shortflags=False,
    help={
        "kilosort": "version to pin: 3.x (a MouseLand/Kilosort tag, pinned at its commit) or "
        "4.x (a kilosort release on PyPI); without it only the build number grows (rebuild)",
        "note": "an extra line for the changelog entry",
        "dry_run": "print the diff of kilosort-docker.toml, VERSION and CHANGELOG.md; "
        "write nothing",
        **UPSTREAM_HELP,
    },
)
@_user_errors
def bump(
    c,
    kilosort: str | None = None,
    note: str | None = None,
    dry_run: bool = False,
    github_api: str = upstream_mod.GITHUB_API,
    pypi_url: str = upstream_mod.PYPI_URL,
    verbose: bool = False,
):
    """Bump the pins and VERSION to a Kilosort release and add a changelog entry."""
    ui.setup_logging(verbose)
    plan = bump_mod.bump(
        ROOT, kilosort, note=note, dry_run=dry_run, api_url=github_api, pypi_url=pypi_url
    )
    if dry_run:
        print(plan.diff(), end="")
        print(f"dry run: would bump {plan.old_release} -> {plan.new_release} ({plan.summary})")
    else:
        print(
            f"bumped {plan.old_release} -> {plan.new_release} ({plan.summary}); "
            "next: nox, commit, invoke release"
        )


@task(
    auto_shortflags=False,
    help={
        "push": "also push this release's images (built beforehand with `invoke build`)",
        "registry": "registry host[:port] to push to (default Docker Hub)",
        "dry_run": "check, then print what would be done; run no tests, tag and push nothing",
        "verbose": "show debug logging",
    },
)
@_user_errors
def release(
    c,
    push: bool = False,
    registry: str | None = None,
    dry_run: bool = False,
    verbose: bool = False,
):
    """Tag v<VERSION> (clean tree, not yet tagged, `nox -s lint tests` passing); --push images."""
    ui.setup_logging(verbose)
    release_mod.release(
        ROOT,
        push=push,
        dry_run=dry_run,
        run_tests=lambda: release_mod.run_nox(ROOT),
        push_images=lambda rel: commands.push(registry=registry),
    )


@task(
    auto_shortflags=False,
    help={
        "image": "kilosort3 image to check (default: the local MATLAB instead of a container)",
        "license": "MATLAB license: port@host or a license file (default $MLM_LICENSE_FILE)",
        "mac_address": "MAC address for a host-locked license (docker run --mac-address)",
    },
)
@_user_errors
def check_gpu(
    c, image: str | None = None, license: str | None = None, mac_address: str | None = None
):
    """Check that MATLAB sees the GPU and runs a mex file on it (needs a MATLAB license)."""
    ui.setup_logging()
    commands.check_gpu(image=image, license=license, mac_address=mac_address)
    ui.console.print("GPU check passed: gpuDevice and mexGPUExample work")


@task(
    iterable=["image"],
    auto_shortflags=False,
    help={k: BUILD_HELP[k] for k in ("profile", "image", "namespace")},
)
@_user_errors
def check_images(c, profile: str = DEFAULT_PROFILE, image=None, namespace: str | None = None):
    """Check the built images from inside (user, toolboxes, commit, mex files, secrets, size)."""
    ui.setup_logging()
    if not commands.check_images(profile=profile, images=image or None, namespace=namespace):
        raise Exit("error: some image checks failed (see the table above)", code=1)

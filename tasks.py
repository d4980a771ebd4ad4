"""Invoke tasks for kilosort-docker: a thin front end over the ``kilosort_docker`` package.

Run ``invoke --list`` for the tasks and ``invoke <task> --help`` for each one's flags. Build
flags are declared once, in :class:`kilosort_docker.images.options.BuildOptions`; a site sets
its mirrors once in invoke's configuration (``kilosort_docker:`` in ``invoke.yaml``, or
``INVOKE_KILOSORT_DOCKER_<KEY>`` in the environment) instead of on every command.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterable

from invoke import Collection, Exit, Program, task

from kilosort_docker import acceptance as acceptance_mod
from kilosort_docker import commands, ui
from kilosort_docker.errors import UserError
from kilosort_docker.images import bases as bases_mod
from kilosort_docker.images.options import (
    CONFIG_SECTION,
    BuildOptions,
    flag_name,
    option_fields,
    option_help,
    site_defaults,
)
from kilosort_docker.paths import ROOT
from kilosort_docker.release import bump as bump_mod
from kilosort_docker.release import release as release_mod
from kilosort_docker.release import upstream as upstream_mod
from kilosort_docker.sorting import cli as sorting_cli

VERBOSE = {"verbose": "show debug logging"}

#: The build options each task takes (all of them for `build`).
MEX_OPTIONS = (
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
)
BUILT_IMAGE_OPTIONS = ("profile", "image", "namespace")


def site_settings(c) -> dict:
    """Invoke's ``kilosort_docker`` configuration section, checked: known keys only, each a
    string or unset. Raises UserError naming the key and the known ones."""
    section = c.config.get(CONFIG_SECTION)
    if section is None:
        return {}
    if not hasattr(section, "items"):
        raise UserError(
            f"invoke configuration: {CONFIG_SECTION} must be a table of settings, not "
            f"{section!r}: see README's Site settings"
        )
    known = site_defaults()
    for key, value in section.items():
        if key not in known:
            raise UserError(
                f"invoke configuration: unknown setting {CONFIG_SECTION}.{key}: use one of "
                f"{', '.join(known)}"
            )
        if value is not None and not isinstance(value, str):
            raise UserError(
                f"invoke configuration: {CONFIG_SECTION}.{key} must be a string, not "
                f"{value!r}: quote it in the file"
            )
    return dict(section)


def site_setting(c, key: str, given=None):
    """``given`` if the flag was given, else invoke's ``kilosort_docker.<key>`` setting."""
    if given not in (None, (), []):
        return given
    return site_settings(c).get(key)


def user_errors(func: Callable) -> Callable:
    """Turn a UserError into invoke's Exit: one line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            raise Exit(f"error: {exc}", code=1) from None

    return wrapper


def _help(spec, task_name: str) -> str:
    """An option's help as the task ``task_name`` words it, naming its site setting where it
    has one."""
    text = option_help(spec, task_name)
    if spec.metadata["site"]:
        text += f" (site setting: {CONFIG_SECTION}.{flag_name(spec)})"
    return text


def _shown_default(spec) -> bool:
    """Whether a flag's default is the field's own (a plain bool or string that no site setting
    replaces); other flags default to None, meaning "not given"."""
    plain = isinstance(spec.default, bool | str)
    return plain and not spec.metadata["site"] and not spec.metadata["repeatable"]


def check_site_value(key: str, value: str | None) -> None:
    """Check one site setting alone, so that a bad one is blamed on the setting, not a flag the
    user never typed. Raises UserError naming where it is set."""
    if value is None:
        return
    try:
        BuildOptions.from_flags(**{key: value})
    except UserError as exc:
        raise UserError(
            f"site setting {CONFIG_SECTION}.{key} (invoke.yaml, or INVOKE_KILOSORT_DOCKER_"
            f"{key.upper()}): {exc}"
        ) from None


def check_values_given(argv: list[str], names: Iterable[str]) -> None:
    """Raise UserError for a repeatable flag given with no value (``--image --dry-run``):
    invoke hands the task an empty list, which would mean "all" (the whole stack)."""
    for name in names:
        flag = "--" + name.replace("_", "-")
        for i, token in enumerate(argv):
            if token == flag and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
                raise UserError(
                    f"{flag} needs a value, e.g. {flag} {REPEATABLE_EXAMPLES.get(name, 'VALUE')}"
                    f" (repeat {flag} for more)"
                )


#: Examples for :func:`check_values_given`'s message.
REPEATABLE_EXAMPLES = {"image": "kilosort4", "gencode": "compute_90,sm_90"}


def options_task(
    names: Iterable[str] | None = None, *, help: dict[str, str] | None = None
) -> Callable:
    """An invoke task taking the named build options (all if None) as flags, besides the
    body's own parameters; the body gets them as ``options``, a checked
    :class:`BuildOptions` with the site's settings filled in for flags not given.

    Help comes from the options' field metadata, worded for this task where the declaration
    says so (``task_help``, keyed by the body's name); ``help`` adds the body's own parameters.
    A UserError becomes one line on stderr and exit code 1.
    """
    specs = option_fields(names)

    def decorate(body: Callable) -> Callable:
        own = list(inspect.signature(body).parameters.values())
        own = [p for p in own if p.name != "options"]
        params = own + [
            inspect.Parameter(
                flag_name(f),
                inspect.Parameter.KEYWORD_ONLY,
                default=f.default if _shown_default(f) else None,
            )
            for f in specs
        ]

        @functools.wraps(body)
        @user_errors
        def wrapper(c, **kwargs):
            flags = {flag_name(f): kwargs.pop(flag_name(f), None) for f in specs}
            check_values_given(sys.argv, [flag_name(f) for f in specs if f.metadata["repeatable"]])
            ui.setup_logging(kwargs.get("verbose", False))
            site = site_settings(c)
            for f in specs:
                if f.metadata["site"] and flags[flag_name(f)] is None:
                    flags[flag_name(f)] = site.get(flag_name(f))
                    check_site_value(flag_name(f), flags[flag_name(f)])
            if "python_base" in flags and flags["python_base"] is None:
                flags["python_base"] = bases_mod.recorded_python_base()  # `invoke bases`
            return body(c, options=BuildOptions.from_flags(**flags), **kwargs)

        wrapper.__signature__ = inspect.Signature(params)
        helps = {flag_name(f): _help(f, body.__name__) for f in specs} | (help or {})
        iterable = [flag_name(f) for f in specs if f.metadata["repeatable"]]
        return task(wrapper, help=helps, iterable=iterable, auto_shortflags=False)

    return decorate


@options_task(
    help={"dry_run": "print the plan (images, order, build args, tags) and build nothing"} | VERBOSE
)
def build(c, options: BuildOptions, dry_run: bool = False, verbose: bool = False):
    """Build the Kilosort image stack (or --image NAME and its parents) on the Docker engine."""
    commands.build(options=options, dry_run=dry_run)


@options_task(
    MEX_OPTIONS,
    help={
        "dry_run": "print the nvcc and g++ commands mexcuda would run, and build nothing",
        "force": "replace binaries already in mex-binaries/<profile>/<commit>/",
    }
    | VERBOSE,
)
def build_mex(
    c, options: BuildOptions, dry_run: bool = False, force: bool = False, verbose: bool = False
):
    """Compile Kilosort's CUDA mex files (no MATLAB license) into mex-binaries/ (maintainers)."""
    commands.build_mex(options=options, dry_run=dry_run, force=force)


@options_task(
    ("profile",),
    help={
        "folder": "check this folder instead of mex-binaries/<profile>/<pinned commit>/",
        "compute_capability": "say how each binary runs on a GPU of this compute capability, "
        "e.g. 9.0 (natively, through PTX JIT, or not at all)",
    },
)
def verify_mex(
    c, options: BuildOptions, folder: str | None = None, compute_capability: str | None = None
):
    """Check mex binaries against their manifest, and whether they run on a given GPU."""
    if not commands.verify_mex(
        folder=folder, profile=options.profile, compute_capability=compute_capability
    ):
        raise Exit("error: mex binaries fail verification (see above)", code=1)


@options_task(
    BUILT_IMAGE_OPTIONS,
    help={
        "registry": "registry host[:port] to push to (default Docker Hub, or the site's "
        "kilosort_docker.registry setting)",
        "dry_run": "print what would be pushed, and push nothing",
    }
    | VERBOSE,
)
def push(
    c,
    options: BuildOptions,
    registry: str | None = None,
    dry_run: bool = False,
    verbose: bool = False,
):
    """Push built images to Docker Hub or --registry; credentials from env or `docker login`."""
    commands.push(
        registry=site_setting(c, "registry", registry),
        profile=options.profile,
        images=list(options.images) or None,
        namespace=options.namespace,
        dry_run=dry_run,
    )


@task(
    auto_shortflags=False,
    help={
        "mirror": "Debian mirror URL debootstrap and apt read (default "
        f"{bases_mod.DEFAULT_MIRROR}; an air-gapped site's local mirror, http(s):// or file:///)",
        "suite": f"Debian suite (default {bases_mod.DEFAULT_SUITE}; one of "
        f"{', '.join(bases_mod.SUITE_PYTHON)})",
        "namespace": "repository namespace of the images made (default from kilosort-docker.toml)",
        "force": "rebuild the images even if they exist (default: reuse them)",
        "dry_run": "print what would be made, and make nothing",
    }
    | VERBOSE,
)
@user_errors
def bases(
    c,
    mirror: str | None = None,
    suite: str | None = None,
    namespace: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    verbose: bool = False,
):
    """Make kilosort4's Python base from Debian with debootstrap (root; no registry needed)."""
    ui.setup_logging(verbose)
    commands.bases(
        mirror=mirror,
        suite=suite,
        namespace=site_setting(c, "namespace", namespace),
        force=force,
        dry_run=dry_run,
    )


@task
def stack(c):
    """List the images of the stack with their parents."""
    ui.console.print(ui.stack_table())


@task
def profiles(c):
    """List the release profiles: MATLAB release, base image, Ubuntu, CUDA, compiler."""
    ui.console.print(ui.profiles_table(BuildOptions().profile))


@task(
    auto_shortflags=False,
    help={
        "profile": "remove only this profile's images (default: all of the project's images)",
        "dry_run": "list what would be removed, and remove nothing",
        "bases": "also remove the Debian and Python bases `invoke bases` made, and its record",
    },
)
@user_errors
def clean(c, profile: str | None = None, bases: bool = False, dry_run: bool = False):
    """Remove the images this project built, tagged or untagged (found by their labels).

    The test suite's namespaces (kilosort-docker-test*) are left to the suite.
    """
    ui.setup_logging()
    commands.clean(profile=profile, dry_run=dry_run, include_bases=bases)


UPSTREAM_HELP = {
    "github_api": f"GitHub API base URL (default {upstream_mod.GITHUB_API}; a mirror)",
    "pypi_url": f"PyPI base URL (default {upstream_mod.PYPI_URL})",
} | VERBOSE


@task(auto_shortflags=False, help=UPSTREAM_HELP)
@user_errors
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
@user_errors
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
        "push": "also push the images `invoke build` made for this release (its build record)",
        "registry": "registry host[:port] to push to (default Docker Hub, or the site's "
        "kilosort_docker.registry setting)",
        "dry_run": "check, then print what would be done; run no tests, tag and push nothing",
    }
    | VERBOSE,
)
@user_errors
def release(
    c,
    push: bool = False,
    registry: str | None = None,
    dry_run: bool = False,
    verbose: bool = False,
):
    """Tag v<VERSION> (clean tree, not yet tagged, `nox -s lint tests` passing); --push images."""
    ui.setup_logging(verbose)
    registry = site_setting(c, "registry", registry)
    if push:  # before the tests run: the images of this release must have been built
        commands.release_record(registry=registry)
        if dry_run:
            commands.push(registry=registry, require_record=True, dry_run=True)
    release_mod.release(
        ROOT,
        push=push,
        dry_run=dry_run,
        run_tests=lambda: release_mod.run_nox(ROOT),
        push_images=lambda rel: commands.push(registry=registry, require_record=True),
    )


@task(
    auto_shortflags=False,
    help={
        "image": "kilosort3 image to check (default: the local MATLAB instead of a container)",
        "license": "MATLAB license in any FlexLM form: port@host, @host, a triad, a "
        "colon-separated list, a license file or a folder of .lic files (default "
        "$MLM_LICENSE_FILE)",
        "mac_address": "MAC address for a host-locked license (docker run --mac-address)",
    },
)
@user_errors
def check_gpu(
    c, image: str | None = None, license: str | None = None, mac_address: str | None = None
):
    """Check that MATLAB sees the GPU and runs a mex file on it (needs a MATLAB license)."""
    ui.setup_logging()
    commands.check_gpu(image=image, license=license, mac_address=mac_address)
    ui.console.print("GPU check passed: gpuDevice and mexGPUExample work")


@options_task(BUILT_IMAGE_OPTIONS)
def check_images(c, options: BuildOptions):
    """Check the built images from inside (user, toolboxes, commit, mex files, secrets, size)."""
    if not commands.check_images(
        profile=options.profile, images=list(options.images) or None, namespace=options.namespace
    ):
        raise Exit("error: some image checks failed (see the table above)", code=1)


@options_task(
    ("profile", "namespace"),
    help={
        "license": "MATLAB license in any FlexLM form: port@host, @host, a triad, a "
        "colon-separated list, a license file or a folder of .lic files (default "
        "$MLM_LICENSE_FILE); only its form goes into the report",
        "mac_address": "the licensed MAC address of a host-locked license (not recorded)",
        "image": "kilosort3 image to accept (default: the one `invoke build` made for --profile)",
        "out": "report file to create (default benchmarks/acceptance/<profile>-<UTC date>-"
        "<gpu>.json); an existing file is never overwritten",
        "duration": "seconds of simulated recording in the ground-truth test (default "
        f"{acceptance_mod.DEFAULT_DURATION_S:g}, what thresholds/kilosort3.toml is set for)",
        "dry_run": "check the inputs, print the steps and the report path; run nothing",
    }
    | VERBOSE,
)
def acceptance(
    c,
    options: BuildOptions,
    license: str | None = None,
    mac_address: str | None = None,
    image: str | None = None,
    out: str | None = None,
    duration: str = f"{acceptance_mod.DEFAULT_DURATION_S:g}",
    dry_run: bool = False,
    verbose: bool = False,
):
    """Licensed maintainers: check-gpu, then the Kilosort3 ground-truth test; JSON report.

    Needs a MATLAB license and an NVIDIA GPU. Stops at the first step that does not pass and
    still writes the report (benchmarks/acceptance/, to commit): steps, image digest, GPU,
    license form (never its value), verdict and scores.
    """
    plan = acceptance_mod.make_plan(
        license=license,
        profile=options.profile,
        image=image,
        namespace=options.namespace,
        mac_address=mac_address,
        out=out,
        duration_s=duration,
    )
    if dry_run:
        ui.console.print(plan.describe(), markup=False, highlight=False, soft_wrap=True)
        return
    report, path = acceptance_mod.run(plan, on_step=acceptance_mod.progress_printer(ui.console))
    ui.console.print(acceptance_mod.summary_table(report, path))
    failed = report.first_failure
    if failed is not None:
        how = " (skipped)" if failed.status == acceptance_mod.SKIPPED else ""
        raise Exit(
            f"error: acceptance failed at {failed.name}{how}: {failed.reason}; report: {path}",
            code=1,
        )


@task(
    auto_shortflags=False,
    positional=["recording"],
    help=dict(sorting_cli.HELP) | {"recording": "the recording to sort"},
)
def sort(
    c,
    recording: str | None = None,
    probe: str | None = None,
    out: str | None = None,
    sorter: str = "kilosort4",
    image: str | None = None,
    device: str = "auto",
    settings: str | None = None,
    channels: str | None = None,
    sampling_rate: str | None = None,
    runtime: str = "docker",
    host: bool = False,
    overwrite: bool = False,
    license: str | None = None,
    mac_address: str | None = None,
    dry_run: bool = False,
    profile: str | None = None,
    verbose: bool = False,
):
    """Sort RECORDING with Kilosort 4 (or 3) in the built image; a phy folder you own.

    Writes --out DIR/sort-record.json, and DIR/sort-complete.json once finished. Exit 1: the
    sort failed; exit 2: bad input, refused before any work.
    """
    if recording in ("--help", "-h"):  # invoke's parser hands a missing positional the flag
        Program(namespace=ns).run(["invoke", "--help", "sort"], exit=False)
        return
    ui.setup_logging(verbose)
    try:
        request = sorting_cli.request_from_flags(
            recording,
            probe=probe,
            out=out,
            sorter=sorter,
            image=image,
            device=device,
            settings=settings,
            channels=channels,
            sampling_rate=sampling_rate,
            runtime=runtime,
            host=host,
            overwrite=overwrite,
            license=license,
            mac_address=mac_address,
            dry_run=dry_run,
            profile=profile,
        )
    except UserError as exc:
        raise Exit(f"error: {exc}", code=sorting_cli.EXIT_BAD_INPUT) from None
    status = sorting_cli.execute(request)
    if status:
        raise Exit(code=status)


ns = Collection(
    build,
    bases,
    build_mex,
    verify_mex,
    push,
    stack,
    profiles,
    clean,
    upstream,
    bump,
    release,
    check_gpu,
    check_images,
    acceptance,
    sort,
)
ns.configure({CONFIG_SECTION: site_defaults()})


# ---- sorting many recordings on a SLURM cluster (kilosort_docker.batch) -----------------------


def _help_asked(value: str | None, task_name: str) -> None:
    """Invoke gives ``TASK --help`` to a task's positional argument when it has one: print the
    task's help (``invoke --help TASK``) and stop instead."""
    if value in ("-h", "--help"):
        import subprocess
        import sys

        subprocess.run([sys.executable, "-m", "invoke", "--help", task_name], check=False)
        raise Exit(code=0)


BATCH_HELP = {
    "folder": "batch folder (record, sbatch scripts, logs; default "
    "<list folder>/<list name>.batch)",
}


@task(
    auto_shortflags=False,
    help={
        "list_path": "TOML or CSV list of recordings: path, probe, out, and optional sorter, "
        "image, settings, channels, sampling_rate (README: On a cluster)",
        "runtime": "container runtime on the nodes: docker, podman or apptainer (default docker)",
        "partition": "SLURM partition (default: the cluster's default partition)",
        "gpus_per_task": "GPUs per task, asked as --gres=gpu:N (default 0: Kilosort 4 on the CPU)",
        "cpus_per_task": "CPUs per task (default 1)",
        "time": "time limit per task, sbatch's format, e.g. 2:00:00",
        "mem": "memory per task, sbatch's format, e.g. 32G",
        "max_parallel": "run at most N tasks at once (the array's %N throttle; default 0: no "
        "limit)",
        "image": "image of the rows that name none (for apptainer: a .sif file)",
        "resume": "submit again only the recordings without a completion marker that are "
        "neither pending nor running; a finished one is never rerun",
        "dry_run": "check everything and print the sbatch script; submit nothing",
        **BATCH_HELP,
    }
    | VERBOSE,
)
@user_errors
def sort_batch(
    c,
    list_path: str,
    runtime: str = "docker",
    partition: str | None = None,
    gpus_per_task: int = 0,
    cpus_per_task: int = 1,
    time: str | None = None,
    mem: str | None = None,
    max_parallel: int = 0,
    image: str | None = None,
    folder: str | None = None,
    resume: bool = False,
    dry_run: bool = False,
    verbose: bool = False,
):
    """Sort every recording of a list on a SLURM cluster: one array job, one task each."""
    _help_asked(list_path, "sort-batch")
    from kilosort_docker.batch import cli
    from kilosort_docker.batch.script import BatchOptions

    ui.setup_logging(verbose)
    options = BatchOptions(
        runtime=runtime,
        partition=partition,
        gpus_per_task=gpus_per_task,
        cpus_per_task=cpus_per_task,
        time=time,
        mem=mem,
        max_parallel=max_parallel or None,
    )
    cli.sort_batch(list_path, options, folder=folder, image=image, resume=resume, dry_run=dry_run)


@task(
    auto_shortflags=False,
    help={
        "list_path": "the list given to invoke sort-batch",
        "wait": "print the progress until no recording is pending or running",
        **BATCH_HELP,
    },
)
@user_errors
def batch_status(c, list_path: str, folder: str | None = None, wait: bool = False):
    """Each recording of a batch: pending, running, done or failed (exit status, reason, log)."""
    _help_asked(list_path, "batch-status")
    from kilosort_docker.batch import cli

    ui.setup_logging()
    if cli.batch_status(list_path, folder=folder, wait=wait):
        raise Exit(
            "error: some recordings failed (see above); fix them, then "
            "invoke sort-batch LIST --resume",
            code=1,
        )


@task(auto_shortflags=False, help={"image": "image reference in the Docker engine"})
@user_errors
def podman_load(c, image: str):
    """Copy an image from the Docker engine into podman (docker save | podman load)."""
    _help_asked(image, "podman-load")
    from kilosort_docker.batch import cli

    ui.setup_logging()
    cli.podman_load(image)


for _batch_task in (sort_batch, batch_status, podman_load):
    ns.add_task(_batch_task)

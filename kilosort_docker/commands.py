"""What each invoke task does; ``tasks.py`` only parses flags and calls these."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import docker.errors

from kilosort_docker import build as build_mod
from kilosort_docker import engine, plan, ui
from kilosort_docker import push as push_mod
from kilosort_docker.errors import UserError
from kilosort_docker.pins import check_commit, load_pins
from kilosort_docker.profiles import DEFAULT_PROFILE, get_profile
from kilosort_docker.tags import LABEL_PREFIX

log = logging.getLogger(__name__)


def make_plan(
    *,
    profile: str = DEFAULT_PROFILE,
    images: list[str] | None = None,
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
    no_cache: bool = False,
    namespace: str | None = None,
) -> plan.BuildPlan:
    """The build plan for the given flags; raises UserError for bad input."""
    chosen = get_profile(profile, cuda=cuda, allow_cuda_mismatch=allow_cuda_mismatch)
    chosen = chosen.with_overrides(base_image=base_image, mpm_url=mpm_url)
    if wheelhouse and not Path(wheelhouse).is_dir():
        raise UserError(f"wheelhouse {wheelhouse} is not a folder: pass a folder of .whl files")
    if ca_bundle and not Path(ca_bundle).is_file():
        raise UserError(f"CA bundle {ca_bundle} is not a file: pass a PEM file")
    if ca_bundle and "PRIVATE KEY" in Path(ca_bundle).read_text(errors="replace"):
        raise UserError(f"{ca_bundle} holds a private key: pass only public CA certificates")
    options = plan.BuildOptions(
        python_base_image=python_base,
        kilosort_repository=kilosort_repo,
        npy_matlab_repository=npy_matlab_repo,
        wheelhouse=Path(wheelhouse) if wheelhouse else None,
        mex_binaries=Path(mex_binaries) if mex_binaries else plan.MEX_BINARIES_DIR,
        ca_bundle=Path(ca_bundle) if ca_bundle else None,
        no_cache=no_cache,
        namespace=namespace,
    )
    pins = load_pins()
    if kilosort_commit:
        pins = replace(
            pins,
            kilosort3=replace(pins.kilosort3, commit=check_commit(kilosort_commit), tag=None),
        )
    if npy_matlab_commit:
        pins = replace(
            pins,
            npy_matlab=replace(
                pins.npy_matlab, commit=check_commit(npy_matlab_commit, "--npy-matlab-commit")
            ),
        )
    return plan.make_plan(chosen, pins, images=images, options=options)


def build(*, dry_run: bool = False, **flags) -> list[build_mod.BuiltImage]:
    """Build the stack (or the named images and their parents); print the plan or a summary."""
    the_plan = make_plan(**flags)
    if dry_run:
        ui.console.print(plan.describe(the_plan), markup=False, highlight=False)
        return []
    client = engine.connect(timeout=3600)
    with ui.progress_bar() as progress:
        built = build_mod.execute(the_plan, client, events=ui.ProgressEvents(progress, the_plan))
    ui.console.print(ui.built_table(built))
    return built


def push(
    *, registry: str | None = None, dry_run: bool = False, namespace: str | None = None, **flags
) -> list[push_mod.Pushed]:
    """Push the built images of the plan to ``registry`` (Docker Hub if None)."""
    the_plan = make_plan(namespace=namespace, **flags)
    pairs = push_mod.targets(the_plan, registry=registry, namespace=namespace)
    if dry_run:
        push_mod.credentials()  # checks the variables without showing them
        for local, remote in pairs:
            ui.console.print(f"would push {local} as {remote}", markup=False)
        return []
    client = engine.connect()
    pushed = push_mod.push(
        the_plan,
        client,
        registry=registry,
        namespace=namespace,
        on_event=lambda ref, event: log.debug("%s: %s", ref, event.get("status", "")),
    )
    ui.console.print(ui.pushed_table(pushed))
    return pushed


def clean(*, dry_run: bool = False, profile: str | None = None) -> list[str]:
    """Remove the images this project built (all profiles, or one); returns the tags removed."""
    client = engine.connect()
    filters = {"label": [f"{LABEL_PREFIX}.image"]}
    if profile:
        chosen = get_profile(profile)
        filters["label"].append(f"{LABEL_PREFIX}.profile={chosen.name}")
    removed: list[str] = []
    for image in client.images.list(filters=filters):
        for ref in image.tags:
            if dry_run:
                ui.console.print(f"would remove {ref}", markup=False)
            else:
                try:
                    client.images.remove(ref)
                except docker.errors.APIError as exc:
                    log.warning("could not remove %s: %s", ref, exc.explanation)
                    continue
                ui.console.print(f"removed {ref}", markup=False)
            removed.append(ref)
    if not removed:
        ui.console.print("no images of this project to remove")
    return removed

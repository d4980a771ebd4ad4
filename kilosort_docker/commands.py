"""What each invoke task does; ``tasks.py`` only parses flags and calls these."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import docker.errors

from kilosort_docker import engine, mex, ui
from kilosort_docker.errors import UserError
from kilosort_docker.images import build as build_mod
from kilosort_docker.images import mexstage, plan
from kilosort_docker.images import push as push_mod
from kilosort_docker.images.pins import check_commit, load_pins
from kilosort_docker.images.profiles import DEFAULT_PROFILE, get_profile
from kilosort_docker.images.tags import LABEL_PREFIX

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
    cuda_toolkit: str | None = None,
    host_compiler: str | None = None,
    gencode: list[str] | None = None,
    ensure_determ: bool = False,
    mex_spec: str | None = None,
    compile_mex: bool = False,
    no_cache: bool = False,
    namespace: str | None = None,
) -> plan.BuildPlan:
    """The build plan for the given flags; raises UserError for bad input."""
    chosen = get_profile(profile, cuda=cuda, allow_cuda_mismatch=allow_cuda_mismatch)
    chosen = chosen.with_overrides(base_image=base_image, mpm_url=mpm_url)
    if wheelhouse and not Path(wheelhouse).is_dir():
        raise UserError(f"wheelhouse {wheelhouse} is not a folder: pass a folder of .whl files")
    if cuda_toolkit and not Path(cuda_toolkit).is_dir():
        raise UserError(f"--cuda-toolkit {cuda_toolkit} is not a folder: pass a CUDA toolkit")
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
        cuda_toolkit=Path(cuda_toolkit) if cuda_toolkit else None,
        host_compiler=host_compiler,
        gencode=tuple(gencode or ()),
        ensure_determ=ensure_determ,
        mex_spec=Path(mex_spec) if mex_spec else None,
        compile_mex=compile_mex,
        no_cache=no_cache,
        namespace=namespace,
    )
    if gencode and (images is None or any(i in ("kilosort3",) for i in images)):
        mex.toolchain_from_profile(chosen, gencode, host_compiler=host_compiler)
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
        ui.console.print(plan.describe(the_plan), markup=False, highlight=False, soft_wrap=True)
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
            ui.console.print(f"would push {local} as {remote}", markup=False, soft_wrap=True)
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


def build_mex(*, dry_run: bool = False, force: bool = False, **flags) -> Path | None:
    """Compile Kilosort's mex files in the kilosort3 image's build stage and keep them in
    ``mex-binaries/<profile>/<kilosort commit>/`` with their manifest.

    Refuses to replace an existing folder unless ``force``; a failed build changes nothing.
    """
    the_plan = make_plan(images=["kilosort3"], compile_mex=True, **flags)
    folder = plan.mex_binaries_folder(the_plan.options, the_plan.profile, the_plan.pins)
    build_plan = mexstage.mex_plan(the_plan)
    if dry_run:
        ui.console.print(
            mex.dry_run(build_plan, out_dir="/tmp/mex-out/bin"),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        ui.console.print(f"# binaries and manifest would go to {folder}", markup=False)
        return None
    if folder.exists() and any(folder.iterdir()) and not force:
        raise UserError(
            f"{folder} already holds mex binaries: pass --force to replace them after a "
            "successful build"
        )
    client = engine.connect(timeout=3600)
    with ui.progress_bar() as progress:
        image_id = build_mod.build_stage(
            the_plan,
            client,
            image="kilosort3",
            target="mex-build",
            events=ui.ProgressEvents(progress, the_plan),
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        out = build_mod.copy_out(client, image_id, "/tmp/mex-out", work / "out")
        staged = work / "binaries"
        shutil.move(str(out / "bin"), staged)
        shutil.move(str(out / mex.MANIFEST_NAME), staged / mex.MANIFEST_NAME)
        problems = [p for p in mex.verify_manifest(staged) if p.severity == "error"]
        if problems:
            raise UserError(f"the stage's binaries fail their own manifest: {problems[0]}")
        if folder.exists():
            old = work / "previous"
            folder.rename(old)
        staged.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ui.console.print(f"mex binaries and manifest in {folder}", markup=False)
    return folder


def verify_mex(
    *,
    folder: str | None = None,
    profile: str = DEFAULT_PROFILE,
    compute_capability: str | None = None,
) -> bool:
    """Check committed mex binaries against their manifest; with a compute capability, say
    how each runs there (SASS, PTX JIT, or not at all). Returns True if all is well."""
    if folder:
        target = Path(folder)
    else:
        the_plan = make_plan(profile=profile, images=["kilosort3"])
        target = plan.mex_binaries_folder(the_plan.options, the_plan.profile, the_plan.pins)
    if not (target / mex.MANIFEST_NAME).is_file():
        raise UserError(f"no mex binaries with a manifest in {target}: run `invoke build-mex`")
    problems = mex.verify_manifest(target)
    for problem in problems:
        ui.console.print(str(problem), markup=False)
    ok = not any(p.severity == "error" for p in problems)
    if compute_capability:
        predictions = mex.predict_directory(target, compute_capability)
        ui.console.print(ui.runtime_table(predictions, compute_capability))
        ok = ok and all(p.mode != "none" for p in predictions)
    if not problems:
        ui.console.print(f"all binaries in {target} match their manifest", markup=False)
    return ok


def check_gpu(
    *, image: str | None = None, license: str | None = None, mac_address: str | None = None
) -> None:
    """Run matlab/check_gpu.m (gpuDevice, then mexGPUExample on ones(4,4)) in the kilosort3
    image on every GPU, or with the local MATLAB when ``image`` is None.

    Raises UserError without a license (``MLM_LICENSE_FILE``), Docker engine or MATLAB.
    """
    from kilosort_docker.groundtruth.sorters import common, kilosort3

    lic = kilosort3.resolve_license(license)
    if image is None:
        if shutil.which("matlab") is None:
            raise UserError(
                "matlab is not on PATH: install MATLAB, or pass --image to check a kilosort3 image"
            )
        matlab = kilosort3.local_matlab()
        env = {"MLM_LICENSE_FILE": lic.value}
        done = subprocess.run(
            [str(matlab), "-batch", f"addpath('{kilosort3.MATLAB_DIR}'); check_gpu"],
            env={**os.environ, **env},
            check=False,
        )
        if done.returncode != 0:
            raise UserError("check_gpu failed in the local MATLAB (see above): fix the GPU setup")
        return
    if not engine.image_exists(engine.connect(), image):
        raise UserError(f"{image} is not built: run `invoke build --image kilosort3` first")
    volumes, env = lic.container_access()
    try:
        common.run_container(
            image,
            ["-batch", "check_gpu"],
            volumes=volumes,
            environment=env,
            gpu=True,
            network=lic.kind == "server" or bool(mac_address),
            mac_address=mac_address,
            redact=(lic.value,),
        )
    except common.SortError as exc:
        raise UserError(f"check_gpu failed in {image}: {str(exc).splitlines()[0]}") from None


def check_images(
    *,
    profile: str = DEFAULT_PROFILE,
    images: list[str] | None = None,
    namespace: str | None = None,
) -> bool:
    """Run the image checks (no license needed) on the built images of the plan; print what
    each found. Returns True if every check passed; raises UserError if an image is missing."""
    from kilosort_docker.images import checks

    the_plan = make_plan(profile=profile, images=images, namespace=namespace)
    client = engine.connect()
    findings = []
    for step in the_plan.steps:
        if not engine.image_exists(client, step.refs[0]):
            raise UserError(f"{step.refs[0]} is not built: run `invoke build` first")
        findings += checks.run_checks(client, step.refs[0], pins=the_plan.pins, spec=step.spec)
    ui.console.print(ui.findings_table(findings))
    return all(f.ok for f in findings)

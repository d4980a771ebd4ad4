"""What each invoke task does; ``tasks.py`` only parses flags and calls these."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import docker.errors

from kilosort_docker import engine, mex, ui
from kilosort_docker.atomic import replace_folder
from kilosort_docker.errors import UserError
from kilosort_docker.images import bases as bases_mod
from kilosort_docker.images import build as build_mod
from kilosort_docker.images import mexstage, plan, references
from kilosort_docker.images import push as push_mod
from kilosort_docker.images import record as record_mod
from kilosort_docker.images.options import BuildOptions
from kilosort_docker.images.pins import Pins, load_pins
from kilosort_docker.images.profiles import DEFAULT_PROFILE, get_profile
from kilosort_docker.images.stack import STACK
from kilosort_docker.images.tags import LABEL_PREFIX

log = logging.getLogger(__name__)


def make_plan(*, options: BuildOptions | None = None, **flags) -> plan.BuildPlan:
    """The build plan for task flags (``python_base=...``, ``images=[...]``; see
    :class:`~kilosort_docker.images.options.BuildOptions`), applied over ``options`` when
    given; raises UserError for bad input."""
    if options is not None:
        flags = {**options.to_dict(), **flags}
    return plan.plan_for(BuildOptions.from_flags(**flags))


def built_plan(
    *, profile: str = DEFAULT_PROFILE, images: list[str] | None = None, namespace: str | None = None
) -> tuple[plan.BuildPlan, list[tuple[plan.BuildStep, Pins]]]:
    """The images ``invoke build`` made for ``profile`` (``images`` and their parents; all the
    recorded ones if None), each with the pins it was built from.

    An image in the build record (``build/<profile>.json``) is planned with the options it was
    built with (its ``--kilosort-commit`` included), unless ``namespace`` names another
    namespace; other images are planned from the defaults. Returns the plan whose options give
    the namespace, and ``(step, pins)`` for each image, parents first.
    """
    recorded = record_mod.load(get_profile(profile).name)
    names = images or ([i.name for i in recorded.images] if recorded else None)
    default_namespace = load_pins().namespace
    plans: list[plan.BuildPlan] = []
    for spec in STACK.build_order(names):
        entry = recorded.image(spec.name) if recorded else None
        if entry and namespace not in (None, entry.options.namespace or default_namespace):
            entry = None  # another namespace: other images than the recorded ones
        options = entry.options if entry else BuildOptions.from_flags(profile=profile)
        if namespace and not entry:
            options = replace(options, namespace=namespace)
        plans.append(plan.plan_for(replace(options, images=(spec.name,))))
    chosen = [(p.steps[-1], p.pins) for p in plans]
    return replace(plans[0], steps=tuple(step for step, _ in chosen)), chosen


def build(
    *, dry_run: bool = False, options: BuildOptions | None = None, **flags
) -> list[build_mod.BuiltImage]:
    """Build the stack (or the named images and their parents); print the plan or a summary,
    and write the build record ``build/<profile>.json``."""
    options = options or BuildOptions.from_flags(**flags)
    the_plan = plan.plan_for(options)
    if dry_run:
        ui.console.print(plan.describe(the_plan), markup=False, highlight=False, soft_wrap=True)
        return []
    client = engine.connect(timeout=3600)
    skipped: build_mod.SkippedImages | None = None
    with ui.progress_bar() as progress:
        try:
            built = build_mod.execute(
                the_plan, client, events=ui.ProgressEvents(progress, the_plan)
            )
        except build_mod.SkippedImages as exc:  # a missing base: the others were built
            skipped, built = exc, exc.built
    ui.console.print(ui.built_table(built))
    where = record_mod.save(
        record_mod.from_build(
            options, str(the_plan.pins.release), built, profile=the_plan.profile.name
        )
    )
    ui.console.print(f"build record: {where}", markup=False)
    if skipped is not None:
        raise skipped
    return built


def bases(
    *,
    mirror: str | None = None,
    suite: str | None = None,
    namespace: str | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> bases_mod.BasesResult | None:
    """Make the Python base of ``kilosort4`` from Debian (debootstrap, no registry), record
    it for ``invoke build``, and print a summary; with ``dry_run`` print the plan only (the
    engine is asked which images exist if it is reachable; nothing is changed)."""
    the_plan = bases_mod.plan_bases(mirror=mirror, suite=suite, namespace=namespace, force=force)
    if dry_run:
        have = None
        try:
            client = engine.connect(timeout=30)
        except UserError:
            client = None
        if client is not None:
            have = {
                ref: engine.image_exists(client, ref)
                for ref in (the_plan.debian_ref, the_plan.python_ref)
            }
        ui.console.print(bases_mod.describe(the_plan, have=have), markup=False, soft_wrap=True)
        return None
    client = engine.connect(timeout=3600)
    with ui.console.status("starting") as status:

        def on_stage(text: str) -> None:
            ui.console.print(f"bases: {text}", markup=False, highlight=False)
            status.update(text)

        def on_line(line: str) -> None:
            log.debug("%s", line)
            status.update(line[:100])

        result = bases_mod.make_bases(the_plan, client, on_line=on_line, on_stage=on_stage)
    for ref, image_id, made in (
        (the_plan.debian_ref, result.debian_id, result.built_debian),
        (the_plan.python_ref, result.python_id, result.built_python),
    ):
        verb = "built" if made else "reused"
        ui.console.print(f"{verb} {ref} {image_id}", markup=False, highlight=False)
    ui.console.print(
        f"recorded {the_plan.python_ref} in {result.record} ({result.seconds:.0f} s): "
        "`invoke build --image kilosort4` now builds on it",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return result


def release_record(
    profile: str = DEFAULT_PROFILE, *, registry: str | None = None
) -> record_mod.BuildRecord:
    """The build record of ``profile`` for the release in ``VERSION`` (what ``release --push``
    pushes); raises UserError if nothing was built, the record is of another release, or
    ``registry`` (where it will be pushed) is not ``host[:port]``: before the tests run."""
    references.check_registry(registry)
    name = get_profile(profile).name
    recorded = record_mod.load(name)
    release = str(load_pins().release)
    if recorded is None:
        raise UserError(f"nothing was built for {name} yet: run `invoke build` first")
    if recorded.release != release:
        raise UserError(
            f"the build record is of release {recorded.release} but VERSION says {release}: "
            "run `invoke build` again"
        )
    missing = [spec.name for spec in STACK.images if recorded.image(spec.name) is None]
    if missing:
        raise UserError(
            f"the build record of {name} lacks {', '.join(missing)}: a release pushes the whole "
            "stack; run `invoke build` (without --image) first"
        )
    return recorded


def push(
    *,
    registry: str | None = None,
    dry_run: bool = False,
    profile: str = DEFAULT_PROFILE,
    images: list[str] | None = None,
    namespace: str | None = None,
    require_record: bool = False,
) -> list[push_mod.Pushed]:
    """Push the images ``invoke build`` made (see :func:`built_plan`) to ``registry`` (Docker
    Hub if None) under ``namespace`` (default: the one they were built in), and add the
    digests to the build record. ``require_record`` (``release --push``) refuses to push
    without a build record of the current release."""
    references.check_registry(registry)
    references.check_namespace(namespace)
    recorded = release_record(profile) if require_record else record_mod.load(profile)
    the_plan, _ = built_plan(profile=profile, images=images, namespace=namespace)
    remote_ns = namespace or the_plan.options.namespace
    pairs = push_mod.targets(the_plan, registry=registry, namespace=remote_ns)
    if dry_run:
        push_mod.credentials()  # checks the variables without showing them
        push_mod.check_built(engine.connect(), pairs)
        for local, remote in pairs:
            ui.console.print(f"would push {local} as {remote}", markup=False, soft_wrap=True)
        return []
    client = engine.connect()
    pushed = push_mod.push(
        the_plan,
        client,
        registry=registry,
        namespace=remote_ns,
        on_event=lambda ref, event: log.debug("%s: %s", ref, event.get("status", "")),
    )
    ui.console.print(ui.pushed_table(pushed))
    if recorded is not None:
        local_of = {remote: local for local, remote in pairs}
        record_mod.save(
            recorded.with_digests({p.ref: p.digest for p in pushed}, local_of), merge=False
        )
    return pushed


#: The test suite's image namespaces (``kilosort-docker-test``, ``kilosort-docker-test-*``:
#: tests/support/images.py NAMESPACE): the suite removes what it makes, and a suite running
#: now still needs its images, so :func:`clean` leaves them alone.
TEST_NAMESPACE_PREFIX = "kilosort-docker-test"
_BASE_NAME_LABEL = "org.opencontainers.image.base.name"


def _is_test_ref(ref: str) -> bool:
    first = ref.split("/", 1)[0]
    return "/" in ref and (
        first == TEST_NAMESPACE_PREFIX or first.startswith(f"{TEST_NAMESPACE_PREFIX}-")
    )


#: The label of the tests' stand-in MATLAB base (tests/standins/matlab-base), which every image
#: built on it inherits: such images belong to the test suite or a benchmark, never to a user.
STANDIN_LABEL = f"{LABEL_PREFIX}.standin"


def clean(
    *, dry_run: bool = False, profile: str | None = None, include_bases: bool = False
) -> list[str]:
    """Remove the images this project built (all profiles, or one): their tags, and the
    untagged (dangling) images carrying the project's labels (``io.kilosort-docker.*``: old
    builds, build stages). Images of the test suite's namespaces are left to the suite
    (:data:`TEST_NAMESPACE_PREFIX`), tagged or not (an untagged one built on a test image).
    The Debian and Python bases ``invoke bases`` made are kept, and named, unless
    ``include_bases`` (then ``build/bases.json`` goes too).
    Returns the tags and image IDs removed (or, with ``dry_run``, that would be)."""
    from kilosort_docker.images import bases as bases_mod

    client = engine.connect()
    filters = {"label": [f"{LABEL_PREFIX}.image"]}
    if profile:
        chosen = get_profile(profile)
        filters["label"].append(f"{LABEL_PREFIX}.profile={chosen.name}")
    targets: list[str] = []
    described: dict[str, str] = {}
    # The low-level list (dicts): images.list() inspects each image and fails on one that
    # another process removes meanwhile.
    for image in client.api.images(filters=filters):
        refs = [r for r in image.get("RepoTags") or [] if r != "<none>:<none>"]
        targets += [ref for ref in refs if not _is_test_ref(ref)]
    base_refs = [
        ref
        for image in client.api.images(filters={"label": [bases_mod.BASE_LABEL]})
        # the stack's images inherit the label from their base: theirs were listed above
        if f"{LABEL_PREFIX}.image" not in (image.get("Labels") or {})
        for ref in image.get("RepoTags") or []
        if ref != "<none>:<none>" and not _is_test_ref(ref)
    ]
    if include_bases:
        targets += base_refs
    elif base_refs:
        ui.console.print(
            f"keeping the bases `invoke bases` made: {', '.join(base_refs)} (--bases removes "
            "them too)",
            markup=False,
            soft_wrap=True,
        )
    for image in client.api.images(filters={"dangling": True}):
        labels = image.get("Labels") or {}
        if not any(key.startswith(f"{LABEL_PREFIX}.") for key in labels):
            continue
        if profile and labels.get(f"{LABEL_PREFIX}.profile") != chosen.name:
            continue
        if _is_test_ref(labels.get(_BASE_NAME_LABEL, "")):
            continue
        if labels.get(STANDIN_LABEL):
            continue  # built on the tests' stand-in MATLAB base: the suite's or a benchmark's
        targets.append(image["Id"])
        described[image["Id"]] = (
            f"{image['Id']} (untagged {labels.get(f'{LABEL_PREFIX}.image', 'image')}, "
            f"{image.get('Size', 0) / 1e6:.0f} MB)"
        )
    removed: list[str] = []
    for target in targets:
        if dry_run:
            ui.console.print(
                f"would remove {described.get(target, target)}", markup=False, soft_wrap=True
            )
        else:
            try:
                client.images.remove(target)
            except docker.errors.ImageNotFound:
                continue  # went with an image removed before it
            except docker.errors.APIError as exc:
                log.warning("could not remove %s: %s", target, exc.explanation)
                continue
            ui.console.print(f"removed {target}", markup=False, soft_wrap=True)
        removed.append(target)
    record = bases_mod.record_path()
    if include_bases and record.is_file():
        if dry_run:
            ui.console.print(f"would remove {record}", markup=False, soft_wrap=True)
        else:
            record.unlink()
            ui.console.print(f"removed {record}", markup=False, soft_wrap=True)
    if not removed:
        ui.console.print("no images of this project to remove")
    return removed


def build_mex(*, dry_run: bool = False, force: bool = False, **flags) -> Path | None:
    """Compile Kilosort's mex files in the kilosort3 image's build stage and keep them in
    ``mex-binaries/<profile>/<kilosort commit>/`` with their manifest.

    Refuses to replace an existing folder unless ``force``; a failed build changes nothing.
    """
    the_plan = make_plan(images=["kilosort3"], compile_mex=True, **flags)
    folder = the_plan.mex_binaries_folder
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
        shutil.move(str(out / mex.MEX_MANIFEST_NAME), staged / mex.MEX_MANIFEST_NAME)
        problems = [p for p in mex.verify_manifest(staged) if p.severity == "error"]
        if problems:
            raise UserError(f"the stage's binaries fail their own manifest: {problems[0]}")
        replace_folder(staged, folder)
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
    how each runs there (SASS, PTX JIT, or not at all). Returns True if all is well.
    Raises UserError for a malformed compute capability before looking for binaries."""
    if compute_capability:
        mex.parse_compute_capability(compute_capability)
    if folder:
        target = Path(folder)
    else:
        the_plan = make_plan(profile=profile, images=["kilosort3"])
        target = the_plan.mex_binaries_folder
    if not (target / mex.MEX_MANIFEST_NAME).is_file():
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
    *,
    image: str | None = None,
    license: str | None = None,
    mac_address: str | None = None,
    gpu: bool = True,
) -> None:
    """Run matlab/check_gpu.m (gpuDevice, then mexGPUExample on ones(4,4)) in the kilosort3
    image on every GPU, or with the local MATLAB when ``image`` is None, through
    :func:`kilosort_docker.matlab.run_batch` (MATLAB's output goes to the log, license redacted).

    In the image MATLAB runs as the image's own user with 512 MB of shared memory and, on a
    GPU newer than the release supports, CUDA forward compatibility (all decided by
    ``run_batch``). ``gpu=False`` starts the container without GPUs (tests on stand-ins).

    Raises UserError without a license (``MLM_LICENSE_FILE``, any FlexLM form), Docker engine
    or MATLAB, or when the check fails.
    """
    from kilosort_docker import matlab
    from kilosort_docker.paths import MATLAB_DIR

    if image is not None:
        references.check_reference(
            image,
            what="--image",
            fix="give --image as a built kilosort3 image, e.g. kilosortdocker/kilosort3:latest",
        )
    lic = matlab.resolve_license(license)
    if image is None:
        if shutil.which("matlab") is None:
            raise UserError(
                "matlab is not on PATH: install MATLAB, or pass --image to check a kilosort3 image"
            )
        try:
            matlab.run_batch(f"addpath({matlab.quote(str(MATLAB_DIR))}); check_gpu", license=lic)
        except matlab.MatlabError:
            raise UserError(
                "check_gpu failed in the local MATLAB (see above): fix the GPU setup"
            ) from None
        return
    client = engine.connect()
    if not engine.image_exists(client, image):
        raise UserError(f"{image} is not built: run `invoke build --image kilosort3` first")
    try:
        matlab.run_batch(
            "check_gpu", image=image, license=lic, mac_address=mac_address, gpu=gpu, client=client
        )
    except matlab.MatlabError as exc:
        raise UserError(f"check_gpu failed in {image}: {str(exc).splitlines()[0]}") from None


def check_images(
    *,
    profile: str = DEFAULT_PROFILE,
    images: list[str] | None = None,
    namespace: str | None = None,
) -> bool:
    """Run the image checks (no license needed) on the images ``invoke build`` made (see
    :func:`built_plan`), each against the pins it was built from; print what each found.
    Returns True if every check passed; raises UserError if an image is missing."""
    from kilosort_docker.images import checks

    _, chosen = built_plan(profile=profile, images=images, namespace=namespace)
    client = engine.connect()
    findings = []
    for step, pins in chosen:
        if not engine.image_exists(client, step.refs[0]):
            raise UserError(f"{step.refs[0]} is not built: run `invoke build` first")
        findings += checks.run_checks(client, step.refs[0], pins=pins, spec=step.spec)
    ui.console.print(ui.findings_table(findings))
    return all(f.ok for f in findings)

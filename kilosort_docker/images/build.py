"""Carry out a build plan against a real Docker engine.

Each image's build context is staged in a temporary folder (the Dockerfile folder plus what
the image needs: fetched sources, ``matlab/``, mex files, wheels), built with the classic
builder through the Docker SDK with live output, and tagged only once the whole build has
succeeded, so a failed build leaves no tag behind.

A rebuild with nothing changed is a no-op: the labels carry no current time (see
:func:`kilosort_docker.images.tags.source_date_epoch`), and every file of a staged context gets
the plan's ``SOURCE_DATE_EPOCH`` as its time and a mode that depends only on whether it is
executable, so neither when the context was staged nor the umask of the checkout reaches a
layer (reproducible-builds.org, "Timestamps": clamp file times to SOURCE_DATE_EPOCH).
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import docker
import docker.errors

from kilosort_docker import containers, engine, secrets
from kilosort_docker.errors import UserError
from kilosort_docker.images import references
from kilosort_docker.images.plan import BuildPlan, BuildStep

log = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


@dataclass(frozen=True)
class BuiltImage:
    """An image the build produced: its step, image ID (a sha256 digest), size in bytes and
    build time in seconds."""

    step: BuildStep
    image_id: str
    size: int
    seconds: float


@dataclass
class BuildEvents:
    """Hooks a front end uses to show progress; every one is optional."""

    on_start: Callable[[BuildStep, int], None] = lambda step, index: None
    on_step: Callable[[BuildStep, int, int, str], None] = lambda step, n, total, text: None
    on_output: Callable[[BuildStep, str], None] = lambda step, line: None
    on_done: Callable[[BuiltImage], None] = lambda built: None
    log_lines: list[str] = field(default_factory=list)


@contextmanager
def staged_context(step: BuildStep, plan: BuildPlan) -> Iterator[tuple[Path, dict[str, str]]]:
    """A temporary build context for ``step`` and its final build args: a copy of
    ``docker/<name>/`` (secrets left out) filled by the image's own ``stage``.

    Raises UserError if the Dockerfile folder or something the image needs is missing.
    """
    buildargs = dict(step.buildargs)
    with tempfile.TemporaryDirectory(prefix=f"kilosort-docker-{step.spec.name}-") as tmp:
        context = Path(tmp)
        if not step.spec.dockerfile_dir.is_dir():
            raise UserError(f"{step.spec.dockerfile_dir} is missing: restore it from git")
        secrets.copy_without_secrets(step.spec.dockerfile_dir, context)
        buildargs.update(step.spec.stage(plan, context))
        if plan.source_date_epoch is not None:
            normalize_times(context, plan.source_date_epoch)
        yield context, buildargs


def normalize_times(folder: Path, epoch: int) -> None:
    """Give ``folder`` and everything in it the time ``epoch`` (seconds since 1970, access and
    modification, links themselves not followed) and the modes ``0755`` (folders, executable
    files) or ``0644`` (other files), so a ``COPY`` of it makes the same layer whenever and
    from whichever checkout it was staged."""
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode):
                executable = stat.S_ISDIR(info.st_mode) or info.st_mode & 0o111
                os.chmod(path, 0o755 if executable else 0o644)
            os.utime(path, (epoch, epoch), follow_symlinks=False)
    os.chmod(folder, 0o755)
    os.utime(folder, (epoch, epoch))


def _run_build(
    client: docker.DockerClient,
    step: BuildStep,
    context: Path,
    buildargs: dict[str, str],
    *,
    no_cache: bool,
    events: BuildEvents,
    target: str | None = None,
) -> str:
    """Build without tagging; returns the image ID. Raises UserError on an in-band error."""
    image_id = None
    current = ""
    stream = client.api.build(
        path=str(context),
        buildargs=buildargs,
        labels=dict(step.labels),
        nocache=no_cache,
        rm=True,
        forcerm=True,
        pull=False,
        decode=True,
        target=target,
    )
    for event in stream:
        if "stream" in event:
            for line in event["stream"].splitlines():
                if not line.strip():
                    continue
                events.log_lines.append(line)
                match = _STEP_RE.match(line)
                if match:
                    current = line
                    events.on_step(step, int(match[1]), int(match[2]), match[3])
                events.on_output(step, line)
                built = re.match(r"^Successfully built ([0-9a-f]+)$", line)
                if built and image_id is None:
                    image_id = built[1]
        if "aux" in event and isinstance(event["aux"], dict) and "ID" in event["aux"]:
            image_id = event["aux"]["ID"]
        if "error" in event:
            detail = event.get("errorDetail", {}).get("message") or event["error"]
            detail = " ".join(detail.split())
            where = f" at {current[:120]}" if current else ""
            raise UserError(
                f"building {step.spec.name} failed{where}: {detail[:300]} "
                f"({failure_hint(events.log_lines)})"
            )
    if image_id is None:
        raise UserError(f"building {step.spec.name} ended without an image: rerun with --no-cache")
    return image_id


#: What pip, curl, apt and git print when a TLS-inspecting proxy's certificate is not trusted.
_TLS_FAILURE = re.compile(
    r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|SSL certificate problem|"
    r"server certificate verification failed|self[- ]signed certificate in certificate chain",
    re.IGNORECASE,
)


def failure_hint(log_lines: list[str]) -> str:
    """What to do about a failed build, judged from its log: a TLS failure (a proxy that
    re-signs HTTPS) needs ``--ca-bundle``; anything else, the step the log shows."""
    if any(_TLS_FAILURE.search(line) for line in log_lines[-200:]):
        return (
            "a TLS certificate was not trusted: behind a TLS-inspecting proxy pass its CA with "
            "--ca-bundle FILE.pem (or the site setting kilosort_docker.ca_bundle)"
        )
    return "fix that step; the build log is above"


def tag_all(client: docker.DockerClient, image_id: str, refs: list[str]) -> None:
    """Tag ``image_id`` with every ref, or with none: on failure the old tags are restored.

    References that already name ``image_id`` (a rebuild with nothing changed) are left as
    they are, so a no-op rebuild asks the engine once instead of twice per reference."""
    try:
        current = set(client.api.inspect_image(image_id).get("RepoTags") or [])
    except docker.errors.DockerException:
        current = set()
    refs = [ref for ref in refs if ref not in current]
    previous: dict[str, str | None] = {}
    for ref in refs:
        try:
            previous[ref] = client.images.get(ref).id
        except docker.errors.ImageNotFound:
            previous[ref] = None
        except docker.errors.DockerException as exc:
            raise references.daemon_error(
                exc, doing=f"looking up {ref}", fix="fix the reference or the engine"
            ) from None
    applied: list[str] = []
    try:
        for ref in refs:
            repo, _, tag = ref.rpartition(":")
            if not client.api.tag(image_id, repo, tag, force=True):
                raise docker.errors.APIError(f"the engine refused tag {ref}")
            applied.append(ref)
    except docker.errors.DockerException as exc:
        for ref in applied:
            repo, _, tag = ref.rpartition(":")
            if previous[ref]:
                client.api.tag(previous[ref], repo, tag, force=True)
            else:
                client.api.remove_image(ref, noprune=True)
        detail = " ".join(str(exc).split())[:300]
        raise UserError(
            f"tagging {image_id[:19]} failed ({detail}): no tag was changed; check the "
            "references (--namespace) and the engine"
        ) from None


class SkippedImages(UserError):
    """Some images were not built because their base image is missing; the others were.

    ``built`` holds the images that were built (tagged), ``skipped`` the names left out."""

    def __init__(self, message: str, *, built: list[BuiltImage], skipped: list[str]) -> None:
        super().__init__(message)
        self.built = built
        self.skipped = skipped


def _reasons(skipped: dict[str, str]) -> str:
    """The distinct reasons images were skipped, in order, joined."""
    return "; ".join(dict.fromkeys(skipped.values()))


def preflight(client: docker.DockerClient, plan: BuildPlan) -> dict[str, str]:
    """Check each root image's base is present (pulling it if needed) before building.

    Returns ``{root image name: why its base is missing}`` for the roots whose base can be
    neither found nor pulled; raises that UserError itself when no root has its base (nothing
    could be built)."""
    missing: dict[str, str] = {}
    first: UserError | None = None
    roots = [step for step in plan.steps if step.spec.parent is None]
    from kilosort_docker.images import bases  # it imports this module

    recorded = bases.recorded_python_base()
    for step in roots:
        if recorded is not None and step.base_image == recorded:
            hint = f"run `invoke bases` again ({bases.record_path()} names it)"
        else:
            hint = f"use a mirror with {step.spec.base.flag}"
        try:
            engine.ensure_base(client, step.base_image, hint=hint)
        except UserError as exc:
            missing[step.spec.name] = str(exc)
            first = first or exc
    if first is not None and len(missing) == len(roots):
        raise first
    return missing


def execute(
    plan: BuildPlan,
    client: docker.DockerClient,
    *,
    events: BuildEvents | None = None,
) -> list[BuiltImage]:
    """Build every step of ``plan`` in order, tagging each image once it is complete.

    An image whose base (or whose parent's base) is missing is skipped and the others are
    built; then :class:`SkippedImages` names what was skipped and why. Raises UserError on the
    first build failure; images already built keep their tags, the failed one gets none.
    """
    events = events or BuildEvents()
    missing = preflight(client, plan)
    results: list[BuiltImage] = []
    skipped: dict[str, str] = {}
    for index, step in enumerate(plan.steps):
        name, parent = step.spec.name, step.spec.parent
        if name in missing or parent in skipped:
            skipped[name] = missing.get(name) or skipped[parent]
            log.warning("skipping %s: %s", name, skipped[name])
            continue
        events.on_start(step, index)
        started = time.monotonic()
        try:
            with staged_context(step, plan) as (context, buildargs):
                image_id = _run_build(
                    client, step, context, buildargs, no_cache=plan.options.no_cache, events=events
                )
        except UserError as exc:
            if not skipped:
                raise
            raise UserError(
                f"{exc} (also skipped {', '.join(skipped)}: {_reasons(skipped)})"
            ) from None
        tag_all(client, image_id, step.refs)
        image = client.images.get(image_id)
        built = BuiltImage(
            step=replace(step, buildargs=buildargs),
            image_id=image.id,
            size=int(image.attrs.get("Size", 0)),
            seconds=time.monotonic() - started,
        )
        log.info("built %s as %s in %.0f s", step.refs[0], image.id[:19], built.seconds)
        events.on_done(built)
        results.append(built)
    if skipped:
        reasons = _reasons(skipped)
        done = ", ".join(b.step.spec.name for b in results) or "nothing"
        raise SkippedImages(
            f"built {done} but skipped {', '.join(skipped)}: {reasons}",
            built=results,
            skipped=list(skipped),
        )
    return results


def build_stage(
    plan: BuildPlan,
    client: docker.DockerClient,
    *,
    image: str,
    target: str,
    events: BuildEvents | None = None,
) -> str:
    """Build ``image``'s parents as usual, then ``image`` only up to stage ``target``.

    The stage image is not tagged; returns its image ID. Raises UserError on failure.
    """
    events = events or BuildEvents()
    names = [step.spec.name for step in plan.steps]
    index = names.index(image)
    execute(replace(plan, steps=plan.steps[:index]), client, events=events)
    step = plan.steps[index]
    events.on_start(step, index)
    with staged_context(step, plan) as (context, buildargs):
        return _run_build(
            client,
            step,
            context,
            buildargs,
            no_cache=plan.options.no_cache,
            events=events,
            target=target,
        )


def copy_out(client: docker.DockerClient, image_id: str, path: str, dest: Path) -> Path:
    """Copy folder ``path`` out of image ``image_id`` into ``dest`` (which must not exist)."""
    with containers.created(image_id, client=client) as container:
        data = containers.archive(container, path)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest / Path(path).name

"""``invoke bases``: the Python base of ``kilosort4`` built from Debian, with no registry.

A site without Docker Hub cannot pull ``python:3.11-slim-bookworm``. This module makes the
same kind of image from Debian's own packages: ``debootstrap --variant=minbase <suite>`` into a
temporary folder (from the site's Debian mirror), imported into the engine as
``<namespace>/debian:<suite>``, then ``docker/python-base/Dockerfile`` on it (Debian's
``python3`` and ``python3-venv``) tagged ``<namespace>/python-base:<python>-<suite>``. The tag
is written to ``build/bases.json`` (:func:`recorded_python_base`), which ``invoke build`` uses
for ``--python-base`` when neither the flag nor the site setting gives one.

An image that is already there is reused (nothing is downloaded) unless ``force`` is set; a
failed step tags nothing (:func:`kilosort_docker.images.build.tag_all`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import docker
import docker.errors

from kilosort_docker import engine, paths
from kilosort_docker.errors import UserError
from kilosort_docker.images import build as build_mod
from kilosort_docker.images import references
from kilosort_docker.images.pins import load_pins
from kilosort_docker.images.tags import LABEL_PREFIX

log = logging.getLogger(__name__)

#: Debian's own redirector to a nearby mirror (Debian, "Debian worldwide mirror sites").
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"
#: The ``python3`` each Debian suite ships (packages.debian.org: python3 3.11.2 in bookworm,
#: 3.13.5 in trixie); Kilosort 4 needs Python >= 3.9 (its setup.py ``python_requires``).
SUITE_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
#: The Dockerfile of the Python base image.
PYTHON_BASE_DIR = paths.DOCKER_DIR / "python-base"
#: Where ``invoke bases`` records the base it made (next to the build records).
RECORD_NAME = "bases.json"


@dataclass(frozen=True)
class BasesPlan:
    """What ``invoke bases`` will make: the Debian mirror URL and suite, the Debian image made
    with debootstrap (``debian_ref``) and the Python base image on it (``python_ref``)."""

    mirror: str
    suite: str
    python_version: str
    debian_ref: str
    python_ref: str
    force: bool = False


@dataclass(frozen=True)
class BasesResult:
    """What was done: each image's reference, image ID (sha256 digest), whether it was built
    (False: an existing image was reused) and seconds spent; and where the record went."""

    plan: BasesPlan
    debian_id: str
    python_id: str
    built_debian: bool
    built_python: bool
    seconds: float
    record: Path | None


def check_mirror(mirror: str) -> str:
    """``mirror`` without a trailing ``/`` if it is an ``http(s)://host/...`` or ``file:///...``
    URL debootstrap can read; else UserError naming the fix."""
    parts = urlsplit(mirror)
    fix = f"give --mirror as a Debian mirror URL, e.g. {DEFAULT_MIRROR} or file:///srv/debian"
    if any(c.isspace() for c in mirror):
        raise UserError(f"--mirror {mirror!r} holds whitespace: {fix}")
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise UserError(f"--mirror {mirror!r} names no host: {fix}")
    elif parts.scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise UserError(f"--mirror {mirror!r} is not file:///<absolute path>: {fix}")
    else:
        raise UserError(f"--mirror {mirror!r} is not an http(s):// or file:/// URL: {fix}")
    return mirror.rstrip("/")


def plan_bases(
    *,
    mirror: str | None = None,
    suite: str | None = None,
    namespace: str | None = None,
    force: bool = False,
) -> BasesPlan:
    """The plan for the given flags (None: the default); raises UserError for a bad mirror URL,
    a suite with no known Python, or a namespace outside Docker's grammar."""
    mirror = check_mirror(mirror or DEFAULT_MIRROR)
    suite = suite or DEFAULT_SUITE
    if suite not in SUITE_PYTHON:
        raise UserError(
            f"--suite {suite!r} is not one this project knows the Python of: use one of "
            f"{', '.join(SUITE_PYTHON)}"
        )
    namespace = references.check_namespace(namespace) or load_pins().namespace
    python = SUITE_PYTHON[suite]
    debian_ref = references.check_reference(f"{namespace}/debian:{suite}", what="Debian image")
    python_ref = references.check_reference(
        f"{namespace}/python-base:{python}-{suite}", what="Python base image"
    )
    return BasesPlan(mirror, suite, python, debian_ref, python_ref, force)


def describe(plan: BasesPlan, *, have: dict[str, bool] | None = None) -> str:
    """What :func:`make_bases` will do, one line per step; ``have`` (ref -> present) says
    which images exist (unknown where absent: the engine was not asked)."""
    have = have or {}

    def fate(ref: str) -> str:
        if ref not in have:
            return "made unless already present (engine not asked)"
        if have[ref] and not plan.force:
            return "already present: reused (--force rebuilds it)"
        return "rebuilt (--force)" if have[ref] else "made"

    lines = [
        f"1. {plan.debian_ref}: debootstrap --variant=minbase {plan.suite} from {plan.mirror}, "
        f"imported into the engine; {fate(plan.debian_ref)}",
        f"2. {plan.python_ref}: {PYTHON_BASE_DIR.relative_to(paths.ROOT)}/Dockerfile on it "
        f"(Debian's python3 {plan.python_version}); {fate(plan.python_ref)}",
        f"3. {record_path()}: python_base = {plan.python_ref} (used by `invoke build` when "
        "neither --python-base nor the site setting kilosort_docker.python_base is given)",
    ]
    needs = missing_tools()
    if needs:
        lines.append(f"debootstrap would fail here: {needs}")
    return "\n".join(lines)


def missing_tools() -> str | None:
    """Why debootstrap cannot run here (not root, not installed), with the fix; None if it can."""
    if os.geteuid() != 0:
        return "debootstrap needs root: run `sudo invoke bases` (or as root)"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed: `sudo apt-get install debootstrap`"
    return None


def debootstrap(plan: BasesPlan, rootfs: Path, *, on_line: Callable[[str], None]) -> None:
    """``debootstrap --variant=minbase <suite> <rootfs> <mirror>``; UserError if it fails, with
    its last output lines."""
    argv = ["debootstrap", "--variant=minbase", plan.suite, str(rootfs), plan.mirror]
    log.info("running %s", " ".join(argv))
    tail: list[str] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-4:], line]
            on_line(line)
    if proc.returncode != 0:
        raise UserError(
            f"debootstrap from {plan.mirror} failed (exit {proc.returncode}: "
            f"{' | '.join(tail)[-300:]}): check --mirror and --suite, and that the mirror is "
            "reachable"
        )


#: The label of the images ``invoke bases`` makes (``debian``, ``python-base``): ``invoke clean
#: --bases`` finds them by it.
BASE_LABEL = f"{LABEL_PREFIX}.base"


def import_rootfs(client: docker.DockerClient, rootfs: Path, ref: str) -> str:
    """Import the folder ``rootfs`` as image ``ref`` (untagged until the import is complete);
    returns its image ID."""
    with tempfile.TemporaryDirectory(prefix="kilosort-docker-rootfs-tar-") as tmp:
        archive = Path(tmp) / "rootfs.tar"
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(archive), "."],
            check=True,
        )
        answer = client.api.import_image(src=str(archive), changes=[f"LABEL {BASE_LABEL}=debian"])
    image_id = None
    for line in str(answer).splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "error" in event:
            raise UserError(f"the engine refused the Debian root filesystem: {event['error']}")
        image_id = event.get("status", image_id)
    if not image_id or not image_id.startswith("sha256:"):
        raise UserError(f"importing the Debian root filesystem gave no image ({answer!r:.200})")
    build_mod.tag_all(client, image_id, [ref])
    return image_id


def build_python_base(
    client: docker.DockerClient, plan: BasesPlan, *, on_line: Callable[[str], None]
) -> str:
    """Build ``docker/python-base`` on ``plan.debian_ref`` and tag it ``plan.python_ref`` once
    complete; returns the image ID. UserError if the build fails (nothing is tagged)."""
    image_id = None
    stream = client.api.build(
        path=str(PYTHON_BASE_DIR),
        buildargs={"BASE_IMAGE": plan.debian_ref, "PYTHON_VERSION": plan.python_version},
        labels={
            "org.opencontainers.image.base.name": plan.debian_ref,
            f"{LABEL_PREFIX}.debian-suite": plan.suite,
            BASE_LABEL: "python-base",
        },
        nocache=plan.force,
        rm=True,
        forcerm=True,
        pull=False,
        decode=True,
    )
    for event in stream:
        for line in event.get("stream", "").splitlines():
            if line.strip():
                on_line(line)
        if isinstance(event.get("aux"), dict) and "ID" in event["aux"]:
            image_id = event["aux"]["ID"]
        if "error" in event:
            detail = " ".join(str(event["error"]).split())[:300]
            raise UserError(
                f"building {plan.python_ref} failed: {detail} (check the Debian mirror the "
                "image's apt reads, and the build log above)"
            )
    if image_id is None:
        raise UserError(f"building {plan.python_ref} ended without an image: rerun with --force")
    build_mod.tag_all(client, image_id, [plan.python_ref])
    return image_id


def ensure_debian(
    plan: BasesPlan,
    client: docker.DockerClient,
    *,
    on_line: Callable[[str], None] = lambda line: None,
    on_stage: Callable[[str], None] = lambda text: None,
) -> tuple[str, bool]:
    """``plan.debian_ref``, made with debootstrap unless it exists (and ``plan.force`` is not
    set): returns its image ID and whether it was made.

    Raises UserError before any work if debootstrap cannot run here (not root, not installed),
    and if debootstrap or the import fails (nothing is tagged)."""
    if engine.image_exists(client, plan.debian_ref) and not plan.force:
        on_stage(f"reusing {plan.debian_ref} (--force rebuilds it)")
        return client.images.get(plan.debian_ref).id, False
    problem = missing_tools()
    if problem:
        raise UserError(problem)
    on_stage(f"debootstrap {plan.suite} from {plan.mirror} (a minute or two)")
    with tempfile.TemporaryDirectory(prefix="kilosort-docker-debootstrap-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        debootstrap(plan, rootfs, on_line=on_line)
        on_stage(f"importing the root filesystem as {plan.debian_ref}")
        return import_rootfs(client, rootfs, plan.debian_ref), True


def make_bases(
    plan: BasesPlan,
    client: docker.DockerClient,
    *,
    on_line: Callable[[str], None] = lambda line: None,
    on_stage: Callable[[str], None] = lambda text: None,
    record: bool = True,
) -> BasesResult:
    """Make (or reuse) the Debian image and the Python base image of ``plan``, and record the
    Python base for ``invoke build`` unless ``record`` is False.

    A new Debian image rebuilds the Python base on it. Raises UserError, before any work, if
    debootstrap must run but cannot (not root, not installed); and if debootstrap, the import
    or the build fails (no tag is left half-made).
    """
    started = time.monotonic()
    replaced = [_image_id(client, ref) for ref in (plan.python_ref, plan.debian_ref)]
    debian_id, built_debian = ensure_debian(plan, client, on_line=on_line, on_stage=on_stage)
    have_python = engine.image_exists(client, plan.python_ref)
    built_python = built_debian or plan.force or not have_python
    if built_python:
        on_stage(f"building {plan.python_ref} on {plan.debian_ref}")
        python_id = build_python_base(client, plan, on_line=on_line)
    else:
        on_stage(f"reusing {plan.python_ref} (--force rebuilds it)")
        python_id = client.images.get(plan.python_ref).id
    for old_id in replaced:
        if old_id not in (None, debian_id, python_id):
            _remove_if_untagged(client, old_id)
    where = save_record(plan) if record else None
    return BasesResult(
        plan, debian_id, python_id, built_debian, built_python, time.monotonic() - started, where
    )


def _image_id(client: docker.DockerClient, ref: str) -> str | None:
    return client.images.get(ref).id if engine.image_exists(client, ref) else None


def _remove_if_untagged(client: docker.DockerClient, image_id: str) -> None:
    """Remove an image ``--force`` replaced, unless a tag, an image or a container still uses
    it, so a rebuild leaves no dangling image behind."""
    try:
        if client.api.inspect_image(image_id).get("RepoTags"):
            return
        client.api.remove_image(image_id)
        log.info("removed the replaced image %s", image_id[:19])
    except docker.errors.ImageNotFound:
        pass  # pruned with the image built on it
    except docker.errors.DockerException as exc:
        log.info("kept the replaced image %s (%s)", image_id[:19], exc)


def record_path(folder: Path | None = None) -> Path:
    """``build/bases.json`` (or in ``$KILOSORT_DOCKER_BUILD_RECORD_DIR``)."""
    return (folder or paths.BUILD_RECORD_DIR) / RECORD_NAME


def save_record(plan: BasesPlan, *, folder: Path | None = None) -> Path:
    """Write the record of ``plan``'s images atomically; returns its path."""
    path = record_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "python_base": plan.python_ref,
        "debian": plan.debian_ref,
        "suite": plan.suite,
        "mirror": plan.mirror,
    }
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def recorded_python_base(*, folder: Path | None = None) -> str | None:
    """The Python base ``invoke bases`` made and recorded, or None if there is no record.

    Raises UserError for a record that is not JSON or names no valid reference."""
    path = record_path(folder)
    if not path.is_file():
        return None
    try:
        ref = json.loads(path.read_text())["python_base"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is damaged: delete it and run `invoke bases` again") from None
    return references.check_reference(
        ref, what=f"{path} python_base", fix="delete it and run `invoke bases` again"
    )

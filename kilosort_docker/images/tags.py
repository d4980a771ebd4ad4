"""Tags and labels for an image of the stack.

Tags tie an image to the Kilosort version and MATLAB release it carries
(``kilosort3:3.0.2-r2022b``), plus an immutable tag with the build number from ``VERSION``
(``kilosort3:3.0.2-r2022b-b1``). Labels follow the OCI image spec's annotation keys and add
the project's own under ``io.kilosort-docker.``.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from kilosort_docker import git
from kilosort_docker.errors import UserError
from kilosort_docker.images.pins import Pins
from kilosort_docker.images.profiles import DEFAULT_PROFILE, Profile
from kilosort_docker.images.spec import ImageSpec, PlanContext
from kilosort_docker.paths import ROOT

LABEL_PREFIX = "io.kilosort-docker"


def repository(spec: ImageSpec, namespace: str, registry: str | None = None) -> str:
    """``[registry/]namespace/name``, e.g. ``127.0.0.1:5000/kilosortdocker/kilosort3``."""
    parts = [p.strip("/") for p in (registry, namespace) if p]
    return "/".join([*parts, spec.name])


def version_tag(spec: ImageSpec, profile: Profile, pins: Pins) -> str:
    """The moving tag: what the image holds (``3.0.2-r2022b``, ``r2022b``, ``4.1.7``)."""
    return spec.version(PlanContext(profile, pins))


def tags(spec: ImageSpec, profile: Profile, pins: Pins) -> list[str]:
    """Tags for ``spec``, immutable one first: ``[3.0.2-r2022b-b1, 3.0.2-r2022b, latest?]``.

    ``latest`` goes only to images of the default profile (and to ``kilosort4``).
    """
    moving = version_tag(spec, profile, pins)
    result = [f"{moving}-b{pins.release.build}", moving]
    if not spec.per_profile or profile.name == DEFAULT_PROFILE:
        result.append("latest")
    return result


def git_revision() -> str:
    """This repository's commit (with ``-dirty`` for local changes), or ``unknown``."""
    return git.revision(ROOT)


#: The reproducible-builds.org variable that fixes a build's timestamps
#: (https://reproducible-builds.org/specs/source-date-epoch/).
SOURCE_DATE_EPOCH = "SOURCE_DATE_EPOCH"


def source_date_epoch(repository: Path | None = None) -> int:
    """The time the images are dated with, in seconds since 1970 (UTC).

    ``SOURCE_DATE_EPOCH`` when it is set (an integer, as ``date +%s`` prints it); else the
    committer time of the last commit of ``repository`` (this repository by default), as
    reproducible-builds.org's SOURCE_DATE_EPOCH specification suggests for a build from a
    version-control checkout (``git log -1 --pretty=%ct``). Local changes do not move it, so a
    rebuild with nothing changed gets the same labels, the build cache and the same image IDs.

    Raises UserError for a malformed ``SOURCE_DATE_EPOCH`` (the specification says a build
    should fail then), and when ``repository`` is not a git checkout with a commit: there is no
    stable time to take there (file times change with every copy), so the build stops before
    any work and asks for ``SOURCE_DATE_EPOCH``.
    """
    value = os.environ.get(SOURCE_DATE_EPOCH, "").strip()
    if value:
        if not value.isascii() or not value.isdigit():
            raise UserError(
                f"{SOURCE_DATE_EPOCH}={value!r} is not a time in seconds since 1970: set it to "
                "an integer, e.g. $(git log -1 --pretty=%ct), or unset it to use the last "
                "commit's time"
            )
        return int(value)
    repository = repository or ROOT
    stamp = git.commit_time(repository)
    if stamp is None:
        raise UserError(
            f"cannot date the images: {repository} is not a git checkout with a commit (the "
            f"created label is the last commit's time): set {SOURCE_DATE_EPOCH} to the "
            "source's time in seconds since 1970, e.g. SOURCE_DATE_EPOCH=1700000000"
        )
    return stamp


def rfc3339(epoch: int) -> str:
    """``epoch`` (seconds since 1970) as an RFC 3339 UTC time, ``2026-01-01T00:00:00Z``."""
    when = dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc)
    return when.isoformat().replace("+00:00", "Z")


def created_timestamp(repository: Path | None = None) -> str:
    """The ``org.opencontainers.image.created`` label: :func:`source_date_epoch` in RFC 3339
    (UTC). Raises UserError like :func:`source_date_epoch`."""
    return rfc3339(source_date_epoch(repository))


def labels(
    spec: ImageSpec,
    profile: Profile,
    pins: Pins,
    *,
    base_name: str,
    revision: str,
    created: str,
) -> dict[str, str]:
    """OCI and project labels for ``spec``.

    ``base_name`` is the image it is built ``FROM``; ``revision`` this repository's commit.
    The Kilosort commit label is set by the Dockerfile from the commit actually checked out.
    """
    result = {
        "org.opencontainers.image.title": spec.name,
        "org.opencontainers.image.description": spec.title,
        "org.opencontainers.image.version": tags(spec, profile, pins)[0],
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.source": pins.source_url,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.base.name": base_name,
        f"{LABEL_PREFIX}.image": spec.name,
        f"{LABEL_PREFIX}.release": str(pins.release),
    }
    if spec.per_profile:
        result.update(
            {
                f"{LABEL_PREFIX}.profile": profile.name,
                f"{LABEL_PREFIX}.matlab.release": profile.matlab_release,
                f"{LABEL_PREFIX}.cuda.version": profile.cuda,
            }
        )
    result.update(spec.labels(PlanContext(profile, pins)))
    return result

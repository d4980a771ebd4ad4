"""The build record: what ``invoke build`` actually built, in ``build/<profile>.json``.

``check-images``, ``push`` and ``release --push`` read it, so they act on the images that were
built with the options they were built with (a ``--kilosort-commit`` build is checked against
that commit), not on a plan recomputed from defaults. A push adds each reference's manifest
digest. The file is replaced atomically; a build of some images keeps the others' entries.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kilosort_docker import paths
from kilosort_docker.errors import UserError
from kilosort_docker.images import references
from kilosort_docker.images.options import BuildOptions

log = logging.getLogger(__name__)

SCHEMA = 1


@dataclass(frozen=True)
class RecordedImage:
    """One built image: stack entry name, references (immutable tag first), image ID, labels,
    the options it was built with, and ``{remote reference: manifest digest}`` for every push
    so far."""

    name: str
    refs: tuple[str, ...]
    image_id: str
    labels: Mapping[str, str]
    options: BuildOptions = field(default_factory=BuildOptions)
    digests: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildRecord:
    """The images built for one profile and the release (``VERSION``) they belong to."""

    profile: str
    release: str
    images: tuple[RecordedImage, ...]

    def image(self, name: str) -> RecordedImage | None:
        return next((i for i in self.images if i.name == name), None)

    def merged(self, newer: BuildRecord) -> BuildRecord:
        """This record updated by ``newer`` (a later build, maybe of fewer images): newer
        entries replace older ones of the same name; the release is the newer. A rebuild that
        gave the same image ID (nothing changed) keeps the digests of the pushes made so far:
        the registry still holds that image."""
        names = {i.name for i in newer.images}
        kept = tuple(i for i in self.images if i.name not in names)
        updated = []
        for image in newer.images:
            old = self.image(image.name)
            if old is not None and old.image_id == image.image_id and old.refs == image.refs:
                image = replace(image, digests={**old.digests, **image.digests})
            updated.append(image)
        return replace(newer, images=kept + tuple(updated))

    def with_digests(self, pushed: Mapping[str, str], local_of: Mapping[str, str]) -> BuildRecord:
        """A copy with ``pushed`` (``{remote ref: digest}``) added to the images whose local
        reference ``local_of[remote]`` names."""
        images = []
        for image in self.images:
            added = {r: d for r, d in pushed.items() if local_of.get(r) in image.refs}
            images.append(replace(image, digests={**image.digests, **added}))
        return replace(self, images=tuple(images))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "profile": self.profile,
            "release": self.release,
            "written": dt.datetime.now(tz=dt.timezone.utc).replace(microsecond=0).isoformat(),
            "images": [
                {
                    "name": i.name,
                    "refs": list(i.refs),
                    "image_id": i.image_id,
                    "labels": dict(i.labels),
                    "options": i.options.to_dict(),
                    "digests": dict(i.digests),
                }
                for i in self.images
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BuildRecord:
        """The inverse of :meth:`to_dict`; raises TypeError for a value of the wrong type and
        ValueError for a reference outside Docker's grammar."""
        for image in data["images"]:
            refs = image["refs"]
            if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
                raise TypeError(f"refs of {image.get('name')!r} is not a list of references")
            for ref in refs:  # Docker's grammar, so a hand-edited record fails here, not later
                if not references.is_reference(ref):
                    raise ValueError(f"{ref!r} of {image.get('name')!r} is not an image reference")
        return cls(
            profile=data["profile"],
            release=data["release"],
            images=tuple(
                RecordedImage(
                    name=i["name"],
                    refs=tuple(i["refs"]),
                    image_id=i["image_id"],
                    labels=i.get("labels", {}),
                    options=BuildOptions.from_dict(i.get("options", {})),
                    digests=i.get("digests", {}),
                )
                for i in data["images"]
            ),
        )


def record_path(profile: str, *, folder: Path | None = None) -> Path:
    """``build/<profile>.json`` (in ``folder`` instead of the repository's ``build/``)."""
    return (folder or paths.BUILD_RECORD_DIR) / f"{profile}.json"


def load(profile: str, *, folder: Path | None = None) -> BuildRecord | None:
    """The record for ``profile``, or None if nothing was built for it yet.

    Raises UserError if the file is not a build record (naming the fix: rebuild).
    """
    path = record_path(profile, folder=folder)
    try:
        data = json.loads(path.read_text())
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}")
        return BuildRecord.from_dict(data)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(
            f"{path} is not a build record ({type(exc).__name__}: {exc}): delete it and run "
            "`invoke build` again"
        ) from None


def save(record: BuildRecord, *, folder: Path | None = None, merge: bool = True) -> Path:
    """Write ``record`` (merged into the one on disk unless ``merge`` is False) atomically;
    returns the path."""
    path = record_path(record.profile, folder=folder)
    if merge:
        old = load(record.profile, folder=folder)
        if old is not None:
            record = old.merged(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(record.to_dict(), out, indent=2)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("build record in %s", path)
    return path


def from_build(
    options: BuildOptions, release: str, built: Iterable[Any], *, profile: str
) -> BuildRecord:
    """A record of ``built`` (:class:`~kilosort_docker.images.build.BuiltImage` items)."""
    return BuildRecord(
        profile=profile,
        release=release,
        images=tuple(
            RecordedImage(
                name=b.step.spec.name,
                refs=tuple(b.step.refs),
                image_id=b.image_id,
                labels=dict(b.step.labels),
                options=options,
            )
            for b in built
        ),
    )

"""What the kilosort3 image's mex-build stage receives.

Committed binaries in ``mex-binaries/<profile>/<kilosort commit>/`` are used when their
manifest names the same profile and Kilosort commit and every checksum holds; the stage checks
the checksums again (``SHA256SUMS``). Otherwise the stage compiles the mex files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from kilosort_docker.errors import UserError
from kilosort_docker.plan import BuildPlan, mex_binaries_folder

log = logging.getLogger(__name__)

STAGE_SCRIPT = Path(__file__).resolve().parent.parent / "docker" / "kilosort3" / "stage.sh"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_checksums(manifest: dict) -> dict[str, str]:
    """``{file name: sha256}`` for every binary a manifest lists."""
    binaries = manifest.get("binaries", {})
    if isinstance(binaries, dict):
        return {name: entry["sha256"] for name, entry in binaries.items()}
    return {entry["file"]: entry["sha256"] for entry in binaries}


def prebuilt_problems(folder: Path, *, profile: str, commit: str) -> list[str]:
    """Why the binaries in ``folder`` cannot be used for this profile and commit (empty: usable)."""
    manifest_file = folder / "manifest.json"
    if not manifest_file.is_file():
        return [f"{manifest_file} is missing"]
    try:
        manifest = json.loads(manifest_file.read_text())
        checksums = manifest_checksums(manifest)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return [f"{manifest_file} is malformed ({exc})"]
    problems = []
    if manifest.get("profile") != profile:
        problems.append(f"manifest is for profile {manifest.get('profile')}, not {profile}")
    if not str(manifest.get("kilosort_commit", "")).startswith(commit):
        problems.append(f"manifest is for Kilosort {manifest.get('kilosort_commit')}, not {commit}")
    if not checksums:
        problems.append("manifest lists no binaries")
    for name, expected in checksums.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(path) != expected:
            problems.append(f"{name} does not match its manifest checksum")
    return problems


def stage(plan: BuildPlan, dest: Path) -> str:
    """Fill ``dest`` (the context's ``mex/``) for the stage; returns ``prebuilt`` or ``compile``.

    Raises UserError if committed binaries exist but fail their manifest (nothing is used or
    overwritten), or if there is nothing to compile from.
    """
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(STAGE_SCRIPT, dest / "stage.sh")
    folder = mex_binaries_folder(plan.options, plan.profile, plan.pins)
    if folder.is_dir():
        problems = prebuilt_problems(
            folder, profile=plan.profile.name, commit=plan.pins.kilosort3.commit
        )
        if problems:
            raise UserError(
                f"committed mex binaries in {folder} fail their manifest ({'; '.join(problems)}): "
                "rebuild them with `invoke build-mex --force`, or remove the folder to compile"
            )
        manifest = json.loads((folder / "manifest.json").read_text())
        prebuilt = dest / "prebuilt"
        prebuilt.mkdir()
        sums = []
        for name, sha in sorted(manifest_checksums(manifest).items()):
            shutil.copy2(folder / name, prebuilt / name)
            sums.append(f"{sha}  {name}\n")
        shutil.copy2(folder / "manifest.json", prebuilt / "manifest.json")
        (prebuilt / "SHA256SUMS").write_text("".join(sums))
        log.info("using committed mex binaries from %s", folder)
        return "prebuilt"
    raise UserError(
        f"no committed mex binaries in {folder}: run `invoke build-mex` "
        f"(profile {plan.profile.name}) first"
    )

"""What a secret looks like: the file names and contents that must never reach an image.

Licenses, keys and registry logins belong to run time. The build leaves files with these names
out of every build context (:func:`copy_without_secrets`), and the ``no-secrets`` image check
looks for the same names and contents in every layer. FlexLM's license file syntax (``SERVER``,
``FEATURE``/``INCREMENT`` lines of vendor ``MLM``) is MathWorks' license format; Docker's login
file is ``~/.docker/config.json`` with an ``auths`` map (Docker's ``docker login`` reference).
"""

from __future__ import annotations

import fnmatch
import logging
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

#: File names that hold a secret wherever they are: MATLAB licenses and login files.
SECRET_FILE_NAMES = ("*.lic", "license.dat", ".netrc", ".git-credentials", ".pypirc")
#: Left out of a build context too: keys and logins by name. In a layer these names are
#: ordinary (a package's ``config.json``, a public ``*.key``), so there only contents count.
CONTEXT_ONLY_NAMES = (
    "*.key",
    "id_rsa*",
    "id_ed25519*",
    ".env",
    "config.json",
    "credentials.json",
    "*.p12",
)
#: Names and paths that are a secret in a layer: cloud credential files, Docker's login file.
LAYER_ONLY_NAMES = ("credentials.json",)
LAYER_ONLY_PATHS = (".docker/config.json", "*/.docker/config.json")

#: Contents that are a secret in any file: private keys, FlexLM license lines (a feature of
#: vendor MLM, or a license server with a host ID), a registry login in Docker's config format.
SECRET_CONTENT = re.compile(
    rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"
    rb"|^(?:INCREMENT|FEATURE) \S+ MLM \S+"
    rb"|^SERVER \S+ (?:[0-9A-Fa-f]{12}|ID=\d+|ANY)\b"
    rb'|"auths"\s*:\s*\{\s*"[^"]+"\s*:\s*\{\s*"auth"\s*:\s*"[A-Za-z0-9+/=]{8,}',
    re.MULTILINE,
)

#: What replaces a secret (a license value, a password) in logs, output and error messages.
REDACTED = "***"


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty string of ``secrets`` replaced by :data:`REDACTED`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


_LAYER_NAMES = re.compile(
    "|".join(fnmatch.translate(p) for p in (*SECRET_FILE_NAMES, *LAYER_ONLY_NAMES))
)
_LAYER_PATHS = re.compile("|".join(fnmatch.translate(p) for p in LAYER_ONLY_PATHS))


def is_secret_path(path: str) -> bool:
    """True if a file at ``path`` (relative, inside an image layer) is named like a secret."""
    return bool(_LAYER_NAMES.match(path.rsplit("/", 1)[-1]) or _LAYER_PATHS.match(path))


def _ignore(directory: str, names: list[str]) -> set[str]:
    patterns = (*SECRET_FILE_NAMES, *CONTEXT_ONLY_NAMES)
    skipped = set(shutil.ignore_patterns("__pycache__", *patterns)(directory, names))
    for name in sorted(skipped - {"__pycache__"}):
        log.warning(
            "not copying %s/%s into the build context: it may hold a secret", directory, name
        )
    return skipped


def copy_without_secrets(src: Path, dest: Path) -> None:
    """Copy the tree ``src`` into ``dest`` (which may exist), leaving out ``__pycache__`` and
    every file named like a secret, with a warning naming each one left out."""
    shutil.copytree(src, dest, dirs_exist_ok=True, ignore=_ignore)

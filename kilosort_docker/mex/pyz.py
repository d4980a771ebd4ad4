"""Pack this package into one zipapp, ``mex.pyz``, for the kilosort3 image's build stage.

The stage has Ubuntu's ``python3`` (3.8 on Ubuntu 20.04) and no third-party package, so it gets
a minimal ``kilosort_docker`` package: a stdlib-only ``__init__.py``, ``errors.py``,
``atomic.py`` and the whole ``mex/`` subpackage with its spec files, plus a top-level
``__main__.py`` calling :func:`kilosort_docker.mex.cli.main`. It runs as
``python3 -I mex.pyz COMMAND ...`` (Python documentation, "zipapp — Manage executable Python
zip archives": https://docs.python.org/3/library/zipapp.html).

The archive is deterministic, so Docker's layer cache survives a rebuild: entries sorted by
name, every timestamp 1980-01-01 00:00:00 (the earliest a zip entry can hold), fixed Unix
permissions (0644), deflate compression.
"""

from __future__ import annotations

import io
import os
import zipapp
import zipfile
from pathlib import Path

from kilosort_docker.errors import UserError

#: Interpreter line of the archive (``./mex.pyz`` runs it with the PATH's python3).
INTERPRETER = "/usr/bin/env python3"

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o100644  # regular file, rw-r--r--

_INIT = '''\
"""kilosort-docker's mex tools, packed by kilosort_docker.mex.pyz for the build stage.

Only errors, atomic and mex are inside; the rest of kilosort_docker is not.
"""

from kilosort_docker.errors import UserError

__all__ = ["UserError"]
'''

_MAIN = '''\
"""Entry point of mex.pyz: the kilosort_docker.mex command line."""

import sys

from kilosort_docker.mex.cli import main

sys.exit(main())
'''


def zipapp_files() -> dict[str, bytes]:
    """Archive name -> content of every entry, read from this installed package.

    Raises UserError if the package is not installed as plain files (e.g. when run from
    inside a zipapp itself).
    """
    mex_dir = Path(__file__).resolve().parent
    package_dir = mex_dir.parent
    if not (package_dir / "errors.py").is_file():
        raise UserError(
            f"cannot pack {mex_dir}: kilosort_docker must be installed as files, not zipped"
        )
    files = {
        "__main__.py": _MAIN.encode(),
        "kilosort_docker/__init__.py": _INIT.encode(),
        "kilosort_docker/errors.py": (package_dir / "errors.py").read_bytes(),
        "kilosort_docker/atomic.py": (package_dir / "atomic.py").read_bytes(),
    }
    for path in mex_dir.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".json") and "__pycache__" not in path.parts:
            name = path.relative_to(package_dir).as_posix()
            files[f"kilosort_docker/{name}"] = path.read_bytes()
    return files


def write_zipapp(dest: str | os.PathLike) -> Path:
    """Write the zipapp (see the module docstring) to ``dest``; returns its path.

    The same package files give the same bytes, whenever and wherever it is written. The file
    is written beside ``dest`` and renamed into place. Raises UserError (see
    :func:`zipapp_files`) or OSError.
    """
    dest = Path(dest)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in sorted(zipapp_files().items()):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.create_system = 3  # Unix, so external_attr holds the mode everywhere
            info.external_attr = _FILE_MODE << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    buffer.seek(0)
    tmp = dest.with_name(f".{dest.name}.tmp")
    zipapp.create_archive(buffer, str(tmp), interpreter=INTERPRETER)
    os.replace(tmp, dest)
    return dest

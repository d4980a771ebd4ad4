"""Replace a folder with a freshly built one, putting the old one back if the swap fails.

Standard library only, Python >= 3.8: the mex build stage runs it inside ``mex.pyz`` (see
:mod:`kilosort_docker.mex.pyz`). Both renames are ``rename(2)`` calls, so the staged folder
must sit on the same file system as the destination (stage it in the destination's parent).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from kilosort_docker.errors import UserError

log = logging.getLogger(__name__)


def replace_folder(staged: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move ``staged`` to ``dest``; an existing ``dest`` is moved aside first, then deleted.

    The old folder goes to a fresh hidden folder beside ``dest``
    (``.<name>.old-XXXXXX/<name>``). If moving ``staged`` into place fails, the old folder is
    renamed back to ``dest`` and the OSError is raised again, so ``dest`` holds exactly what it
    held before. ``staged`` stays where it was on failure (the caller cleans it up).

    Raises:
        OSError: a rename failed (``dest`` restored; ``staged`` not moved).
        UserError: the rename failed AND the old folder could not be put back; the message
            names where it is.
    """
    staged, dest = Path(staged), Path(dest)
    if not dest.exists():
        os.rename(staged, dest)
        return
    holder = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    aside = holder / dest.name
    try:
        os.rename(dest, aside)
    except OSError:
        shutil.rmtree(holder, ignore_errors=True)
        raise
    try:
        os.rename(staged, dest)
    except OSError as exc:
        try:
            os.rename(aside, dest)
        except OSError as again:
            raise UserError(
                f"could not move {staged} to {dest} ({exc}) nor put the old folder back "
                f"({again}): it is in {aside}; move it back by hand"
            ) from exc
        shutil.rmtree(holder, ignore_errors=True)
        log.debug("restored %s after a failed swap", dest)
        raise
    shutil.rmtree(holder, ignore_errors=True)

"""Running the generated Makefile, and the whole build: compile, manifest, swap into place.

``make -jN`` runs one job per core (GNU make manual, "Parallel Execution"); the first failed
command stops the build and :func:`first_error` turns nvcc's, g++'s, nvlink's or ld's
message into one line naming the file.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from kilosort_docker.atomic import replace_folder
from kilosort_docker.errors import UserError
from kilosort_docker.mex.commands import write_makefile
from kilosort_docker.mex.errors import MexBuildError
from kilosort_docker.mex.manifest import (
    check_sources,
    load_manifest,
    verify_manifest,
    write_manifest,
)
from kilosort_docker.mex.toolchain import MexPlan

log = logging.getLogger(__name__)

#: nvcc (``file(line): error: ...``), gcc (``file:line:col: error: ...``), make (missing
#: prerequisite) and linker (``nvlink error``, ``ld: ...``) error lines.
_ERROR_PATTERNS = (
    re.compile(r"^(?P<file>[^\s:()]+)\((?P<line>\d+)\): (?:catastrophic )?error: (?P<msg>.*)$"),
    re.compile(r"^(?P<file>[^\s:()]+):(?P<line>\d+):(?:\d+:)? (?:fatal )?error: (?P<msg>.*)$"),
    re.compile(r"^make: \*\*\* No rule to make target '(?P<file>[^']+)'.*$"),
    re.compile(r"^(?P<file>nvlink|ld|/usr/bin/ld)(?: error)?\s*:\s*(?P<msg>.*)$"),
)


def first_error(output: str) -> str:
    """The first compiler/linker error in make output, as ``file:line: message`` (one line).

    Falls back to the first target make reports as failed, then to the last non-empty line.
    """
    for line in output.splitlines():
        line = line.strip()
        for pattern in _ERROR_PATTERNS:
            match = pattern.match(line)
            if match:
                parts = match.groupdict()
                where = parts["file"] + (f":{parts['line']}" if parts.get("line") else "")
                msg = parts.get("msg") or "no rule to make it (missing file)"
                return f"{where}: {msg}"
    failed = re.findall(r"^make: \*\*\* \[[^\]]*?:\s*(\S+)\] Error", output, re.M)
    if failed:
        return f"{failed[0]}: command failed (see the output above)"
    tail = [ln for ln in output.splitlines() if ln.strip()]
    return tail[-1] if tail else "make failed with no output"


def run_make(
    makefile: str | os.PathLike,
    variables: Mapping[str, str] | None = None,
    *,
    jobs: int | None = None,
    targets: Sequence[str] = (),
    echo: bool = True,
) -> str:
    """Run ``make -f makefile -jN VAR=value... targets``; returns the combined output.

    ``jobs`` defaults to one per core (``os.cpu_count()``). With ``echo`` the output goes to
    stderr as it comes. Raises MexBuildError naming the first error's file and message.
    """
    jobs = jobs or os.cpu_count() or 1
    argv = ["make", "-f", str(makefile), f"-j{jobs}"]
    argv += [f"{k}={v}" for k, v in (variables or {}).items()]
    argv += list(targets)
    log.info("running %s", " ".join(shlex.quote(a) for a in argv))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    chunks = []
    assert proc.stdout is not None
    for line in proc.stdout:
        chunks.append(line)
        if echo:
            sys.stderr.write(line)
    output = "".join(chunks)
    if proc.wait() != 0:
        raise MexBuildError(f"mex build failed: {first_error(output)}")
    return output


def build(
    plan: MexPlan,
    out_dir: str | os.PathLike,
    *,
    jobs: int | None = None,
    replace_existing: bool = False,
    echo: bool = True,
    cuobjdump: str | None = None,
) -> dict:
    """Compile every mex of ``plan`` into ``out_dir`` with its manifest; returns the manifest.

    Work happens in a temporary folder beside ``out_dir`` and moves into place
    (:func:`kilosort_docker.atomic.replace_folder`) only after the build and the manifest
    succeed, so a failure leaves an existing ``out_dir`` untouched. A non-empty ``out_dir`` is
    refused unless ``replace_existing``. Raises UserError for bad gencodes or missing sources
    (before compiling), MexBuildError for compiler errors.
    """
    out_dir = Path(out_dir).absolute()
    plan = replace(plan, toolchain=plan.toolchain.validated())
    check_sources(plan)
    if out_dir.exists() and any(out_dir.iterdir()) and not replace_existing:
        raise UserError(
            f"{out_dir} already holds files: choose another folder or pass replace_existing "
            "(--replace) to swap them after a successful build"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        staged, obj = work / "bin", work / "obj"
        makefile = write_makefile(plan, work / "Makefile", out_dir=str(staged), obj_dir=str(obj))
        run_make(makefile, jobs=jobs, echo=echo)
        write_manifest(staged, plan, out_var=str(out_dir), obj_var="obj", cuobjdump=cuobjdump)
        problems = [p for p in verify_manifest(staged) if p.severity == "error"]
        if problems:
            raise UserError(f"fresh build does not match its manifest: {problems[0]}")
        replace_folder(staged, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return load_manifest(out_dir)

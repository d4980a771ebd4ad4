"""Running this repository's invoke tasks as a user does (a real ``invoke`` process), and
reading a refusal: one ``error: ...`` line on stderr."""

from __future__ import annotations

import os
import subprocess
import sys

from .paths import REPO_ROOT


def invoke(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -m invoke ARGS`` in the repository root, this environment plus ``env``
    (output captured as text)."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def one_error_line(result: subprocess.CompletedProcess, *, code: int | None = None) -> str:
    """The single ``error: ...`` line of a refused command (no traceback); asserts a non-zero
    exit, or exactly ``code`` when given."""
    if code is None:
        assert result.returncode != 0, (result.stdout, result.stderr)
    else:
        assert result.returncode == code, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]

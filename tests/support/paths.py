"""Where things are: the repository, the tests, the stand-ins."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
REPO_ROOT = TESTS.parent
STANDINS = TESTS / "standins"

"""bump.py in a temporary git repository holding copies of the pin files.

Upstream is the local server of ``test_upstream.py`` (the ``fake_api`` fixture); the real
repository's files are only read (to copy them) and checked unchanged at the end.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import tomllib

from kilosort_docker.errors import UserError
from kilosort_docker.images.pins import Release, load_pins
from kilosort_docker.release import bump
from tests.support import (
    COMMITS,
    PINNED_FILES,
    REPO_ROOT,
    TAGS_PATH,
    TODAY,
    FakeAPI,
    closed_port,
    git,
    github_tag,
    isolate,
)

FILES = PINNED_FILES


def _digests(root: Path) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in FILES}


REAL_FILES = _digests(REPO_ROOT)


def run_bump(root: Path, fake_api: FakeAPI, kilosort: str | None, **kwargs) -> bump.BumpPlan:
    return bump.bump(
        root, kilosort, api_url=fake_api.url, pypi_url=fake_api.url, today=TODAY, **kwargs
    )


def test_kilosort3_bump_pins_the_tag_commit(pinned_repo: Path, fake_api: FakeAPI) -> None:
    old_toml = (pinned_repo / "kilosort-docker.toml").read_text()
    plan = run_bump(pinned_repo, fake_api, "3.0.3")
    assert (plan.old_release, plan.new_release) == (Release("3.0.2", 1), Release("3.0.3", 2))
    assert (pinned_repo / "VERSION").read_text() == "3.0.3-2\n"
    config = tomllib.loads((pinned_repo / "kilosort-docker.toml").read_text())
    assert config["kilosort3"]["version"] == "3.0.3"
    assert config["kilosort3"]["tag"] == "v3.0.3"
    assert config["kilosort3"]["commit"] == COMMITS["v3.0.3"][:7]  # as short as the old pin
    assert config["kilosort4"]["version"] == "4.1.7"
    # pins and VERSION agree
    pins = load_pins(pinned_repo / "kilosort-docker.toml", pinned_repo / "VERSION")
    assert pins.release == Release("3.0.3", 2)
    assert pins.kilosort3.matches(COMMITS["v3.0.3"])
    # Only the pinned values changed; comments and everything else stayed.
    new_toml = (pinned_repo / "kilosort-docker.toml").read_text()
    changed = {
        (a, b) for a, b in zip(old_toml.splitlines(), new_toml.splitlines(), strict=True) if a != b
    }
    assert changed == {
        ('version = "3.0.2"', 'version = "3.0.3"'),
        ('tag = "v3.0.2"', 'tag = "v3.0.3"'),
        ('commit = "c43f524"', f'commit = "{COMMITS["v3.0.3"][:7]}"'),
    }
    changelog = (pinned_repo / "CHANGELOG.md").read_text()
    first = changelog.index("## ")
    assert changelog[first:].startswith("## 3.0.3-2 (2026-12-01)\n\n- Kilosort3 v3.0.3 (commit ")
    assert changelog.index("## 3.0.3-2") < changelog.index("## 3.0.2-1")
    assert bump.changelog_has(changelog, Release("3.0.3", 2))


def test_kilosort4_bump_keeps_the_kilosort3_version(pinned_repo: Path, fake_api: FakeAPI) -> None:
    plan = run_bump(pinned_repo, fake_api, "4.1.8")
    assert plan.new_release == Release("3.0.2", 2)
    assert (pinned_repo / "VERSION").read_text() == "3.0.2-2\n"
    config = tomllib.loads((pinned_repo / "kilosort-docker.toml").read_text())
    assert config["kilosort4"]["version"] == "4.1.8"
    assert config["kilosort3"]["commit"] == "c43f524"
    assert "- kilosort 4.1.8 from PyPI" in (pinned_repo / "CHANGELOG.md").read_text()
    assert "/pypi/kilosort/json" in fake_api.paths()
    assert not any(path.startswith("/repos/") for path in fake_api.paths())


def test_the_build_number_only_grows(pinned_repo: Path, fake_api: FakeAPI) -> None:
    run_bump(pinned_repo, fake_api, "4.1.8")
    run_bump(pinned_repo, fake_api, "3.0.3")
    run_bump(pinned_repo, fake_api, None, note="rebuild on a patched base image")
    assert (pinned_repo / "VERSION").read_text() == "3.0.3-4\n"
    changelog = (pinned_repo / "CHANGELOG.md").read_text()
    headings = [line for line in changelog.splitlines() if line.startswith("## ")]
    assert [h.split()[1] for h in headings] == ["3.0.3-4", "3.0.3-3", "3.0.2-2", "3.0.2-1"]
    assert "- rebuild on a patched base image" in changelog


def test_dry_run_shows_a_diff_and_writes_nothing(pinned_repo: Path, fake_api: FakeAPI) -> None:
    before = _digests(pinned_repo)
    diff = run_bump(pinned_repo, fake_api, "3.0.3", dry_run=True).diff()
    assert _digests(pinned_repo) == before
    assert "--- a/VERSION\n+++ b/VERSION\n" in diff
    assert "-3.0.2-1\n+3.0.3-2\n" in diff
    assert '\n-version = "3.0.2"\n' in diff
    assert '\n+version = "3.0.3"\n' in diff
    assert "+## 3.0.3-2 (2026-12-01)\n" in diff
    assert "--- a/CHANGELOG.md" in diff
    assert git(pinned_repo, "status", "--porcelain") == ""


@pytest.mark.parametrize(
    ("kilosort", "message"),
    [
        ("3.0.9", r"no tag for 3\.0\.9"),
        ("4.1.9", "PyPI has no installable kilosort 4.1.9"),  # yanked
        ("4.2.0rc1", "pre-, post- and dev releases are not pinned"),
        ("v4.0.0b1", "pre-, post- and dev releases"),
        ("3.0.2", "not newer than the pinned 3.0.2"),
        ("3.0.1", "not newer"),
        ("4.1.7", "not newer"),
        ("2.5.1", "3.x and 4.x only"),
        ("three", "not a version"),
    ],
)
def test_bad_versions_change_nothing(
    pinned_repo: Path, fake_api: FakeAPI, kilosort: str, message
) -> None:
    before = _digests(pinned_repo)
    with pytest.raises(UserError, match=message):
        run_bump(pinned_repo, fake_api, kilosort)
    assert _digests(pinned_repo) == before


def test_malformed_version_file(pinned_repo: Path, fake_api: FakeAPI) -> None:
    (pinned_repo / "VERSION").write_text("3.0.2\n")
    before = _digests(pinned_repo)
    with pytest.raises(UserError, match=r"malformed VERSION '3\.0\.2'.*e\.g\. 3\.0\.2-1"):
        run_bump(pinned_repo, fake_api, "3.0.3")
    assert _digests(pinned_repo) == before


def test_version_that_disagrees_with_the_pins(pinned_repo: Path, fake_api: FakeAPI) -> None:
    (pinned_repo / "VERSION").write_text("3.0.1-7\n")
    with pytest.raises(UserError, match="run `invoke bump` to make them agree"):
        run_bump(pinned_repo, fake_api, "3.0.3")


def test_network_down_changes_nothing(pinned_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch)
    before = _digests(pinned_repo)
    down = closed_port()
    for version in ("3.0.3", "4.1.8"):
        with pytest.raises(UserError, match="network down"):
            bump.bump(pinned_repo, version, api_url=down, pypi_url=down)
    assert _digests(pinned_repo) == before


def test_rate_limit_changes_nothing(pinned_repo: Path, fake_api: FakeAPI) -> None:
    fake_api.set(
        "/repos/MouseLand/Kilosort/tags?per_page=100",
        {"message": "API rate limit exceeded"},
        status=403,
        X_RateLimit_Remaining="0",
        X_RateLimit_Reset="1700000000",
    )
    before = _digests(pinned_repo)
    with pytest.raises(UserError, match="GITHUB_TOKEN"):
        run_bump(pinned_repo, fake_api, "3.0.3")
    assert _digests(pinned_repo) == before


def _failing_replace(monkeypatch: pytest.MonkeyPatch, fail_from: int, fail_until: int) -> list:
    """Make ``os.replace`` calls number fail_from..fail_until (1-based) raise OSError."""
    real = os.replace
    calls: list[tuple[str, str]] = []

    def replace(src, dst, *args, **kwargs):
        calls.append((str(src), str(dst)))
        if fail_from <= len(calls) <= fail_until:
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.parametrize(
    ("fail_from", "fail_until"),
    [(1, 1), (2, 2), (3, 3), (2, 99)],
    ids=["first-file", "second-file", "third-file", "second-file-and-every-restore"],
)
def test_a_failed_write_changes_nothing(
    pinned_repo: Path,
    fake_api: FakeAPI,
    monkeypatch: pytest.MonkeyPatch,
    fail_from: int,
    fail_until: int,
) -> None:
    before = _digests(pinned_repo)
    modes = {name: (pinned_repo / name).stat().st_mode for name in FILES}
    calls = _failing_replace(monkeypatch, fail_from, fail_until)
    with pytest.raises(UserError, match="nothing was changed"):
        run_bump(pinned_repo, fake_api, "3.0.3")
    assert len(calls) >= fail_from
    assert _digests(pinned_repo) == before
    assert {name: (pinned_repo / name).stat().st_mode for name in FILES} == modes
    assert sorted(p.name for p in pinned_repo.iterdir() if p.name != ".git") == sorted(FILES)
    assert git(pinned_repo, "status", "--porcelain") == ""


def test_a_failed_temp_file_changes_nothing(
    pinned_repo: Path, fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = bump._write_temp
    count = []

    def write_temp(target: Path, text: str) -> Path:
        count.append(target)
        if len(count) == 3:
            raise OSError(28, "No space left on device")
        return real(target, text)

    monkeypatch.setattr(bump, "_write_temp", write_temp)
    before = _digests(pinned_repo)
    with pytest.raises(UserError, match="could not write .*CHANGELOG.md.*nothing was changed"):
        run_bump(pinned_repo, fake_api, "3.0.3")
    assert _digests(pinned_repo) == before
    assert sorted(p.name for p in pinned_repo.iterdir() if p.name != ".git") == sorted(FILES)


def test_files_changed_after_planning_are_not_overwritten(
    pinned_repo: Path, fake_api: FakeAPI
) -> None:
    plan = bump.plan_bump(
        pinned_repo, "3.0.3", api_url=fake_api.url, pypi_url=fake_api.url, today=TODAY
    )
    (pinned_repo / "CHANGELOG.md").write_text("edited meanwhile\n")
    with pytest.raises(UserError, match="changed while bumping"):
        bump.write(pinned_repo, plan)
    assert (pinned_repo / "VERSION").read_text() == "3.0.2-1\n"


def test_a_missing_changelog_is_created(pinned_repo: Path, fake_api: FakeAPI) -> None:
    (pinned_repo / "CHANGELOG.md").unlink()
    run_bump(pinned_repo, fake_api, "3.0.3")
    text = (pinned_repo / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    assert "## 3.0.3-2 (2026-12-01)" in text


def test_the_real_repository_files_are_untouched() -> None:
    assert _digests(REPO_ROOT) == REAL_FILES


# --- what upstream returns is checked before it is written (issue 11 item 6) ------------------


def _serve_v303(fake_api: FakeAPI, sha: str) -> None:
    item = github_tag("{base}", "v3.0.3")
    item["commit"]["sha"] = sha
    fake_api.set(f"{TAGS_PATH}?per_page=100", [item, github_tag("{base}", "v3.0.2")])


@pytest.mark.parametrize("sha", ["refs/tags/v3.0.3", COMMITS["v3.0.3"][:12]])
def test_a_tag_commit_that_is_not_a_commit_changes_nothing(
    pinned_repo: Path, fake_api: FakeAPI, sha: str
) -> None:
    # Issue 11: a mirror answering "commit": {"sha": "refs/tags/v3.0.3"} made bump write
    # commit = "refs/ta" and report success.
    _serve_v303(fake_api, sha)
    before = _digests(pinned_repo)
    with pytest.raises(UserError, match=r"is not a commit \(40 hex digits\)"):
        run_bump(pinned_repo, fake_api, "3.0.3")
    assert _digests(pinned_repo) == before


def test_an_annotated_tag_is_pinned_at_its_commit(pinned_repo: Path, fake_api: FakeAPI) -> None:
    tag_object = "7a6f" * 10
    _serve_v303(fake_api, tag_object)  # the tag list names the tag object
    fake_api.serve_ref("v3.0.3", annotated=tag_object)
    plan = run_bump(pinned_repo, fake_api, "3.0.3")
    config = tomllib.loads((pinned_repo / "kilosort-docker.toml").read_text())
    assert config["kilosort3"]["commit"] == COMMITS["v3.0.3"][:7]
    assert f"({COMMITS['v3.0.3'][:7]})" in plan.summary

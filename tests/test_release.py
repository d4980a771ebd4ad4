"""release.py in a temporary git repository: checks, the annotated tag, and the push callback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import tomllib

from kilosort_docker.errors import UserError
from kilosort_docker.images.pins import Release
from kilosort_docker.release import bump
from kilosort_docker.release import release as release_mod
from tests.support import COMMITS, TODAY, FakeAPI, git


def passing() -> bool:
    return True


def tags(root: Path) -> list[str]:
    return git(root, "tag", "--list").split()


def do_release(root: Path, **kwargs) -> release_mod.ReleaseResult:
    kwargs.setdefault("run_tests", passing)
    kwargs.setdefault("echo", lambda line: None)
    return release_mod.release(root, **kwargs)


def test_release_creates_an_annotated_tag(pinned_repo: Path) -> None:
    lines: list[str] = []
    result = do_release(pinned_repo, echo=lines.append)
    assert (result.tag, result.release, result.tagged) == ("v3.0.2-1", Release("3.0.2", 1), True)
    assert tags(pinned_repo) == ["v3.0.2-1"]
    assert git(pinned_repo, "cat-file", "-t", "v3.0.2-1") == "tag"  # annotated, not lightweight
    assert git(pinned_repo, "rev-parse", "v3.0.2-1^{commit}") == git(
        pinned_repo, "rev-parse", "HEAD"
    )
    message = git(pinned_repo, "tag", "-l", "--format=%(contents)", "v3.0.2-1")
    assert message.startswith("kilosort-docker 3.0.2-1\n")
    assert "Kilosort3 v3.0.2 (commit c43f524)" in message
    assert any("git push origin v3.0.2-1" in line for line in lines)


def test_a_second_release_of_the_same_version_is_refused(pinned_repo: Path) -> None:
    do_release(pinned_repo)
    with pytest.raises(UserError, match=r"v3\.0\.2-1 already exists.*invoke bump"):
        do_release(pinned_repo)
    assert tags(pinned_repo) == ["v3.0.2-1"]


@pytest.mark.parametrize("change", ["modified", "untracked", "staged"])
def test_a_dirty_tree_is_refused(pinned_repo: Path, change: str) -> None:
    if change == "modified":
        (pinned_repo / "CHANGELOG.md").write_text("# Changelog\n\n## 3.0.2-1\n\n- edited\n")
    elif change == "untracked":
        (pinned_repo / "notes.txt").write_text("not committed\n")
    else:
        (pinned_repo / "notes.txt").write_text("staged\n")
        git(pinned_repo, "add", "notes.txt")
    with pytest.raises(UserError, match="work tree is dirty.*commit or stash"):
        do_release(pinned_repo)
    assert tags(pinned_repo) == []


def test_failing_tests_are_refused(pinned_repo: Path) -> None:
    with pytest.raises(UserError, match="tests failed"):
        do_release(pinned_repo, run_tests=lambda: False)

    def broken() -> bool:
        raise RuntimeError("nox not found\nsecond line")

    with pytest.raises(UserError, match="tests could not run.*nox not found"):
        do_release(pinned_repo, run_tests=broken)
    assert tags(pinned_repo) == []


def test_the_tests_run_only_after_the_cheap_checks(pinned_repo: Path) -> None:
    ran: list[bool] = []
    do_release(pinned_repo, run_tests=lambda: ran.append(True) or True)
    assert ran == [True]
    with pytest.raises(UserError, match="already exists"):
        do_release(pinned_repo, run_tests=lambda: ran.append(True) or True)
    assert ran == [True]


def test_malformed_version_is_refused(pinned_repo: Path) -> None:
    (pinned_repo / "VERSION").write_text("3.0.2-0\n")
    git(pinned_repo, "commit", "-q", "-am", "bad VERSION")
    with pytest.raises(
        UserError, match=r"malformed VERSION '3\.0\.2-0'.*<kilosort version>-<build>"
    ):
        do_release(pinned_repo)
    assert tags(pinned_repo) == []


def test_version_and_pins_must_agree(pinned_repo: Path) -> None:
    (pinned_repo / "VERSION").write_text("3.0.3-2\n")
    git(pinned_repo, "commit", "-q", "-am", "VERSION only")
    with pytest.raises(UserError, match="make them agree"):
        do_release(pinned_repo)


def test_the_changelog_needs_an_entry(pinned_repo: Path) -> None:
    text = (pinned_repo / "CHANGELOG.md").read_text().replace("## 3.0.2-1", "## 3.0.1-1")
    (pinned_repo / "CHANGELOG.md").write_text(text)
    git(pinned_repo, "commit", "-q", "-am", "no entry")
    with pytest.raises(UserError, match="CHANGELOG.md has no entry for 3.0.2-1"):
        do_release(pinned_repo)


def test_not_a_git_repository(tmp_path: Path, pinned_repo: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("kilosort-docker.toml", "VERSION", "CHANGELOG.md"):
        (plain / name).write_bytes((pinned_repo / name).read_bytes())
    with pytest.raises(UserError, match="not a git repository"):
        do_release(plain)


def test_dry_run_tags_nothing(pinned_repo: Path) -> None:
    lines: list[str] = []
    ran: list[bool] = []
    result = do_release(
        pinned_repo,
        dry_run=True,
        push=True,
        push_images=lambda rel: pytest.fail("pushed in a dry run"),
        run_tests=lambda: ran.append(True) or True,
        echo=lines.append,
    )
    assert result.tagged is False
    assert tags(pinned_repo) == []
    assert ran == []
    assert any("would run the tests, then tag" in line and "v3.0.2-1" in line for line in lines)
    assert any("would push the images of 3.0.2-1" in line for line in lines)


def test_dry_run_still_refuses(pinned_repo: Path) -> None:
    (pinned_repo / "notes.txt").write_text("dirty\n")
    with pytest.raises(UserError, match="dirty"):
        do_release(pinned_repo, dry_run=True)


def test_push_calls_the_callback_with_the_release(pinned_repo: Path) -> None:
    pushed: list[Release] = []
    result = do_release(pinned_repo, push=True, push_images=pushed.append)
    assert pushed == [Release("3.0.2", 1)]
    assert result.pushed is True
    assert tags(pinned_repo) == ["v3.0.2-1"]


def test_a_failed_push_removes_the_tag_so_it_can_be_retried(pinned_repo: Path) -> None:
    def refuse(rel: Release) -> None:
        raise UserError("the registry refused kilosortdocker/kilosort4:4.1.7-b1: check login")

    with pytest.raises(UserError, match="registry refused"):
        do_release(pinned_repo, push=True, push_images=refuse)
    assert tags(pinned_repo) == []
    pushed: list[Release] = []
    do_release(pinned_repo, push=True, push_images=pushed.append)
    assert pushed == [Release("3.0.2", 1)]


def test_push_without_a_callback_is_refused(pinned_repo: Path) -> None:
    with pytest.raises(UserError, match="push_images"):
        do_release(pinned_repo, push=True)


def test_bump_commit_release_end_to_end(pinned_repo: Path, fake_api: FakeAPI) -> None:
    do_release(pinned_repo)  # 3.0.2-1 is released
    bump.bump(pinned_repo, "3.0.3", api_url=fake_api.url, pypi_url=fake_api.url, today=TODAY)
    with pytest.raises(UserError, match="dirty"):  # the bump is not committed yet
        do_release(pinned_repo)
    git(pinned_repo, "commit", "-q", "-am", "Kilosort3 v3.0.3")
    result = do_release(pinned_repo)
    assert result.tag == "v3.0.3-2"
    assert tags(pinned_repo) == ["v3.0.2-1", "v3.0.3-2"]
    # pins, VERSION, changelog and tag tell the same story
    config = tomllib.loads(git(pinned_repo, "show", "v3.0.3-2:kilosort-docker.toml"))
    assert config["kilosort3"]["tag"] == "v3.0.3"
    assert COMMITS["v3.0.3"].startswith(config["kilosort3"]["commit"])
    assert git(pinned_repo, "show", "v3.0.3-2:VERSION") == "3.0.3-2"
    message = git(pinned_repo, "tag", "-l", "--format=%(contents)", "v3.0.3-2")
    assert "Kilosort3 v3.0.3 (commit d7e1f30)" in message
    # then a kilosort 4 bump: same Kilosort3 version, next build
    bump.bump(pinned_repo, "4.1.8", api_url=fake_api.url, pypi_url=fake_api.url, today=TODAY)
    git(pinned_repo, "commit", "-q", "-am", "kilosort 4.1.8")
    assert do_release(pinned_repo).tag == "v3.0.3-3"


def test_run_nox_reports_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run(cmd, cwd=None, **kwargs):
        calls.append((cmd, cwd))
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(release_mod.subprocess, "run", fake_run)
    assert release_mod.run_nox(tmp_path) is False
    assert calls[0][0][1:] == ["-m", "nox", "-s", "lint", "tests"]
    assert calls[0][1] == tmp_path

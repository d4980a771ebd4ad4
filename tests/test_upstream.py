"""upstream.py against a local HTTP server that answers like GitHub's and PyPI's APIs.

The server (``tests.support.serve_fake_api``, the ``fake_api`` fixture) listens on 127.0.0.1
(an ephemeral port) and serves recorded responses in the real JSON shapes: GitHub's tag list
(paginated with ``Link`` headers, 403 rate limits with their reset header, 404s) and PyPI's
``/pypi/<name>/json``. Nothing leaves this machine. ``test_bump.py`` and ``test_release.py``
use the same server.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kilosort_docker.errors import UserError
from kilosort_docker.release import upstream
from tests.support import COMMITS, PAGES, TAGS_PATH, FakeAPI, github_tag, isolate


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch)


# --- tags and pagination ----------------------------------------------------------------------


def test_all_pages_are_read(fake_api: FakeAPI) -> None:
    tags = upstream.github_tags(api_url=fake_api.url)
    assert [t.name for t in tags] == [name for page in PAGES for name in page]
    assert fake_api.paths() == [
        f"{TAGS_PATH}?per_page=100",
        f"{TAGS_PATH}?per_page=100&page=2",
        f"{TAGS_PATH}?per_page=100&page=3",
    ]
    assert {t.name: t.commit for t in tags} == {n: COMMITS[n] for p in PAGES for n in p}


def test_single_page_without_link_header(fake_api: FakeAPI) -> None:
    fake_api.serve_tags([["v3.0.2", "v3.0.1"]])
    assert [t.name for t in upstream.github_tags(api_url=fake_api.url)] == ["v3.0.2", "v3.0.1"]


def test_pagination_loop_is_an_error(fake_api: FakeAPI) -> None:
    fake_api.set(
        f"{TAGS_PATH}?per_page=100",
        [github_tag("{base}", "v3.0.2")],
        Link=f'<{{base}}{TAGS_PATH}?per_page=100>; rel="next"',
    )
    with pytest.raises(UserError, match="loop"):
        upstream.github_tags(api_url=fake_api.url)


def test_tags_are_sorted_into_lines() -> None:
    tags = [upstream.Tag(name, sha) for name, sha in COMMITS.items()]
    releases = upstream.github_releases(tags)
    by_line: dict[str, list[str]] = {}
    for release in releases:
        by_line.setdefault(release.line, []).append(release.tag)
    assert by_line == {
        "kilosort25": ["v2.5", "v2.5.1"],
        "kilosort3": ["v3.0", "v3.0.1", "v3.0.2", "v3.0.3"],
        "kilosort4": ["v4.0", "v4.1.7", "v4.1.8"],  # no pre-release, no v1/v2.0, no 'kilosort2-'
    }


@pytest.mark.parametrize(
    ("text", "line"),
    [("v2.5", "kilosort25"), ("2.5.1", "kilosort25"), ("v2.0", None), ("v3.0.2", "kilosort3")]
    + [("v4.1.8", "kilosort4"), ("v1.0", None), ("v5.0", None)],
)
def test_classify(text: str, line: str | None) -> None:
    assert upstream.classify(upstream.parse_version(text)) == line


def test_a_tag_resolves_to_its_commit(fake_api: FakeAPI) -> None:
    assert upstream.resolve_tag("v3.0.3", api_url=fake_api.url) == COMMITS["v3.0.3"]
    tag = upstream.find_tag("3.0.3", api_url=fake_api.url)
    assert (tag.name, tag.commit) == ("v3.0.3", COMMITS["v3.0.3"])
    assert upstream.find_tag("v3.0", api_url=fake_api.url).name == "v3.0"


def test_a_missing_tag_is_an_error(fake_api: FakeAPI) -> None:
    with pytest.raises(UserError, match=r"no tag for 3\.0\.9.*invoke upstream"):
        upstream.find_tag("3.0.9", api_url=fake_api.url)
    with pytest.raises(UserError, match="no tag v9"):
        upstream.resolve_tag("v9", api_url=fake_api.url)


# --- errors -----------------------------------------------------------------------------------


def test_rate_limit_names_the_reset_time_and_the_token(fake_api: FakeAPI) -> None:
    fake_api.set(
        f"{TAGS_PATH}?per_page=100",
        {
            "message": "API rate limit exceeded for 127.0.0.1. (But here's the good news: "
            "Authenticated requests get a higher rate limit.)",
            "documentation_url": "https://docs.github.com/rest/overview/rate-limits",
        },
        status=403,
        X_RateLimit_Limit="60",
        X_RateLimit_Remaining="0",
        X_RateLimit_Reset="1700000000",
        X_RateLimit_Used="60",
    )
    with pytest.raises(UserError) as info:
        upstream.github_tags(api_url=fake_api.url)
    message = str(info.value)
    assert "rate limit" in message
    assert "2023-11-14 22:13:20 UTC" in message
    assert "GITHUB_TOKEN" in message


@pytest.mark.parametrize(
    ("message", "status", "header", "match"),
    [
        # a secondary rate limit says when to retry
        ("secondary rate limit", 429, {"Retry_After": "60"},
         "rate limit.*60 seconds from now.*GITHUB_TOKEN"),
        # a 403 that is not a rate limit is still a clear error
        ("Forbidden", 403, {"X_RateLimit_Remaining": "42"}, "HTTP 403"),
    ],
)  # fmt: skip
def test_refusals_name_the_cause(fake_api: FakeAPI, message, status, header, match) -> None:
    fake_api.set(f"{TAGS_PATH}?per_page=100", {"message": message}, status=status, **header)
    with pytest.raises(UserError, match=match):
        upstream.github_tags(api_url=fake_api.url)


def test_404(fake_api: FakeAPI) -> None:
    with pytest.raises(UserError, match="not found.*HTTP 404.*check the name"):
        upstream.github_tags("MouseLand/NoSuchRepo", api_url=fake_api.url)
    with pytest.raises(UserError, match="not found"):
        upstream.pypi_releases("no-such-package", pypi_url=fake_api.url)


@pytest.mark.parametrize(
    "body",
    ['[{"name": "v3.0.2", "commit": ', '{"message": "a dict"}', '[{"name": "v3.0.2"}]', "[1]"],
    ids=["truncated", "not-a-list", "no-commit", "not-a-tag"],
)
def test_malformed_tags(fake_api: FakeAPI, body: str) -> None:
    fake_api.set(f"{TAGS_PATH}?per_page=100", body)
    with pytest.raises(UserError, match="malformed"):
        upstream.github_tags(api_url=fake_api.url)


@pytest.mark.parametrize("body", ["<html>Service Unavailable</html>", '{"info": {}}', "[]"])
def test_malformed_pypi(fake_api: FakeAPI, body: str) -> None:
    fake_api.set("/pypi/kilosort/json", body)
    with pytest.raises(UserError, match="malformed"):
        upstream.pypi_releases(pypi_url=fake_api.url)


def test_network_down(closed_port_url: str) -> None:
    with pytest.raises(UserError, match="network down"):
        upstream.github_tags(api_url=closed_port_url)
    with pytest.raises(UserError, match="network down"):
        upstream.pypi_releases(pypi_url=closed_port_url)


# --- the token --------------------------------------------------------------------------------

TOKEN = "ghp_thisIsNotARealToken0123456789abcdef"


def test_token_is_sent_but_never_shown(
    fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    upstream.github_tags(api_url=fake_api.url)
    assert all(
        headers.get("Authorization") == f"Bearer {TOKEN}" for _, headers in fake_api.requests
    )
    fake_api.set(
        f"{TAGS_PATH}?per_page=100",
        {"message": "rate"},
        status=403,
        X_RateLimit_Remaining="0",
        X_RateLimit_Reset="1700000000",
    )
    with pytest.raises(UserError) as info:
        upstream.github_tags(api_url=fake_api.url)
    assert TOKEN not in str(info.value)
    assert TOKEN not in caplog.text


def test_token_is_not_sent_to_another_host(
    fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    port = fake_api.url.rsplit(":", 1)[1]
    fake_api.set(
        f"{TAGS_PATH}?per_page=100",
        [github_tag("{base}", "v3.0.2")],
        Link=f'<http://localhost:{port}{TAGS_PATH}?per_page=100&page=2>; rel="next"',
    )
    fake_api.set(f"{TAGS_PATH}?per_page=100&page=2", [github_tag("{base}", "v3.0.1")])
    assert len(upstream.github_tags(api_url=fake_api.url)) == 2
    first, second = (headers for _, headers in fake_api.requests)
    assert first.get("Authorization") == f"Bearer {TOKEN}"
    assert "Authorization" not in second


def test_pypi_never_gets_the_token(fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    upstream.pypi_releases(pypi_url=fake_api.url)
    assert all("Authorization" not in headers for _, headers in fake_api.requests)


# --- PyPI -------------------------------------------------------------------------------------


def test_pypi_skips_prereleases_yanked_and_empty(fake_api: FakeAPI) -> None:
    versions = [str(r.version) for r in upstream.pypi_releases(pypi_url=fake_api.url)]
    assert versions == ["4.0", "4.1.7", "4.1.8"]
    assert fake_api.paths() == ["/pypi/kilosort/json"]


def test_pypi_has(fake_api: FakeAPI) -> None:
    assert str(upstream.pypi_has("4.1.8", pypi_url=fake_api.url).version) == "4.1.8"
    for missing in ("4.1.9", "4.2.0rc1", "4.1.6", "4.3"):
        with pytest.raises(UserError, match="PyPI has no installable kilosort"):
            upstream.pypi_has(missing, pypi_url=fake_api.url)


# --- what is newer than the pins --------------------------------------------------------------


def test_newer_releases(fake_api: FakeAPI, pinned_root: Path) -> None:
    reports = {
        r.line: r
        for r in upstream.newer_releases(pinned_root, api_url=fake_api.url, pypi_url=fake_api.url)
    }
    ks3 = reports["kilosort3"]
    assert ks3.pinned == "3.0.2"
    assert [(r.tag, r.commit) for r in ks3.newer] == [("v3.0.3", COMMITS["v3.0.3"])]
    ks4 = reports["kilosort4"]
    assert ks4.pinned == "4.1.7"
    assert [str(r.version) for r in ks4.newer] == ["4.1.8"]
    assert {r.source for r in ks4.newer} == {"pypi"}
    assert reports["kilosort25"].pinned is None
    assert str(reports["kilosort25"].latest.version) == "2.5.1"
    text = upstream.describe(list(reports.values()))
    assert "invoke bump --kilosort 3.0.3" in text
    assert "invoke bump --kilosort 4.1.8" in text
    assert "kilosort25: not pinned (latest upstream 2.5.1)" in text


def test_up_to_date(fake_api: FakeAPI, pinned_root: Path) -> None:
    fake_api.serve_tags([["v3.0.2", "v3.0.1"]])
    fake_api.serve_pypi({"4.1.7": [False]})
    reports = upstream.newer_releases(pinned_root, api_url=fake_api.url, pypi_url=fake_api.url)
    assert all(not r.newer for r in reports)
    assert "kilosort3: pinned 3.0.2 is up to date" in upstream.describe(reports)


# --- what the API returns is checked (issue 11 item 6) ----------------------------------------

TAG_OBJECT = "7a6f" * 10  # the sha of an annotated tag object, not of a commit


def serve_v303(fake_api: FakeAPI, sha: object) -> None:
    """One page of tags where v3.0.3's ``commit.sha`` is ``sha``."""
    item = github_tag("{base}", "v3.0.3")
    item["commit"]["sha"] = sha
    fake_api.set(f"{TAGS_PATH}?per_page=100", [item, github_tag("{base}", "v3.0.2")])


@pytest.mark.parametrize(
    "sha", ["refs/tags/v3.0.3", COMMITS["v3.0.3"][:12], "", None, COMMITS["v3.0.3"] + "0"]
)
def test_a_tag_commit_that_is_not_40_hex_is_refused(fake_api: FakeAPI, sha: object) -> None:
    serve_v303(fake_api, sha)
    with pytest.raises(UserError, match=r"malformed tag .*is not a commit \(40 hex digits\)"):
        upstream.github_tags(api_url=fake_api.url)
    with pytest.raises(UserError, match="is not a commit"):
        upstream.find_tag("3.0.3", api_url=fake_api.url)


def test_an_upper_case_tag_commit_is_lower_cased(fake_api: FakeAPI) -> None:
    serve_v303(fake_api, COMMITS["v3.0.3"].upper())
    assert upstream.find_tag("3.0.3", api_url=fake_api.url).commit == COMMITS["v3.0.3"]


def test_an_annotated_tag_is_dereferenced_to_its_commit(fake_api: FakeAPI) -> None:
    serve_v303(fake_api, TAG_OBJECT)  # a mirror that lists the tag object, not the commit
    fake_api.serve_ref("v3.0.3", annotated=TAG_OBJECT)
    listed = upstream.find_tag("3.0.3", api_url=fake_api.url)
    assert listed.commit == TAG_OBJECT
    tag = upstream.tag_commit(listed, api_url=fake_api.url)
    assert (tag.name, tag.commit) == ("v3.0.3", COMMITS["v3.0.3"])
    assert upstream.resolve_tag("v3.0.3", api_url=fake_api.url) == COMMITS["v3.0.3"]
    assert fake_api.paths()[-2:] == [
        f"/repos/{upstream.REPOSITORY}/git/refs/tags/v3.0.3",
        f"/repos/{upstream.REPOSITORY}/git/tags/{TAG_OBJECT}",
    ]


def test_a_tag_of_a_tag_is_followed_and_a_tree_is_refused(fake_api: FakeAPI) -> None:
    outer = "0a0b" * 10
    fake_api.serve_ref("v3.0.3", annotated=TAG_OBJECT)
    fake_api.set(
        f"/repos/{upstream.REPOSITORY}/git/refs/tags/v3.0.3",
        {"ref": "refs/tags/v3.0.3", "object": {"type": "tag", "sha": outer}},
    )
    fake_api.set(
        f"/repos/{upstream.REPOSITORY}/git/tags/{outer}",
        {"sha": outer, "object": {"type": "tag", "sha": TAG_OBJECT}},
    )
    tag = upstream.tag_commit(upstream.Tag("v3.0.3", outer), api_url=fake_api.url)
    assert tag.commit == COMMITS["v3.0.3"]
    fake_api.set(
        f"/repos/{upstream.REPOSITORY}/git/refs/tags/v3.0.3",
        {"ref": "refs/tags/v3.0.3", "object": {"type": "tree", "sha": outer}},
    )
    with pytest.raises(UserError, match="does not dereference tag v3.0.3 to a commit"):
        upstream.tag_commit(upstream.Tag("v3.0.3", outer), api_url=fake_api.url)
    fake_api.set(
        f"/repos/{upstream.REPOSITORY}/git/refs/tags/v3.0.3",
        {"ref": "refs/tags/v3.0.3", "object": {"type": "commit", "sha": "refs/tags/v3.0.3"}},
    )
    with pytest.raises(UserError, match=r"object.sha.*is not a commit"):
        upstream.tag_commit(upstream.Tag("v3.0.3", outer), api_url=fake_api.url)

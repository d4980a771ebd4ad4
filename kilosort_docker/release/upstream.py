"""Kilosort releases upstream: git tags of MouseLand/Kilosort and ``kilosort`` on PyPI.

Tags come from GitHub's REST API (``GET /repos/{owner}/{repo}/tags``, every page of it) and
are sorted into lines by their version: ``v2.5.x`` is ``kilosort25``, ``v3.x`` ``kilosort3``
and ``v4.x`` ``kilosort4``. The ``kilosort`` 4.x releases the ``kilosort4`` image installs come
from PyPI's JSON API, without pre-releases and yanked releases.

A token in ``GITHUB_TOKEN`` raises GitHub's rate limit; it is sent only to the GitHub API's
host and never printed or logged. The base URLs are parameters so tests can use a local server.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests
from packaging.version import InvalidVersion, Version

from kilosort_docker.errors import UserError
from kilosort_docker.images.pins import ROOT, check_full_commit, check_tag_name, load_pins

log = logging.getLogger(__name__)

GITHUB_API = "https://api.github.com"
PYPI_URL = "https://pypi.org"
REPOSITORY = "MouseLand/Kilosort"
PYPI_PACKAGE = "kilosort"
TOKEN_ENV = "GITHUB_TOKEN"
TIMEOUT = 30
MAX_PAGES = 50

KILOSORT25 = "kilosort25"
KILOSORT3 = "kilosort3"
KILOSORT4 = "kilosort4"
LINES = (KILOSORT25, KILOSORT3, KILOSORT4)


@dataclass(frozen=True)
class Tag:
    """A git tag of the upstream repository and the commit it points at (40 hex digits)."""

    name: str
    commit: str


@dataclass(frozen=True)
class UpstreamRelease:
    """One upstream release: its line, version, and where it comes from.

    ``tag`` and ``commit`` are set for GitHub tags; ``source`` is ``github`` or ``pypi``.
    """

    line: str
    version: Version
    source: str
    tag: str | None = None
    commit: str | None = None


@dataclass(frozen=True)
class LineReport:
    """What upstream has for one line: the pinned version (None if unpinned) and newer ones."""

    line: str
    pinned: str | None
    newer: tuple[UpstreamRelease, ...]
    latest: UpstreamRelease | None


def parse_version(text: str) -> Version | None:
    """``v3.0.2`` or ``3.0.2`` as a Version; None if it is not a version."""
    text = text.strip()
    if text[:1] in ("v", "V"):
        text = text[1:]
    try:
        return Version(text)
    except InvalidVersion:
        return None


def classify(version: Version) -> str | None:
    """The line of ``version``: kilosort25, kilosort3, kilosort4, or None (not built here)."""
    if version.major == 2 and version.minor == 5:
        return KILOSORT25
    if version.major == 3:
        return KILOSORT3
    if version.major == 4:
        return KILOSORT4
    return None


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _session() -> requests.Session:
    session = requests.Session()
    session.headers.update(
        {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "kilosort-docker",
        }
    )
    return session


def _auth_headers(url: str, api_url: str) -> dict[str, str]:
    """The token header, only for the GitHub API's own host (never for a redirected page)."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token and _host(url) == _host(api_url):
        return {"Authorization": f"Bearer {token}"}
    return {}


def _get(
    session: requests.Session, url: str, *, what: str, headers: dict[str, str] | None = None
) -> requests.Response:
    """GET ``url``; raises UserError for network errors, rate limits and HTTP errors."""
    log.debug("GET %s", url)
    try:
        response = session.get(url, headers=headers or {}, timeout=TIMEOUT)
    except requests.exceptions.Timeout:
        raise UserError(
            f"network down or {_host(url)} too slow: {what} timed out; check the connection "
            "or proxy, or use a mirror (--github-api, --pypi-url)"
        ) from None
    except requests.exceptions.RequestException as exc:
        raise UserError(
            f"network down or {_host(url)} unreachable ({type(exc).__name__}) while fetching "
            f"{what}: check the connection or proxy, or use a mirror (--github-api, --pypi-url)"
        ) from None
    if response.status_code in (403, 429) and _rate_limited(response):
        raise UserError(
            f"{_host(url)} rate limit reached while fetching {what}; it resets at "
            f"{_reset_time(response)}: wait until then, or set {TOKEN_ENV} to a GitHub token "
            "for a higher limit"
        )
    if response.status_code == 404:
        raise UserError(f"{what} not found ({url} gave HTTP 404): check the name")
    if response.status_code == 401:
        raise UserError(
            f"{_host(url)} refused the credentials while fetching {what} (HTTP 401): "
            f"fix or unset {TOKEN_ENV}"
        )
    if response.status_code >= 400:
        raise UserError(
            f"{_host(url)} answered HTTP {response.status_code} while fetching {what}: "
            f"retry later, or set {TOKEN_ENV} if access is refused"
        )
    return response


def _rate_limited(response: requests.Response) -> bool:
    return response.headers.get("X-RateLimit-Remaining") == "0" or (
        response.status_code == 429 and "Retry-After" in response.headers
    )


def _reset_time(response: requests.Response) -> str:
    reset = response.headers.get("X-RateLimit-Reset")
    if reset and reset.strip().isdigit():
        when = dt.datetime.fromtimestamp(int(reset), tz=dt.timezone.utc)
        return when.strftime("%Y-%m-%d %H:%M:%S UTC")
    retry = response.headers.get("Retry-After", "").strip()
    if retry.isdigit():
        return f"{retry} seconds from now"
    return "an unknown time"


def _json(response: requests.Response, what: str) -> object:
    try:
        return response.json()
    except ValueError:
        raise UserError(
            f"{_host(response.url)} sent a malformed answer for {what} (not JSON): "
            "retry later, or check the API URL"
        ) from None


def github_tags(
    repository: str = REPOSITORY,
    *,
    api_url: str = GITHUB_API,
    session: requests.Session | None = None,
) -> list[Tag]:
    """Every tag of ``repository`` (``owner/name``), following ``Link: rel="next"`` pages."""
    api_url = api_url.rstrip("/")
    session = session or _session()
    url: str | None = f"{api_url}/repos/{repository}/tags?per_page=100"
    what = f"the tags of {repository}"
    result: list[Tag] = []
    seen: set[str] = set()
    while url:
        if url in seen or len(seen) >= MAX_PAGES:
            raise UserError(
                f"{_host(url)} paginates {what} in a loop or past {MAX_PAGES} pages: "
                "check the API URL"
            )
        seen.add(url)
        response = _get(session, url, what=what, headers=_auth_headers(url, api_url))
        body = _json(response, what)
        if not isinstance(body, list):
            raise UserError(
                f"{_host(url)} sent a malformed answer for {what} (expected a list of tags): "
                "check the API URL"
            )
        for item in body:
            try:
                name, sha = item["name"], item["commit"]["sha"]
            except (KeyError, TypeError):
                raise UserError(
                    f"{_host(url)} sent a malformed tag for {what} (no name or commit.sha): "
                    "check the API URL"
                ) from None
            where = f"{_host(url)} sent a malformed tag for {what}"
            name = check_tag_name(name, where)
            result.append(Tag(name, check_full_commit(sha, f"{where} ({name} commit.sha)")))
        url = response.links.get("next", {}).get("url")
    log.debug("%d tags of %s", len(result), repository)
    return result


def github_releases(tags: Iterable[Tag]) -> list[UpstreamRelease]:
    """The tags that are final releases of a line, oldest first."""
    result = []
    for tag in tags:
        version = parse_version(tag.name)
        if version is None or version.is_prerelease or version.is_devrelease:
            continue
        line = classify(version)
        if line:
            result.append(UpstreamRelease(line, version, "github", tag.name, tag.commit))
    return sorted(result, key=lambda r: (r.version, r.tag or ""))


def find_tag(
    version: str,
    *,
    repository: str = REPOSITORY,
    api_url: str = GITHUB_API,
    tags: list[Tag] | None = None,
) -> Tag:
    """The upstream tag for ``version`` (``3.0.3``, ``v3.0.3``) and its commit, as the tag
    list gives it (:func:`tag_commit` dereferences an annotated tag).

    Raises UserError if no tag has that version.
    """
    wanted = parse_version(version)
    if wanted is None:
        raise UserError(f"{version!r} is not a version: give e.g. 3.0.3")
    tags = tags if tags is not None else github_tags(repository, api_url=api_url)
    exact = [t for t in tags if t.name in (version, f"v{version}")]
    matching = exact or [t for t in tags if parse_version(t.name) == wanted]
    if not matching:
        raise UserError(
            f"{repository} has no tag for {version} (looked for v{wanted}): "
            "run `invoke upstream` to see the tags there are"
        )
    return matching[0]


def resolve_tag(tag: str, *, repository: str = REPOSITORY, api_url: str = GITHUB_API) -> str:
    """The commit (40 hex digits) that ``tag`` of ``repository`` points at, an annotated tag
    dereferenced (:func:`tag_commit`)."""
    tag = check_tag_name(tag, "tag")
    for item in github_tags(repository, api_url=api_url):
        if item.name == tag:
            return tag_commit(item, repository=repository, api_url=api_url).commit
    raise UserError(
        f"{repository} has no tag {tag}: run `invoke upstream` to see the tags there are"
    )


#: How many annotated tags may point at each other before a commit (git allows chains).
MAX_TAG_DEPTH = 5


def tag_commit(
    tag: Tag,
    *,
    repository: str = REPOSITORY,
    api_url: str = GITHUB_API,
    session: requests.Session | None = None,
) -> Tag:
    """``tag`` with the commit its ref points at, read from the Git database API: ``GET
    /repos/{repo}/git/refs/tags/{name}`` gives the ref's object; an annotated tag (``type``
    ``tag``) is followed through ``GET /repos/{repo}/git/tags/{sha}`` until a ``commit``
    (GitHub REST API, "Git references" and "Git tags"). A tag list that named the tag object
    instead of its commit is corrected here.

    Raises UserError if the answer is malformed, is not a commit (40 hex digits) after at
    most :data:`MAX_TAG_DEPTH` tags, or the API is unreachable.
    """
    api_url = api_url.rstrip("/")
    session = session or _session()
    what = f"the ref of tag {tag.name} of {repository}"
    url = f"{api_url}/repos/{repository}/git/refs/tags/{quote(tag.name)}"
    body = _json(_get(session, url, what=what, headers=_auth_headers(url, api_url)), what)
    if isinstance(body, list):  # a prefix matched several refs: take the exact one
        body = next(
            (b for b in body if isinstance(b, dict) and b.get("ref") == f"refs/tags/{tag.name}"),
            None,
        )
    obj = _object(body, url, what)
    for _ in range(MAX_TAG_DEPTH):
        if obj[0] == "commit":
            commit = obj[1]
            if commit != tag.commit:
                log.info(
                    "tag %s: the tag list gave %s, its ref dereferences to commit %s",
                    tag.name,
                    tag.commit[:12],
                    commit[:12],
                )
            return Tag(tag.name, commit)
        if obj[0] != "tag":
            break
        url = f"{api_url}/repos/{repository}/git/tags/{obj[1]}"
        what = f"the annotated tag {tag.name} of {repository}"
        obj = _object(
            _json(_get(session, url, what=what, headers=_auth_headers(url, api_url)), what),
            url,
            what,
        )
    raise UserError(
        f"{_host(url)} does not dereference tag {tag.name} to a commit (got a {obj[0]} after "
        f"up to {MAX_TAG_DEPTH} tags): check the API URL or the tag"
    )


def _object(body: object, url: str, what: str) -> tuple[str, str]:
    """``(type, sha)`` of a Git database answer's ``object``; the sha checked as 40 hex."""
    obj = body.get("object") if isinstance(body, dict) else None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise UserError(
            f"{_host(url)} sent a malformed answer for {what} (no object.type and object.sha): "
            "check the API URL"
        )
    sha = check_full_commit(obj.get("sha"), f"{_host(url)} sent a malformed {what} (object.sha)")
    return obj["type"], sha


def pypi_releases(
    package: str = PYPI_PACKAGE,
    *,
    pypi_url: str = PYPI_URL,
    major: int | None = 4,
    session: requests.Session | None = None,
) -> list[UpstreamRelease]:
    """Final, non-yanked releases of ``package`` on PyPI (of one major version), oldest first."""
    session = session or requests.Session()
    url = f"{pypi_url.rstrip('/')}/pypi/{package}/json"
    what = f"PyPI's releases of {package}"
    body = _json(_get(session, url, what=what), what)
    releases = body.get("releases") if isinstance(body, dict) else None
    if not isinstance(releases, dict):
        raise UserError(
            f"{_host(url)} sent a malformed answer for {what} (no 'releases'): check the PyPI URL"
        )
    result = []
    for text, files in releases.items():
        version = parse_version(text)
        if version is None or version.is_prerelease or version.is_devrelease:
            continue
        if major is not None and version.major != major:
            continue
        if not isinstance(files, list) or not files:
            continue  # a release without files cannot be installed
        if all(isinstance(f, dict) and f.get("yanked") for f in files):
            continue
        line = classify(version) or package
        result.append(UpstreamRelease(line, version, "pypi"))
    return sorted(result, key=lambda r: r.version)


def pypi_has(
    version: str, package: str = PYPI_PACKAGE, *, pypi_url: str = PYPI_URL
) -> UpstreamRelease:
    """The PyPI release ``version`` of ``package``; UserError if missing, yanked or pre-release."""
    wanted = parse_version(version)
    if wanted is None:
        raise UserError(f"{version!r} is not a version: give e.g. 4.1.8")
    for release in pypi_releases(package, pypi_url=pypi_url, major=None):
        if release.version == wanted:
            return release
    raise UserError(
        f"PyPI has no installable {package} {version} (missing, yanked or a pre-release): "
        "run `invoke upstream` to see the releases there are"
    )


def newer_releases(
    root: Path = ROOT,
    *,
    api_url: str = GITHUB_API,
    pypi_url: str = PYPI_URL,
    repository: str = REPOSITORY,
) -> list[LineReport]:
    """For each line, the pinned version and the upstream releases newer than it.

    Kilosort3 and 2.5 come from the git tags (2.5 is not pinned: only its latest is shown);
    ``kilosort`` 4.x comes from PyPI, which the ``kilosort4`` image installs from.
    """
    pins = load_pins(root / "kilosort-docker.toml", root / "VERSION")
    tagged = github_releases(github_tags(repository, api_url=api_url))
    from_pypi = pypi_releases(pypi_url=pypi_url)
    pinned = {
        KILOSORT25: None,
        KILOSORT3: pins.kilosort3.version,
        KILOSORT4: pins.kilosort4_version,
    }
    reports = []
    for line in LINES:
        releases = from_pypi if line == KILOSORT4 else [r for r in tagged if r.line == line]
        base = parse_version(pinned[line]) if pinned[line] else None
        newer = tuple(r for r in releases if base is not None and r.version > base)
        latest = releases[-1] if releases else None
        reports.append(LineReport(line, pinned[line], newer, latest))
    return reports


def describe(reports: list[LineReport]) -> str:
    """The reports as plain text, with the ``invoke bump`` command for each newer release."""
    lines = []
    for report in reports:
        latest = report.latest.version if report.latest else "none"
        if report.pinned is None:
            lines.append(f"{report.line}: not pinned (latest upstream {latest})")
            continue
        if not report.newer:
            lines.append(f"{report.line}: pinned {report.pinned} is up to date (latest {latest})")
            continue
        lines.append(f"{report.line}: pinned {report.pinned}; newer upstream:")
        for release in report.newer:
            where = (
                f"tag {release.tag} at {release.commit[:7]}"
                if release.tag and release.commit
                else "PyPI"
            )
            lines.append(
                f"  {release.version}  ({where})  invoke bump --kilosort {release.version}"
            )
    return "\n".join(lines)

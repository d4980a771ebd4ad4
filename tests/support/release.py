"""Bump and release: a local server that answers like GitHub's and PyPI's APIs, the day.

The server (``serve_fake_api``) listens on 127.0.0.1 (an ephemeral port) and serves recorded
responses in the real JSON shapes: GitHub's tag list (paginated with ``Link`` headers, 403 rate
limits with their reset header, 404s) and PyPI's ``/pypi/<name>/json``. Nothing leaves this
machine. The ``fake_api`` fixture (conftest.py) is this server with no token and no proxy.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kilosort_docker.release import upstream

if TYPE_CHECKING:  # the benchmarks import tests.support without pytest
    import pytest

#: The day the bump tests bump on.
TODAY = dt.date(2026, 12, 1)

OWNER_REPO = "MouseLand/Kilosort"
TAGS_PATH = f"/repos/{OWNER_REPO}/tags"

#: Made-up 40-digit commits (recorded shapes, not MouseLand's real hashes), by tag.
COMMITS = {
    "v1.0": "1a0b" * 10,
    "v2.0": "2a0b" * 10,
    "v2.5": "25ab" * 10,
    "v2.5.1": "251a" * 10,
    "v3.0": "3a0b" * 10,
    "v3.0.1": "301a" * 10,
    "v3.0.2": "c43f524" + "0" * 33,
    "v3.0.3": "d7e1f30" + "1" * 33,
    "v4.0": "4a0b" * 10,
    "v4.0.0b1": "40b1" * 10,
    "v4.1.7": "4170" * 10,
    "v4.1.8": "4180" * 10,
    "kilosort2-final": "ffee" * 10,
}
#: Newest first, as GitHub lists them; split over three pages.
PAGES = [
    ["v4.1.8", "v4.1.7", "v4.0.0b1", "v4.0", "v3.0.3"],
    ["v3.0.2", "v3.0.1", "v3.0", "kilosort2-final"],
    ["v2.5.1", "v2.5", "v2.0", "v1.0"],
]
#: kilosort on PyPI: 4.1.9 is yanked, 4.2.0rc1 a pre-release, 4.1.6 has no files.
PYPI_RELEASES = {
    "4.0": [False],
    "4.1.6": [],
    "4.1.7": [False, False],
    "4.1.8": [False, False],
    "4.1.9": [True],
    "4.2.0rc1": [False],
}


def github_tag(base: str, name: str) -> dict:
    """One tag as GitHub's ``GET /repos/{owner}/{repo}/tags`` lists it."""
    sha = COMMITS[name]
    api = f"{base}/repos/{OWNER_REPO}"
    return {
        "name": name,
        "zipball_url": f"{api}/zipball/refs/tags/{name}",
        "tarball_url": f"{api}/tarball/refs/tags/{name}",
        "commit": {"sha": sha, "url": f"{api}/commits/{sha}"},
        "node_id": "MDM6UmVmMTIzNDU2Nzg5OnJlZnMvdGFncy92My4wLjI=",
    }


def pypi_file(version: str, index: int, yanked: bool) -> dict:
    """One file of a release as PyPI's JSON API lists it."""
    wheel = index == 0
    filename = f"kilosort-{version}-py3-none-any.whl" if wheel else f"kilosort-{version}.tar.gz"
    return {
        "comment_text": "",
        "digests": {"blake2b_256": "ab" * 32, "md5": "cd" * 16, "sha256": "ef" * 32},
        "downloads": -1,
        "filename": filename,
        "has_sig": False,
        "md5_digest": "cd" * 16,
        "packagetype": "bdist_wheel" if wheel else "sdist",
        "python_version": "py3" if wheel else "source",
        "requires_python": ">=3.9",
        "size": 123456,
        "upload_time": "2024-10-01T12:00:00",
        "upload_time_iso_8601": "2024-10-01T12:00:00.000000Z",
        "url": f"https://files.pythonhosted.org/packages/ab/cd/{filename}",
        "yanked": yanked,
        "yanked_reason": "broken wheel" if yanked else None,
    }


def pypi_project(releases: dict[str, list[bool]] | None = None) -> dict:
    """PyPI's ``GET /pypi/kilosort/json``."""
    releases = PYPI_RELEASES if releases is None else releases
    return {
        "info": {
            "name": "kilosort",
            "version": "4.1.8",
            "summary": "spike sorting pipeline",
            "requires_python": ">=3.9",
            "yanked": False,
        },
        "last_serial": 25000000,
        "releases": {
            version: [pypi_file(version, i, yanked) for i, yanked in enumerate(files)]
            for version, files in releases.items()
        },
        "urls": [],
        "vulnerabilities": [],
    }


NOT_FOUND = {
    "message": "Not Found",
    "documentation_url": "https://docs.github.com/rest/repos/repos#list-repository-tags",
    "status": "404",
}


@dataclass
class FakeAPI:
    """Recorded responses by request path (with query); ``{base}`` in text is the server URL."""

    url: str = ""
    routes: dict[str, tuple[int, dict[str, str], str]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def set(self, path: str, body: object, status: int = 200, **headers: str) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        self.routes[path] = (status, {k.replace("_", "-"): v for k, v in headers.items()}, text)

    def serve_tags(self, pages: list[list[str]] = PAGES, repo: str = OWNER_REPO) -> None:
        """The tags over ``len(pages)`` pages linked the way GitHub links them."""
        path = f"/repos/{repo}/tags"
        for number, names in enumerate(pages, 1):
            links = []
            if number < len(pages):
                links.append(f'<{{base}}{path}?per_page=100&page={number + 1}>; rel="next"')
                links.append(f'<{{base}}{path}?per_page=100&page={len(pages)}>; rel="last"')
            if number > 1:
                links.append(f'<{{base}}{path}?per_page=100&page={number - 1}>; rel="prev"')
                links.append(f'<{{base}}{path}?per_page=100&page=1>; rel="first"')
            query = "per_page=100" if number == 1 else f"per_page=100&page={number}"
            headers = {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "57"}
            if links:
                headers["Link"] = ", ".join(links)
            body = [github_tag("{base}", name) for name in names]
            self.routes[f"{path}?{query}"] = (200, headers, json.dumps(body))
            for name in names:
                self.serve_ref(name, repo=repo)

    def serve_ref(self, name: str, *, annotated: str | None = None, repo: str = OWNER_REPO) -> None:
        """``GET /repos/{repo}/git/refs/tags/{name}`` as GitHub answers it: the commit of
        ``name`` (``COMMITS``), or with ``annotated`` (a tag object's sha) the tag object, whose
        ``GET /repos/{repo}/git/tags/{sha}`` points at the commit."""
        api, commit = f"/repos/{repo}", COMMITS[name]
        target = ("tag", annotated) if annotated else ("commit", commit)
        kind = "tags" if annotated else "commits"
        self.set(
            f"{api}/git/refs/tags/{name}",
            {
                "ref": f"refs/tags/{name}",
                "node_id": "MDM6UmVmcmVmcy90YWdzL3YzLjAuMw==",
                "url": f"{{base}}{api}/git/refs/tags/{name}",
                "object": {
                    "sha": target[1],
                    "type": target[0],
                    "url": f"{{base}}{api}/git/{kind}/{target[1]}",
                },
            },
        )
        if annotated:
            self.set(
                f"{api}/git/tags/{annotated}",
                {
                    "node_id": "MDM6VGFnOTQwYmQzMzYyNDhlZmFlMGY5ZWU1YmM3YjJkNWM5ODU4ODdiMTZhYw==",
                    "tag": name,
                    "sha": annotated,
                    "url": f"{{base}}{api}/git/tags/{annotated}",
                    "message": f"Kilosort {name}\n",
                    "tagger": {
                        "name": "Marius",
                        "email": "m@example.org",
                        "date": "2024-01-01T00:00:00Z",
                    },
                    "object": {
                        "type": "commit",
                        "sha": commit,
                        "url": f"{{base}}{api}/git/commits/{commit}",
                    },
                    "verification": {"verified": False, "reason": "unsigned"},
                },
            )

    def serve_pypi(self, releases: dict[str, list[bool]] | None = None) -> None:
        self.set("/pypi/kilosort/json", pypi_project(releases))

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        api = self.server.api
        api.requests.append((self.path, dict(self.headers.items())))
        status, headers, text = api.routes.get(self.path, (404, {}, json.dumps(NOT_FOUND)))
        data = text.replace("{base}", api.url).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value.replace("{base}", api.url))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _Server(http.server.ThreadingHTTPServer):
    api: FakeAPI


@contextlib.contextmanager
def serve_fake_api() -> Iterator[FakeAPI]:
    """A server on 127.0.0.1 with the tags (3 pages) and PyPI's kilosort releases."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.api = FakeAPI(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.api.serve_tags()
    server.api.serve_pypi()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.api
    finally:
        server.shutdown()
        server.server_close()


def isolate(monkeypatch: pytest.MonkeyPatch) -> None:
    """No token from the caller, and no proxy: requests go straight to 127.0.0.1."""
    monkeypatch.delenv(upstream.TOKEN_ENV, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)

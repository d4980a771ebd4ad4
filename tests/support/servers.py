"""Servers on 127.0.0.1 for the tests: static files over HTTP, and a real registry."""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port() -> str:
    """A URL on 127.0.0.1 where nothing listens (the network is 'down')."""
    return f"http://127.0.0.1:{free_port()}"


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1; yields the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def registry(*, readonly: bool = False) -> Iterator[str]:
    """A real registry (Debian's docker-registry) on 127.0.0.1; yields ``127.0.0.1:PORT``.

    At the end the registry stops, its storage goes, and so do the engine's local tags for
    it (``127.0.0.1:PORT/...``, made by pushes and pulls), which would name a registry gone."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kilosort-docker-registry-") as tmp:
        readonly_block = "  maintenance:\n    readonly:\n      enabled: true\n" if readonly else ""
        config = Path(tmp) / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {tmp}/data\n"
            f"{readonly_block}"
            "http:\n"
            f"  addr: 127.0.0.1:{port}\n"
        )
        process = subprocess.Popen(
            [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"docker-registry did not start: {process.stderr.read()!r}"
                        ) from None
                    time.sleep(0.2)
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=10)
            _untag_registry(f"127.0.0.1:{port}/")


def _untag_registry(prefix: str) -> None:
    """Remove the engine's tags starting with ``prefix`` (an image left untagged goes too)."""
    from kilosort_docker import engine

    client = engine.connect(timeout=600)
    for image in client.api.images():  # dicts: no per-image call to race a removal
        for ref in image.get("RepoTags") or []:
            if ref.startswith(prefix):
                with contextlib.suppress(Exception):
                    client.api.remove_image(ref)

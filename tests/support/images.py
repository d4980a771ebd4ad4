"""Test images: names in the test namespace, a debootstrapped Debian, builds with the engine."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .paths import TESTS

NAMESPACE = "kilosort-docker-test"
DEBIAN_IMAGE = f"{NAMESPACE}/debian:bookworm"
PYTHON_IMAGE = f"{NAMESPACE}/python-base:bookworm"
MATLAB_STANDIN_IMAGE = f"{NAMESPACE}/matlab-standin:r2022b"


def debootstrap_image(client, ref: str = DEBIAN_IMAGE) -> str:
    """A Debian bookworm base image made with debootstrap and ``docker import`` (no registry)."""
    with contextlib.suppress(Exception):
        client.images.get(ref)
        return ref
    with tempfile.TemporaryDirectory(prefix="kilosort-docker-debootstrap-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "import", "-", ref], stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL
        )
        tar.wait()
    return ref


def build_dockerfile(client, folder: Path, ref: str, *, buildargs: dict[str, str]) -> str:
    """Build a test image from ``folder`` with the engine; raises RuntimeError on failure."""
    lines = []
    for event in client.api.build(
        path=str(folder), tag=ref, buildargs=buildargs, rm=True, forcerm=True, decode=True
    ):
        if "stream" in event:
            lines.append(event["stream"])
        if "error" in event:
            raise RuntimeError(f"building {ref} failed: {event['error']}\n{''.join(lines)}")
    return ref


def build_python_base(client, debian_base: str) -> str:
    """The test Python base image (``tests/images/python-base``) on ``debian_base``."""
    return build_dockerfile(
        client,
        TESTS / "images" / "python-base",
        PYTHON_IMAGE,
        buildargs={"BASE_IMAGE": debian_base},
    )


def tar_bytes(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar archive holding ``files`` (name -> content)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def host_ca_bundle() -> str | None:
    """The CA bundle this host trusts (pip's, else the system's), so that pip inside a test
    build trusts the same certificates (e.g. a TLS-inspecting proxy's); None if there is none."""
    for value in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        os.environ.get("REQUESTS_CA_BUNDLE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if value and Path(value).is_file():
            return value
    return None

"""Test images: names in the test namespace, a debootstrapped Debian, builds with the engine."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from kilosort_docker.images import bases

#: The test images' namespace. ``KILOSORT_DOCKER_TEST_NAMESPACE`` (``kilosort-docker-test-*``)
#: gives a run its own, so that two runs on one engine do not remove each other's images.
NAMESPACE = os.environ.get("KILOSORT_DOCKER_TEST_NAMESPACE", "kilosort-docker-test")
if not NAMESPACE.startswith("kilosort-docker-test"):
    raise RuntimeError(
        f"KILOSORT_DOCKER_TEST_NAMESPACE={NAMESPACE!r} must start with kilosort-docker-test "
        "(the prefix the leftovers check and `invoke clean` know as the tests')"
    )
#: What ``invoke bases --namespace kilosort-docker-test`` makes: the tests' Debian and Python
#: base images come from the product's offline route (:mod:`kilosort_docker.images.bases`).
BASES = bases.plan_bases(namespace=NAMESPACE)
DEBIAN_IMAGE = BASES.debian_ref  # kilosort-docker-test/debian:bookworm
PYTHON_IMAGE = BASES.python_ref  # kilosort-docker-test/python-base:3.11-bookworm
MATLAB_STANDIN_IMAGE = f"{NAMESPACE}/matlab-standin:r2022b"


def debootstrap_image(client) -> str:
    """The Debian bookworm image ``invoke bases`` makes with debootstrap and an import (no
    registry), made once and then reused."""
    bases.ensure_debian(BASES, client)
    return DEBIAN_IMAGE


def build_python_base(client, debian_base: str = DEBIAN_IMAGE) -> str:
    """The Python base image ``invoke bases`` makes (``docker/python-base``) on the Debian
    image, made once and then reused; nothing is recorded for ``invoke build``."""
    assert debian_base == DEBIAN_IMAGE, "the Python base is made on the bases' own Debian image"
    bases.make_bases(BASES, client, record=False)
    return PYTHON_IMAGE


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

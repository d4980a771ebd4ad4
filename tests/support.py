"""Helpers for the tests: fixture repositories, stand-in mex files, a local registry.

Everything here exists for the tests only; stand-ins are named as such.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from kilosort_docker import mex

TESTS = Path(__file__).resolve().parent
STANDINS = TESTS / "standins"
NAMESPACE = "kilosort-docker-test"
DEBIAN_IMAGE = f"{NAMESPACE}/debian:bookworm"
PYTHON_IMAGE = f"{NAMESPACE}/python-base:bookworm"
MATLAB_STANDIN_IMAGE = f"{NAMESPACE}/matlab-standin:r2022b"

#: Kilosort3's mex files, as the project's mex spec lists them (names the stand-in binaries).
KILOSORT3_MEX = tuple(
    source.name for source in mex.get_spec("3.0.2").sources if not source.diagnostic
)

GIT_ENV = {
    "GIT_AUTHOR_NAME": "kilosort-docker tests",
    "GIT_AUTHOR_EMAIL": "tests@localhost",
    "GIT_COMMITTER_NAME": "kilosort-docker tests",
    "GIT_COMMITTER_EMAIL": "tests@localhost",
}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    ).stdout.strip()


def make_repo(path: Path, files: dict[str, str], *, tag: str | None = None) -> str:
    """A git repository at ``path`` holding ``files``; returns the full commit."""
    path.mkdir(parents=True, exist_ok=True)
    git("init", "--quiet", "--initial-branch=main", cwd=path)
    for name, text in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git("add", "-A", cwd=path)
    git("commit", "--quiet", "-m", "fixture", cwd=path)
    if tag:
        git("tag", "-a", tag, "-m", tag, cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


def kilosort_fixture_files() -> dict[str, str]:
    """A Kilosort-shaped tree (fixture, not Kilosort's code): CUDA/ with .cu names, main file."""
    files = {f"CUDA/{name}.cu": f"// fixture source for {name}\n" for name in KILOSORT3_MEX}
    files["CUDA/mexGPUall.m"] = "% fixture: the real file compiles the mex files\n"
    files["main_kilosort3.m"] = "% fixture main file\n"
    files["README.md"] = "Fixture repository standing in for MouseLand/Kilosort in tests.\n"
    return files


def npy_fixture_files() -> dict[str, str]:
    return {
        "npy-matlab/readNPY.m": "function data = readNPY(filename)\n% fixture\ndata = [];\nend\n",
        "npy-matlab/writeNPY.m": "function writeNPY(var, filename)\n% fixture\nend\n",
    }


def write_standin_mex(folder: Path, *, profile: str, commit: str) -> Path:
    """Stand-in mex binaries (tiny shared objects exporting mexFunction) and their manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder.parent / "standin_mex.c"
    source.write_text(
        "/* STAND-IN mex file for tests: not Kilosort's code. */\n"
        "const char standin_mex_name[] = MEX_NAME;\n"
        "void mexFunction(int nlhs, void *plhs[], int nrhs, const void *prhs[]) {\n"
        "    (void)nlhs; (void)plhs; (void)nrhs; (void)prhs;\n}\n"
    )
    binaries = {}
    for name in KILOSORT3_MEX:
        target = folder / f"{name}.mexa64"
        subprocess.run(
            [
                "gcc",
                "-shared",
                "-fPIC",
                "-O1",
                f'-DMEX_NAME="{name}"',
                "-o",
                str(target),
                str(source),
            ],
            check=True,
        )
        data = target.read_bytes()
        binaries[target.name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    source.unlink()
    manifest = {"schema": 1, "profile": profile, "kilosort_commit": commit, "binaries": binaries}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    """A real registry (Debian's docker-registry) on 127.0.0.1; yields ``127.0.0.1:PORT``."""
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


def tar_bytes(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar archive holding ``files`` (name -> content)."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def standin_chain_plan(
    matlab_base: str,
    mpm_url: str,
    *,
    kilosort: tuple[Path, str],
    npy_matlab: tuple[Path, str],
    mex_root: Path,
    namespace: str = NAMESPACE,
    **flags,
):
    """The build plan of the Kilosort3 chain on the stand-in MATLAB base, from fixture
    repositories, with stand-in mex binaries for the Kilosort commit written to ``mex_root``."""
    from kilosort_docker import commands

    write_standin_mex(mex_root / "r2022b" / kilosort[1], profile="r2022b", commit=kilosort[1])
    return commands.make_plan(
        images=["kilosort3"],
        base_image=matlab_base,
        mpm_url=f"{mpm_url}/mpm",
        kilosort_repo=str(kilosort[0]),
        kilosort_commit=kilosort[1],
        npy_matlab_repo=str(npy_matlab[0]),
        npy_matlab_commit=npy_matlab[1],
        mex_binaries=str(mex_root),
        namespace=namespace,
        **flags,
    )


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

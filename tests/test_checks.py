"""The image checks, both ways: they pass on the project's images and fail, naming the
problem, on images broken on purpose (tests/broken/)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import pytest

from kilosort_docker.images import checks, stack
from kilosort_docker.images.pins import load_pins
from kilosort_docker.images.spec import ImageSpec
from tests import support

BROKEN = support.TESTS / "broken"
MEX_LAYOUTS = support.TESTS / "images" / "mex-layouts"
MEX_CHECKS = ("mex-present", "mex-checksums", "mex-exports", "mex-libraries", "mex-glibcxx")


def failures(findings):
    return {f.check: f.detail for f in findings if not f.ok}


@pytest.mark.docker
def test_checks_derive_from_the_stack():
    names = {c.name for c in checks.checks_for(stack.get_image("kilosort3"))}
    # a parent's checks also run on its children
    assert {"non-root", "toolboxes", "kilosort-commit", "mex-checksums"} <= names
    assert "kilosort4-versions" not in names
    assert "toolboxes" not in {c.name for c in checks.checks_for(stack.get_image("kilosort4"))}


@pytest.mark.docker
def test_project_images_pass(docker_client, kilosort3_stack):
    plan = kilosort3_stack["plan"]
    for step in plan.steps:
        findings = checks.run_checks(docker_client, step.refs[0], pins=plan.pins)
        assert findings, step.spec.name
        assert failures(findings) == {}, step.spec.name


# A mex file removed fails every mex check: none of them compared all ten.
REMOVED = {c: "mexWtW2.mexa64" for c in MEX_CHECKS}


@pytest.mark.docker
@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ("mex-removed", REMOVED),
        ("mex-swapped", {"mex-checksums": "mexWtW2.mexa64"}),
        ("secret-in-layer", {"no-secrets": "license.lic"}),
        ("wrong-commit", {"kilosort-commit": "differs from the label"}),
    ],
)
def test_broken_images_fail_the_right_check(docker_client, kilosort3_stack, broken, expected):
    plan = kilosort3_stack["plan"]
    base = plan.step("kilosort3").refs[0]
    ref = f"{support.NAMESPACE}/broken:{broken}"
    support.build_dockerfile(docker_client, BROKEN / broken, ref, buildargs={"BASE_IMAGE": base})
    try:
        findings = checks.run_checks(
            docker_client, ref, pins=plan.pins, spec=stack.get_image("kilosort3")
        )
        failed = failures(findings)
        assert set(failed) == set(expected), failed
        for check, text in expected.items():
            assert text in failed[check], failed[check]
    finally:
        docker_client.api.remove_image(ref)  # its untagged layers too


def test_secret_scan_finds_extra_strings_but_never_prints_them():
    layer = support.tar_bytes(
        {
            "etc/app.conf": b"token=hunter2-registry-pass\n",
            "home/u/.docker/config.json": b"{}",
        }
    )
    manifest = json.dumps([{"Layers": ["abc123/layer.tar"]}]).encode()
    saved = support.tar_bytes({"abc123/layer.tar": layer, "manifest.json": manifest})
    chunks = [saved[i : i + 1000] for i in range(0, len(saved), 1000)]
    found = checks.scan_for_secrets(chunks, extra=["hunter2-registry-pass"])
    assert any("etc/app.conf: holds secret #1" in f for f in found)
    assert any(".docker/config.json" in f for f in found)
    assert not any("hunter2" in f for f in found)


@pytest.mark.docker
def test_check_images_task_reports_a_table(kilosort4_image):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "invoke", "check-images", "--image", "kilosort4",
         "--namespace", support.NAMESPACE],
        cwd=support.TESTS.parent, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    names = ("non-root", "kilosort4-versions", "spikeinterface", "no-secrets")
    for check in (*names, "size-budget"):
        assert check in result.stdout
    assert "FAIL" not in result.stdout


# ---- links in images: unit tests of the reader ------------------------------------------------


class FakeContainer:
    """A container whose archives come from a dict: path -> bytes (a file) or ("link", target).
    The engine's behaviour kept: a link's archive holds the link itself, not its target."""

    def __init__(self, tree: dict[str, bytes | tuple[str, str]]) -> None:
        self.tree, self.asked = tree, []

    def get_archive(self, path: str):
        import docker.errors

        self.asked.append(path)
        if path not in self.tree:
            raise docker.errors.NotFound(path)
        entry, buffer = self.tree[path], io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(Path(path).name)
            if isinstance(entry, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, entry[1]
                tar.addfile(info)
            else:
                info.size = len(entry)
                tar.addfile(info, io.BytesIO(entry))
        return iter([buffer.getvalue()]), {}


LIB = "/usr/lib/x86_64-linux-gnu"
OWN = "/opt/matlab/R2022b/sys/os/glnxa64"


def test_link_targets_are_resolved_inside_the_image():
    assert checks.link_target(f"{LIB}/libstdc++.so.6", "libstdc++.so.6.0.30") == (
        f"{LIB}/libstdc++.so.6.0.30"
    )
    assert checks.link_target("/lib64/ld.so", "/lib/x86_64-linux-gnu/ld.so") == (
        "/lib/x86_64-linux-gnu/ld.so"
    )
    assert checks.link_target(f"{OWN}/libstdc++.so.6", "../../../lib/x") == (
        "/opt/matlab/R2022b/lib/x"
    )


def test_reading_a_link_follows_relative_absolute_and_chained_links():
    tree = {
        f"{LIB}/libstdc++.so.6": ("link", "libstdc++.so.6.0.30"),
        f"{LIB}/libstdc++.so.6.0.30": b"\x7fELF system",
        f"{OWN}/libstdc++.so.6": ("link", "libstdc++.so.6.0.x"),
        f"{OWN}/libstdc++.so.6.0.x": ("link", "/opt/libs/libstdc++.so.6.0.28"),
        "/opt/libs/libstdc++.so.6.0.28": b"\x7fELF matlab",
    }
    container = FakeContainer(tree)
    # The engine's one-entry archive of a link is what tarfile cannot read (the bug).
    stream, _ = container.get_archive(f"{LIB}/libstdc++.so.6")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar, pytest.raises(KeyError):
        tar.extractfile(tar.next())
    assert checks.read_following_links(container, f"{LIB}/libstdc++.so.6") == (
        f"{LIB}/libstdc++.so.6.0.30",
        b"\x7fELF system",
    )
    assert checks.read_following_links(container, f"{OWN}/libstdc++.so.6") == (
        "/opt/libs/libstdc++.so.6.0.28",
        b"\x7fELF matlab",
    )


@pytest.mark.parametrize(
    ("tree", "error", "text"),
    [
        ({}, FileNotFoundError, "/a"),
        ({"/a": ("link", "b"), "/b": ("link", "/a")}, checks.BrokenLink, "more than 40"),
        ({"/a": ("link", "gone")}, checks.BrokenLink, "/a -> /gone: /gone does not exist"),
    ],
)
def test_a_link_that_leads_nowhere_is_an_error_naming_the_chain(tree, error, text):
    with pytest.raises(error, match=text):
        checks.read_following_links(FakeContainer(tree), "/a")


# ---- the secret scan covers every layer, or says it did not --------------------------------


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


def test_secret_scan_reads_the_oci_layout_and_counts_its_layers():
    """``docker save`` on Docker 25+ writes the OCI layout: layers are ``blobs/sha256/<digest>``
    (no ``layer.tar``), possibly compressed; a scan that skipped them would find nothing."""
    layer = support.tar_bytes({"home/matlab/license.lic": b"x", "etc/os-release": b"ok"})
    big = support.tar_bytes({"opt/blob.bin": os.urandom(2 << 20)})
    manifest = [{"Config": "blobs/sha256/c0", "Layers": ["blobs/sha256/l1", "blobs/sha256/l2"]}]
    saved = support.tar_bytes(
        {
            "blobs/sha256/l1": _gzip(layer),
            "blobs/sha256/l2": big,
            "blobs/sha256/c0": b'{"config": {"Env": ["PATH=/usr/bin"]}}',
            "manifest.json": json.dumps(manifest).encode(),
        }
    )
    scan = checks.scan_saved_image([saved])
    assert any("home/matlab/license.lic: a secret-looking file" in f for f in scan.findings)
    assert (scan.layers_listed, scan.layers_scanned, scan.incomplete) == (2, 2, ())
    assert scan.files_named_only == 1


@pytest.mark.parametrize(
    ("manifest", "text"),
    [
        ([{"Layers": ["abc/layer.tar", "def/layer.tar"]}], "(def/layer.tar) could not be read"),
        (None, "no readable manifest.json"),
    ],
)
def test_secret_scan_that_could_not_read_a_layer_is_incomplete(manifest, text):
    files = {"abc/layer.tar": support.tar_bytes({"etc/hostname": b"box"})}
    if manifest is not None:
        files["manifest.json"] = json.dumps(manifest).encode()
    scan = checks.scan_saved_image([support.tar_bytes(files)])
    assert scan.findings == ()
    assert any(text in line for line in scan.incomplete), scan.incomplete
    # and the list form is not empty, so a caller that only asks "found anything?" fails too
    assert checks.scan_for_secrets([support.tar_bytes(files)]) == list(scan.incomplete)


# ---- mex checks on small images FROM the stand-in MATLAB base ----------------------------------

#: Debian bullseye's libstdc++6 (GCC 10: libstdc++.so.6.0.28, GLIBCXX_3.4 to 3.4.28), the same
#: libstdc++ as Ubuntu 20.04's, on which mathworks/matlab:r2022b is built. From bullseye's
#: Packages index (dists/bullseye/main/binary-amd64/Packages.xz on deb.debian.org).
OLD_LIBSTDCXX_DEB = "http://deb.debian.org/debian/pool/main/g/gcc-10/libstdc++6_10.2.1-6_amd64.deb"
OLD_LIBSTDCXX_SHA256 = "5c155c58935870bf3b4bfe769116841c0d286a74f59eccfd5645693ac23f06b1"
OLD_LIBSTDCXX = "libstdc++.so.6.0.28"
#: Where ldd finds the system's libstdc++ in the Debian base (``/lib`` links to ``usr/lib``).
SYSTEM = "/lib/x86_64-linux-gnu"

#: A mex-like shared object (exports mexFunction) that g++ 12 builds to need GLIBCXX_3.4.29
#: (std::to_chars for double) and GLIBCXX_3.4.30 (std::condition_variable::wait).
CXX_MEX = """// STAND-IN mex file for tests: not Kilosort's code.
#include <charconv>
#include <condition_variable>
#include <mutex>
extern "C" void mexFunction(int nlhs, void *plhs[], int nrhs, const void *prhs[]) {
    char text[32];
    std::to_chars(text, text + sizeof text, static_cast<double>(nrhs));
    static std::mutex m;
    static std::condition_variable cv;
    if (nlhs < 0) { std::unique_lock<std::mutex> lock(m); cv.wait(lock); }
    (void)plhs; (void)prhs;
}
"""


def _required(reason: str):
    if os.environ.get("KILOSORT_DOCKER_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{reason} (KILOSORT_DOCKER_REQUIRE_DOCKER=1)")
    pytest.skip(reason)


def _ar_member(archive: bytes, prefix: str) -> bytes:
    """The first member of a Unix ar archive (a .deb) whose name starts with ``prefix``."""
    offset = 8  # b"!<arch>\n"
    while offset < len(archive):
        header = archive[offset : offset + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode())
        if name.startswith(prefix):
            return archive[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)
    raise KeyError(prefix)


@pytest.fixture(scope="session")
def old_libstdcxx(tmp_path_factory) -> Path:
    """A folder holding bullseye's libstdc++.so.6.0.28 (downloaded once, sha256 checked)."""
    try:
        with urllib.request.urlopen(OLD_LIBSTDCXX_DEB, timeout=60) as response:
            deb = response.read()
    except OSError as exc:
        _required(f"cannot download Debian bullseye's libstdc++6 ({exc})")
    assert hashlib.sha256(deb).hexdigest() == OLD_LIBSTDCXX_SHA256
    folder = tmp_path_factory.mktemp("old-libstdcxx")
    data = lzma.decompress(_ar_member(deb, "data.tar"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.getmember(f"./usr/lib/x86_64-linux-gnu/{OLD_LIBSTDCXX}")
        (folder / OLD_LIBSTDCXX).write_bytes(tar.extractfile(member).read())
    return folder


def _cxx_mex(folder: Path) -> dict:
    """The ten mex files of Kilosort3, each built from :data:`CXX_MEX` with the host's g++."""
    if shutil.which("g++") is None:
        _required("g++ is not installed (apt-get install g++)")
    source = folder.parent / "mex.cpp"
    source.write_text(CXX_MEX)
    folder.mkdir(parents=True)
    binaries = {}
    for name in support.KILOSORT3_MEX:
        target = folder / f"{name}.mexa64"
        subprocess.run(
            ["g++", "-std=c++17", "-shared", "-fPIC", "-O1", "-o", str(target), str(source)],
            check=True,
        )
        binaries[target.name] = {"sha256": hashlib.sha256(target.read_bytes()).hexdigest()}
    needed = checks.elf_glibcxx_needed(target.read_bytes())
    if "GLIBCXX_3.4.30" not in needed:
        _required(f"the host's g++ is older than 12: its mex needs only {sorted(needed)}")
    return {"schema": 1, "profile": "r2022b", "binaries": binaries}


@contextlib.contextmanager
def mex_image(client, base: str, folder: Path, case: str, *, cxx: bool, old: Path | None, **args):
    """A test image from ``tests/images/mex-layouts`` (build args in capitals), removed after."""
    context = folder / "context"
    shutil.copytree(MEX_LAYOUTS, context)
    (context / "old").mkdir()
    if old is not None:
        shutil.copy2(old / OLD_LIBSTDCXX, context / "old" / OLD_LIBSTDCXX)
    if cxx:
        manifest = _cxx_mex(context / "mex")
    else:
        support.write_standin_mex(context / "mex", profile="r2022b", commit="0" * 40)
        manifest = json.loads((context / "mex" / "manifest.json").read_text())
        (context / "mex" / "manifest.json").unlink()
    (context / "mex-manifest.json").write_text(json.dumps(manifest))
    ref = f"{support.NAMESPACE}/mex-layouts:{case}"
    buildargs = {"BASE_IMAGE": base} | {k.upper(): v for k, v in args.items()}
    support.build_dockerfile(client, context, ref, buildargs=buildargs)
    try:
        yield ref
    finally:
        client.api.remove_image(ref, force=True)


def _mex_findings(client, ref: str, only=MEX_CHECKS) -> dict[str, checks.Finding]:
    kilosort3: ImageSpec = stack.get_image("kilosort3")
    found = checks.run_checks(client, ref, pins=load_pins(), spec=kilosort3, only=only)
    return {f.check: f for f in found}


@pytest.mark.docker
@pytest.mark.parametrize(
    ("case", "args", "failed"),
    [
        # issue 11: without sha256sum, "0 checksums match the manifest" passed
        ("no-sha256sum", {"remove": "sha256sum"}, {}),
        # ldd absent: "ldd resolves every library" passed on no output
        ("no-ldd", {"remove": "ldd"}, {"mex-libraries": "ldd could not run"}),
        # a mex file MATLAB's user cannot read: ldd fails on it, which passed
        ("unreadable", {"unreadable": "mexWtW2.mexa64"}, {"mex-libraries": "mexWtW2.mexa64"}),
        # a manifest that lists nothing: "all 0 mex files present" passed
        ("empty-manifest", {"manifest": "empty"}, dict.fromkeys(MEX_CHECKS, "lists no mex")),
        ("no-manifest", {"manifest": "missing"}, dict.fromkeys(MEX_CHECKS, "no mex manifest")),
    ],
)
def test_mex_checks_compare_every_mex_file_or_fail(
    docker_client, matlab_standin, tmp_path, case, args, failed
):
    with mex_image(
        docker_client, matlab_standin, tmp_path, case, cxx=False, old=None, **args
    ) as ref:
        found = _mex_findings(docker_client, ref)
    assert set(found) == set(MEX_CHECKS)
    assert {c: f.detail for c, f in found.items() if not f.ok}.keys() == failed.keys(), found
    for check, text in failed.items():
        assert text in found[check].detail, found[check].detail
    total = len(support.KILOSORT3_MEX)
    if "mex-checksums" not in failed:
        assert f"{total} of {total} mex files match" in found["mex-checksums"].detail
    if "mex-exports" not in failed:
        assert f"{total} of {total} mex files export" in found["mex-exports"].detail


@pytest.mark.docker
@pytest.mark.parametrize(
    ("matlab_libstdcxx", "system_libstdcxx", "ok", "expected"),
    [
        # MATLAB's own present (a chain of links): it is judged, not the older system one
        ("new", "old", True, f"{OWN}/libstdc++.so.6 -> /opt/matlab-libs/libstdc++.so.6.0.30"),
        ("old", "new", False, f"GLIBCXX_3.4.29, GLIBCXX_3.4.30, not in {OWN}/libstdc++.so.6"),
        # MATLAB's own removed (MathWorks' image): the system's, a link ldd names
        ("removed", "new", True, f"{SYSTEM}/libstdc++.so.6 -> {SYSTEM}/libstdc++.so.6.0.30"),
        (
            "removed",
            "old",
            False,
            f"GLIBCXX_3.4.30, not in {SYSTEM}/libstdc++.so.6 -> {SYSTEM}/{OLD_LIBSTDCXX}",
        ),
    ],
)
def test_mex_glibcxx_judges_the_libstdcxx_matlab_loads(
    docker_client, matlab_standin, old_libstdcxx, tmp_path,
    matlab_libstdcxx, system_libstdcxx, ok, expected,
):  # fmt: skip
    case = f"glibcxx-{matlab_libstdcxx}-{system_libstdcxx}"
    with mex_image(
        docker_client, matlab_standin, tmp_path, case, cxx=True, old=old_libstdcxx,
        matlab_libstdcxx=matlab_libstdcxx, system_libstdcxx=system_libstdcxx,
    ) as ref:  # fmt: skip
        found = _mex_findings(docker_client, ref, only=["mex-glibcxx"])["mex-glibcxx"]
    assert found.ok is ok, found.detail
    assert expected in found.detail, found.detail
    if ok:
        total = len(support.KILOSORT3_MEX)
        assert f"up to GLIBCXX_3.4.30) of {total} of {total} mex files" in found.detail
    owner = "MATLAB's own" if matlab_libstdcxx != "removed" else "the system's"
    assert owner in found.detail, found.detail


# ---- the shared checks and the runner: nothing compared is no pass ---------------------------


class FakeTarget:
    """What the shared checks read of an image under test: its attributes and ``sh``."""

    def __init__(self, attrs: dict, sh: tuple[int, str] = (0, "")) -> None:
        self.image = type("Image", (), {"attrs": attrs})()
        self._sh = sh

    def sh(self, script: str, *, user=None) -> tuple[int, str]:
        return self._sh


@pytest.mark.parametrize(
    ("sh", "ok", "text"),
    [
        ((0, "1000\nmatlab\n"), True, "runs as matlab (uid 1000"),
        ((0, "0\nroot\n"), False, "runs as root (uid 0"),
        ((127, "sh: 1: id: not found\n"), False, "could not tell the user"),
        ((0, ""), False, "could not tell the user"),
    ],
)
def test_non_root_fails_when_it_cannot_tell_the_user(sh, ok, text):
    found = checks._non_root(FakeTarget({"Config": {"User": "matlab"}}, sh))
    assert found[0] is ok
    assert text in found[1]


@pytest.mark.parametrize(
    ("attrs", "budget", "ok", "text"),
    [
        ({"Size": 3_000_000_000}, 16.0, True, "3.00 GB within the 16.0 GB budget"),
        ({"Size": 3_000_000_000}, 2.0, False, "over the 2.0 GB budget"),
        ({}, 16.0, False, "reports no size"),
        ({"Size": 3_000_000_000}, 0.0, False, "no size budget"),
    ],
)
def test_size_budget_fails_without_a_size_or_a_budget(attrs, budget, ok, text):
    found = checks._size_budget(FakeTarget(attrs), budget)
    assert found[0] is ok
    assert text in found[1]


def test_asking_for_a_check_the_image_does_not_have_is_an_error():
    from kilosort_docker.errors import UserError

    with pytest.raises(UserError, match="no check mex-checksum for kilosort3: choose from"):
        checks.run_checks(
            None, "x", pins=load_pins(), spec=stack.get_image("kilosort3"), only=["mex-checksum"]
        )

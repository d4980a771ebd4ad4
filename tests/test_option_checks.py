"""Build options a dry run used to accept: each is refused in one line before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kilosort_docker.errors import UserError
from kilosort_docker.images.options import BuildOptions, is_remote

INVOKE = Path(sys.executable).with_name("invoke")
ROOT = Path(__file__).resolve().parents[1]


def test_ca_bundle_without_a_certificate_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "proxy.crt"
    bundle.write_bytes(b"\x30\x82\x03\x0a binary DER, not PEM")
    with pytest.raises(UserError, match="holds no PEM certificate.*openssl x509"):
        BuildOptions.from_flags(ca_bundle=str(bundle))
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert BuildOptions.from_flags(ca_bundle=str(bundle)).ca_bundle == bundle


@pytest.mark.parametrize("flag", ["kilosort_repo", "npy_matlab_repo"])
def test_a_repository_folder_that_does_not_exist_is_refused(tmp_path: Path, flag: str) -> None:
    missing = tmp_path / "no-such-mirror.git"
    dashed = "--" + flag.replace("_", "-")
    with pytest.raises(UserError, match=f"{dashed} {missing}: no such folder"):
        BuildOptions.from_flags(**{flag: str(missing)})
    missing.mkdir()
    assert BuildOptions.from_flags(**{flag: str(missing)})


@pytest.mark.parametrize(
    ("repository", "remote"),
    [
        ("https://github.com/MouseLand/Kilosort.git", True),
        ("ssh://git@example.org/lab/Kilosort.git", True),
        ("git@github.com:MouseLand/Kilosort.git", True),
        ("file:///srv/mirrors/Kilosort.git", True),
        ("/srv/mirrors/Kilosort.git", False),
        ("../shared/mirrors/Kilosort.git", False),
        ("C:/mirrors/Kilosort.git", False),
    ],
)
def test_is_remote_tells_urls_from_folders(repository: str, remote: bool) -> None:
    assert is_remote(repository) is remote


@pytest.mark.parametrize("url", ["ftp://mirror.example.org/mpm", "file:///srv/mpm", "/srv/mpm"])
def test_mpm_url_that_docker_add_cannot_fetch_is_refused(url: str) -> None:
    with pytest.raises(UserError, match="only http:// and https://"):
        BuildOptions.from_flags(mpm_url=url)


def test_mpm_url_over_http_is_accepted() -> None:
    assert BuildOptions.from_flags(mpm_url="http://127.0.0.1:8000/mpm").mpm_url


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build", "--image", "--dry-run"], "--image needs a value, e.g. --image kilosort4"),
        (["build", "--dry-run", "--gencode"], "--gencode needs a value"),
        (["check-images", "--image"], "--image needs a value"),
    ],
)
def test_a_repeatable_flag_without_a_value_is_refused(argv: list[str], message: str) -> None:
    """Invoke gives an empty list for `--image` with no value, which would build the whole
    stack: the task refuses it instead, before any work."""
    result = subprocess.run([str(INVOKE), *argv], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert "build nothing" not in result.stdout and "tag " not in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build", "--cuda", "abc", "--dry-run"], "--cuda 'abc' is not a CUDA version"),
        (["verify-mex", "--compute-capability", "abc"], "bad compute capability 'abc'"),
        (["check-gpu", "--license", "no-such.lic"], "license file --license names (no-such"),
    ],
)
def test_malformed_values_are_named_before_anything_else(argv: list[str], message: str) -> None:
    """The value is judged first: not a CUDA mismatch, missing mex binaries or an environment
    variable the user did not set."""
    env = {k: v for k, v in os.environ.items() if k != "MLM_LICENSE_FILE"}
    result = subprocess.run([str(INVOKE), *argv], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.docker
def test_push_dry_run_refuses_images_that_were_not_built(docker_client) -> None:
    namespace = "kilosort-docker-test-never-built"
    result = subprocess.run(
        [str(INVOKE), "push", "--registry", "127.0.0.1:9", "--namespace", namespace, "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: not built here: "), result.stderr
    assert f"{namespace}/matlab-toolboxes:" in lines[0] and "more: run `invoke build`" in lines[0]
    assert "would push" not in result.stdout


def test_release_push_refuses_a_partial_stack(tmp_path: Path, monkeypatch) -> None:
    """A record of kilosort4 alone (the MATLAB base could not be pulled) is no release."""
    from kilosort_docker import commands, paths
    from kilosort_docker.images import record
    from kilosort_docker.images.pins import load_pins

    monkeypatch.setattr(paths, "BUILD_RECORD_DIR", tmp_path)
    only = record.RecordedImage("kilosort4", ("lab/kilosort4:4.1.7",), "sha256:1", {})
    release = str(load_pins().release)
    record.save(record.BuildRecord("r2022b", release, (only,)), merge=False)
    with pytest.raises(UserError, match="lacks matlab-toolboxes, kilosort3-code, kilosort3: a"):
        commands.release_record("r2022b")


def test_a_build_that_fails_on_tls_names_ca_bundle() -> None:
    """pip behind a TLS-inspecting proxy: the one-line error says to pass --ca-bundle."""
    from kilosort_docker import commands
    from kilosort_docker.images import build

    step = commands.make_plan(image=["kilosort4"], namespace="lab").steps[0]
    pip_log = (
        "WARNING: Retrying (Retry(total=4)) after connection broken by 'SSLError(SSLCertVerificat"
        "ionError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed "
        "certificate in certificate chain (_ssl.c:992)'))': /simple/torch/"
    )

    class API:
        def __init__(self, lines):
            self.lines = lines

        def build(self, **kwargs):
            yield {"stream": "Step 4/9 : RUN pip install torch\n"}
            for line in self.lines:
                yield {"stream": line + "\n"}
            yield {
                "error": "The command '/bin/sh -c pip install torch' returned a non-zero code: 1"
            }

    def run(lines):
        client = type("Client", (), {"api": API(lines)})()
        with pytest.raises(UserError) as caught:
            build._run_build(
                client, step, Path("."), {}, no_cache=False, events=build.BuildEvents()
            )
        return str(caught.value)

    tls = run([pip_log, "ERROR: No matching distribution found for torch==2.13.0"])
    assert "\n" not in tls and "--ca-bundle FILE.pem" in tls and "returned a non-zero" in tls
    other = run(["ERROR: No matching distribution found for torch==2.13.0"])
    assert "--ca-bundle" not in other and other.endswith("(fix that step; the build log is above)")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            "Get http://127.0.0.1:9/v2/: dial tcp 127.0.0.1:9: connect: connection refused",
            "the registry for 127.0.0.1:9/lab/kilosort4:4.1.7 could not be reached",
        ),
        (
            "denied: requested access to the resource is denied",
            "the registry refused 127.0.0.1:9/lab/kilosort4:4.1.7: denied",
        ),
    ],
)
def test_an_unreachable_registry_is_not_called_a_refusal(error: str, expected: str) -> None:
    from kilosort_docker.images import push

    class API:
        def push(self, repo, **kwargs):
            yield {"status": "The push refers to repository [127.0.0.1:9/lab/kilosort4]"}
            yield {"error": error, "errorDetail": {"message": error}}

    client = type("Client", (), {"api": API()})()
    with pytest.raises(UserError) as caught:
        push.push_ref(client, "127.0.0.1:9/lab/kilosort4:4.1.7", auth=None)
    assert str(caught.value).startswith(expected)


def test_a_bad_site_setting_is_blamed_on_the_setting() -> None:
    env = os.environ | {"INVOKE_KILOSORT_DOCKER_NAMESPACE": "Bad NS"}
    result = subprocess.run(
        [str(INVOKE), "build", "--dry-run"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "error: site setting kilosort_docker.namespace (invoke.yaml, or "
        "INVOKE_KILOSORT_DOCKER_NAMESPACE): "
    )

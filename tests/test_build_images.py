"""Integration tests: this repo's Dockerfiles built with the real engine."""

from __future__ import annotations

import json

import pytest

from tests import support

pytestmark = pytest.mark.docker


def run_in(client, image, command, *, user=None, entrypoint=None):
    """Run ``command`` in a throw-away container; returns (exit code, output)."""
    container = client.containers.create(
        image, command=command, user=user, entrypoint=entrypoint, network_disabled=True
    )
    try:
        container.start()
        result = container.wait(timeout=300)
        return result["StatusCode"], container.logs().decode()
    finally:
        container.remove(force=True)


def test_matlab_layer_has_toolboxes(docker_client, kilosort3_stack):
    image = kilosort3_stack["built"]["matlab-toolboxes"].step.refs[0]
    code, out = run_in(
        docker_client, image, ["sh", "-c", "ls /opt/matlab/R2022b/toolbox; id -un"], entrypoint=[]
    )
    assert code == 0, out
    assert {"parallel", "signal", "stats"} <= set(out.split())
    assert out.split()[-1] == "matlab"


def test_code_image_records_checked_out_commit(docker_client, kilosort3_stack, fixture_repos):
    built = kilosort3_stack["built"]["kilosort3-code"]
    _, ks_commit = fixture_repos["kilosort"]
    _, npy_commit = fixture_repos["npy_matlab"]
    labels = docker_client.images.get(built.image_id).labels
    assert labels["io.kilosort-docker.kilosort.commit"] == ks_commit
    assert labels["io.kilosort-docker.npy-matlab.commit"] == npy_commit
    code, out = run_in(
        docker_client,
        built.image_id,
        [
            "sh",
            "-c",
            "cat /opt/kilosort-docker/kilosort.commit; ls /opt/kilosort/CUDA;"
            " ls /opt/npy-matlab/npy-matlab; echo $MATLABPATH; ls $MATLABPATH",
        ],
        entrypoint=[],
    )
    assert code == 0, out
    lines = out.split()
    assert lines[0] == ks_commit
    assert "mexMPnu8.cu" in lines and "readNPY.m" in lines and "startup.m" in lines
    assert ".git" not in out


def test_final_image_holds_only_checked_mex_files(docker_client, kilosort3_stack):
    built = kilosort3_stack["built"]["kilosort3"]
    code, out = run_in(
        docker_client,
        built.image_id,
        [
            "sh",
            "-c",
            "ls /opt/kilosort/CUDA/*.mexa64 | wc -l; "
            "cat /opt/kilosort-docker/mex-manifest.json; ls /tmp/mex /tmp/mex-out 2>&1 || true",
        ],
        entrypoint=[],
    )
    assert code == 0, out
    count, rest = out.split("\n", 1)
    assert int(count) == len(support.KILOSORT3_MEX)
    manifest = json.loads(rest[: rest.rindex("}") + 1])
    assert manifest["profile"] == "r2022b"
    assert "No such file" in rest  # the build stage's files did not reach the final image


def test_tags_and_labels(docker_client, kilosort3_stack, fixture_repos):
    built = kilosort3_stack["built"]["kilosort3"]
    image = docker_client.images.get(built.image_id)
    assert set(built.step.refs) <= set(image.tags)
    assert f"{support.NAMESPACE}/kilosort3:3.0.2-r2022b" in image.tags
    assert f"{support.NAMESPACE}/kilosort3:3.0.2-r2022b-b1" in image.tags
    labels = image.labels
    assert labels["org.opencontainers.image.title"] == "kilosort3"
    assert labels["org.opencontainers.image.version"] == "3.0.2-r2022b-b1"
    assert labels["org.opencontainers.image.base.name"].endswith("kilosort3-code:3.0.2-r2022b-b1")
    assert labels["io.kilosort-docker.matlab.release"] == "R2022b"
    assert labels["io.kilosort-docker.cuda.version"] == "11.2"
    assert labels["io.kilosort-docker.kilosort.commit"] == fixture_repos["kilosort"][1]


def test_kilosort4_imports_pinned_versions_as_non_root(docker_client, kilosort4_image):
    from kilosort_docker.images.pins import load_pins

    pins = load_pins()
    code, out = run_in(
        docker_client,
        kilosort4_image,
        [
            "python",
            "-c",
            "import os, kilosort, torch; from importlib.metadata import version; "
            "print(version('kilosort'), torch.__version__.split('+')[0], os.getuid())",
        ],
    )
    assert code == 0, out
    ks_version, torch_version, uid = out.split()[-3:]
    assert ks_version == pins.kilosort4_version
    assert torch_version == pins.torch_version
    assert uid != "0"

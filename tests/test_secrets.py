"""Secrets reach containers only at run time: build with a fake license file and fake registry
credentials on the host and in the environment, then scan every layer and the history."""

from __future__ import annotations

import base64
import json
import shutil

import pytest

from kilosort_docker.images import build, checks
from kilosort_docker.images.entries import kilosort3_code
from tests import support
from tests.support import leftovers

pytestmark = pytest.mark.docker


_removes_what_it_builds = leftovers.removing_after_module(f"{support.NAMESPACE}-secrets")


FAKE_PASSWORD = "fake-registry-password-7d1e5b"
FAKE_LICENSE_LINE = "SERVER fake-license-server 0a1b2c3d4e5f 27000"


def test_build_leaves_no_host_secret_in_any_layer(
    docker_client, matlab_standin, mpm_server, fixture_repos, git_cache, tmp_path, monkeypatch
):
    license_file = tmp_path / "license.lic"
    license_file.write_text(f"# FAKE license for tests\n{FAKE_LICENSE_LINE}\nUSE_SERVER\n")
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir()
    token = base64.b64encode(f"alice:{FAKE_PASSWORD}".encode()).decode()
    (docker_config / "config.json").write_text(
        json.dumps({"auths": {"registry.example.org": {"auth": token}}})
    )
    monkeypatch.setenv("MLM_LICENSE_FILE", str(license_file))
    monkeypatch.setenv("KILOSORT_DOCKER_REGISTRY_USER", "alice")
    monkeypatch.setenv("KILOSORT_DOCKER_REGISTRY_PASSWORD", FAKE_PASSWORD)
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
    # a careless user left the license file beside the MATLAB code that goes into the image
    matlab_copy = tmp_path / "matlab"
    shutil.copytree(kilosort3_code.MATLAB_DIR, matlab_copy)
    shutil.copy2(license_file, matlab_copy / "license.lic")
    monkeypatch.setattr(kilosort3_code, "MATLAB_DIR", matlab_copy)

    plan = support.standin_chain_plan(
        matlab_standin,
        mpm_server,
        kilosort=fixture_repos["kilosort"],
        npy_matlab=fixture_repos["npy_matlab"],
        mex_root=tmp_path / "mex",
        namespace=f"{support.NAMESPACE}-secrets",
        no_cache=True,
    )
    built = build.execute(plan, docker_client)
    secrets = (FAKE_PASSWORD, token, FAKE_LICENSE_LINE, str(license_file))
    for item in built:
        findings = checks.run_checks(
            docker_client,
            item.step.refs[0],
            pins=plan.pins,
            only=["no-secrets"],
            extra_secrets=secrets,
        )
        assert [f.ok for f in findings] == [True], findings
    # and the scan would have seen them: the same secret in a layer is found
    layer_hit = checks.scan_for_secrets(
        [
            support.tar_bytes(
                {
                    "x/layer.tar": support.tar_bytes(
                        {"home/matlab/notes.txt": FAKE_PASSWORD.encode()}
                    )
                }
            )
        ],
        extra=secrets,
    )
    assert layer_hit

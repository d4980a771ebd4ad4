"""Bad input: a one-line error naming the fix, a non-zero exit, and no tag on a half-built image."""

from __future__ import annotations

from pathlib import Path

import pytest

from kilosort_docker import commands
from kilosort_docker.errors import UserError
from kilosort_docker.images import build
from tests import support
from tests.support import leftovers

ROOT = Path(__file__).resolve().parent.parent


invoke = support.invoke
one_error_line = support.one_error_line


def test_unknown_profile():
    line = one_error_line(invoke("build", "--dry-run", "--profile", "r2099z"))
    assert "r2022b" in line and "invoke profiles" in line


def test_cuda_mismatch_names_the_right_version():
    line = one_error_line(invoke("build", "--dry-run", "--cuda", "12.2"))
    assert "--cuda 11.2" in line


@pytest.mark.parametrize(
    ("task", "profile", "compiler", "cuda", "newest"),
    [
        ("build-mex", "r2022b", "g++-12", "11.2", 10),
        ("build", "r2022b", "g++-11", "11.2", 10),
        ("build-mex", "r2021a", "gcc-10", "11.0", 9),
        ("build", "r2021a", "g++-10", "11.0", 9),
    ],
)
def test_host_compiler_newer_than_the_toolkit_accepts(task, profile, compiler, cuda, newest):
    # Refused before any work, dry runs included (nvcc's crt/host_config.h would stop with
    # "unsupported GNU version" half-way through the build).
    result = invoke(task, "--dry-run", "--profile", profile, "--host-compiler", compiler)
    assert result.returncode == 1
    line = one_error_line(result)
    assert f"CUDA {cuda} accepts gcc up to {newest}, not {compiler}" in line
    assert f"--host-compiler g++-{newest}" in line


@pytest.mark.parametrize("compiler", ["g++-10", "g++", "/usr/bin/g++-9"])
def test_host_compiler_in_range_or_unknown_is_accepted(compiler):
    result = invoke("build-mex", "--dry-run", "--profile", "r2022b", "--host-compiler", compiler)
    assert result.returncode == 0, result.stderr
    assert f"-ccbin {compiler} " in result.stdout


def test_unknown_image():
    line = one_error_line(invoke("build", "--dry-run", "--image", "kilosort5"))
    assert "kilosort4" in line


def test_docker_daemon_not_running(tmp_path):
    result = invoke(
        "build", "--image", "kilosort4", env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    )
    line = one_error_line(result)
    assert "Docker engine is not reachable" in line and "dockerd" in line


def test_dry_run_prints_the_whole_kilosort3_plan():
    result = invoke("build", "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    order = [
        out.index(f". {name}  ")
        for name in ("matlab-toolboxes", "kilosort3-code", "kilosort3", "kilosort4")
    ]
    assert order == sorted(order)
    assert "FROM mathworks/matlab:r2022b" in out
    assert "tag kilosortdocker/kilosort3:3.0.2-r2022b-b1" in out
    assert "--build-arg KILOSORT_COMMIT=c43f524" in out


def _tags_in(client, namespace: str) -> list[str]:
    # The low-level list: no per-image call that another run's removal could make fail.
    tags = [t for image in client.api.images() for t in image.get("RepoTags") or []]
    return [t for t in tags if t.startswith(namespace)]


@pytest.mark.docker
def test_base_image_missing(docker_client):
    with pytest.raises(UserError, match="--base-image") as info:
        plan = commands.make_plan(
            images=["matlab-toolboxes"],
            base_image="127.0.0.1:9/kilosort-docker-test/no-such-matlab:r2022b",
            namespace="kilosort-docker-test-missing",
        )
        build.execute(plan, docker_client)
    assert "\n" not in str(info.value)


@pytest.mark.docker
@pytest.mark.parametrize(
    ("mpm", "expected"),
    [
        ("mpm-failing", "stand-in-log-marker"),
        # MPM logs in the TMPDIR install-toolboxes.sh gives it, not only in /tmp.
        ("mpm-failing-tmpdir", "stand-in-tmpdir-log-marker"),
        ("mpm-silent-failure", "mpm left no log"),
    ],
)
def test_failing_run_step_leaves_no_tag(docker_client, matlab_standin, mpm_server, mpm, expected):
    namespace = f"kilosort-docker-test-{mpm}"
    plan = commands.make_plan(
        images=["matlab-toolboxes"],
        base_image=matlab_standin,
        mpm_url=f"{mpm_server}/{mpm}",
        namespace=namespace,
    )
    events = build.BuildEvents()
    # The steps before the failing one leave their (untagged) images: removed after.
    with (
        leftovers.removing(docker_client, namespace=namespace),
        pytest.raises(UserError, match="building matlab-toolboxes failed at Step"),
    ):
        build.execute(plan, docker_client, events=events)
    assert any(expected in line for line in events.log_lines)
    assert _tags_in(docker_client, namespace) == []


def test_missing_wheelhouse_and_bad_ca_bundle(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        commands.make_plan(wheelhouse=str(tmp_path / "nope"))
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n")
    with pytest.raises(UserError, match="private key"):
        commands.make_plan(ca_bundle=str(key))


@pytest.mark.docker
def test_tampered_committed_mex_binary_is_refused(docker_client, kilosort3_stack, tmp_path):
    import shutil

    plan = kilosort3_stack["plan"]
    folder = kilosort3_stack["mex_root"] / "r2022b" / plan.pins.kilosort3.commit
    copy = tmp_path / "mex" / "r2022b" / plan.pins.kilosort3.commit
    shutil.copytree(folder, copy)
    (copy / "mexWtW2.mexa64").write_bytes(b"not the binary the manifest names")
    from dataclasses import replace

    bad = replace(
        plan,
        options=replace(plan.options, mex_binaries=tmp_path / "mex"),
        steps=(plan.step("kilosort3"),),
    )
    with pytest.raises(UserError, match="mexWtW2.mexa64: .*does not match"):
        build.execute(bad, docker_client)
    assert (copy / "mexWtW2.mexa64").read_bytes() == b"not the binary the manifest names"


# --- issue 11 item 1: references checked before any work, dry runs included -------------------


@pytest.mark.parametrize(
    "args",
    [
        ("build", "--image", "kilosort4", "--namespace", "MyLab", "--dry-run"),
        ("push", "--namespace", "MyLab", "--registry", "127.0.0.1:5000"),
        ("check-images", "--namespace", "MyLab"),
        ("push", "--namespace", "MyLab", "--dry-run"),
    ],
)
def test_upper_case_namespace_is_one_line_before_any_work(args):
    line = one_error_line(invoke(*args))
    assert "--namespace 'MyLab'" in line and "must be lowercase" in line and "mylab" in line


@pytest.mark.parametrize("registry", ["127.0.0.1:5000/", "http://127.0.0.1:5000", "reg istry"])
def test_registry_that_is_not_host_port_is_one_line(registry):
    line = one_error_line(invoke("push", "--registry", registry, "--dry-run"))
    assert "give --registry as host[:port]" in line


def test_host_compiler_that_is_not_a_compiler_is_refused():
    line = one_error_line(invoke("build-mex", "--dry-run", "--host-compiler", "g++-10 -O0"))
    assert "is not a host compiler: give g++-N" in line

"""How MATLAB containers run (issue 10, items 1-4): the image's own user with the outputs
handed back, CUDA forward compatibility on GPUs newer than the release, every FlexLM license
form, 512 MB of shared memory.

Unit tests use the recording fake client; ``docker`` tests run the Kilosort3 runner and
``check_gpu`` against the kilosort3 image built on the faithful stand-in MATLAB base
(``tests/standins/matlab-base``: tini -> run.sh, user ``matlab``, a ``matlab`` that refuses a
missing license or a small /dev/shm and records what it was given).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import types
from pathlib import Path

import pytest

from kilosort_docker import commands, containers, engine, matlab
from kilosort_docker.errors import UserError
from kilosort_docker.groundtruth.sorters import run_kilosort3_container
from kilosort_docker.paths import LICENSE_MOUNT
from tests.support.fakes import FakeClient, leftovers

TRIAD = "27000@lic1.example.org,27000@lic2.example.org,27000@lic3.example.org"
COLON_LIST = "27000@a.example.org:27000@b.example.org"
SERVER_LINE = "SERVER lic.example.org 0123456789ab 27000\n"


def _server_file(folder: Path) -> Path:
    path = folder / "server.lic"
    path.write_text(SERVER_LINE + "USE_SERVER\n")
    return path


# --------------------------------------------------------------------------- license forms


@pytest.mark.parametrize(
    "value, servers",
    [
        ("27000@lic.example.org", (("lic.example.org", 27000),)),
        ("@lic.example.org", (("lic.example.org", None),)),
        (TRIAD, tuple((f"lic{i}.example.org", 27000) for i in (1, 2, 3))),
        (COLON_LIST, (("a.example.org", 27000), ("b.example.org", 27000))),
        (
            f"{TRIAD}:@d.example.org",
            (*((f"lic{i}.example.org", 27000) for i in (1, 2, 3)), ("d.example.org", None)),
        ),
    ],
)
def test_server_forms_pass_through_unchanged(value, servers):
    lic = matlab.resolve_license(value)
    assert lic.kind == "server" and lic.servers == servers and lic.needs_network
    assert lic.container_access() == ({}, {"MLM_LICENSE_FILE": value})
    assert "example" not in repr(lic)


@pytest.mark.parametrize(
    "value",
    ["27000@a,27000@b", "@a,@b,@c", "70000@host", "27000@", "p0rt@h0st", "27000@a::27000@b"],
)
def test_wrong_server_forms_are_one_line_errors(value):
    with pytest.raises(UserError, match="not a license FlexLM accepts") as exc:
        matlab.resolve_license(value)
    assert "\n" not in str(exc.value) and value not in str(exc.value)


def test_license_files_and_folders(tmp_path):
    server_file = _server_file(tmp_path)
    lic = matlab.resolve_license(str(server_file))
    assert lic.kind == "file" and lic.needs_network
    assert lic.servers == (("lic.example.org", 27000),)
    hostlocked = tmp_path / "locked" / "a.lic"
    hostlocked.parent.mkdir()
    hostlocked.write_text("INCREMENT MATLAB MLM 99 permanent uncounted HOSTID=0123456789ab\n")
    assert not matlab.resolve_license(str(hostlocked)).needs_network
    folder = matlab.resolve_license(str(hostlocked.parent))
    assert folder.kind == "directory" and not folder.needs_network
    assert folder.container_access() == (
        {str(hostlocked.parent): {"bind": "/licenses", "mode": "ro"}},
        {"MLM_LICENSE_FILE": "/licenses"},
    )
    (hostlocked.parent / "b.lic").write_text("SERVER srv.example.org ANY\n")
    folder = matlab.resolve_license(str(hostlocked.parent))
    assert folder.needs_network and folder.servers == (("srv.example.org", None),)
    assert matlab.resolve_license(str(server_file)).container_access()[1] == {
        "MLM_LICENSE_FILE": LICENSE_MOUNT
    }


def test_bad_files_and_folders_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        matlab.resolve_license(str(tmp_path / "missing.lic"))
    with pytest.raises(UserError, match="holds no .lic file"):
        matlab.resolve_license(str(tmp_path))
    if os.getuid() != 0:  # root reads every file
        locked = _server_file(tmp_path)
        locked.chmod(0)
        with pytest.raises(UserError, match="cannot read the license file"):
            matlab.resolve_license(str(locked))


# --------------------------------------------------------------------------- the network


def test_network_decision(tmp_path):
    client = FakeClient()
    for value in (TRIAD, COLON_LIST, "@lic.example.org", str(_server_file(tmp_path))):
        matlab.run_batch(
            "x", image="i", license=matlab.resolve_license(value), gpu=False, client=client
        )
        assert "network_mode" not in client.calls[-1][1]
    hostlocked = tmp_path / "h.lic"
    hostlocked.write_text("INCREMENT MATLAB MLM 99 permanent uncounted HOSTID=0123456789ab\n")
    matlab.run_batch(
        "x", image="i", license=matlab.resolve_license(str(hostlocked)), gpu=False, client=client
    )
    assert client.calls[-1][1]["network_mode"] == "none"


def test_preflight_probes_servers_in_order_and_names_the_one_that_answered(caplog):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        closed = socket.create_server(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
        closed.close()
        lic = matlab.resolve_license(f"{dead}@127.0.0.1:{port}@127.0.0.1")
        with caplog.at_level(logging.INFO):
            assert lic.reachable(timeout_s=2) is None
    assert f"license server 2 of 2 (port {port}) answered" in caplog.text
    assert "127.0.0.1" not in caplog.text
    reason = matlab.resolve_license(f"{dead}@127.0.0.1").reachable(timeout_s=2)
    assert reason.startswith(f"the license server (port {dead}) does not answer")
    reason = matlab.resolve_license(f"{dead}@127.0.0.1:@127.0.0.1").reachable(timeout_s=2)
    assert reason.startswith("none of the 2 license servers answers") and "127.0.0.1" not in reason


# --------------------------------------------------------------------------- redaction


def test_no_license_value_or_host_in_logs(tmp_path, caplog):
    from tests.support.fakes import FakeContainer

    said = "Licensing MATLAB using the license manager " + TRIAD + ".\nlic2.example.org down\n"
    client = FakeClient(FakeContainer(said.encode()))
    with caplog.at_level(logging.DEBUG):
        out = matlab.run_batch(
            "x", image="i", license=matlab.resolve_license(TRIAD), gpu=False, client=client
        )
    assert "example.org" not in out and "example.org" not in caplog.text
    assert "***" in out


# --------------------------------------------------------------------------- forward compatibility


def _fake_nvidia_smi(folder: Path, output: str, code: int = 0) -> str:
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\nprintf '{output}'\nexit {code}\n")
    exe.chmod(0o755)
    return str(folder)


def test_gpu_compute_capability_from_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path, "8.6\\n9.0\\n"))
    assert matlab.gpu_compute_capability() == "9.0"
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert matlab.gpu_compute_capability() is None
    bad = tmp_path / "bad"
    bad.mkdir()
    monkeypatch.setenv("PATH", _fake_nvidia_smi(bad, "oops\\n", code=9))
    assert matlab.gpu_compute_capability() is None


@pytest.mark.parametrize(
    "gpu, release, expected",
    [
        ("9.0", "8.6", True),
        ("8.6", "8.6", False),
        ("8.0", "8.6", False),
        ("10.0", "9.0", True),
        (None, "8.6", False),
        ("9.0", None, False),
    ],
)
def test_forward_compatibility_decision(gpu, release, expected):
    assert matlab.needs_forward_compatibility(gpu, release) is expected


class _Images:
    def __init__(self, profile):
        self.profile = profile

    def get(self, ref):
        return type("Image", (), {"labels": {matlab.PROFILE_LABEL: self.profile}})()


def test_hopper_on_r2022b_turns_forward_compatibility_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path, "9.0\\n"))
    client = FakeClient()
    client.images = _Images("r2022b")
    with caplog.at_level(logging.INFO):
        matlab.run_batch("x", image="ks3", license=matlab.License("27000@h"), client=client)
    (_, prepare), (_, kw) = client.calls
    assert prepare["entrypoint"] == ["chmod"] and prepare["user"] == "0"
    env = kw["environment"]
    assert env["MW_CUDA_FORWARD_COMPATIBILITY"] == "1"
    assert env["CUDA_CACHE_PATH"] == matlab.CUDA_CACHE_MOUNT
    assert int(env["CUDA_CACHE_MAXSIZE"]) >= 4 * 1024**3
    assert kw["volumes"][matlab.CUDA_CACHE_VOLUME]["bind"] == matlab.CUDA_CACHE_MOUNT
    line = [r.getMessage() for r in caplog.records if "forward compatibility" in r.getMessage()]
    assert len(line) == 1 and "9.0" in line[0] and "8.6" in line[0] and "R2022b" in line[0]
    # the same GPU on r2024a (9.0 natively), or an Ampere GPU on r2022b: nothing is added
    for profile, cc in (("r2024a", "9.0"), ("r2022b", "8.6")):
        client = FakeClient()
        client.images = _Images(profile)
        matlab.run_batch(
            "x",
            image="ks3",
            license=matlab.License("27000@h"),
            client=client,
            compute_capability=cc,
        )
        assert len(client.calls) == 1
        assert "MW_CUDA_FORWARD_COMPATIBILITY" not in client.calls[0][1]["environment"]


# --------------------------------------------------------------------------- the stand-in image


def _kilosort3_image(kilosort3_stack) -> str:
    return kilosort3_stack["built"]["kilosort3"].step.refs[0]


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("recording.bin", "ops.mat", "chanMap.mat"):
        (data / name).write_bytes(b"x")
    return data


def _saw(out: Path) -> dict:
    return json.loads((out / "standin-matlab.json").read_text())


@pytest.mark.docker
def test_standin_behaves_like_the_published_image(docker_client, kilosort3_stack):
    """Controls for the stand-in itself: run.sh refuses a host uid, matlab refuses 64 MB of
    shared memory and a missing license, -batch fails on error()."""
    image = _kilosort3_image(kilosort3_stack)
    env = {"MLM_LICENSE_FILE": "27000@lic.example.org"}
    run = containers.run(
        image, ["-batch", "disp(1)"], user="1234:99", environment=env, client=docker_client
    )
    assert run.exit_code != 0 and "is not supported" in run.output
    run = containers.run(image, ["-batch", "disp(1)"], environment=env, client=docker_client)
    assert run.exit_code == 3 and "under 512 MB" in run.output
    run = containers.run(image, ["-batch", "disp(1)"], shm_size="512m", client=docker_client)
    assert run.exit_code == 2 and "no MLM_LICENSE_FILE" in run.output
    run = containers.run(
        image, ["-batch", "error('x')"], shm_size="512m", environment=env, client=docker_client
    )
    assert run.exit_code == 1 and run.last_line == "Error using batch"
    assert leftovers(docker_client, image) == []


@pytest.mark.docker
def test_kilosort3_runner_runs_as_image_user_and_hands_outputs_back(
    docker_client, kilosort3_stack, tmp_path, monkeypatch
):
    """Item 1: a non-root caller (uid 1234 here) gets its outputs, MATLAB ran as matlab."""
    image = _kilosort3_image(kilosort3_stack)
    monkeypatch.setattr(os, "getuid", lambda: 1234)
    monkeypatch.setattr(os, "getgid", lambda: 99)
    out = tmp_path / "out"
    run_kilosort3_container(
        _data(tmp_path),
        out,
        image=image,
        license="27000@lic.example.org",
        gpu=False,
        client=docker_client,
    )
    saw = _saw(out)
    assert (saw["user"], saw["uid"], saw["home"]) == ("matlab", 1000, "/home/matlab")
    assert saw["cwd"] == "/home/matlab/Documents/MATLAB"
    files = [out, *out.rglob("*")]
    assert len(files) >= 4
    assert {(p.stat().st_uid, p.stat().st_gid) for p in files} == {(1234, 99)}
    assert leftovers(docker_client, image) == []


@pytest.mark.docker
@pytest.mark.parametrize("form", ["triad", "colon list", "SERVER file"])
def test_kilosort3_runner_license_forms_get_the_network(
    docker_client, kilosort3_stack, tmp_path, form
):
    """Item 3: the value reaches MATLAB unchanged (a file at the mount), with the network."""
    image = _kilosort3_image(kilosort3_stack)
    value = {"triad": TRIAD, "colon list": COLON_LIST}.get(form) or str(_server_file(tmp_path))
    out = tmp_path / "out"
    run_kilosort3_container(
        _data(tmp_path), out, image=image, license=value, gpu=False, client=docker_client
    )
    saw = _saw(out)
    assert saw["MLM_LICENSE_FILE"] == (LICENSE_MOUNT if form == "SERVER file" else value)
    assert "eth0" in saw["interfaces"]
    assert leftovers(docker_client, image) == []


@pytest.mark.docker
def test_matlab_containers_get_512_mb_of_shared_memory(
    docker_client, kilosort3_stack, tmp_path, monkeypatch, caplog
):
    """Item 4 (and check_gpu through the same runner): the stand-in refuses 64 MB."""
    image = _kilosort3_image(kilosort3_stack)
    with caplog.at_level(logging.INFO):
        out = matlab.run_batch(
            "disp(1)",
            image=image,
            license=matlab.resolve_license("27000@lic.example.org"),
            gpu=False,
            client=docker_client,
        )
    saw = json.loads(out.split("stand-in MATLAB saw: ", 1)[1].splitlines()[0])
    assert saw["shm_kb"] >= 512 * 1024 and saw["MLM_LICENSE_FILE"] == "***"
    assert "example.org" not in caplog.text
    monkeypatch.setattr(engine, "connect", lambda **kw: docker_client)
    commands.check_gpu(image=image, license=COLON_LIST, gpu=False)
    with pytest.raises(matlab.MatlabError, match="Error using batch"):
        matlab.run_batch(
            "error('x')",
            image=image,
            license=matlab.resolve_license(TRIAD),
            gpu=False,
            client=docker_client,
        )
    assert leftovers(docker_client, image) == []


@pytest.mark.docker
def test_forward_compatibility_reaches_matlab_with_a_writable_cache(
    docker_client, kilosort3_stack, tmp_path
):
    """Item 2 on the stand-in: a 9.0 GPU on the r2022b image (no GPU is passed here)."""
    image = _kilosort3_image(kilosort3_stack)
    existed = bool(docker_client.volumes.list(filters={"name": matlab.CUDA_CACHE_VOLUME}))
    try:
        out = tmp_path / "out"
        run_kilosort3_container(
            _data(tmp_path),
            out,
            image=image,
            license=TRIAD,
            gpu=False,
            compute_capability="9.0",
            client=docker_client,
        )
        saw = _saw(out)
        assert saw["MW_CUDA_FORWARD_COMPATIBILITY"] == "1"
        assert saw["CUDA_CACHE_PATH"] == matlab.CUDA_CACHE_MOUNT
    finally:
        if not existed:
            with contextlib.suppress(Exception):
                docker_client.volumes.get(matlab.CUDA_CACHE_VOLUME).remove(force=True)
    assert leftovers(docker_client, image) == []


def test_image_profile_tells_an_absent_image_from_an_engine_error() -> None:
    import docker.errors

    from kilosort_docker.errors import UserError

    def client(get):
        return types.SimpleNamespace(images=types.SimpleNamespace(get=get))

    def absent(ref):
        raise docker.errors.ImageNotFound(f"No such image: {ref}")

    def broken(ref):
        raise docker.errors.APIError("500 Server Error", explanation="layer store is corrupt")

    labelled = types.SimpleNamespace(labels={matlab.PROFILE_LABEL: "r2022b"})
    assert matlab.image_profile(client(lambda ref: labelled), "ks3:x").name == "r2022b"
    assert matlab.image_profile(client(absent), "ks3:x") is None
    with pytest.raises(UserError, match="could not inspect ks3:x: layer store is corrupt"):
        matlab.image_profile(client(broken), "ks3:x")

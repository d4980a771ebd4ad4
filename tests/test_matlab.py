"""kilosort_docker.matlab: the one MATLAB batch runner (local and in an image) and the license.

Local MATLAB is a shell script standing in for ``matlab``; containers use the recording fake
of tests/test_containers.py, and (``docker`` tests) its real ``FROM scratch`` probe image,
whose entrypoint behaves like MathWorks' for ``-batch``: it prints the licensing line of
``run.sh`` and the statement, and fails on ``error(``.
"""

from __future__ import annotations

import contextlib
import logging

import docker.errors
import pytest

from kilosort_docker import commands, engine, matlab
from kilosort_docker.errors import UserError
from kilosort_docker.groundtruth.sorters import SortError, run_kilosort3_container
from kilosort_docker.paths import LICENSE_MOUNT, MATLAB_DIR
from tests.support.fakes import FakeClient, FakeContainer, leftovers

SERVER = "27000@licsrv.invalid"
#: What Docker says to a GPU request on a host without the NVIDIA Container Toolkit.
GPU_REFUSAL = 'could not select device driver "" with capabilities: [[gpu]]'


@pytest.fixture
def license_file(tmp_path):
    path = tmp_path / "secret-name.lic"
    path.write_text("SERVER licsrv 0123456789AB 27000\n")
    return path


@pytest.fixture
def hostlocked_file(tmp_path):
    """A host-locked license file: no SERVER line, so no server and no network."""
    path = tmp_path / "hostlocked.lic"
    path.write_text("INCREMENT MATLAB MLM 99 permanent uncounted HOSTID=0123456789ab\n")
    return path


def fake_matlab(folder, script: str):
    """A ``matlab`` on PATH (``folder/bin/matlab``) running ``script`` (sh); returns bin/."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    exe = bin_dir / "matlab"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    return bin_dir


# --------------------------------------------------------------------------- licenses


def test_license_moved_here_and_shared():
    from kilosort_docker.groundtruth import sorters

    assert sorters.License is matlab.License and sorters.resolve_license is matlab.resolve_license


def test_license_access_and_network_need(license_file):
    server = matlab.resolve_license(SERVER)
    assert server.needs_network and server.container_access() == ({}, {"MLM_LICENSE_FILE": SERVER})
    lic = matlab.resolve_license(str(license_file))
    assert lic.needs_network  # its SERVER line names a license server
    assert lic.container_access() == (
        {str(license_file): {"bind": LICENSE_MOUNT, "mode": "ro"}},
        {"MLM_LICENSE_FILE": LICENSE_MOUNT},
    )
    assert str(license_file) not in repr(lic) and "licsrv" not in repr(lic)


def test_host_license_from_installation(tmp_path, monkeypatch):
    monkeypatch.delenv("MLM_LICENSE_FILE", raising=False)
    bin_dir = fake_matlab(tmp_path / "MATLAB", "exit 0\n")
    with pytest.raises(UserError, match="MLM_LICENSE_FILE"):
        matlab.host_license(None, bin_dir / "matlab")
    (tmp_path / "MATLAB" / "licenses").mkdir()
    (tmp_path / "MATLAB" / "licenses" / "network.lic").write_text("x")
    assert matlab.host_license(None, bin_dir / "matlab") is None
    assert matlab.host_license(SERVER, bin_dir / "matlab").kind == "server"


def test_quote():
    assert matlab.quote("/d/it's") == "'/d/it''s'"


# --------------------------------------------------------------------------- local MATLAB


def test_local_batch_streams_redacts_and_uses_cwd(tmp_path, monkeypatch, caplog):
    script = 'echo "args: $1 $2"\necho "license $MLM_LICENSE_FILE"\necho "cwd $(pwd)"\n'
    monkeypatch.setenv("PATH", str(fake_matlab(tmp_path, script)))
    work = tmp_path / "work"
    work.mkdir()
    with caplog.at_level(logging.INFO):
        out = matlab.run_batch(
            "disp(1)",
            license=matlab.resolve_license(SERVER),
            cwd=work,
            environment={"EXTRA": "1"},
        )
    assert out.splitlines() == ["args: -batch disp(1)", "license ***", f"cwd {work}"]
    assert "licsrv" not in caplog.text and "| license ***" in caplog.text


def test_local_batch_failure_names_last_line(tmp_path, monkeypatch):
    script = "echo starting\necho 'Error using thing: boom' >&2\necho\nexit 3\n"
    monkeypatch.setenv("PATH", str(fake_matlab(tmp_path, script)))
    with pytest.raises(matlab.MatlabError, match="^matlab exited with 3: Error using thing: boom$"):
        matlab.run_batch("x", license=None)


def test_local_batch_without_matlab(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="matlab not found on PATH"):
        matlab.run_batch("x", license=None)


# --------------------------------------------------------------------------- in an image


def test_container_batch_server_license(caplog):
    client = FakeClient(FakeContainer(f"Licensing MATLAB using {SERVER}.\n".encode()))
    with caplog.at_level(logging.INFO):
        out = matlab.run_batch(
            "check_gpu",
            image="ks3:t",
            license=matlab.resolve_license(SERVER),
            matlab_command=("matlab",),
            client=client,
        )
    image, kw = client.calls[0]
    assert image == "ks3:t" and kw["command"] == ["matlab", "-batch", "check_gpu"]
    assert kw["environment"]["MLM_LICENSE_FILE"] == SERVER
    assert "network_mode" not in kw  # a license server needs the network
    assert kw["device_requests"][0]["Capabilities"] == [["gpu"]]
    assert out == "Licensing MATLAB using ***." and "licsrv" not in caplog.text


def test_container_batch_license_file_has_no_network(hostlocked_file):
    client = FakeClient()
    lic = matlab.resolve_license(str(hostlocked_file))
    matlab.run_batch("x", image="ks3", license=lic, gpu=False, client=client)
    _, kw = client.calls[0]
    assert kw["network_mode"] == "none" and "device_requests" not in kw
    assert kw["volumes"][str(hostlocked_file)] == {"bind": LICENSE_MOUNT, "mode": "ro"}
    assert kw["environment"]["MLM_LICENSE_FILE"] == LICENSE_MOUNT
    # a host-locked license file: the network is kept for the MAC address
    matlab.run_batch("x", image="ks3", license=lic, mac_address="02:42:ac:11:00:02", client=client)
    _, kw = client.calls[1]
    assert "network_mode" not in kw and kw["mac_address"] == "02:42:ac:11:00:02"


def test_container_batch_runs_as_image_user_and_hands_back(monkeypatch, tmp_path):
    """No --user, no HOME: MathWorks' run.sh supports only the image's user; the rw folder is
    opened for it, then a root chown container hands the files to the caller."""
    monkeypatch.setattr(matlab.os, "getuid", lambda: 1234)
    monkeypatch.setattr(matlab.os, "getgid", lambda: 99)
    out = tmp_path / "out"
    out.mkdir(mode=0o750)
    client = FakeClient()
    volumes = {str(out): {"bind": "/out", "mode": "rw"}}
    matlab.run_batch("x", image="i", license=matlab.License(SERVER), volumes=volumes, client=client)
    (_, kw), (image, chown) = client.calls
    assert "user" not in kw and "HOME" not in kw["environment"]
    assert kw["shm_size"] == "512m" and kw["volumes"][str(out)] == {"bind": "/out", "mode": "rw"}
    assert image == "i" and chown["entrypoint"] == ["chown", "-R"] and chown["user"] == "0"
    assert chown["command"][0] == "1234:99" and chown["network_mode"] == "none"
    assert list(chown["volumes"]) == [str(out)]
    assert (out.stat().st_mode & 0o777) == 0o750  # the mode is given back too


class Sequence(FakeClient):
    """One fake container per create, in order (the MATLAB run, then the hand-back)."""

    def __init__(self, *made):
        super().__init__(made[0])
        self.made = list(made)

    def create(self, image, **kwargs):
        super().create(image, **kwargs)
        return self.made[len(self.calls) - 1]


def _interrupted():
    container = FakeContainer(b"MATLAB is writing its outputs\n")
    container.interrupt_logs = True
    return container


@pytest.mark.parametrize(
    ("first", "raised"),
    [
        pytest.param(_interrupted, KeyboardInterrupt, id="interrupt"),
        pytest.param(
            lambda: FakeContainer(fail_wait=docker.errors.APIError("500", explanation="gone")),
            UserError,
            id="lost-engine",
        ),
    ],
)
def test_container_batch_hands_outputs_back_after_an_interrupt(tmp_path, first, raised):
    """MATLAB may have written files as the image's user: they are handed back whatever
    ended the run, and the folder gets its mode back."""
    out = tmp_path / "out"
    out.mkdir(mode=0o750)
    matlab_run, chown = first(), FakeContainer(b"")
    client = Sequence(matlab_run, chown)
    volumes = {str(out): {"bind": "/out", "mode": "rw"}}
    with pytest.raises(raised):
        matlab.run_batch(
            "x", image="i", license=matlab.License(SERVER), volumes=volumes, client=client
        )
    assert [kw.get("entrypoint") for _, kw in client.calls] == [None, ["chown", "-R"]]
    assert matlab_run.events[-1] == "remove" and chown.events == ["start", "logs", "wait", "remove"]
    assert (out.stat().st_mode & 0o777) == 0o750


def test_container_batch_refused_start_hands_nothing_back(tmp_path):
    """Nothing ran (no NVIDIA toolkit): no hand-back container, and the mode comes back."""
    out = tmp_path / "out"
    out.mkdir(mode=0o750)
    refusal = docker.errors.APIError("500", explanation=GPU_REFUSAL)
    client = FakeClient(FakeContainer(fail_start=refusal))
    volumes = {str(out): {"bind": "/out", "mode": "rw"}}
    with pytest.raises(UserError, match="NVIDIA container toolkit"):
        matlab.run_batch(
            "x", image="i", license=matlab.License(SERVER), volumes=volumes, client=client
        )
    assert len(client.calls) == 1 and client.container.events == ["start", "remove"]
    assert (out.stat().st_mode & 0o777) == 0o750


def test_container_batch_missing_mount_makes_nothing(tmp_path):
    client = FakeClient()
    missing = tmp_path / "no-such-output"
    with pytest.raises(UserError, match="no-such-output does not exist"):
        matlab.run_batch(
            "x",
            image="i",
            license=matlab.License(SERVER),
            volumes={str(missing): {"bind": "/out", "mode": "rw"}},
            client=client,
        )
    assert client.calls == [] and not missing.exists()


def test_container_batch_failure_and_missing_license():
    client = FakeClient(FakeContainer(b"Error using run_kilosort3: no GPU\n", code=1))
    with pytest.raises(matlab.MatlabError, match="^ks3 exited with 1: Error using run_kilosort3"):
        matlab.run_batch("x", image="ks3", license=matlab.License(SERVER), client=client)
    assert client.container.events[-1] == "remove"
    with pytest.raises(UserError, match="no MATLAB license"):
        matlab.run_batch("x", image="ks3", license=None, client=FakeClient())


# --------------------------------------------------------------------------- check_gpu


def test_check_gpu_local(tmp_path, monkeypatch):
    monkeypatch.setenv("MLM_LICENSE_FILE", SERVER)
    monkeypatch.setenv("PATH", str(fake_matlab(tmp_path / "ok", 'echo "$2"\n')))
    commands.check_gpu()
    monkeypatch.setenv("PATH", str(fake_matlab(tmp_path / "bad", "echo no GPU\nexit 1\n")))
    with pytest.raises(UserError, match=r"check_gpu failed in the local MATLAB \(see above\)"):
        commands.check_gpu()
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="matlab is not on PATH"):
        commands.check_gpu()


def test_check_gpu_statement(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(fake_matlab(tmp_path, 'echo "stmt: $2"\n')))
    with caplog.at_level(logging.INFO):
        commands.check_gpu(license=SERVER)
    assert f"| stmt: addpath('{MATLAB_DIR}'); check_gpu" in caplog.text


def test_check_gpu_in_image(monkeypatch):
    class Images:
        def get(self, ref):
            return object()

    client = FakeClient(FakeContainer(b"gpuDevice failed\n", code=1))
    client.images = Images()
    monkeypatch.setattr(engine, "connect", lambda **kw: client)
    with pytest.raises(UserError, match="^check_gpu failed in ks3: ks3 exited with 1: gpuDevice"):
        commands.check_gpu(image="ks3", license=SERVER, mac_address="02:42:ac:11:00:02")
    _, kw = client.calls[0]
    assert kw["command"] == ["-batch", "check_gpu"] and kw["mac_address"] == "02:42:ac:11:00:02"


def test_check_gpu_without_license(monkeypatch):
    monkeypatch.delenv("MLM_LICENSE_FILE", raising=False)
    with pytest.raises(UserError, match="MLM_LICENSE_FILE"):
        commands.check_gpu(image="ks3")


# --------------------------------------------------------------------------- a real engine


@pytest.mark.docker
def test_real_license_file_mounted_read_only_no_network(probe_image, hostlocked_file):
    client, image = probe_image
    lic = matlab.resolve_license(str(hostlocked_file))
    out = matlab.run_batch("disp(1)", image=image, license=lic, gpu=False, client=client)
    out = out.splitlines()
    assert out == [
        f"Licensing MATLAB using license file {LICENSE_MOUNT}.",
        "license file: INCREMENT MATLAB MLM 99 permanent uncounted HOSTID=0123456789ab",
        "license file: read-only",
        "interfaces: lo",
        "batch: disp(1)",
    ]
    assert leftovers(client, image) == []


@pytest.mark.docker
def test_real_license_server_redacted_with_network(probe_image, caplog):
    client, image = probe_image
    lic = matlab.resolve_license(SERVER)
    with caplog.at_level(logging.INFO):
        out = matlab.run_batch("disp(1)", image=image, license=lic, gpu=False, client=client)
    assert "Licensing MATLAB using the license manager ***." in out
    assert "eth0" in out and "licsrv" not in out and "licsrv" not in caplog.text
    with pytest.raises(matlab.MatlabError, match=f"^{image} exited with 1: Error using batch"):
        matlab.run_batch("error('x')", image=image, license=lic, gpu=False, client=client)
    assert leftovers(client, image) == []


@pytest.mark.docker
def test_real_kilosort3_runner_and_check_gpu(
    probe_image, engine_grants_gpus, license_file, tmp_path, monkeypatch
):
    """Both ask for every GPU: they run where the engine grants GPUs (whatever its runtime
    list says); elsewhere the start is refused with the toolkit named, and nothing is left."""
    client, image = probe_image
    has_gpu = engine_grants_gpus
    refused = pytest.raises(UserError, match="NVIDIA container toolkit")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("recording.bin", "ops.mat", "chanMap.mat"):
        (data / name).write_bytes(b"x")
    monkeypatch.setattr(engine, "connect", lambda **kw: client)
    with contextlib.nullcontext() if has_gpu else refused:
        result = run_kilosort3_container(
            data, tmp_path / "out", image=image, license=str(license_file), client=client
        )
        assert result.mode == "container" and result.info == {}
    with contextlib.nullcontext() if has_gpu else refused:
        commands.check_gpu(image=image, license=str(license_file))
    with pytest.raises(UserError, match="is not built"):
        commands.check_gpu(image=f"{image}-absent", license=str(license_file))
    assert leftovers(client, image) == []


def test_sort_error_keeps_its_message(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("recording.bin", "ops.mat", "chanMap.mat"):
        (data / name).write_bytes(b"x")
    client = FakeClient(FakeContainer(b"Error using run_kilosort3: boom\n", code=1))
    with pytest.raises(SortError, match="^ks3 exited with 1: Error using run_kilosort3: boom$"):
        run_kilosort3_container(data, tmp_path / "out", image="ks3", license=SERVER, client=client)

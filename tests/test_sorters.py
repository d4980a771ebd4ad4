"""Runners: license handling, bad input, and what is asked of Docker (with a recording client)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess

import pytest

from kilosort_docker import containers
from kilosort_docker.errors import UserError
from kilosort_docker.groundtruth.sorters import (
    SortError,
    kilosort3,
    resolve_license,
    run_kilosort,
    run_kilosort3_container,
    run_kilosort3_host,
    run_kilosort4_container,
    run_kilosort4_host,
)

# --------------------------------------------------------------------------- a fake Docker


class FakeContainer:
    def __init__(self, output: bytes, code: int):
        self.output, self.code, self.removed = output, code, False

    def start(self):
        pass

    def logs(self, stream, follow):
        yield from [self.output[i : i + 7] for i in range(0, len(self.output), 7)]

    def wait(self):
        return {"StatusCode": self.code}

    def remove(self, force=False):
        self.removed = True


class FakeClient:
    """Records containers.create's arguments; replies with fixed output and exit code."""

    def __init__(self, output=b"hello\nworld\n", code=0):
        self.calls = []
        self.container = FakeContainer(output, code)
        self.containers = self

    def create(self, image, **kwargs):
        self.calls.append((image, kwargs))
        return self.container


#: The fixture's recording: 4 channels, 2.5 s at 30 kHz (more than one batch of either sorter).
N_CHAN, N_SAMPLES = 4, 75000


def write_inputs(d, n_samples=N_SAMPLES):
    """A data folder as the runners read it: the binary's length, Kilosort 4 settings and
    Kilosort 3 ops are real; the probe and channel map are placeholders."""
    scipy_io = pytest.importorskip("scipy.io")  # the Kilosort 3 runners read ops.mat with it
    d.mkdir(exist_ok=True)
    (d / "recording.bin").write_bytes(bytes(2 * N_CHAN * n_samples))
    (d / "ks4_settings.json").write_text(json.dumps({"n_chan_bin": N_CHAN, "fs": 30000.0}))
    ops = {"NchanTOT": float(N_CHAN), "fs": 30000.0, "NT": float(64 * 1024 - 64)}
    scipy_io.savemat(d / "ops.mat", {"ops": ops})
    for name in ("ks4_probe.json", "chanMap.mat"):
        (d / name).write_bytes(b"x")
    return d


@pytest.fixture
def data_dir(tmp_path):
    return write_inputs(tmp_path / "data")


# --------------------------------------------------------------------------- licenses


def test_no_license_names_mlm_license_file(monkeypatch):
    monkeypatch.delenv("MLM_LICENSE_FILE", raising=False)
    with pytest.raises(UserError, match="MLM_LICENSE_FILE"):
        resolve_license(None)


def test_license_forms(monkeypatch, tmp_path):
    monkeypatch.delenv("MLM_LICENSE_FILE", raising=False)
    server = resolve_license("27000@license.example.org")
    assert server.kind == "server" and server.server == ("license.example.org", 27000)
    lic = tmp_path / "license.lic"
    lic.write_text("SERVER x")
    assert resolve_license(str(lic)).kind == "file"
    monkeypatch.setenv("MLM_LICENSE_FILE", "1234@host")
    assert resolve_license().server == ("host", 1234)
    with pytest.raises(UserError, match=r"license file --license names \(missing.lic\) does not"):
        resolve_license(str(tmp_path / "missing.lic"))
    monkeypatch.setenv("MLM_LICENSE_FILE", str(tmp_path / "gone.lic"))
    with pytest.raises(UserError, match=r"license file MLM_LICENSE_FILE names \(gone.lic\) does"):
        resolve_license()


def test_license_never_in_repr():
    lic = resolve_license("27000@secret-host")
    assert "secret-host" not in repr(lic) and "27000" not in repr(lic)


def test_matlab_statement_quotes_paths():
    stmt = kilosort3.matlab_statement("/d/it's", "/o", matlab_dir="/m")
    assert stmt == "addpath('/m'); run_kilosort3('/d/it''s', '/o')"


def test_kilosort3_container_without_license(monkeypatch, data_dir, tmp_path):
    monkeypatch.delenv("MLM_LICENSE_FILE", raising=False)
    client = FakeClient()
    with pytest.raises(UserError, match="MLM_LICENSE_FILE"):
        run_kilosort3_container(data_dir, tmp_path / "out", image="ks3", client=client)
    assert client.calls == []  # nothing was started


def test_kilosort3_container_server_license(monkeypatch, data_dir, tmp_path, caplog):
    monkeypatch.setenv("MLM_LICENSE_FILE", "27000@licsrv")
    client = FakeClient(output=b"License checkout from 27000@licsrv\n")
    with caplog.at_level(logging.INFO):
        result = run_kilosort3_container(
            data_dir,
            tmp_path / "out",
            image="ks3:1",
            mac_address="02:42:ac:11:00:02",
            client=client,
        )
    image, kw = client.calls[0]
    assert image == "ks3:1"
    assert kw["command"][0] == "-batch" and "run_kilosort3('/data', '/out')" in kw["command"][1]
    assert kw["environment"]["MLM_LICENSE_FILE"] == "27000@licsrv"
    assert kw["mac_address"] == "02:42:ac:11:00:02"
    assert kw["device_requests"][0]["Count"] == -1
    assert kw["device_requests"][0]["Capabilities"] == [["gpu"]]
    assert "network_mode" not in kw  # a license server needs the network
    assert kw["volumes"][str(data_dir.resolve())] == {"bind": "/data", "mode": "ro"}
    assert "27000@licsrv" not in caplog.text and "***" in caplog.text
    assert result.sorter == "kilosort3" and result.mode == "container"


def test_kilosort3_container_license_file(monkeypatch, data_dir, tmp_path):
    monkeypatch.delenv("MLM_LICENSE_FILE", raising=False)
    lic = tmp_path / "my.lic"
    lic.write_text("x")
    client = FakeClient()
    run_kilosort3_container(
        data_dir, tmp_path / "out", image="ks3", license=str(lic), client=client
    )
    _, kw = client.calls[0]
    assert kw["volumes"][str(lic.resolve())] == {"bind": "/licenses/license.lic", "mode": "ro"}
    assert kw["environment"]["MLM_LICENSE_FILE"] == "/licenses/license.lic"
    assert kw["network_mode"] == "none"


def test_kilosort3_host_without_matlab(monkeypatch, data_dir, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="matlab not found on PATH"):
        run_kilosort3_host(data_dir, tmp_path / "out")


def test_kilosort3_host_without_license(monkeypatch, data_dir, tmp_path):
    bin_dir = tmp_path / "MATLAB" / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "matlab"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("MLM_LICENSE_FILE", raising=False)
    with pytest.raises(UserError, match="MLM_LICENSE_FILE"):
        run_kilosort3_host(data_dir, tmp_path / "out")
    # a license inside the installation is enough
    (tmp_path / "MATLAB" / "licenses").mkdir()
    (tmp_path / "MATLAB" / "licenses" / "license.lic").write_text("x")
    result = run_kilosort3_host(data_dir, tmp_path / "out")
    assert result.mode == "host"


def test_kilosort3_host_failure_is_reported(monkeypatch, data_dir, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "matlab"
    fake.write_text("#!/bin/sh\necho 'Error using run_kilosort3: boom'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("MLM_LICENSE_FILE", "1@localhost")
    with pytest.raises(SortError, match="exited with 1: Error using run_kilosort3: boom"):
        run_kilosort3_host(data_dir, tmp_path / "out")


# --------------------------------------------------------------------------- Kilosort 4


def test_kilosort4_container_request(data_dir, tmp_path):
    client = FakeClient()
    run_kilosort4_container(
        data_dir, tmp_path / "out", image="kilosort4:t", gpu=True, client=client
    )
    image, kw = client.calls[0]
    assert image == "kilosort4:t"
    assert kw["command"][:2] == ["python", "-c"] and kw["command"][3:] == ["/data", "/out", "cuda"]
    assert "run_kilosort" in kw["command"][2]
    assert kw["network_mode"] == "none"
    assert kw["device_requests"][0]["Capabilities"] == [["gpu"]]
    assert kw["volumes"][str(data_dir.resolve())]["mode"] == "ro"
    assert client.container.removed


def test_kilosort4_container_cpu_has_no_gpu_request(data_dir, tmp_path):
    client = FakeClient()
    run_kilosort4_container(data_dir, tmp_path / "out", image="k", client=client)
    _, kw = client.calls[0]
    assert "device_requests" not in kw and kw["command"][-1] == "cpu"


def test_container_failure_quotes_last_line(data_dir, tmp_path):
    client = FakeClient(output=b"starting\nTraceback\nRuntimeError: CUDA out of memory\n\n", code=1)
    with pytest.raises(SortError, match="exited with 1: RuntimeError: CUDA out of memory"):
        run_kilosort4_container(data_dir, tmp_path / "out", image="k", client=client)
    assert client.container.removed


def fake_matlab(tmp_path, monkeypatch):
    """A ``matlab`` on PATH that records that it ran, and a license server form."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "matlab").write_text("#!/bin/sh\necho ran > ran.txt\n")
    (bin_dir / "matlab").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("MLM_LICENSE_FILE", "27000@licsrv")


def test_host_runners_refuse_a_recording_shorter_than_two_batches(monkeypatch, tmp_path):
    """Before MATLAB or Kilosort starts: 2 s is one Kilosort 4 batch (60000 samples) and less
    than one Kilosort 3 batch (65472)."""
    fake_matlab(tmp_path, monkeypatch)
    short = write_inputs(tmp_path / "short", n_samples=60000)
    with pytest.raises(UserError, match="too short for Kilosort 4.*at least 60061 samples"):
        run_kilosort4_host(short, tmp_path / "o4", device="cpu")
    with pytest.raises(UserError, match="too short for Kilosort 3.*at least 65473 samples"):
        run_kilosort3_host(short, tmp_path / "o3")
    assert not (tmp_path / "o4").exists() and not (tmp_path / "o3").exists()
    # one sample more than a Kilosort 3 batch is sorted
    run_kilosort3_host(write_inputs(tmp_path / "ok", n_samples=65473), tmp_path / "o3")
    assert (tmp_path / "o3" / "ran.txt").is_file()


def test_host_runners_refuse_inputs_they_cannot_read(monkeypatch, data_dir, tmp_path):
    fake_matlab(tmp_path, monkeypatch)
    (data_dir / "ops.mat").write_bytes(b"x")
    (data_dir / "ks4_settings.json").write_text("{}")
    with pytest.raises(UserError, match="ops.mat is not Kilosort ops"):
        run_kilosort3_host(data_dir, tmp_path / "o3")
    with pytest.raises(UserError, match="ks4_settings.json is not Kilosort 4 settings"):
        run_kilosort4_host(data_dir, tmp_path / "o4", device="cpu")


def test_missing_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="lacks recording.bin"):
        run_kilosort4_host(tmp_path / "empty", tmp_path / "out", device="cpu")
    with pytest.raises(UserError, match="lacks"):
        run_kilosort4_container(
            tmp_path / "empty", tmp_path / "out", image="k", client=FakeClient()
        )


def test_bad_device_and_dispatch(data_dir, tmp_path):
    with pytest.raises(UserError, match="device must be one of"):
        run_kilosort4_host(data_dir, tmp_path / "out", device="tpu")
    with pytest.raises(UserError, match="needs an image"):
        run_kilosort("kilosort4", "container", data_dir, tmp_path / "out")
    with pytest.raises(UserError, match="unknown sorter"):
        run_kilosort("kilosort2", "host", data_dir, tmp_path / "out")


# --------------------------------------------------------------------------- MATLAB style


@pytest.mark.skipif(shutil.which("mh_style") is None, reason="miss_hit is not installed")
@pytest.mark.parametrize("tool", ["mh_style", "mh_lint"])
def test_matlab_entry_points_pass_miss_hit(tool):
    files = [str(kilosort3.MATLAB_DIR / f) for f in ("run_kilosort3.m", "check_gpu.m")]
    proc = subprocess.run([tool, *files], capture_output=True, text=True, cwd=kilosort3.MATLAB_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "everything seems fine" in proc.stdout


def test_common_user_switch(tmp_path, monkeypatch, data_dir):
    """Non-root callers run the container as themselves; root keeps the image's user."""
    client = FakeClient()
    monkeypatch.setattr(containers.os, "getuid", lambda: 1234)
    monkeypatch.setattr(containers.os, "getgid", lambda: 99)
    run_kilosort4_container(data_dir, tmp_path / "out", image="k", client=client)
    assert client.calls[0][1]["user"] == "1234:99"
    monkeypatch.setattr(containers.os, "getuid", lambda: 0)
    out2 = tmp_path / "out2"
    seen = []
    client = FakeClient()
    # the image's user writes there while the container runs
    client.container.start = lambda: seen.append(out2.stat().st_mode & 0o777)
    run_kilosort4_container(data_dir, out2, image="k", client=client)
    assert "user" not in client.calls[0][1]
    assert seen == [0o777] and out2.stat().st_mode & 0o777 == 0o755  # opened for the run only


def test_host_mode_needs_no_docker_sdk():
    """A GPU machine with no Docker (and no docker SDK) sorts in host mode: nothing on that
    path imports the SDK."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['docker'] = None\n"
        "import kilosort_docker.groundtruth.run, kilosort_docker.groundtruth.sorters\n"
        "from kilosort_docker.groundtruth.sorters import kilosort3, kilosort4\n"
        "from kilosort_docker import matlab\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_ks4_entry_arguments_and_deterministic_settings(monkeypatch):
    import os

    from kilosort_docker.groundtruth.sorters import ks4_entry

    rec = os.path.join("d", "recording.bin")
    assert ks4_entry.parse_args(["d", "o"]) == ("d", "o", "auto", rec, "off")
    got = ks4_entry.parse_args(["d", "o", "cuda", "--deterministic"])
    assert got == ("d", "o", "cuda", rec, "strict")
    got = ks4_entry.parse_args(["--deterministic=warn", "d", "o", "cpu", "x.bin"])
    assert got == ("d", "o", "cpu", "x.bin", "warn")
    for bad in (["d"], ["d", "o", "tpu"], ["d", "o", "--deterministic=maybe"], list("abcde")):
        assert ks4_entry.parse_args(bad) is None
    torch = pytest.importorskip("torch")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        assert ks4_entry.deterministic_settings("off") == {"deterministic": "off"}
        assert not torch.are_deterministic_algorithms_enabled()
        got = ks4_entry.deterministic_settings("warn")
        assert got == {"deterministic": "warn", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        ks4_entry.deterministic_settings("strict")
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        with pytest.raises(ValueError):
            ks4_entry.deterministic_settings("always")
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False

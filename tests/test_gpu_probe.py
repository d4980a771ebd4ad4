"""GPU access is decided by what works (issue 11 item 3), and GPU skips can be made failures.

``docker info`` lists no ``nvidia`` runtime where the NVIDIA Container Toolkit works through
its runtime hook or CDI (``Runtimes``: ``runc``, ``io.containerd.runc.v2``), so the preflight
runs ``nvidia-smi -L`` in a container of the image instead
(:func:`kilosort_docker.containers.probe_gpus`). The unit tests use a fake engine whose
runtime list says one thing and whose containers do another; the ``docker`` tests run the
probe on this engine; ``KILOSORT_DOCKER_REQUIRE_GPU=1`` turns a GPU skip into a failure in
pytest (tests/conftest.py), in ``python -m kilosort_docker.groundtruth`` and in ``nox -s gpu``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import docker.errors
import pytest

from kilosort_docker import containers
from tests import support
from tests.support.fakes import FakeClient, FakeContainer, leftovers

#: ``nvidia-smi -L`` as it printed on an H200 host (the UUID changed).
H200 = b"GPU 0: NVIDIA H200 (UUID: GPU-3f1e2d4c-0000-1111-2222-333344445555)\n"
#: What Docker 20.10-28 says to ``--gpus all`` without the NVIDIA Container Toolkit.
NO_TOOLKIT = 'could not select device driver "" with capabilities: [[gpu]]'
#: Runtimes of an engine where the toolkit works through its hook / CDI (no ``nvidia``).
HOOK_ONLY = {"runc": {"path": "runc"}, "io.containerd.runc.v2": {"path": "runc"}}
WITH_NVIDIA = {**HOOK_ONLY, "nvidia": {"path": "nvidia-container-runtime"}}


class Engine(FakeClient):
    """A fake engine: ``docker info`` says ``runtimes``; its containers do what ``container``
    does; every image is present."""

    def __init__(self, container, runtimes):
        super().__init__(container)
        self.runtimes = runtimes
        self.images = self

    def info(self):
        return {"Runtimes": self.runtimes, "DiscoveredDevices": None}

    def get(self, ref):
        return object()


def _ks4_plan(image="kilosortdocker/kilosort4:4.1.7"):
    from kilosort_docker.groundtruth import run as groundtruth

    return groundtruth.Plan("kilosort4", "container", image, "cuda", None, None)


@pytest.fixture(autouse=True)
def _no_require_gpu(monkeypatch):
    """The tests decide whether KILOSORT_DOCKER_REQUIRE_GPU is set, not the caller's shell."""
    monkeypatch.delenv("KILOSORT_DOCKER_REQUIRE_GPU", raising=False)


# --------------------------------------------------------------------------- unit tests


def test_runtime_list_without_nvidia_but_a_working_probe_has_a_gpu():
    """The issue's example: the toolkit's hook serves ``--gpus``; no ``nvidia`` runtime."""
    pytest.importorskip("spikeinterface")
    from kilosort_docker.groundtruth import run as groundtruth

    engine = Engine(FakeContainer(H200), HOOK_ONLY)
    assert groundtruth.preflight(_ks4_plan(), client=engine) is None
    image, kw = engine.calls[0]
    assert image == "kilosortdocker/kilosort4:4.1.7"
    assert kw["entrypoint"] == ["nvidia-smi"] and kw["command"] == ["-L"]
    assert kw["device_requests"][0]["Capabilities"] == [["gpu"]]
    assert kw["network_mode"] == "none"
    assert engine.container.events == ["start", "logs", "wait", "remove"]


def test_cdi_request_injected_into_the_probe_has_a_gpu():
    """Same kind: a host that hands GPUs out as CDI devices (``nvidia.com/gpu=all``)."""
    from kilosort_docker.groundtruth import run as groundtruth

    engine = Engine(FakeContainer(H200 + b"GPU 1: NVIDIA H200 (UUID: GPU-x)\n"), HOOK_ONLY)
    assert groundtruth.docker_gpu_ready(engine, "img", request=containers.CDI_ALL_GPUS) is None
    request = engine.calls[0][1]["device_requests"][0]
    assert request["Driver"] == "cdi" and request["DeviceIDs"] == ["nvidia.com/gpu=all"]


def test_runtime_list_with_nvidia_but_a_refused_probe_has_no_gpu():
    """The converse: ``nvidia`` is listed but a GPU container does not start."""
    pytest.importorskip("spikeinterface")
    from kilosort_docker.groundtruth import run as groundtruth

    refusal = docker.errors.APIError("500", explanation=NO_TOOLKIT + "\nmore detail")
    engine = Engine(FakeContainer(fail_start=refusal), WITH_NVIDIA)
    reason = groundtruth.preflight(_ks4_plan(), client=engine)
    assert reason == f"no GPU access: {NO_TOOLKIT}"
    assert engine.container.events == ["start", "remove"]


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        pytest.param(
            FakeContainer(b"Failed to initialize NVML: Unknown Error\n", code=255),
            "no GPU access: nvidia-smi -L exited with 255: Failed to initialize NVML: Unknown "
            "Error",
            id="nvml-fails",
        ),
        pytest.param(
            FakeContainer(b"No devices found.\n"),
            "no GPU access: nvidia-smi -L listed no GPU (No devices found.)",
            id="no-devices",
        ),
    ],
)
def test_probe_that_runs_but_finds_no_gpu(container, expected):
    assert containers.probe_gpus("img", client=Engine(container, WITH_NVIDIA)) == expected
    assert container.events[-1] == "remove"


def test_probe_that_hangs_is_no_gpu_and_is_removed():
    import threading

    class Hung(FakeContainer):
        gone = threading.Event()

        def logs(self, stream, follow):
            yield b"waiting for the driver\n"
            assert self.gone.wait(5)

        def kill(self):
            super().kill()
            self.gone.set()

    container = Hung(code=137)
    reason = containers.probe_gpus("img", client=Engine(container, HOOK_ONLY), timeout_s=0.2)
    assert reason == "no GPU access: nvidia-smi -L did not finish in 0.2 s"
    assert container.events[-1] == "remove"


def test_probe_of_a_missing_image_could_not_run():
    """No answer is not an answer: a missing image is an error, not 'no GPU'."""
    client = FakeClient(fail_create=docker.errors.ImageNotFound("No such image: nope"))
    with pytest.raises(containers.ImageMissing, match="image nope not found"):
        containers.probe_gpus("nope", client=client)


# --------------------------------------------------------------------------- the conftest hook

HOOKED = textwrap.dedent(
    """
    import pytest

    @pytest.mark.gpu
    def test_gpu_marked():
        pytest.skip("no GPU access: stand-in reason")

    def test_not_gpu():
        pytest.skip("some other reason")

    @pytest.mark.gpu
    def test_gpu_that_passes():
        pass
    """
)


def _run_hooked(tmp_path, require: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_runtest_makereport  # noqa: F401\n\n\n"
        "def pytest_configure(config):\n"
        "    config.addinivalue_line('markers', 'gpu: needs an NVIDIA GPU')\n"
    )
    (tmp_path / "test_hooked.py").write_text(HOOKED)
    env = {k: v for k, v in os.environ.items() if k != "KILOSORT_DOCKER_REQUIRE_GPU"}
    env["PYTHONPATH"] = os.pathsep.join([str(support.REPO_ROOT), env.get("PYTHONPATH", "")])
    if require is not None:
        env["KILOSORT_DOCKER_REQUIRE_GPU"] = require
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-rA",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "-m",
            "",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_gpu_skip_is_a_skip_naming_its_reason(tmp_path):
    done = _run_hooked(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert re.search(
        r"SKIPPED \[1\] test_hooked.py:\d+: no GPU access: stand-in reason", done.stdout
    )
    assert "1 passed, 2 skipped" in done.stdout


def test_require_gpu_turns_only_gpu_skips_into_failures(tmp_path):
    done = _run_hooked(tmp_path, "1")
    assert done.returncode == 1, done.stdout
    assert "FAILED test_hooked.py::test_gpu_marked" in done.stdout
    assert "no GPU access: stand-in reason (KILOSORT_DOCKER_REQUIRE_GPU=1" in done.stdout
    assert re.search(r"SKIPPED \[1\] test_hooked.py:\d+: some other reason", done.stdout)
    assert "1 failed, 1 passed, 1 skipped" in done.stdout
    assert _run_hooked(tmp_path, "0").returncode == 0


# --------------------------------------------------------------------------- a real engine


def _docker_error_line(client, image: str) -> str:
    """What Docker itself says to ``--gpus all`` for ``image`` (low-level API, no runner)."""
    from docker.types import DeviceRequest

    host = client.api.create_host_config(
        device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])], network_mode="none"
    )
    made = client.api.create_container(image, ["echo", "x"], host_config=host)
    try:
        client.api.start(made["Id"])
    except docker.errors.APIError as exc:
        return str(exc.explanation).strip().splitlines()[0]
    finally:
        client.api.remove_container(made["Id"], force=True)
    return ""


@pytest.mark.docker
def test_real_probe_here_says_no_gpu_access_with_dockers_line(probe_image, engine_grants_gpus):
    client, image = probe_image
    if engine_grants_gpus:
        pytest.skip("this engine grants --gpus all: no refusal to show")
    line = _docker_error_line(client, image)
    assert line  # Docker refused, and said why
    assert containers.probe_gpus(image, client=client) == f"no GPU access: {line}"
    assert leftovers(client, image) == []


@pytest.mark.docker
def test_real_cdi_probe_here_says_no_gpu_access(probe_image, engine_grants_gpus):
    """Same kind, the CDI request: refused where no CDI specification names the GPUs."""
    client, image = probe_image
    if engine_grants_gpus:
        pytest.skip("this engine grants GPUs: no refusal to show")
    reason = containers.probe_gpus(image, client=client, request=containers.CDI_ALL_GPUS)
    assert reason is not None and reason.startswith("no GPU access: ")
    assert "cdi" in reason.lower() and leftovers(client, image) == []


@pytest.mark.docker
def test_real_groundtruth_container_preflight_skips_then_fails(probe_image, tmp_path):
    """``python -m kilosort_docker.groundtruth`` as ``nox -s gpu -- --mode container`` runs it:
    exit 77, the probe's reason last on stderr; 1 with KILOSORT_DOCKER_REQUIRE_GPU=1."""
    pytest.importorskip("spikeinterface")
    client, image = probe_image
    if containers.probe_gpus(image, client=client) is None:
        pytest.skip("a container of the probe image gets GPUs here")
    argv = [
        sys.executable,
        "-m",
        "kilosort_docker.groundtruth",
        *("--mode", "container", "--image", image, "--device", "cuda", "--duration", "8"),
        *("--channels", "16", "--units", "4", "--out", str(tmp_path / "out")),
    ]
    env = {k: v for k, v in os.environ.items() if k != "KILOSORT_DOCKER_REQUIRE_GPU"}
    skipped = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 77, skipped.stderr
    assert skipped.stderr.strip().splitlines()[-1].startswith("skipped: no GPU access: ")
    failed = subprocess.run(
        argv, env={**env, "KILOSORT_DOCKER_REQUIRE_GPU": "1"}, capture_output=True, text=True
    )
    assert failed.returncode == 1, failed.stderr
    assert "no GPU access: " in failed.stderr and "KILOSORT_DOCKER_REQUIRE_GPU" in failed.stderr
    assert leftovers(client, image) == []


@pytest.mark.docker
@pytest.mark.gpu
def test_real_containers_get_the_gpus(docker_client, debian_base):
    """On a GPU machine: ``nvidia-smi -L`` runs in a container (the toolkit mounts it into a
    Debian image). Elsewhere a skip naming Docker's reason; a failure under
    ``KILOSORT_DOCKER_REQUIRE_GPU=1``."""
    reason = containers.probe_gpus(debian_base, client=docker_client)
    if reason is not None:
        pytest.skip(reason)
    assert leftovers(docker_client, debian_base) == []


@pytest.mark.docker
def test_real_nox_gpu_session_names_the_skip_reason_or_fails(probe_image, tmp_path):
    """``nox -s gpu`` on this engine: a skip whose reason nox prints; with
    KILOSORT_DOCKER_REQUIRE_GPU=1 the session fails instead."""
    pytest.importorskip("nox")
    pytest.importorskip("spikeinterface")
    client, image = probe_image
    if containers.probe_gpus(image, client=client) is None:
        pytest.skip("a container of the probe image gets GPUs here")
    argv = [
        *(sys.executable, "-m", "nox", "-f", str(support.REPO_ROOT / "noxfile.py")),
        *("-s", "gpu", "--no-venv", "--", "--mode", "container", "--image", image),
        *("--duration", "8", "--channels", "16", "--units", "4", "--out", str(tmp_path / "o")),
    ]
    env = {k: v for k, v in os.environ.items() if k != "KILOSORT_DOCKER_REQUIRE_GPU"}
    skipped = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 0, skipped.stderr
    assert "Session gpu skipped: no GPU access: " in skipped.stderr
    failed = subprocess.run(
        argv, env={**env, "KILOSORT_DOCKER_REQUIRE_GPU": "1"}, capture_output=True, text=True
    )
    assert failed.returncode == 1, failed.stderr
    assert "Session gpu aborted" in failed.stderr and "no GPU access: " in failed.stderr
    assert leftovers(client, image) == []

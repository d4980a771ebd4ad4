"""kilosort_docker.containers: what is asked of Docker, and clean-up on every path.

The unit tests use a recording fake of the docker SDK. The ``docker`` tests run a real engine
with a tiny ``FROM scratch`` image holding one statically linked C program (built here with
``gcc -static``; skipped when the engine or gcc is missing) and check, after each failure,
that no container of that image is left (``docker ps -a``).
"""

from __future__ import annotations

import io
import logging
import os
import signal
import tarfile
import threading
import uuid

import docker.errors
import docker.types
import pytest
import requests.exceptions

from kilosort_docker import containers
from kilosort_docker.errors import UserError
from tests.support.fakes import PROBE_FILE, FakeClient, FakeContainer, leftovers

# --------------------------------------------------------------------------- unit tests


def test_defaults_no_network_no_gpu_image_user():
    client = FakeClient()
    result = containers.run("img", ["a", "b"], client=client)
    image, kw = client.calls[0]
    assert image == "img" and kw["command"] == ["a", "b"]
    assert kw["network_mode"] == "none"
    assert "device_requests" not in kw and "user" not in kw and "mac_address" not in kw
    assert "entrypoint" not in kw
    assert kw["name"].startswith(containers.NAME_PREFIX)
    assert client.container.events == ["start", "logs", "wait", "remove"]
    assert result.ok and result.output == "one\ntwo" and result.last_line == "two"
    assert result.tail == ("one", "two") and result.seconds >= 0


def test_everything_asked_for_reaches_docker(tmp_path):
    client = FakeClient()
    containers.run(
        "img",
        None,
        entrypoint=["sh", "-c", "true"],
        volumes={str(tmp_path): {"bind": "/in", "mode": "ro"}},
        environment={"A": "1"},
        gpu=True,
        network=True,
        mac_address="02:42:ac:11:00:02",
        user="1000:1000",
        client=client,
    )
    _, kw = client.calls[0]
    assert kw["command"] is None and kw["entrypoint"] == ["sh", "-c", "true"]
    assert kw["volumes"] == {str(tmp_path): {"bind": "/in", "mode": "ro"}}
    assert kw["environment"] == {"A": "1"}
    assert kw["device_requests"][0]["Count"] == -1
    assert kw["device_requests"][0]["Capabilities"] == [["gpu"]]
    assert "network_mode" not in kw and kw["mac_address"] == "02:42:ac:11:00:02"
    assert kw["user"] == "1000:1000"


def test_nonzero_exit_is_returned_not_raised():
    client = FakeClient(FakeContainer(b"working\nError: boom\n\n", code=3))
    result = containers.run("img", ["x"], client=client)
    assert result.exit_code == 3 and not result.ok and result.last_line == "Error: boom"
    assert client.container.events[-1] == "remove"


def test_no_output_last_line():
    result = containers.run("img", ["x"], client=FakeClient(FakeContainer(b"")))
    assert result.output == "" and result.last_line == "(no output)"


def test_tail_keeps_the_last_lines():
    out = b"".join(b"line %d\n" % i for i in range(50))
    result = containers.run("img", ["x"], tail_lines=3, client=FakeClient(FakeContainer(out)))
    assert result.tail == ("line 47", "line 48", "line 49")
    assert len(result.output.splitlines()) == 50


def test_secrets_never_logged(caplog):
    container = FakeContainer(b"license 27000@secret-host ok\npassword hunter2-env\n")
    with caplog.at_level(logging.DEBUG):
        result = containers.run(
            "img",
            ["x"],
            environment={"MLM_LICENSE_FILE": "27000@secret-host", "TOKEN": "env-only-value"},
            redact=("27000@secret-host", "hunter2-env", ""),
            client=FakeClient(container),
        )
    assert "secret-host" not in caplog.text and "hunter2" not in caplog.text
    assert "env-only-value" not in caplog.text
    assert "| license *** ok" in caplog.text
    assert "secret-host" not in result.output and "*** ok" in result.output


def test_stream_to_log_false_logs_at_debug_only(caplog):
    with caplog.at_level(logging.INFO):
        containers.run("img", ["x"], stream_to_log=False, client=FakeClient())
    assert "| one" not in caplog.text


def test_missing_image_is_a_user_error_and_leaves_nothing():
    client = FakeClient(fail_create=docker.errors.ImageNotFound("no such image"))
    with pytest.raises(UserError, match="image nope:1 not found: build it first"):
        containers.run("nope:1", ["x"], client=client)
    # the name it would have had is removed, in case the engine made it anyway
    assert client.api.removed == [client.calls[0][1]["name"]]


def test_create_failing_after_the_engine_made_it_removes_it_by_name():
    """``containers.create`` = create_container + get; here the get is interrupted."""
    client = FakeClient(fail_create=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        containers.run("img", ["x"], client=client)
    assert client.api.removed == [client.calls[0][1]["name"]]


def test_refused_create_names_the_reason_without_secrets():
    refusal = docker.errors.APIError(
        "500", explanation="invalid mount config: /home/me/27000@secret-host\nmore"
    )
    client = FakeClient(fail_create=refusal)
    with pytest.raises(UserError) as info:
        containers.run("img", ["x"], redact=("27000@secret-host",), client=client)
    assert str(info.value) == "docker refused to run img: invalid mount config: /home/me/***"


def test_failed_start_removes_the_container_and_names_the_gpu_toolkit():
    refusal = docker.errors.APIError(
        "500", explanation='could not select device driver "" with capabilities: [[gpu]]'
    )
    container = FakeContainer(fail_start=refusal)
    with pytest.raises(UserError, match="is the NVIDIA container toolkit installed"):
        containers.run("img", ["x"], gpu=True, client=FakeClient(container))
    assert container.events == ["start", "remove"]


def test_interrupt_while_streaming_removes_the_container():
    container = FakeContainer(b"a long output that goes on\n")
    container.interrupt_logs = True
    with pytest.raises(KeyboardInterrupt):
        containers.run("img", ["x"], client=FakeClient(container))
    assert container.events == ["start", "logs", "remove"]


def test_failed_wait_removes_the_container():
    container = FakeContainer(fail_wait=docker.errors.APIError("500", explanation="engine gone"))
    with pytest.raises(UserError, match="lost the container of img while it ran"):
        containers.run("img", ["x"], client=FakeClient(container))
    assert container.events[-2:] == ["wait", "remove"]


def test_timeout_kills_then_removes():
    class Slow(FakeContainer):
        killed = threading.Event()

        def logs(self, stream, follow):
            yield b"started\n"
            assert self.killed.wait(5)

        def kill(self):
            super().kill()
            self.killed.set()

    container = Slow(code=137)
    with pytest.raises(containers.ContainerTimeout, match="longer than 0.2 s.*started"):
        containers.run("img", ["x"], timeout_s=0.2, client=FakeClient(container))
    assert container.events == ["start", "kill", "wait", "remove"]


def test_missing_bind_source_is_refused_before_docker_is_asked(tmp_path):
    """The engine would create the missing folder (root-owned, parents included) and run."""
    client = FakeClient()
    missing = tmp_path / "typo" / "data"
    with pytest.raises(UserError, match=f"^{missing} does not exist: create it"):
        containers.run("img", ["x"], volumes={str(missing): {"bind": "/d"}}, client=client)
    assert client.calls == [] and not (tmp_path / "typo").exists()


def test_missing_bind_source_among_good_ones_is_refused_too(tmp_path):
    client = FakeClient()
    volumes = {
        str(tmp_path): {"bind": "/ok", "mode": "ro"},
        "a-named-volume": {"bind": "/cache", "mode": "rw"},  # a name, not a path: not checked
        str(tmp_path / "absent.lic"): {"bind": "/lic", "mode": "ro"},
    }
    with pytest.raises(UserError, match="absent.lic does not exist"):
        containers.run("img", ["x"], volumes=volumes, client=client)
    assert client.calls == []
    containers.check_mounts({k: v for k, v in volumes.items() if "absent" not in k})


def test_interrupt_during_removal_still_removes():
    """A second Ctrl-C while the container is being removed: the removal is tried again."""

    class Stubborn(FakeContainer):
        def remove(self, force=False):
            super().remove(force)
            if self.events.count("remove") == 1:
                raise KeyboardInterrupt

    container = Stubborn()
    with pytest.raises(KeyboardInterrupt):
        containers.run("img", ["x"], client=FakeClient(container))
    assert container.events == ["start", "logs", "wait", "remove", "remove"]


def test_interrupt_while_streaming_then_during_removal_still_removes():
    class Stubborn(FakeContainer):
        def remove(self, force=False):
            super().remove(force)
            if self.events.count("remove") == 1:
                raise KeyboardInterrupt

    container = Stubborn(b"a long output that goes on\n")
    container.interrupt_logs = True
    with pytest.raises(KeyboardInterrupt):
        containers.run("img", ["x"], client=FakeClient(container))
    assert container.events == ["start", "logs", "remove", "remove"]


def test_engine_timeout_at_start_is_one_line_and_removes():
    """The engine does not answer the start in time (requests' ReadTimeout, not an APIError)."""
    container = FakeContainer(fail_start=requests.exceptions.ReadTimeout("read timed out"))
    with pytest.raises(containers.ContainerRefused, match="^docker refused to run img: read t"):
        containers.run("img", ["x"], gpu=True, client=FakeClient(container))
    assert container.events == ["start", "remove"]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"fail_create": docker.errors.ImageNotFound("no such image")}, id="missing"),
        pytest.param(
            {"start": docker.errors.APIError("500", explanation="could not select device")},
            id="refused-start",
        ),
        pytest.param({"interrupt": True}, id="interrupt-while-streaming"),
    ],
)
def test_root_rw_folder_gets_its_mode_back_on_every_failure(tmp_path, monkeypatch, fault):
    """As root with ``as_host_user``, the ``rw`` folder is opened (0777) for the run only."""
    monkeypatch.setattr(containers.os, "getuid", lambda: 0)
    out = tmp_path / "out"
    out.mkdir(mode=0o750)
    container = FakeContainer(b"output that goes on\n", fail_start=fault.get("start"))
    container.interrupt_logs = bool(fault.get("interrupt"))
    client = FakeClient(container, fail_create=fault.get("fail_create"))
    with pytest.raises((UserError, KeyboardInterrupt)):
        containers.run(
            "img", ["x"], volumes={str(out): {"bind": "/o"}}, as_host_user=True, client=client
        )
    assert out.stat().st_mode & 0o777 == 0o750


def test_gpu_request_can_be_a_cdi_device():
    client = FakeClient()
    containers.run("img", ["x"], gpu=containers.CDI_ALL_GPUS, client=client)
    request = client.calls[0][1]["device_requests"][0]
    assert request["Driver"] == "cdi" and request["DeviceIDs"] == ["nvidia.com/gpu=all"]


def test_created_removes_on_every_path():
    container = FakeContainer()
    container.files["/etc/thing"] = b"content"
    client = FakeClient(container)
    with containers.created("img", client=client) as made:
        assert containers.read_file(made, "/etc/thing") == b"content"
        with pytest.raises(FileNotFoundError):
            containers.read_file(made, "/missing")
    _, kw = client.calls[0]
    assert kw["entrypoint"] == ["true"] and kw["network_mode"] == "none"
    assert container.events == ["remove"]  # never started

    container = FakeContainer()
    with (
        pytest.raises(RuntimeError, match="inside"),
        containers.created("img", client=FakeClient(container)),
    ):
        raise RuntimeError("inside")
    assert container.events == ["remove"]


def test_created_missing_image():
    client = FakeClient(fail_create=docker.errors.ImageNotFound("no such image"))
    with pytest.raises(UserError, match="not found"), containers.created("nope", client=client):
        pass  # pragma: no cover


def test_host_user(monkeypatch, tmp_path):
    """Non-root: the caller's uid:gid. Root: the image's user, with the ``rw`` folders opened
    for the run only (their modes come back afterwards; ``ro`` ones are never touched)."""
    out, data = tmp_path / "out", tmp_path / "data"
    out.mkdir(mode=0o700)
    data.mkdir(mode=0o700)
    volumes = {str(out): {"bind": "/out", "mode": "rw"}, str(data): {"bind": "/d", "mode": "ro"}}
    monkeypatch.setattr(containers.os, "getuid", lambda: 1234)
    monkeypatch.setattr(containers.os, "getgid", lambda: 99)
    assert containers.host_user(volumes) == ("1234:99", {"HOME": "/tmp"})
    monkeypatch.setattr(containers.os, "getuid", lambda: 0)
    assert containers.host_user(volumes) == (None, {})
    assert out.stat().st_mode & 0o777 == 0o700

    seen = {}

    class Recording(FakeContainer):
        def start(self):
            super().start()
            seen["out"] = out.stat().st_mode & 0o777
            seen["data"] = data.stat().st_mode & 0o777

    client = FakeClient(Recording())
    containers.run("img", ["x"], volumes=volumes, as_host_user=True, client=client)
    assert seen == {"out": 0o777, "data": 0o700}
    assert "user" not in client.calls[0][1]
    assert out.stat().st_mode & 0o777 == 0o700 and data.stat().st_mode & 0o777 == 0o700


# --------------------------------------------------------------------------- a real engine


@pytest.mark.docker
def test_real_run_output_exit_code_and_cleanup(probe_image):
    client, image = probe_image
    result = containers.run(image, ["echo", "hello", "world"], client=client)
    assert result.exit_code == 0 and result.output == "hello\nworld"
    failed = containers.run(image, ["exit", "3", "first", "last words"], client=client)
    assert failed.exit_code == 3 and failed.last_line == "last words"
    assert leftovers(client, image) == []


@pytest.mark.docker
def test_real_network_off_unless_asked(probe_image):
    client, image = probe_image
    off = containers.run(image, ["interfaces"], client=client)
    assert off.output.split() == ["interfaces:", "lo"]
    on = containers.run(image, ["interfaces"], network=True, client=client)
    assert "eth0" in on.output.split()
    assert leftovers(client, image) == []


@pytest.mark.docker
def test_real_environment_user_and_redaction(probe_image, caplog):
    client, image = probe_image
    with caplog.at_level(logging.INFO):
        result = containers.run(
            image,
            ["env", "SECRET_TOKEN"],
            environment={"SECRET_TOKEN": "tok-123-secret"},
            redact=("tok-123-secret",),
            user="4321:765",
            client=client,
        )
    assert result.output == "***"
    assert "tok-123-secret" not in caplog.text and "| ***" in caplog.text
    assert containers.run(image, ["id"], user="4321:765", client=client).output == "4321:765"


@pytest.mark.docker
def test_real_failed_gpu_start_leaves_no_container(probe_image):
    """A start Docker refuses, on any host: a device driver no engine has (the GPU case, where
    the NVIDIA toolkit is missing, is in tests/test_leftovers.py)."""
    client, image = probe_image
    before = leftovers(client, image)
    absent = docker.types.DeviceRequest(driver="kilosort-docker-test-absent", count=-1)
    with pytest.raises(containers.ContainerRefused, match=f"docker refused to run {image}: "):
        containers.run(image, ["echo", "x"], gpu=absent, client=client)
    assert leftovers(client, image) == before == []


@pytest.mark.docker
def test_real_missing_image_leaves_no_container(probe_image):
    client, _ = probe_image
    missing = f"kilosort-docker-test/absent:{uuid.uuid4().hex[:8]}"
    with pytest.raises(UserError, match=f"image {missing} not found: build it first"):
        containers.run(missing, ["x"], client=client)
    with pytest.raises(UserError, match="not found"), containers.created(missing, client=client):
        pass  # pragma: no cover
    assert leftovers(client, missing) == []


@pytest.mark.docker
def test_real_interrupt_while_streaming_removes_the_container(probe_image):
    client, image = probe_image
    timer = threading.Timer(1.5, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            containers.run(image, ["sleep", "60"], client=client)
    finally:
        timer.cancel()
    assert leftovers(client, image) == []


@pytest.mark.docker
def test_real_timeout_kills_and_removes(probe_image):
    client, image = probe_image
    with pytest.raises(containers.ContainerTimeout, match="sleeping"):
        containers.run(image, ["sleep", "60"], timeout_s=1, client=client)
    assert leftovers(client, image) == []


@pytest.mark.docker
def test_real_created_reads_files_and_is_removed(probe_image):
    """The image has no ``true``: a created container is never started."""
    client, image = probe_image
    with containers.created(image, client=client) as container:
        assert leftovers(client, image) == [container.id[:12]]
        assert containers.read_file(container, PROBE_FILE) == b"written into the image\n"
        with tarfile.open(fileobj=io.BytesIO(containers.archive(container, "/etc"))) as tar:
            assert "etc/probe-note" in tar.getnames()
        with pytest.raises(FileNotFoundError):
            containers.read_file(container, "/no/such/file")
        assert container.attrs["State"]["Status"] == "created"
    assert leftovers(client, image) == []
    with pytest.raises(ValueError), containers.created(image, client=client):
        raise ValueError("inside the block")
    assert leftovers(client, image) == []

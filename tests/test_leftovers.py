"""Failures leave nothing behind (issue 11 item 2), on a real engine.

Every failure path that can be provoked here is run through the code a user runs
(``commands.check_gpu``, the ground-truth sorters' runners, ``matlab.run_batch``,
``containers.run``), and afterwards these are as they were before:

* ``docker ps -a`` for what the test could have made: containers of the test's image, and
  of any image name it asked for;
* the image's tags (and that an absent image is still absent);
* the folders: every file and folder under the test's own folder (which holds its data, its
  outputs and, through ``TMPDIR``, every temporary folder the code could make) with its mode
  and owner.

The image is the tiny ``FROM scratch`` probe of tests/support/fakes.py; its entrypoint
behaves like MathWorks' for ``-batch`` and can ``sleep``. Test names say the path.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from kilosort_docker import commands, containers, engine, matlab
from kilosort_docker.errors import UserError
from kilosort_docker.groundtruth.sorters import run_kilosort3_container, run_kilosort4_container
from tests.support.fakes import leftovers

pytestmark = pytest.mark.docker

LICENSE_SERVER = "27000@lic.example.org"  # the example; never contacted here
GPU_REFUSED = "docker refused to run .*: could not select device driver"


class Before:
    """What the test could change, taken before the failure; :meth:`assert_unchanged` after."""

    def __init__(self, client, image: str, folder: Path, *, absent: tuple[str, ...] = ()):
        self.client, self.image, self.folder, self.absent = client, image, folder, absent
        self.state = self.take()

    def take(self) -> dict:
        tree = {
            str(p.relative_to(self.folder)): (p.lstat().st_mode, p.lstat().st_uid)
            for p in sorted(self.folder.rglob("*"))
        }
        made = sorted(
            {c for ref in (self.image, *self.absent) for c in leftovers(self.client, ref)}
        )
        tags = sorted(self.client.images.get(self.image).tags)
        absent = [ref for ref in self.absent if engine.image_exists(self.client, ref)]
        return {"containers": made, "tags": tags, "folders": tree, "absent images": absent}

    def assert_unchanged(self) -> None:
        assert self.take() == self.state


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    """The test's folder; temporary folders made by the code under test go to its tmp/."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp_path


@pytest.fixture
def no_gpus(probe_image, engine_grants_gpus):
    if engine_grants_gpus:
        pytest.skip("this engine grants --gpus all: a GPU start cannot be refused here")
    return probe_image


def _data(folder: Path, names) -> tuple[Path, Path]:
    data, out = folder / "data", folder / "out"
    data.mkdir()
    out.mkdir(mode=0o750)
    out.chmod(0o750)
    for name in names:
        (data / name).write_bytes(b"x")
    return data, out


def _sigint_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


# --------------------------------------------------------------------------- refused starts


def test_check_gpu_refused_gpu_start_leaves_nothing(no_gpus, folder, monkeypatch):
    """The issue's example: ``invoke check-gpu --image IMAGE --license 27000@lic.example.org``
    on a host without the NVIDIA toolkit. The error is one line; no container stays in state
    Created holding the license variable."""
    client, image = no_gpus
    monkeypatch.setattr(engine, "connect", lambda **kw: client)
    before = Before(client, image, folder)
    with pytest.raises(UserError, match=GPU_REFUSED) as info:
        commands.check_gpu(image=image, license=LICENSE_SERVER)
    assert "NVIDIA container toolkit" in str(info.value) and "\n" not in str(info.value)
    assert "lic.example.org" not in str(info.value)
    before.assert_unchanged()


def test_check_gpu_refused_gpu_start_with_a_license_file_leaves_nothing(
    no_gpus, folder, monkeypatch
):
    """Same path with the license mounted (a file, read-only) instead of a variable."""
    client, image = no_gpus
    license_file = folder / "site.lic"
    license_file.write_text("SERVER licsrv 0123456789AB 27000\n")
    monkeypatch.setattr(engine, "connect", lambda **kw: client)
    before = Before(client, image, folder)
    with pytest.raises(UserError, match=GPU_REFUSED):
        commands.check_gpu(image=image, license=str(license_file))
    before.assert_unchanged()


def test_groundtruth_kilosort4_runner_refused_gpu_start_leaves_nothing(no_gpus, folder):
    """The ground-truth container runner (``run_container``), root's output folder
    included: it is opened for the image's user only while a container could run."""
    client, image = no_gpus
    data, out = _data(folder, ("recording.bin", "ks4_settings.json", "ks4_probe.json"))
    before = Before(client, image, folder)
    with pytest.raises(UserError, match=GPU_REFUSED):
        run_kilosort4_container(data, out, image=image, gpu=True, client=client)
    before.assert_unchanged()


def test_groundtruth_kilosort3_runner_refused_gpu_start_leaves_nothing(no_gpus, folder):
    """The MATLAB runner: nothing ran, so no hand-back container either."""
    client, image = no_gpus
    data, out = _data(folder, ("recording.bin", "ops.mat", "chanMap.mat"))
    before = Before(client, image, folder)
    with pytest.raises(UserError, match=GPU_REFUSED):
        run_kilosort3_container(data, out, image=image, license=LICENSE_SERVER, client=client)
    before.assert_unchanged()


# --------------------------------------------------------------------------- bad mounts, bad images


def test_missing_bind_source_leaves_no_folder_and_no_container(probe_image, folder):
    """Docker would create the missing folder (root-owned, parents too) and run anyway."""
    client, image = probe_image
    before = Before(client, image, folder)
    missing = folder / "typo" / "data"
    with pytest.raises(UserError, match="typo/data does not exist"):
        containers.run(image, ["echo", "x"], volumes={str(missing): {"bind": "/d"}}, client=client)
    with pytest.raises(UserError, match="typo/data does not exist"):
        matlab.run_batch(
            "disp(1)",
            image=image,
            license=matlab.License(LICENSE_SERVER),
            volumes={str(missing): {"bind": "/out", "mode": "rw"}},
            gpu=False,
            client=client,
        )
    before.assert_unchanged()


def test_file_mounted_over_a_folder_refused_start_leaves_nothing(probe_image, folder):
    client, image = probe_image
    note = folder / "note.txt"
    note.write_text("a file, where the image has a folder\n")
    before = Before(client, image, folder)
    with pytest.raises(containers.ContainerRefused, match="not a directory"):
        containers.run(image, ["echo", "x"], volumes={str(note): {"bind": "/etc"}}, client=client)
    before.assert_unchanged()


def test_missing_program_refused_start_leaves_nothing(probe_image, folder):
    client, image = probe_image
    out = folder / "out"
    out.mkdir(mode=0o750)
    before = Before(client, image, folder)
    with pytest.raises(containers.ContainerRefused, match="no such file"):
        containers.run(
            image,
            [],
            entrypoint=["/no/such/program"],
            volumes={str(out): {"bind": "/out", "mode": "rw"}},
            as_host_user=True,
            client=client,
        )
    before.assert_unchanged()


def test_missing_image_leaves_nothing_and_pulls_nothing(probe_image, folder):
    client, image = probe_image
    absent = "kilosort-docker-test/absent:never-built"
    data, out = _data(folder, ("recording.bin", "ks4_settings.json", "ks4_probe.json"))
    before = Before(client, image, folder, absent=(absent,))
    with pytest.raises(UserError, match=f"image {absent} not found: build it first"):
        run_kilosort4_container(data, out, image=absent, client=client)
    before.assert_unchanged()


# --------------------------------------------------------------------------- while it runs


def test_timeout_leaves_nothing_and_gives_the_folder_mode_back(probe_image, folder):
    client, image = probe_image
    out = folder / "out"
    out.mkdir(mode=0o750)
    before = Before(client, image, folder)
    with pytest.raises(containers.ContainerTimeout, match="sleeping"):
        containers.run(
            image,
            ["sleep", "60"],
            volumes={str(out): {"bind": "/out", "mode": "rw"}},
            as_host_user=True,
            timeout_s=1,
            client=client,
        )
    before.assert_unchanged()


def test_interrupt_while_matlab_runs_leaves_nothing(probe_image, folder):
    """Ctrl-C during ``matlab -batch`` (here: the probe sleeping): the container is removed,
    the hand-back container runs and is removed (this image has no ``chown``: the hand-back
    fails with a warning, and is removed too), the folder gets its mode back."""
    client, image = probe_image
    out = folder / "out"
    out.mkdir(mode=0o750)
    before = Before(client, image, folder)
    timer = _sigint_after(1.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            matlab.run_batch(
                "disp(1)",
                image=image,
                license=matlab.License(LICENSE_SERVER),
                matlab_command=("sleep", "60"),
                volumes={str(out): {"bind": "/out", "mode": "rw"}},
                gpu=False,
                client=client,
            )
    finally:
        timer.cancel()
    before.assert_unchanged()


def test_container_lost_while_streaming_leaves_nothing(probe_image, folder):
    """The container disappears while its logs stream (removed behind the runner's back,
    as after an engine restart): one line naming the engine; nothing is left."""
    client, image = probe_image
    before = Before(client, image, folder)

    def remove_it():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for found in leftovers(client, image):
                client.api.remove_container(found, force=True)
                return
            time.sleep(0.1)

    remover = threading.Thread(target=remove_it)
    remover.start()
    try:
        with pytest.raises(UserError, match=f"lost the container of {image} while it ran"):
            containers.run(image, ["sleep", "30"], client=client)
    finally:
        remover.join()
    before.assert_unchanged()

"""SpikeInterface's own container path into the ``kilosort4`` image, network off, on the CPU
(on the GPUs where cuda-python finds one on the host).

``spikeinterface.sorters.run_sorter("kilosort4", recording, folder, docker_image=<image>,
installation_mode="no-install")`` as a SpikeInterface user calls it: SpikeInterface creates the
container itself (docker SDK, ``tty=True``, the recording's folder mounted read-only and the
output's parent read-write), runs ``python in_container_sorter_script.py`` and then
``chown -R <uid>:<uid>`` in it with ``docker exec``, and stops and removes it (SpikeInterface
0.105 ``sorters/runsorter.py`` and ``sorters/container_tools.py``).

The run happens in a child process, as the user SpikeInterface's runner serves. It runs its
``docker exec`` commands as the image's user and cannot be told another, and the container must
write into the output's parent folder, which belongs to the host user. So: the project's image
as a host user of the image's uid (``kilosort``, 1000), and README's root image on it (``USER
root``, SpikeInterface's own model) as another host user (1001), whose files SpikeInterface's
chown hands back. A test run as root starts the child under that uid with util-linux's
``setpriv``; as another user it skips, naming why. In the child, the docker SDK's
``containers.create`` is wrapped to add ``network_mode="none"`` (the network off: nothing may be
installed at run time) and to note the container's id, so the test can check it is gone.

Needs the ``kilosort4_image`` fixture (tests/conftest.py); skips when it is not defined.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from kilosort_docker.groundtruth import score as scoring
from kilosort_docker.groundtruth.simulate import SimulationParams, simulate
from kilosort_docker.images import stack, tags
from kilosort_docker.images.pins import load_pins
from kilosort_docker.images.profiles import get_profile
from kilosort_docker.images.spec import PlanContext
from tests import support

#: Small: 16 channels, 10 s, 3 units firing at 10-20 Hz, no drift. Measured here (Kilosort 4.1.7
#: on 2 CPU cores): 3/3 units well detected, median accuracy 1.0, in 15 s on the host
#: (run_sorter_local) and 55-474 s in the image while other work loaded the cores (load 5-12).
#: With 5 units, 10 or 20 s (seeds 1 and 42), Kilosort 4 found 3 clusters and 2 of the units.
PARAMS = SimulationParams(
    duration_s=10, n_channels=16, n_units=3, drift_um=0, firing_rates_hz=(10.0, 20.0), seed=42
)
#: The user SpikeInterface's runner can serve with this image: the image's user (USER
#: kilosort, uid 1000, docker/kilosort4/Dockerfile).
IMAGE_UID = 1000
#: Any other user, for README's image for them (``USER root`` on the project's image).
OTHER_UID = 1001
#: The most the child (recording save, container start, sort, chown, removal) may take.
CHILD_TIMEOUT_S = 900


# ---- the pin: one SpikeInterface version for the host and the image --------------------------


def test_the_image_pin_is_the_hosts_spikeinterface():
    pyproject = tomllib.loads((support.REPO_ROOT / "pyproject.toml").read_text())
    groundtruth = [
        Requirement(r) for r in pyproject["project"]["optional-dependencies"]["groundtruth"]
    ]
    (host,) = [r for r in groundtruth if r.name == "spikeinterface"]
    pins = load_pins()
    assert str(host.specifier) == f"=={pins.spikeinterface_version}", (
        "pyproject.toml's groundtruth extra and kilosort-docker.toml [kilosort4] spikeinterface "
        "must pin one version: SpikeInterface's runner needs the host's version in the image"
    )


def test_the_kilosort4_build_carries_the_pinned_spikeinterface():
    pins = load_pins()
    spec, profile = stack.get_image("kilosort4"), get_profile()
    args = spec.buildargs(PlanContext(profile=profile, pins=pins))
    assert args["SPIKEINTERFACE_VERSION"] == pins.spikeinterface_version
    labels = tags.labels(spec, profile, pins, base_name="python", revision="abc", created="now")
    assert labels["io.kilosort-docker.spikeinterface.version"] == pins.spikeinterface_version
    dockerfile = (support.REPO_ROOT / "docker" / "kilosort4" / "Dockerfile").read_text()
    assert '"spikeinterface==${SPIKEINTERFACE_VERSION}"' in dockerfile


# ---- run_sorter through the image ---------------------------------------------------------------


@pytest.fixture
def image(kilosort4_image):
    """The kilosort4 image the suite builds (``kilosort4_image`` in tests/conftest.py)."""
    return kilosort4_image


def _as_user(uid: int) -> list[str]:
    """The command prefix that runs the child as ``uid`` (and gid ``uid``) with the group of the
    Docker socket; a skip naming why when this process can neither switch users nor is ``uid``.

    Run as root, the child keeps one capability, reading any file (``CAP_DAC_READ_SEARCH``,
    ambient, through util-linux's ``setpriv``), so that it can reach a Python installed in
    root's home; everything it writes, and what the container writes, is still ``uid``'s."""
    if os.getuid() == uid:
        return []
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip(
            f"needs uid {uid} or root with util-linux's setpriv (this test runs as uid "
            f"{os.getuid()}): SpikeInterface's runner serves one host user per image user"
        )
    socket = Path("/var/run/docker.sock")
    groups = str(socket.stat().st_gid) if socket.exists() else str(uid)
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        f"--groups={groups}",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
        "--",
    ]


def _chown_tree(folder: Path, uid: int, gid: int) -> None:
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, uid, gid)


@pytest.mark.docker
def test_the_image_check_finds_the_pinned_spikeinterface(image, docker_client):
    from kilosort_docker.images import checks

    findings = checks.run_checks(docker_client, image, pins=load_pins(), only=["spikeinterface"])
    assert [(f.check, f.ok) for f in findings] == [("spikeinterface", True)], findings
    assert load_pins().spikeinterface_version in findings[0].detail

    other = dataclasses.replace(load_pins(), spikeinterface_version="0.104.0")
    (found,) = checks.run_checks(docker_client, image, pins=other, only=["spikeinterface"])
    assert not found.ok and "!= pinned 0.104.0" in found.detail, found


@pytest.mark.docker
def test_the_default_command_waits_only_on_a_terminal(image, docker_client):
    """Without a terminal the image prints its versions and ends (``docker run IMAGE``); with
    one, as SpikeInterface's runner creates it, it stays up for ``docker exec`` and leaves at
    once on ``docker stop``."""
    from kilosort_docker import containers

    done = containers.run(image, client=docker_client, stream_to_log=False, timeout_s=300)
    pins = load_pins()
    assert done.exit_code == 0, done.output
    assert f"spikeinterface {pins.spikeinterface_version}" in done.output, done.output

    container = docker_client.containers.create(image, tty=True, network_mode="none")
    try:
        container.start()
        deadline = time.monotonic() + 120
        while b"spikeinterface" not in container.logs() and time.monotonic() < deadline:
            time.sleep(1)
        container.reload()
        assert container.status == "running", container.logs()[-2000:]
        probe = container.exec_run(["python", "-c", "import spikeinterface"])
        assert probe.exit_code == 0, probe.output
        started = time.monotonic()
        container.stop(timeout=10)
        assert time.monotonic() - started < 5, "the terminal's shell ignored SIGTERM"
    finally:
        container.remove(force=True)


@contextlib.contextmanager
def _image_for(client, image: str, case: str) -> Iterator[str]:
    """The image a case sorts in: the project's own, or (``root``) README's two-line image on
    it for users whose uid is not the image's, removed after."""
    if case == "image-user":
        yield image
        return
    ref = f"{support.NAMESPACE}/kilosort4-spikeinterface-root:test"
    dockerfile = f"FROM {image}\nUSER root\n".encode()
    client.images.build(fileobj=io.BytesIO(dockerfile), tag=ref, rm=True, forcerm=True)
    try:
        yield ref
    finally:
        client.images.remove(ref, force=True)


#: (case, the uid that runs run_sorter): the project's image as its own user (uid 1000), and
#: README's root image on it as another user, whose files SpikeInterface's chown hands back.
CASES = [("image-user", IMAGE_UID), ("root", OTHER_UID)]


@pytest.mark.docker
@pytest.mark.parametrize(("case", "uid"), CASES, ids=[case for case, _ in CASES])
def test_run_sorter_in_the_image_offline_scores_and_hands_back_files(
    image, docker_client, tmp_path, case, uid
):
    pytest.importorskip("spikeinterface")
    sim = simulate(PARAMS)
    prefix = _as_user(uid)
    # Only the child's folder: tmp_path itself is root's 0700 (pytest's tmp_path_factory).
    work = tmp_path / "si"
    work.mkdir()
    shutil.copy2(sim.binary, work / "raw.bin")
    _chown_tree(work, uid, uid)
    tmp_path.chmod(0o755)
    env = {
        **os.environ,
        "HOME": str(work),
        "PYTHONPATH": os.pathsep.join([str(support.REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    with _image_for(docker_client, image, case) as ref:
        args = {"work": str(work), "image": ref, "params": PARAMS.__dict__}
        started = time.monotonic()
        done = subprocess.run(
            [*prefix, sys.executable, "-m", "tests.test_spikeinterface", json.dumps(args)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
        )
        seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads((work / "result.json").read_text())
    assert result["uid"] == uid

    # SpikeInterface asked Docker for the GPUs exactly when cuda-python found one on the host
    # (none here: the CPU), and gave back a sorting through its own reader of the output.
    assert result["gpu_requested"] == result["has_nvidia"], result
    pins = load_pins()
    assert result["spikeinterface"] == pins.spikeinterface_version
    assert result["spikeinterface_in_image"] == [pins.spikeinterface_version], result
    assert result["kilosort_in_image"] == pins.kilosort4_version
    assert result["n_units"] > 0 and result["n_spikes"] > 0, result

    # The one container SpikeInterface made is gone.
    assert len(result["containers"]) == 1, result["containers"]
    for container_id in result["containers"]:
        with pytest.raises(Exception, match="No such container|404"):
            docker_client.containers.get(container_id)

    # Every file of the output belongs to the user who ran run_sorter.
    out = work / "ks4"
    files = [out, *out.rglob("*")]
    strangers = [
        f"{p} ({p.stat().st_uid}:{p.stat().st_gid})" for p in files if p.stat().st_uid != uid
    ]
    assert not strangers, strangers[:5]
    assert (out / "sorter_output" / "spike_times.npy").is_file()
    # The container's script ran to its end: it read the output back and saved the sorting.
    assert (out / "in_container_sorting").is_dir(), sorted(p.name for p in out.iterdir())

    # The sort is right: scored against the ground truth like every Kilosort 4 sort here.
    limits = scoring.load_thresholds(
        scoring.thresholds_path("kilosort4"), n_channels=PARAMS.n_channels
    )
    report = scoring.score(
        sim.folder,
        out / "sorter_output",
        out_dir=tmp_path / "report",
        thresholds=limits,
        sort_seconds=result["seconds"],
        figures=False,
    )
    took = f"{result['seconds']:.0f} s ({seconds:.0f} s in all)"
    print(f"run_sorter, {case} image, uid {uid}: {took}; {report.summary()}")
    assert report.n_well_detected == PARAMS.n_units, report.summary()
    assert report.passed, report.summary()


# ---- the child: what a SpikeInterface user runs ----------------------------------------------


def _child(args: dict) -> None:
    """Save the recording, run SpikeInterface's container path with the network off, and write
    ``result.json`` (container ids, units, spikes, versions, seconds) into ``work``."""
    import docker.models.containers
    import spikeinterface
    import spikeinterface.core as sc
    from spikeinterface.sorters import run_sorter
    from spikeinterface.sorters.utils import has_nvidia

    from kilosort_docker.groundtruth.simulate import neuropixels_probe

    work, params = Path(args["work"]), SimulationParams(**args["params"])
    raw = sc.read_binary(
        work / "raw.bin",
        sampling_frequency=params.fs,
        dtype="int16",
        num_channels=params.n_channels,
        gain_to_uV=params.uv_per_bit,
        offset_to_uV=0.0,
    )
    raw.set_probe(neuropixels_probe(params.n_channels))  # in place (SpikeInterface 0.105)
    recording = raw.save(folder=work / "recording", n_jobs=1, progress_bar=False)

    made: list[str] = []
    gpu_requested: list[bool] = []
    create = docker.models.containers.ContainerCollection.create

    def create_offline(self, image, command=None, **kwargs):
        kwargs["network_mode"] = "none"
        gpu_requested.append(bool(kwargs.get("device_requests")))
        container = create(self, image, command, **kwargs)
        made.append(container.id)
        return container

    docker.models.containers.ContainerCollection.create = create_offline
    started = time.monotonic()
    try:
        sorting = run_sorter(
            "kilosort4",
            recording,
            folder=work / "ks4",
            docker_image=args["image"],
            installation_mode="no-install",
            verbose=True,
        )
    finally:
        (work / "containers.json").write_text(json.dumps(made))
    seconds = time.monotonic() - started
    # Written in the container: the sorter's log (its version) and the sorting that
    # SpikeInterface saved there (the version of the SpikeInterface that saved it).
    log = json.loads((work / "ks4" / "spikeinterface_log.json").read_text())
    saved = {
        path.name: json.loads(path.read_text())
        for path in sorted((work / "ks4" / "in_container_sorting").glob("*.json"))
    }
    result = {
        "containers": made,
        "uid": os.getuid(),
        "seconds": seconds,
        "has_nvidia": has_nvidia(),
        "gpu_requested": any(gpu_requested),
        "spikeinterface": spikeinterface.__version__,
        "spikeinterface_in_image": sorted(
            {v["version"] for v in saved.values() if isinstance(v, dict) and "version" in v}
        ),
        "kilosort_in_image": log["sorter_version"],
        "n_units": int(sorting.get_num_units()),
        "n_spikes": int(sum(sorting.count_num_spikes_per_unit().values())),
    }
    (work / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))

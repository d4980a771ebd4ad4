"""Shared fixtures: a real Docker engine, locally made base images, stand-ins, a registry,
the fake GitHub/PyPI server and git copies of the pin files. Helpers are in ``tests.support``.

Set ``KILOSORT_DOCKER_REQUIRE_DOCKER=1`` (CI does) to fail instead of skipping when the
engine or a tool the integration tests need is missing. Set ``KILOSORT_DOCKER_REQUIRE_GPU=1``
(on machines that must run the GPU tests) to turn every skip of a test marked ``gpu`` into a
failure (:func:`pytest_runtest_makereport`); pytest's ``-ra`` (pyproject.toml) names every
skip's reason in the summary.

Every test and fixture removes what it makes; the session-end check of
:mod:`tests.support.leftovers` fails the run if a tag, container, dangling image, volume,
network, temporary folder or process made by this run is left (the cached bases in
``leftovers.KEPT_IMAGES`` excepted), names the test that made it and removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kilosort_docker import engine
from kilosort_docker.errors import UserError
from tests import support
from tests.support import fakes, leftovers

REQUIRE = os.environ.get("KILOSORT_DOCKER_REQUIRE_DOCKER") == "1"
#: The ground-truth harness's variable (kilosort_docker.groundtruth.run.REQUIRE_GPU_VARIABLE),
#: read once when the run starts (tests may change the environment while they run).
REQUIRE_GPU_VARIABLE = "KILOSORT_DOCKER_REQUIRE_GPU"
REQUIRE_GPU = os.environ.get(REQUIRE_GPU_VARIABLE, "").strip() == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With ``KILOSORT_DOCKER_REQUIRE_GPU=1``, a skipped test marked ``gpu`` fails, its skip
    reason kept in the message: one place for every GPU test, whatever skipped it (the test,
    a fixture, a marker)."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("gpu") is not None
        and REQUIRE_GPU
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        reason = str(reason).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"{reason} ({REQUIRE_GPU_VARIABLE}=1: a GPU test may not skip)"


def _missing(reason: str):
    if REQUIRE:
        pytest.fail(f"{reason} (KILOSORT_DOCKER_REQUIRE_DOCKER=1)")
    pytest.skip(reason)


def pytest_configure(config):
    """The session-end check for leftovers (:mod:`tests.support.leftovers`)."""
    config.pluginmanager.register(leftovers.Plugin(), "kilosort-docker-leftovers")


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = engine.connect(timeout=3600)
    except UserError as exc:
        _missing(str(exc))
    yield client
    # Each fixture and test removes what it made (the session-end check fails the run if
    # something is left); here only the old images of kept bases this run rebuilt.
    if leftovers.PLUGIN is not None:
        leftovers.PLUGIN.remove_replaced_kept(client)


@pytest.fixture(scope="session")
def debian_base(docker_client):
    if shutil.which("debootstrap") is None:
        try:
            docker_client.images.get(support.DEBIAN_IMAGE)
        except Exception:
            _missing("debootstrap is not installed (apt-get install debootstrap)")
    return support.debootstrap_image(docker_client)


@pytest.fixture(scope="session")
def python_base(docker_client, debian_base):
    return support.build_python_base(docker_client, debian_base)


@pytest.fixture(scope="session")
def matlab_standin(docker_client, debian_base, tmp_path_factory):
    """The stand-in MATLAB base image (tests only), with the stand-in mex API in its root."""
    context = tmp_path_factory.mktemp("matlab-standin")
    return support.build_matlab_standin(docker_client, debian_base, context)


@pytest.fixture(scope="session")
def mpm_server():
    """Stand-in MPMs served over HTTP on 127.0.0.1; yields the base URL."""
    with support.http_server(support.STANDINS / "mpm") as url:
        yield url


@pytest.fixture(scope="session")
def fixture_repos(tmp_path_factory):
    """Local git repositories standing in for MouseLand/Kilosort and kwikteam/npy-matlab."""
    return support.make_fixture_repos(tmp_path_factory.mktemp("repos"))


@pytest.fixture(scope="session")
def git_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    """A folder with a CPU-only torch wheel, if this machine has one (keeps the image small)."""
    folder = tmp_path_factory.mktemp("wheels")
    for place in filter(None, [os.environ.get("KILOSORT_DOCKER_TEST_WHEELS"), "/opt/wheels"]):
        for wheel in Path(place).glob("torch-*+cpu-*.whl"):
            shutil.copy2(wheel, folder / wheel.name)
    return folder if any(folder.iterdir()) else None


@pytest.fixture(scope="session")
def kilosort3_stack(
    docker_client, matlab_standin, mpm_server, fixture_repos, git_cache, tmp_path_factory
):
    """The Kilosort3 chain built for real on the stand-in MATLAB base, from fixture repos."""
    from kilosort_docker.images import build

    mex_root = tmp_path_factory.mktemp("mex-binaries")
    plan = support.standin_chain_plan(
        matlab_standin,
        mpm_server,
        kilosort=fixture_repos["kilosort"],
        npy_matlab=fixture_repos["npy_matlab"],
        mex_root=mex_root,
    )
    with leftovers.TRACKER.recording() as made:
        built = build.execute(plan, docker_client)
    yield {"plan": plan, "built": {b.step.spec.name: b for b in built}, "mex_root": mex_root}
    leftovers.remove(docker_client, made)


@pytest.fixture(scope="session")
def kilosort4_image(docker_client, python_base, wheelhouse):
    """The kilosort4 image built for real from the local Python base (tag of the image)."""
    from kilosort_docker import commands
    from kilosort_docker.images import build

    plan = commands.make_plan(
        images=["kilosort4"],
        python_base=python_base,
        wheelhouse=str(wheelhouse) if wheelhouse else None,
        ca_bundle=support.host_ca_bundle(),
        namespace=support.NAMESPACE,
    )
    with leftovers.TRACKER.recording() as made:
        built = build.execute(plan, docker_client)
    yield built[-1].step.refs[0]
    leftovers.remove(docker_client, made)


# --- bump and release: the fake GitHub/PyPI server, copies of the pin files -------------------


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[support.FakeAPI]:
    """The fake GitHub/PyPI server (``support.serve_fake_api``), with no token and no proxy."""
    support.isolate(monkeypatch)
    with support.serve_fake_api() as api:
        yield api


@pytest.fixture
def closed_port_url() -> str:
    return support.closed_port()


@pytest.fixture
def pinned_root(tmp_path: Path) -> Path:
    """A copy of the pin files (the real ones are never touched)."""
    for name in support.PINNED_FILES:
        shutil.copy2(support.REPO_ROOT / name, tmp_path / name)
    return tmp_path


@pytest.fixture
def pinned_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository with the pin files committed (``support.make_git_copy``)."""
    return support.make_git_copy(tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def probe_image(docker_client, tmp_path_factory):
    """A ``FROM scratch`` image holding ``/probe`` (its entrypoint, see
    :mod:`tests.support.fakes`) and :data:`~tests.support.fakes.PROBE_FILE`; removed after.

    Yields ``(client, image tag)``.
    """
    tag = fakes.build_probe_image(docker_client, tmp_path_factory.mktemp("probe"))
    if tag is None:
        _missing("gcc cannot build a static program here (apt-get install gcc libc6-dev)")
    yield docker_client, tag
    with contextlib.suppress(Exception):
        docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="session")
def engine_grants_gpus(probe_image) -> bool:
    """Whether this engine starts a container that asks for ``--gpus all`` (tried with the probe
    image, so only the start is tested: what decides whether a GPU run is refused). Decided by
    what works, never by the ``Runtimes`` of ``docker info``."""
    from kilosort_docker import containers

    client, image = probe_image
    try:
        containers.run(image, ["echo", "gpu"], gpu=True, client=client, stream_to_log=False)
    except containers.ContainerRefused:
        return False
    return True


@pytest.fixture(scope="session")
def shared_mirrors() -> dict[str, Path]:
    """The shallow mirrors of the pinned Kilosort and npy-matlab (``../shared/mirrors``, or the
    folder ``KILOSORT_DOCKER_MIRRORS`` names), used as an air-gapped site would use its own.
    Missing: a skip naming the reason, a failure under ``KILOSORT_DOCKER_REQUIRE_MIRRORS=1``
    (``.ci/run`` sets it where the mirrors are beside the clone)."""
    folder = Path(
        os.environ.get("KILOSORT_DOCKER_MIRRORS") or support.REPO_ROOT.parent / "shared" / "mirrors"
    )
    found = {name: folder / f"{name}.git" for name in ("Kilosort", "npy-matlab")}
    absent = [str(p) for p in found.values() if not p.is_dir()]
    if absent:
        reason = f"the upstream mirrors are absent ({', '.join(absent)})"
        if os.environ.get("KILOSORT_DOCKER_REQUIRE_MIRRORS") == "1":
            pytest.fail(f"{reason} (KILOSORT_DOCKER_REQUIRE_MIRRORS=1)")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="session")
def slurm_cluster():
    """A one-node SLURM cluster on this host (:func:`tests.support.slurm.cluster`): munged,
    slurmctld and slurmd started here, stopped by pid after the session; ``SLURM_CONF`` set
    while it runs. Missing programs or a non-root user: a skip naming the reason (a failure
    under ``KILOSORT_DOCKER_REQUIRE_DOCKER=1``)."""
    from tests.support import slurm

    missing = slurm.missing_programs()
    if missing:
        _missing(
            f"{', '.join(missing)} not on PATH (scripts/setup-host.sh installs slurm-wlm, munge)"
        )
    if os.getuid() != 0:
        _missing("the one-node SLURM cluster runs munged, slurmctld and slurmd as root")
    with slurm.cluster() as cluster:
        yield cluster

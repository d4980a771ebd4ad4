"""What a test run leaves behind: a record of what this run made, and the session-end check.

Every test removes what it makes (tags, containers, dangling images its builds produced,
volumes, networks, temporary folders, servers). :class:`Tracker` records, for this process,
everything the Docker SDK is asked to make (``APIClient.build``/``tag``/``create_container``/
``create_volume``/``create_network``/``commit``/``import_image``/``pull``, the image IDs a
build's stream names, the IDs a ``remove_image`` untags) and every temporary folder made with
a project prefix (``tempfile.mkdtemp``); :func:`leftovers` says which of those still exist at
the end of the session (:class:`Plugin`, registered by tests/conftest.py, fails the run then).
Tags and containers made outside this process (``invoke`` or ``docker`` run as subprocesses)
are found by comparing the engine's state before and after, restricted to the test
namespaces, and only when no other test run overlapped this one (:class:`RunLog`): several
test runs (and benchmarks) share one engine, and one run must neither blame nor remove
another's images. Child processes and HTTP server threads still alive at the end count too.

Limits: dangling images, volumes and folders that a subprocess made are not seen; two runs
that build the same content share image IDs, so removing one run's untagged layers can race
the other's build of the same layers (the engine refuses to remove an image in use).

:data:`KEPT_IMAGES` are the base images the suite builds on purpose and reuses across runs;
they are the only test images a run may leave.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .images import DEBIAN_IMAGE, MATLAB_STANDIN_IMAGE, NAMESPACE, PYTHON_IMAGE
from .toolkits import DEBIAN_CUDA_IMAGE

log = logging.getLogger(__name__)

#: Base images the suite builds once and reuses across runs (cache, kept on purpose).
KEPT_IMAGES: tuple[str, ...] = (DEBIAN_IMAGE, PYTHON_IMAGE, MATLAB_STANDIN_IMAGE, DEBIAN_CUDA_IMAGE)
#: Every test image name starts with this (``NAMESPACE/``, ``NAMESPACE-secrets/``, ...).
TEST_PREFIX = NAMESPACE
#: Prefixes of the temporary folders tests and the code they run make in the temp folder
#: (tests/support: images.py, servers.py; kilosort_docker/images/build.py; tests/gpu).
TEMP_PREFIXES: tuple[str, ...] = ("kilosort-docker-", "ptx-jit-check-")
#: Where the runs on this machine note their start and end (not under a TEMP_PREFIXES name).
RUN_LOG = Path(tempfile.gettempdir()) / ".kilosort-docker-test-runs.log"

_SHORT_ID = re.compile(r"^\s*---> ([0-9a-f]{12})\s*$")
_BUILT = re.compile(r"^Successfully built ([0-9a-f]{12,64})\s*$")
_TAGGED = re.compile(r"^Successfully tagged (\S+)\s*$")


def is_test_ref(ref: str) -> bool:
    """Whether ``ref`` names a test image: ``kilosort-docker-test[-*]/...`` on the engine, or a
    test image pushed to a local registry (``127.0.0.1:PORT/...``)."""
    if ref.startswith("127.0.0.1:"):
        return True
    first = ref.split("/", 1)[0]
    return "/" in ref and (first == TEST_PREFIX or first.startswith(f"{TEST_PREFIX}-"))


def in_test_namespace(ref: str) -> bool:
    """Whether ``ref`` is in a test namespace, on the engine or in a local registry
    (``127.0.0.1:PORT/kilosort-docker-test.../...``): what only a test run makes."""
    if ref.startswith("127.0.0.1:"):
        ref = ref.split("/", 1)[1] if "/" in ref else ""
    first = ref.split("/", 1)[0]
    return "/" in ref and (first == TEST_PREFIX or first.startswith(f"{TEST_PREFIX}-"))


def full_ref(repository: str, tag: str | None) -> str:
    """``repository:tag`` with Docker's default tag; a ``@digest`` or an existing tag kept."""
    if tag:
        return f"{repository}@{tag}" if tag.startswith("sha256:") else f"{repository}:{tag}"
    last = repository.rsplit("/", 1)[-1]
    return repository if (":" in last or "@" in repository) else f"{repository}:latest"


@dataclass
class Made:
    """What was made while a recording was open; ``origin`` maps each thing to its maker."""

    refs: set[str] = field(default_factory=set)
    image_ids: set[str] = field(default_factory=set)  # full or 12-digit IDs builds named
    untagged_ids: set[str] = field(default_factory=set)  # IDs that lost a tag by our hand
    containers: set[str] = field(default_factory=set)
    volumes: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)
    folders: set[str] = field(default_factory=set)
    origin: dict[str, str] = field(default_factory=dict)


class Tracker:
    """Records what this process asks the engine (docker SDK) and ``tempfile`` to make.

    :meth:`start` patches ``docker.api.client.APIClient`` and ``tempfile.mkdtemp``;
    :meth:`stop` restores them. :meth:`recording` collects what is made inside a ``with``
    block (e.g. a fixture's builds) so that the fixture removes exactly that (:func:`remove`).
    """

    def __init__(self) -> None:
        self.all = Made()
        self._open: list[Made] = [self.all]
        self._saved: dict[tuple[object, str], object] = {}
        self.where = "session start"  # the test or fixture running now (for the report)
        self._lock = threading.Lock()

    # -- recording -------------------------------------------------------------------------
    def _note(self, kind: str, value: str) -> None:
        with self._lock:
            for made in self._open:
                getattr(made, kind).add(value)
                made.origin.setdefault(value, self.where)

    @contextlib.contextmanager
    def recording(self) -> Iterator[Made]:
        made = Made()
        self._open.append(made)
        try:
            yield made
        finally:
            self._open.remove(made)

    def _stream_line(self, line: str) -> None:
        for pattern, kind in ((_SHORT_ID, "image_ids"), (_BUILT, "image_ids"), (_TAGGED, "refs")):
            match = pattern.match(line)
            if match:
                self._note(kind, match[1])

    def _watch_build(self, stream):
        import json

        for event in stream:
            chunks = [event] if isinstance(event, dict) else []
            if isinstance(event, bytes | str):
                text = event.decode(errors="replace") if isinstance(event, bytes) else event
                for piece in text.splitlines():
                    with contextlib.suppress(ValueError):
                        chunks.append(json.loads(piece))
            for chunk in chunks:
                for line in str(chunk.get("stream", "")).splitlines():
                    self._stream_line(line)
                aux = chunk.get("aux")
                if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
                    self._note("image_ids", aux["ID"])
            yield event

    # -- patching ----------------------------------------------------------------------------
    def start(self) -> None:
        """Patch the Docker SDK's low-level client and ``tempfile.mkdtemp`` (idempotent)."""
        if self._saved:
            return
        from docker.api.client import APIClient

        tracker = self

        def wrap(name):
            original = getattr(APIClient, name)
            self._saved[(APIClient, name)] = original

            def decorate(after):
                @functools.wraps(original)
                def method(api, *args, **kwargs):
                    return after(api, original, *args, **kwargs)

                setattr(APIClient, name, method)

            return decorate

        @wrap("build")
        def _build(api, original, *args, **kwargs):
            if kwargs.get("tag"):
                tracker._note("refs", full_ref(kwargs["tag"], None))
            return tracker._watch_build(original(api, *args, **kwargs))

        @wrap("tag")
        def _tag(api, original, image, repository, tag=None, **kwargs):
            result = original(api, image, repository, tag, **kwargs)
            tracker._note("refs", full_ref(repository, tag))
            return result

        @wrap("remove_image")
        def _remove_image(api, original, image, *args, **kwargs):
            with contextlib.suppress(Exception):
                tracker._note("untagged_ids", api.inspect_image(image)["Id"])
            return original(api, image, *args, **kwargs)

        @wrap("create_container")
        def _create_container(api, original, *args, **kwargs):
            host_config = kwargs.get("host_config") or {}
            names = [str(b).split(":", 1)[0] for b in host_config.get("Binds") or []]
            names += [
                m["Source"]
                for m in host_config.get("Mounts") or []
                if m.get("Type") == "volume" and m.get("Source")
            ]
            existing = set()
            with contextlib.suppress(Exception):
                existing = {v["Name"] for v in api.volumes().get("Volumes") or []}
            for source in names:
                if source and not source.startswith("/") and source not in existing:
                    tracker._note("volumes", source)  # made by this create
            result = original(api, *args, **kwargs)
            tracker._note("containers", result["Id"])
            return result

        @wrap("create_volume")
        def _create_volume(api, original, *args, **kwargs):
            result = original(api, *args, **kwargs)
            tracker._note("volumes", result["Name"])
            return result

        @wrap("create_network")
        def _create_network(api, original, *args, **kwargs):
            result = original(api, *args, **kwargs)
            tracker._note("networks", result["Id"])
            return result

        @wrap("commit")
        def _commit(api, original, container, repository=None, tag=None, *args, **kwargs):
            result = original(api, container, repository, tag, *args, **kwargs)
            tracker._note("image_ids", result["Id"])
            if repository:
                tracker._note("refs", full_ref(repository, tag))
            return result

        @wrap("import_image")
        def _import_image(api, original, *args, **kwargs):
            result = original(api, *args, **kwargs)
            if kwargs.get("repository"):
                tracker._note("refs", full_ref(kwargs["repository"], kwargs.get("tag")))
            return result

        @wrap("pull")
        def _pull(api, original, repository, tag=None, *args, **kwargs):
            tracker._note("refs", full_ref(repository, tag))
            return original(api, repository, tag, *args, **kwargs)

        original_mkdtemp = tempfile.mkdtemp
        self._saved[(tempfile, "mkdtemp")] = original_mkdtemp

        @functools.wraps(original_mkdtemp)
        def mkdtemp(suffix=None, prefix=None, dir=None):
            path = original_mkdtemp(suffix, prefix, dir)
            name = Path(path).name
            if Path(path).parent == Path(tempfile.gettempdir()) and name.startswith(TEMP_PREFIXES):
                tracker._note("folders", path)
            return path

        tempfile.mkdtemp = mkdtemp

    def stop(self) -> None:
        for (owner, name), original in self._saved.items():
            setattr(owner, name, original)
        self._saved.clear()


TRACKER = Tracker()
#: The plugin of this session (set when the session starts).
PLUGIN: Plugin | None = None


@contextlib.contextmanager
def removing(client=None, *, namespace: str | None = None) -> Iterator[Made]:
    """Record what the ``with`` block makes (:data:`TRACKER`) and remove it at the end, also
    when the block fails: ``with leftovers.removing(client): build.execute(plan, client)``.

    ``namespace``: remove only the tags under ``namespace/`` (a module's own namespace, so that
    a session fixture first set up inside the block keeps its images). ``client`` None: the
    engine is reached only if something was made.
    """
    with TRACKER.recording() as made:
        try:
            yield made
        finally:
            if namespace is not None:
                made.refs = {r for r in made.refs if r.startswith(f"{namespace}/")}
            anything = made.refs or made.containers or made.image_ids or made.volumes
            if client is None and (anything or made.networks):
                from kilosort_docker import engine

                client = engine.connect(timeout=600)
            failed = remove(client, made)
            if failed:
                log.warning("could not remove: %s", "; ".join(failed))


def removing_after_module(namespace: str):
    """An autouse, module-scoped fixture that wraps the whole module in
    ``removing(namespace=namespace)``: every image its builds make (multi-stage build stages
    included), tag and container is removed after it. Bind it to a module-level name:
    ``_removes_what_it_builds = leftovers.removing_after_module(NAMESPACE)``."""

    @pytest.fixture(scope="module", autouse=True)
    def _removes_what_it_builds():
        with removing(namespace=namespace):
            yield

    return _removes_what_it_builds


# -- the engine's state ---------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """The engine's state and the temp folder, as far as the tests can leave things there."""

    tags: dict[str, str]  # every ref -> image ID
    dangling: dict[str, dict[str, str]]  # dangling image ID -> its labels
    containers: dict[str, str]  # container ID -> "name (image)"
    volumes: frozenset[str]
    networks: dict[str, str]  # network ID -> name
    folders: frozenset[str]
    children: dict[int, str]  # pid of a live child process -> its command line
    servers: frozenset[str]  # names of live threads serving HTTP (serve_forever)


def _children() -> dict[int, str]:
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == me and fields[0] != "Z":
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                found[int(entry.name)] = argv
    return found


def snapshot(client) -> State:
    """The state now; ``client`` None: the engine is not reachable (Docker parts empty)."""
    tags: dict[str, str] = {}
    dangling: dict[str, dict[str, str]] = {}
    containers: dict[str, str] = {}
    volumes: set[str] = set()
    networks: dict[str, str] = {}
    if client is not None:
        for image in client.api.images(all=False):
            for ref in image.get("RepoTags") or []:
                if ref != "<none>:<none>":
                    tags[ref] = image["Id"]
            if not [r for r in image.get("RepoTags") or [] if r != "<none>:<none>"]:
                dangling[image["Id"]] = image.get("Labels") or {}
        for item in client.api.containers(all=True):
            name = ",".join(n.lstrip("/") for n in item.get("Names") or [])
            containers[item["Id"]] = f"{name} ({item.get('Image')})"
        volumes = {v["Name"] for v in (client.api.volumes().get("Volumes") or [])}
        networks = {n["Id"]: n["Name"] for n in client.api.networks()}
    temp = Path(tempfile.gettempdir())
    folders = {str(p) for p in temp.iterdir() if p.name.startswith(TEMP_PREFIXES)}
    servers = {f"{t.name}#{t.ident}" for t in threading.enumerate() if "serve_forever" in t.name}
    return State(
        tags=tags,
        dangling=dangling,
        containers=containers,
        volumes=frozenset(volumes),
        networks=networks,
        folders=frozenset(folders),
        children=_children(),
        servers=frozenset(servers),
    )


# -- runs on this machine --------------------------------------------------------------------


class RunLog:
    """An append-only note of test runs on this machine (``pid token start|end time``), so
    that a run knows whether another overlapped it."""

    def __init__(self, path: Path = RUN_LOG) -> None:
        self.path, self.token, self.started = path, uuid.uuid4().hex[:12], time.time()

    def _write(self, what: str, when: float) -> None:
        with contextlib.suppress(OSError), open(self.path, "a") as out:
            out.write(f"{os.getpid()} {self.token} {what} {when!r}\n")

    def start(self) -> None:
        self.started = time.time()
        self._write("start", self.started)

    def end(self) -> None:
        self._write("end", time.time())

    def others(self) -> list[str]:
        """``pid token`` of every other run that ran at some time during this one."""
        runs: dict[str, dict[str, float | int]] = {}
        with contextlib.suppress(OSError):
            for line in self.path.read_text().splitlines():
                parts = line.split()
                if len(parts) != 4 or parts[1] == self.token:
                    continue
                with contextlib.suppress(ValueError):
                    run = runs.setdefault(parts[1], {"pid": int(parts[0])})
                    run[parts[2]] = float(parts[3])
        overlapping = []
        for token, run in runs.items():
            began = run.get("start", 0.0)
            ended = run.get("end")
            if ended is None:
                alive = Path(f"/proc/{run['pid']}").exists()
                ended = time.time() if alive else began
            if began <= time.time() and ended >= self.started:
                overlapping.append(f"{run['pid']} {token}")
        return overlapping


# -- the check -------------------------------------------------------------------------------


def _matches(image_id: str, ids: set[str]) -> bool:
    bare = image_id.removeprefix("sha256:")
    return any(bare.startswith(i.removeprefix("sha256:")) for i in ids if i)


def leftovers(
    before: State, after: State, made: Made, *, alone: bool, kept: tuple[str, ...] = KEPT_IMAGES
) -> list[str]:
    """What this run made and left: one line per thing, naming where it was made.

    ``made``: what :class:`Tracker` recorded in this process (what the engine made at its
    request, the temporary folders it made). ``alone``: no other test run overlapped this one;
    then new tags in a test namespace (:func:`in_test_namespace`) and new containers of such
    images count too, as made by this run's subprocesses (``invoke``, ``docker``). Other new
    things on the shared engine and temp folder (dangling images, volumes, folders, registry
    tags of a benchmark running meanwhile) count only when this process made them.
    """
    found: list[str] = []

    def where(key: str) -> str:
        return f" (made by {made.origin[key]})" if key in made.origin else ""

    for ref in sorted(after.tags):
        if ref in kept or not is_test_ref(ref):
            continue
        new = ref not in before.tags or before.tags[ref] != after.tags[ref]
        if ref in made.refs or (alone and new and in_test_namespace(ref)):
            found.append(f"tag {ref}{where(ref)}")
    # Dangling images this run produced: named by its builds, untagged by its hand, or a kept
    # image's old ID that its rebuild replaced.
    replaced = {
        before.tags[r] for r in kept if r in before.tags and after.tags.get(r) != before.tags[r]
    }
    for image_id in sorted(after.dangling):
        if image_id in before.dangling:
            continue
        if _matches(image_id, made.image_ids | made.untagged_ids | replaced):
            maker = next(
                (made.origin[i] for i in made.origin if i and _matches(image_id, {i})), None
            )
            found.append(
                f"dangling image {image_id[:19]}" + (f" (made by {maker})" if maker else "")
            )
    for cid, what in sorted(after.containers.items()):
        if cid in before.containers:
            continue
        image = what.rsplit("(", 1)[-1].rstrip(")")
        if cid in made.containers or (alone and in_test_namespace(image)):
            found.append(f"container {cid[:12]} {what}{where(cid)}")
    for volume in sorted(after.volumes - before.volumes):
        if volume in made.volumes:
            found.append(f"volume {volume}{where(volume)}")
    for nid, name in sorted(after.networks.items()):
        if nid not in before.networks and nid in made.networks:
            found.append(f"network {name}{where(nid)}")
    for folder in sorted(after.folders - before.folders):
        if folder in made.folders:
            found.append(f"folder {folder}{where(folder)}")
    for pid, argv in sorted(after.children.items()):
        if pid not in before.children:
            found.append(f"process {pid} {argv[:120]}")
    for server in sorted(after.servers - before.servers):
        found.append(f"server thread {server}")
    return found


def remove(client, made: Made, *, kept: tuple[str, ...] = KEPT_IMAGES) -> list[str]:
    """Remove what ``made`` holds (containers, tags but ``kept``, the dangling images it
    produced, volumes, networks, folders); returns what could not be removed. Removing a tag
    prunes its untagged parents, so nothing is left dangling; an image another tag or a
    container still uses stays (another run's, or a kept one's)."""
    import shutil

    import docker

    failed: list[str] = []

    def attempt(what: str, action) -> None:
        try:
            action()
        except docker.errors.NotFound:
            pass
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            failed.append(f"{what}: {getattr(exc, 'explanation', None) or exc}")

    if client is not None:
        for cid in sorted(made.containers):
            attempt(
                f"container {cid[:12]}", lambda c=cid: client.api.remove_container(c, force=True)
            )
        for ref in sorted(made.refs - set(kept)):
            if "@" not in ref and is_test_ref(ref):
                attempt(f"tag {ref}", lambda r=ref: client.api.remove_image(r))
        dangling = {i["Id"] for i in client.api.images(filters={"dangling": True})}
        for image_id in sorted(dangling):
            if _matches(image_id, made.image_ids | made.untagged_ids):
                attempt(f"image {image_id[:19]}", lambda i=image_id: client.api.remove_image(i))
        for volume in sorted(made.volumes):
            attempt(f"volume {volume}", lambda v=volume: client.api.remove_volume(v))
        for network in sorted(made.networks):
            attempt(f"network {network[:12]}", lambda n=network: client.api.remove_network(n))
    for folder in sorted(made.folders):
        shutil.rmtree(folder, ignore_errors=True)
    return failed


# -- the pytest plugin -----------------------------------------------------------------------


class Plugin:
    """The session-end check as a pytest plugin (registered by tests/conftest.py).

    At the start it takes the engine's state and starts :data:`TRACKER`; at the end (after
    every fixture's teardown) it lists what this run left (:func:`leftovers`), fails the run
    (exit status 1) if anything is there, and removes what this process made so that a failed
    run does not pile things up. An engine that cannot be reached at the end, after this run
    made something on it, fails the run too (the check could not run).
    """

    def __init__(self) -> None:
        self.client = None
        self.before: State | None = None
        self.runs = RunLog()
        self.found: list[str] = []

    def _connect(self):
        from kilosort_docker import engine
        from kilosort_docker.errors import UserError

        try:
            return engine.connect(timeout=120)
        except UserError:
            return None

    def pytest_sessionstart(self, session) -> None:
        global PLUGIN
        PLUGIN = self
        self.runs.start()
        self.client = self._connect()
        self.before = snapshot(self.client)
        TRACKER.start()

    def pytest_runtest_setup(self, item) -> None:
        TRACKER.where = item.nodeid

    def pytest_runtest_call(self, item) -> None:
        TRACKER.where = item.nodeid

    def pytest_runtest_teardown(self, item) -> None:
        TRACKER.where = f"{item.nodeid} (teardown)"

    def pytest_fixture_setup(self, fixturedef, request) -> None:
        node = getattr(request.node, "nodeid", "") or "session"
        TRACKER.where = f"fixture {fixturedef.argname} (set up for {node})"

    def remove_replaced_kept(self, client) -> None:
        """Remove the old images of kept images that this run rebuilt, once dangling (a
        changed Dockerfile); another run's container using one keeps it."""
        if self.before is None:
            return
        now = snapshot(client)
        for ref in KEPT_IMAGES:
            old = self.before.tags.get(ref)
            if old and now.tags.get(ref) != old and old in now.dangling:
                with contextlib.suppress(Exception):
                    client.api.remove_image(old)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session) -> None:
        TRACKER.stop()
        self.runs.end()
        made = TRACKER.all
        client = self.client or self._connect()
        if client is None and (made.refs or made.containers or made.image_ids or made.volumes):
            self.found = ["the Docker engine could not be reached to check what this run made"]
        else:
            after = snapshot(client)
            others = self.runs.others()
            self.found = leftovers(self.before, after, made, alone=not others)
            if self.found:
                failed = remove(client, made)
                for pid in after.children:
                    if pid not in self.before.children:
                        with contextlib.suppress(OSError):
                            os.kill(pid, 15)
                self.found += [f"could not remove {f}" for f in failed]
        if self.found:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            lines = [
                f"this run left {len(self.found)} thing(s) behind (removed now where possible):"
            ]
            lines += [f"  {line}" for line in self.found]
            if reporter is not None:
                reporter.section("leftovers", sep="=", red=True, bold=True)
                for line in lines:
                    reporter.write_line(line)
            else:
                print("\n".join(lines))

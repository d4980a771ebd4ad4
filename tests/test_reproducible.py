"""A rebuild with nothing changed is a no-op (issue 12 item 1).

The ``created`` label comes from ``SOURCE_DATE_EPOCH`` or the last commit's time, never the
clock (reproducible-builds.org's SOURCE_DATE_EPOCH specification), and staged contexts carry
no staging time, so a second build of the same plan reuses every cached step: same image IDs,
nothing new to push, no dangling image. The engine tests build into their own namespace and
remove what they made.
"""

from __future__ import annotations

import contextlib
import re
import stat
import time
from pathlib import Path

import docker.errors
import docker.utils
import pytest

from kilosort_docker import commands, git
from kilosort_docker.errors import UserError
from kilosort_docker.images import build, plan, record, tags
from kilosort_docker.images.options import BuildOptions
from kilosort_docker.images.pins import load_pins
from kilosort_docker.images.profiles import get_profile
from kilosort_docker.paths import ROOT
from tests import support
from tests.support import leftovers

NAMESPACE = f"{support.NAMESPACE}-reproducible"


_removes_what_it_builds = leftovers.removing_after_module(NAMESPACE)


CREATED = "org.opencontainers.image.created"
#: 2023-11-14T22:13:20Z
FIXED_EPOCH = 1_700_000_000


def _repo_at(path: Path, when: int) -> Path:
    """A git repository with one commit made at ``when`` (seconds since 1970)."""
    path.mkdir()
    stamp = f"@{when} +0200"
    env = {"GIT_COMMITTER_DATE": stamp, "GIT_AUTHOR_DATE": stamp}
    support.git(path, "init", "-q", "-b", "main")
    (path / "VERSION").write_text("3.0.2-1\n")
    support.git(path, "add", "VERSION")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        support.git(path, "commit", "-q", "-m", "one")
    return path


# --- the created label ---------------------------------------------------------------------


def test_created_is_the_last_commit_time_in_rfc3339(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    repo = _repo_at(tmp_path / "repo", 1_650_000_000)
    assert git.commit_time(repo) == 1_650_000_000
    assert tags.created_timestamp(repo) == "2022-04-15T05:20:00Z"
    (repo / "VERSION").write_text("changed, not committed\n")  # a dirty tree: still HEAD's time
    time.sleep(1.1)
    assert tags.created_timestamp(repo) == "2022-04-15T05:20:00Z"


def test_source_date_epoch_wins_over_the_commit(tmp_path, monkeypatch):
    repo = _repo_at(tmp_path / "repo", 1_650_000_000)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(FIXED_EPOCH))
    assert tags.source_date_epoch(repo) == FIXED_EPOCH
    assert tags.created_timestamp(repo) == "2023-11-14T22:13:20Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "")  # empty is unset, as in `SOURCE_DATE_EPOCH= cmd`
    assert tags.source_date_epoch(repo) == 1_650_000_000


@pytest.mark.parametrize("value", ["yesterday", "1.5", "-1", "１２"])
def test_malformed_source_date_epoch_is_refused(monkeypatch, value):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    with pytest.raises(UserError, match="SOURCE_DATE_EPOCH=.* is not a time in seconds"):
        tags.source_date_epoch()


def test_outside_a_git_checkout_the_build_asks_for_source_date_epoch(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert git.commit_time(tmp_path) is None
    with pytest.raises(UserError, match=r"not a git checkout.*set SOURCE_DATE_EPOCH"):
        tags.source_date_epoch(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert tags.created_timestamp(tmp_path) == "1970-01-01T00:00:00Z"


def test_planning_twice_gives_the_same_labels_dated_by_this_repository(snapshot):
    first = plan.make_plan(get_profile(), load_pins())
    time.sleep(1.1)
    second = plan.make_plan(get_profile(), load_pins())
    assert [dict(s.labels) for s in first.steps] == [dict(s.labels) for s in second.steps]
    committed = int(git.output("-C", str(snapshot), "log", "-1", "--format=%ct"))
    assert git.output("-C", str(snapshot), "rev-parse", "HEAD") in first.steps[0].labels.values()
    assert first.source_date_epoch == committed
    assert {s.labels[CREATED] for s in first.steps} == {tags.rfc3339(committed)}


def test_a_given_created_leaves_file_times_alone():
    the_plan = plan.make_plan(get_profile(), load_pins(), revision="r", created="c")
    assert the_plan.source_date_epoch is None


# --- staged contexts ---------------------------------------------------------------------


def test_normalize_times_sets_every_time_and_mode(tmp_path):
    (tmp_path / "sub").mkdir(mode=0o700)
    (tmp_path / "sub" / "tool").write_text("#!/bin/sh\n")
    (tmp_path / "sub" / "tool").chmod(0o700)
    (tmp_path / "data").write_text("x")
    (tmp_path / "data").chmod(0o600)
    (tmp_path / "link").symlink_to("data")
    build.normalize_times(tmp_path, FIXED_EPOCH)
    for path in [tmp_path, *tmp_path.rglob("*")]:
        assert path.lstat().st_mtime == FIXED_EPOCH, path
    modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in tmp_path.rglob("*")}
    assert modes["sub"] == 0o755 and modes["tool"] == 0o755 and modes["data"] == 0o644


def _context_tar(step, the_plan) -> bytes:
    """The bytes the Docker SDK sends as ``step``'s build context."""
    with build.staged_context(step, the_plan) as (context, _):
        return docker.utils.tar(str(context)).read()


def test_a_staged_context_is_the_same_bytes_whenever_it_is_staged(
    snapshot, tmp_path, fixture_repos, git_cache
):
    """kilosort4 (with a wheelhouse) and the Kilosort3 chain (fixture sources, stand-in mex
    files): staged twice, a second apart, the contexts are byte-identical tar streams."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "demo-1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
    ks4 = commands.make_plan(images=["kilosort4"], wheelhouse=str(wheels), namespace=NAMESPACE)
    chain = support.standin_chain_plan(
        "example.invalid/matlab:r2022b",
        "http://127.0.0.1:9",
        kilosort=fixture_repos["kilosort"],
        npy_matlab=fixture_repos["npy_matlab"],
        mex_root=tmp_path / "mex",
        namespace=NAMESPACE,
    )
    steps = [(ks4, s) for s in ks4.steps] + [(chain, s) for s in chain.steps]
    first = [_context_tar(step, p) for p, step in steps]
    time.sleep(1.1)
    (wheels / "demo-1.0-py3-none-any.whl").touch()  # a later copy of the same file
    second = [_context_tar(step, p) for p, step in steps]
    for (_, step), a, b in zip(steps, first, second, strict=True):
        assert a == b, f"the {step.spec.name} context changed between two stagings"


# --- the build record -------------------------------------------------------------------


def _recorded(image_id: str, digests=None) -> record.BuildRecord:
    image = record.RecordedImage(
        name="kilosort4",
        refs=("ns/kilosort4:4.1.7-b1",),
        image_id=image_id,
        labels={},
        options=BuildOptions(),
        digests=digests or {},
    )
    return record.BuildRecord(profile="r2022b", release="3.0.2-1", images=(image,))


def test_a_noop_rebuild_keeps_the_push_digests_in_the_record():
    pushed = {"127.0.0.1:5000/ns/kilosort4:4.1.7-b1": "sha256:" + "a" * 64}
    old = _recorded("sha256:" + "1" * 64, pushed)
    assert old.merged(_recorded("sha256:" + "1" * 64)).images[0].digests == pushed
    assert old.merged(_recorded("sha256:" + "2" * 64)).images[0].digests == {}


# --- on the engine: build twice ------------------------------------------------------------


@pytest.fixture
def snapshot(tmp_path, monkeypatch) -> Path:
    """A clone of this repository's last commit that dates and names the images (``created``,
    ``revision``): others committing while a test builds twice must not change its labels."""
    checkout = tmp_path / "checkout"
    git.output("clone", "--quiet", "--shared", str(ROOT), str(checkout))
    monkeypatch.setattr(tags, "ROOT", checkout)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return checkout


_STEP_ID = re.compile(r"^ ---> ([0-9a-f]{12,64})$")


def _build(client, the_plan) -> tuple[dict[str, str], list[str], set[str]]:
    """Build ``the_plan``; returns ``{image: ID}``, the build log and the short IDs of every
    step's image the log names."""
    events = build.BuildEvents()
    built = build.execute(the_plan, client, events=events)
    ids = {m[1][:12] for line in events.log_lines if (m := _STEP_ID.match(line))}
    ids |= {b.image_id.removeprefix("sha256:")[:12] for b in built}
    return {b.step.spec.name: b.image_id for b in built}, events.log_lines, ids


def _dangling(client) -> set[str]:
    listed = client.api.images(filters={"dangling": True})  # the raw list: no look-up per image
    return {i["Id"].removeprefix("sha256:")[:12] for i in listed}


@contextlib.contextmanager
def _own_images(client):
    """Yields a set to add the short IDs the test's builds name; on exit removes the test's
    tags and then every image among those that did not exist before and is left untagged,
    children first (the engine refuses an image another one still builds on)."""
    before = {i["Id"].removeprefix("sha256:")[:12] for i in client.api.images(all=True)}
    made: set[str] = set()
    try:
        yield made
    finally:
        for image in client.api.images(all=True):
            for ref in image.get("RepoTags") or []:
                if ref.startswith(f"{NAMESPACE}/"):
                    with contextlib.suppress(docker.errors.APIError):
                        client.api.remove_image(ref, noprune=True)
        for _ in range(3):  # a parent goes once its children are gone
            for short in sorted(made - before):
                with contextlib.suppress(docker.errors.APIError):
                    if not client.api.inspect_image(short).get("RepoTags"):
                        client.api.remove_image(short, noprune=True)


def _assert_noop_rebuild(client, make, made: set[str]) -> dict[str, str]:
    """Build ``make()`` twice; the second build must run nothing new. Returns the image IDs."""
    first_ids, _, first_steps = _build(client, make())
    made |= first_steps
    dangling_before = _dangling(client)
    time.sleep(1.1)  # a clock in a label or a file time would now differ
    second_ids, log, second_steps = _build(client, make())
    made |= second_steps
    assert second_ids == first_ids, "a rebuild with nothing changed gave new image IDs"
    ran = [line for line in log if line.startswith(" ---> Running in")]
    assert not ran, f"the rebuild ran steps instead of using the cache: {ran[:3]}"
    assert second_steps <= first_steps, "the rebuild made images the first build did not"
    new_dangling = (_dangling(client) - dangling_before) & (first_steps | second_steps)
    assert not new_dangling, f"the rebuild left dangling images {sorted(new_dangling)}"
    return first_ids


@pytest.mark.docker
def test_kilosort4_rebuild_is_a_noop_dated_by_the_commit(
    docker_client, python_base, wheelhouse, snapshot, monkeypatch
):

    def make():
        return commands.make_plan(
            images=["kilosort4"],
            python_base=python_base,
            wheelhouse=str(wheelhouse) if wheelhouse else None,
            ca_bundle=support.host_ca_bundle(),
            namespace=NAMESPACE,
        )

    committed = int(git.output("-C", str(snapshot), "log", "-1", "--format=%ct"))
    with _own_images(docker_client) as made:
        ids = _assert_noop_rebuild(docker_client, make, made)
        labels = docker_client.images.get(ids["kilosort4"]).labels
        assert labels[CREATED] == tags.rfc3339(committed)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels[CREATED])

        monkeypatch.setenv("SOURCE_DATE_EPOCH", str(FIXED_EPOCH))
        dated, _, steps = _build(docker_client, make())
        made |= steps
        assert docker_client.images.get(dated["kilosort4"]).labels[CREATED] == (
            "2023-11-14T22:13:20Z"
        )
        assert dated["kilosort4"] != ids["kilosort4"]


@pytest.mark.docker
def test_kilosort3_chain_rebuild_is_a_noop(
    docker_client, matlab_standin, mpm_server, fixture_repos, git_cache, tmp_path, snapshot
):
    """matlab-toolboxes, kilosort3-code and kilosort3 (prebuilt stand-in mex files, so the
    mex-build stage is a multi-stage build whose stage image must not pile up either)."""

    def make():
        return support.standin_chain_plan(
            matlab_standin,
            mpm_server,
            kilosort=fixture_repos["kilosort"],
            npy_matlab=fixture_repos["npy_matlab"],
            mex_root=tmp_path / "mex",
            namespace=NAMESPACE,
        )

    with _own_images(docker_client) as made:
        ids = _assert_noop_rebuild(docker_client, make, made)
        assert set(ids) == {"matlab-toolboxes", "kilosort3-code", "kilosort3"}
        committed = tags.rfc3339(git.commit_time(snapshot))
        for image_id in ids.values():
            assert docker_client.images.get(image_id).labels[CREATED] == committed

"""Push to a real registry on 127.0.0.1, pull back by digest, compare."""

from __future__ import annotations

import json
import urllib.request

import pytest

from kilosort_docker import commands
from kilosort_docker.errors import UserError
from kilosort_docker.images import push
from tests import support

pytestmark = [pytest.mark.docker, pytest.mark.registry]


def registry_digest(registry: str, repository: str, tag: str) -> str:
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Docker-Content-Digest"]


def test_push_pull_by_digest_agree(docker_client, kilosort3_stack):
    plan = kilosort3_stack["plan"]
    with support.registry() as registry:
        pushed = push.push(plan, docker_client, registry=registry, namespace="lab")
        assert len(pushed) == sum(len(step.tags) for step in plan.steps)
        final = plan.step("kilosort3")
        local_id = kilosort3_stack["built"]["kilosort3"].image_id
        for item in pushed:
            if not item.ref.startswith(f"{registry}/lab/kilosort3:"):
                continue
            tag = item.ref.rsplit(":", 1)[1]
            assert tag in final.tags
            assert item.digest == registry_digest(registry, "lab/kilosort3", tag)
        digest = next(p.digest for p in pushed if p.ref.endswith(f"kilosort3:{final.tags[0]}"))
        by_digest = f"{registry}/lab/kilosort3@{digest}"
        docker_client.api.remove_image(f"{registry}/lab/kilosort3:{final.tags[0]}")
        pulled = docker_client.images.pull(by_digest)
        assert pulled.id == local_id
        assert by_digest in pulled.attrs["RepoDigests"]
        catalog = json.load(urllib.request.urlopen(f"http://{registry}/v2/_catalog"))
        assert set(catalog["repositories"]) == {
            "lab/matlab-toolboxes",
            "lab/kilosort3-code",
            "lab/kilosort3",
        }


def test_refused_push_is_an_error_and_leaves_no_remote_tag(docker_client, kilosort3_stack):
    plan = kilosort3_stack["plan"]
    with support.registry(readonly=True) as registry, pytest.raises(UserError, match="refused"):
        push.push(plan, docker_client, registry=registry, namespace="lab")
    leftovers = [t for i in docker_client.images.list() for t in i.tags if t.startswith(registry)]
    assert leftovers == []


def test_credentials_come_from_env_and_never_show(monkeypatch, docker_client, kilosort3_stack):
    monkeypatch.setenv(push.USER_ENV, "alice")
    monkeypatch.setenv(push.PASSWORD_ENV, "s3cret-token-123")
    plan = kilosort3_stack["plan"]
    with support.registry(readonly=True) as registry, pytest.raises(UserError) as info:
        push.push(plan, docker_client, registry=registry, namespace="lab")
    assert "s3cret-token-123" not in str(info.value)


def test_half_set_credentials_are_refused(monkeypatch):
    monkeypatch.setenv(push.USER_ENV, "alice")
    monkeypatch.delenv(push.PASSWORD_ENV, raising=False)
    with pytest.raises(UserError, match="set both"):
        push.credentials()


@pytest.mark.parametrize(
    ("registry", "namespace", "match"),
    [
        ("127.0.0.1:5000", "MyLab", "--namespace 'MyLab'.*must be lowercase"),
        ("127.0.0.1:5000/", "lab", "--registry '127.0.0.1:5000/' holds a '/'"),
        ("127.0.0.1:5000", "lab team", "whitespace"),
    ],
)
def test_bad_registry_or_namespace_is_refused_before_any_tag(
    docker_client, registry, namespace, match
):
    # Issue 11: the engine used to answer `APIError 400 ... repository name must be lowercase`
    # as a traceback; now the push is refused before it tags or pushes anything.
    plan = commands.make_plan(images=["kilosort4"], namespace=support.NAMESPACE)

    def remote_tags() -> list[str]:  # only these: other test runs may tag meanwhile
        return sorted(
            t
            for image in docker_client.api.images()  # no per-image call to race a removal
            for t in image.get("RepoTags") or []
            if t.startswith(registry.rstrip("/"))
        )

    before = remote_tags()
    with pytest.raises(UserError, match=match) as info:
        push.push(plan, docker_client, registry=registry, namespace=namespace)
    assert "\n" not in str(info.value)
    assert remote_tags() == before

"""Push built images to Docker Hub or any registry, scanning the stream for in-band errors.

docker-py reports push failures inside an HTTP 200 stream, so a failed push looks like success
unless every event is read. Credentials come from ``KILOSORT_DOCKER_REGISTRY_USER`` and
``KILOSORT_DOCKER_REGISTRY_PASSWORD`` or from Docker's own config (``docker login``); they are
never printed or logged.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import docker
import docker.errors

from kilosort_docker import engine
from kilosort_docker.errors import UserError
from kilosort_docker.images import references, tags
from kilosort_docker.images.plan import BuildPlan
from kilosort_docker.secrets import redact

log = logging.getLogger(__name__)

USER_ENV = "KILOSORT_DOCKER_REGISTRY_USER"
PASSWORD_ENV = "KILOSORT_DOCKER_REGISTRY_PASSWORD"


@dataclass(frozen=True)
class Pushed:
    """One pushed reference and the registry's manifest digest for it (``sha256:...``)."""

    ref: str
    digest: str


def credentials() -> dict[str, str] | None:
    """Auth config from the environment, or None to use Docker's config (``docker login``).

    Raises UserError if only one of the two variables is set.
    """
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if bool(user) != bool(password):
        raise UserError(f"set both {USER_ENV} and {PASSWORD_ENV}, or neither")
    return {"username": user, "password": password} if user else None


def _scrub(text: str, secret: dict[str, str] | None) -> str:
    return redact(text, [secret.get("password", "")] if secret else [])


def targets(
    plan: BuildPlan, *, registry: str | None, namespace: str | None
) -> list[tuple[str, str]]:
    """``(local ref, remote ref)`` pairs for every image and tag of ``plan``.

    Raises UserError, before any work, for a registry that is not ``host[:port]``, a namespace
    or a remote reference outside Docker's reference grammar.
    """
    references.check_registry(registry)
    references.check_namespace(namespace)
    pairs = []
    ns = namespace or plan.options.namespace or plan.pins.namespace
    for step in plan.steps:
        remote_repo = tags.repository(step.spec, ns, registry)
        for tag, local in zip(step.tags, step.refs, strict=True):
            remote = references.check_reference(
                f"{remote_repo}:{tag}",
                what="the remote reference",
                fix="fix --registry or --namespace",
            )
            pairs.append((local, remote))
    return pairs


#: How the engine words a registry it could not talk to (dial errors, DNS, TLS to plain http):
#: not a refusal by the registry.
_UNREACHABLE = re.compile(
    r"connection refused|no such host|i/o timeout|network is unreachable|"
    r"server gave HTTP response to HTTPS client|dial tcp",
    re.IGNORECASE,
)


def push_ref(
    client: docker.DockerClient,
    ref: str,
    *,
    auth: dict[str, str] | None,
    on_event: Callable[[dict], None] = lambda event: None,
) -> str:
    """Push one reference; returns its manifest digest. Raises UserError on any error event."""
    repo, _, tag = ref.rpartition(":")
    digest = None
    try:
        stream = client.api.push(repo, tag=tag, stream=True, decode=True, auth_config=auth)
        for event in stream:
            on_event(event)
            if "error" in event:
                detail = event.get("errorDetail", {}).get("message") or event["error"]
                detail = _scrub(" ".join(detail.split()), auth)[:300]
                if _UNREACHABLE.search(detail):
                    raise UserError(
                        f"the registry for {ref} could not be reached: {detail} (check "
                        "--registry's host and port, that the registry runs, and for plain "
                        "http the engine's insecure-registries)"
                    )
                raise UserError(
                    f"the registry refused {ref}: {detail} "
                    "(check the registry address, that it accepts pushes, and your login)"
                )
            aux = event.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
    except docker.errors.DockerException as exc:
        raise UserError(
            f"pushing {ref} failed: {_scrub(str(exc).splitlines()[0], auth)[:200]} "
            "(check the registry address and your login)"
        ) from None
    if not digest:
        raise UserError(f"the registry returned no digest for {ref}: check the registry")
    return digest


def check_built(client: docker.DockerClient, pairs: list[tuple[str, str]]) -> None:
    """Raise UserError (one line, the first three named) unless every local reference of
    ``pairs`` (from :func:`targets`) is on the engine: what a push, or its dry run, needs."""
    missing = [local for local, _ in pairs if not engine.image_exists(client, local)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(
            f"not built here: {', '.join(missing[:3])}{more}: run `invoke build` (with the "
            "same --profile and --image), or push only what was built with --image"
        )


def push(
    plan: BuildPlan,
    client: docker.DockerClient,
    *,
    registry: str | None = None,
    namespace: str | None = None,
    on_event: Callable[[str, dict], None] = lambda ref, event: None,
) -> list[Pushed]:
    """Push every image of ``plan`` (built beforehand) to ``registry`` (Docker Hub if None).

    Tags each local image with the remote reference first; on failure the remote tags added
    here are removed again. Raises UserError if an image is missing or the registry refuses.
    """
    auth = credentials()
    pairs = targets(plan, registry=registry, namespace=namespace)
    check_built(client, pairs)
    added: list[str] = []
    results: list[Pushed] = []
    try:
        for local, remote in pairs:
            if remote != local:
                repo, _, tag = remote.rpartition(":")
                existed = engine.image_exists(client, remote)
                try:
                    client.api.tag(local, repo, tag, force=True)
                except docker.errors.DockerException as exc:
                    raise references.daemon_error(
                        exc,
                        doing=f"tagging {local} as {remote}",
                        fix="check --registry and --namespace, and that the engine is healthy",
                    ) from None
                if not existed:
                    added.append(remote)
            log.info("pushing %s", remote)
            digest = push_ref(
                client, remote, auth=auth, on_event=lambda e, r=remote: on_event(r, e)
            )
            results.append(Pushed(remote, digest))
    except UserError:
        for remote in added:
            try:
                client.api.remove_image(remote, noprune=True)
            except docker.errors.DockerException:
                log.warning("could not remove tag %s", remote)
        raise
    return results

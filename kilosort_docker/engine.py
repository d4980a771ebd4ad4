"""Connecting to the Docker engine, with errors a user can act on."""

from __future__ import annotations

import logging

import docker
import docker.errors

from kilosort_docker.errors import UserError

log = logging.getLogger(__name__)


def connect(*, timeout: int = 600) -> docker.DockerClient:
    """A client for the engine at ``DOCKER_HOST`` (or the default socket), checked with a ping.

    Raises UserError naming the fix if the daemon is not running or not reachable.
    """
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"the Docker engine is not reachable ({reason[:160]}): start it "
            "(`sudo systemctl start docker`, or `dockerd &`) or set DOCKER_HOST"
        ) from None
    return client


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    """True if the engine has image ``ref``; raises UserError (one line) if the engine refuses
    the lookup (an invalid reference, a daemon error) instead of answering."""
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.DockerException as exc:
        reason = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
        reason = " ".join(str(reason).split())[:200]
        raise UserError(
            f"the Docker engine refused to look up {ref} ({reason}): fix the reference "
            "(lowercase [registry/]name[:tag]) or the engine"
        ) from None
    return True


def ensure_base(client: docker.DockerClient, ref: str, *, hint: str) -> None:
    """Make sure base image ``ref`` is present, pulling it if needed.

    ``hint`` names the flag that overrides this base, or says how to make it again. Raises
    UserError if it can be neither found nor pulled.
    """
    if image_exists(client, ref):
        return
    log.info("pulling base image %s", ref)
    repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "latest")
    try:
        for event in client.api.pull(repo, tag=tag or "latest", stream=True, decode=True):
            if "error" in event:
                raise docker.errors.APIError(event["error"])
    except docker.errors.DockerException as exc:
        reason = getattr(exc, "explanation", None) or str(exc)
        reason = " ".join(reason.replace('"', "").split())[:300]
        raise UserError(
            f"base image {ref} is not present and cannot be pulled ({reason}): "
            f"`docker pull` or load it, or {hint}"
        ) from None
    if not image_exists(client, ref):
        raise UserError(f"base image {ref} is still missing after a pull: {hint}")

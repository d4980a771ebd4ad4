"""Image references, registries and namespaces, checked with Docker's reference grammar before
any work (dry runs included), so a bad name is one line instead of a daemon error after a build.

The grammar is distribution/reference's ``reference.go`` (the parser Docker's engine uses)::

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [domain '/'] remote-name          (at most 255 characters)
    domain           := host [':' port-number]
    host             := domain-name | IPv4address | '[' IPv6address ']'
    domain-name      := domain-component ['.' domain-component]*
    domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
    remote-name      := path-component ['/' path-component]*
    path-component   := alpha-numeric [separator alpha-numeric]*
    alpha-numeric    := /[a-z0-9]+/
    separator        := /[_.]|__|[-]+/
    tag              := /[\\w][\\w.-]{0,127}/
    digest           := algorithm ":" encoded

The docker SDK carries most of it: :func:`docker.utils.parse_repository_tag` splits off the
tag and digest, :func:`docker.auth.split_repo_name` splits off the registry the way the engine
does (a first component with ``.`` or ``:``, or ``localhost``),
:func:`docker.auth.resolve_repository_name` refuses a scheme, and
:func:`docker.utils.build.match_tag` matches remote-name and tag. Only what the SDK lacks is
written here, after reference.go: the domain (which may hold upper case and IPv6, where the
SDK's pattern does not), the 255-character limit on a name, and the digest.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass

import docker.auth
import docker.errors
from docker.utils import parse_repository_tag
from docker.utils.build import match_tag

from kilosort_docker.errors import UserError

log = logging.getLogger(__name__)

#: distribution/reference: NameTotalLengthMax.
NAME_MAX = 255
#: distribution/reference's tag: a word character, then up to 127 of ``\w.-``.
TAG_MAX = 128

# distribution/reference reference.go: domainNameComponent (with optional port) ...
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?P<host>{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[(?P<ipv6>[0-9a-fA-F:.]+)\])"
    r"(?::(?P<port>[0-9]+))?$"
)
# ... and the digest (algorithm-component and encoded, github.com/opencontainers/go-digest).
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG_RE = re.compile(r"^\w[\w.-]*$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: ``domain`` (None for Docker Hub), ``path`` (the remote name),
    ``tag`` and ``digest`` (None where absent)."""

    domain: str | None
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``[domain/]path``, the repository."""
        return f"{self.domain}/{self.path}" if self.domain else self.path


def _domain_problem(domain: str) -> str | None:
    match = _DOMAIN_RE.match(domain)
    if not match:
        return (
            f"registry {domain!r} is not host[:port] (letters, digits, '-' and '.' and an "
            "optional numeric port)"
        )
    if match["ipv6"]:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return f"registry {domain!r} holds no valid IPv6 address"
    if match["port"] is not None and not 0 < int(match["port"]) < 65536:
        return f"registry port {match['port']} is not 1-65535"
    return None


def _path_problem(path: str) -> str | None:
    """Why ``path`` (a remote-name, maybe a namespace) breaks the grammar, or None."""
    if not path:
        return "the repository name is empty"
    if path.startswith("/") or path.endswith("/") or "//" in path:
        return "the repository name has an empty path component (a stray '/')"
    if path != path.lower():
        return "repository name must be lowercase"
    if match_tag(path):  # docker-py's remote-name grammar
        return None
    bad = next(c for c in path.split("/") if not _PATH_COMPONENT_RE.match(c))
    return (
        f"path component {bad!r} is not lowercase letters and digits joined by '.', '_', "
        "'__' or '-'"
    )


def _tag_problem(tag: str) -> str | None:
    if len(tag) > TAG_MAX:
        return f"the tag is {len(tag)} characters long; Docker allows {TAG_MAX}"
    if not _TAG_RE.match(tag) or not tag.isascii():
        return (
            f"tag {tag!r} is not letters, digits, '_', '.' and '-' starting with a letter, digit "
            "or '_'"
        )
    return None


def _split(ref: str) -> tuple[Reference | None, str | None]:
    """``(reference, None)`` or ``(None, why it is not one)``."""
    if not isinstance(ref, str) or not ref:
        return None, "it is empty"
    if any(c.isspace() for c in ref):
        return None, "it contains whitespace"
    try:
        docker.auth.resolve_repository_name(ref.split("@", 1)[0])
    except docker.errors.InvalidRepository:
        if "://" in ref:
            return None, "a reference has no scheme (drop http:// or https://)"
    digest = None
    if "@" in ref:
        ref, digest = parse_repository_tag(ref)  # docker-py splits at the last '@'
        if not _DIGEST_RE.match(digest) or (
            digest.startswith("sha256:") and not _SHA256_RE.match(digest)
        ):
            return None, f"digest {digest!r} is not algorithm:hex (sha256: and 64 hex digits)"
    name, tag = parse_repository_tag(ref)
    index, remote = docker.auth.split_repo_name(name)
    domain = None if index == docker.auth.INDEX_NAME and remote == name else index
    if domain is not None and (why := _domain_problem(domain)):
        return None, why
    if why := _path_problem(remote):
        return None, why
    if tag is not None and (why := _tag_problem(tag)):
        return None, why
    if len(name) > NAME_MAX:
        return None, f"the repository name is {len(name)} characters long; Docker allows {NAME_MAX}"
    return Reference(domain, remote, tag, digest), None


def parse(ref: str, *, what: str = "image reference", fix: str = "fix the reference") -> Reference:
    """``ref`` (``[registry/]path[:tag][@digest]``) parsed by Docker's grammar.

    Raises UserError ``"<what> '<ref>' is not a valid image reference (<why>): <fix>"``.
    """
    parsed, why = _split(ref)
    if parsed is None:
        raise UserError(f"{what} {ref!r} is not a valid image reference ({why}): {fix}")
    return parsed


def is_reference(ref: object) -> bool:
    """True if Docker's reference grammar accepts ``ref``."""
    return isinstance(ref, str) and _split(ref)[0] is not None


def check_reference(ref: str, *, what: str = "image reference", fix: str = "") -> str:
    """``ref`` unchanged if Docker's grammar accepts it; else UserError (see :func:`parse`).

    ``fix`` names the flag or setting to correct; the default says how a reference looks.
    """
    parse(ref, what=what, fix=fix or "give [registry/]name[:tag], lowercase, e.g. lab/img:1.0")
    return ref


def check_registry(registry: str | None, *, flag: str = "--registry") -> str | None:
    """A registry as ``host[:port]`` (``127.0.0.1:5000``, ``ghcr.io``), unchanged, or None.

    Raises UserError for a scheme, a path or a trailing ``/``, whitespace, or a host or port
    outside the grammar (distribution/reference's domain).
    """
    if registry is None:
        return None
    fix = f"give {flag} as host[:port], e.g. 127.0.0.1:5000"
    if not isinstance(registry, str) or not registry:
        raise UserError(f"{flag} is empty: {fix}")
    if "://" in registry:
        raise UserError(f"{flag} {registry!r} has a scheme: drop it and {fix}")
    if "/" in registry:
        raise UserError(f"{flag} {registry!r} holds a '/': {fix}, and put a path in --namespace")
    if why := _domain_problem(registry):
        raise UserError(f"{flag} {registry!r} is not a registry ({why}): {fix}")
    return registry


def check_namespace(namespace: str | None, *, flag: str = "--namespace") -> str | None:
    """A repository namespace (``kilosortdocker``, ``lab/team``, or with a registry in front,
    ``127.0.0.1:5000/lab``), unchanged, or None.

    Raises UserError naming what breaks Docker's grammar (upper case, a stray ``/``, a space).
    """
    if namespace is None:
        return None
    fix = f"give {flag} in lowercase letters and digits, e.g. {_suggest(namespace)}"
    if not isinstance(namespace, str) or not namespace:
        raise UserError(f"{flag} is empty: {fix}")
    parsed, why = _split(f"{namespace}/image")
    if parsed is None or parsed.tag is not None or parsed.digest is not None:
        why = why or "a namespace holds no tag or digest"
        raise UserError(f"{flag} {namespace!r} is not a repository namespace ({why}): {fix}")
    return namespace


def _suggest(text: object) -> str:
    """A lower-case, grammar-conforming stand-in for ``text`` (for the fix in a message)."""
    words = re.findall(r"[a-z0-9]+", str(text).lower())
    return "-".join(words) or "mylab"


def check_host_compiler(compiler: str | None, *, flag: str = "--host-compiler") -> str | None:
    """See :func:`kilosort_docker.mex.gencode.check_host_compiler_name` (re-exported here so
    the options check every free-text name in one module)."""
    from kilosort_docker.mex.gencode import check_host_compiler_name

    return None if compiler is None else check_host_compiler_name(compiler, flag=flag)


def daemon_error(exc: docker.errors.DockerException, *, doing: str, fix: str) -> UserError:
    """A daemon error while ``doing`` (``looking up kilosortdocker/kilosort3:...``) as one
    line naming ``fix``."""
    reason = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    reason = " ".join(str(reason).split())[:200]
    return UserError(f"the Docker engine refused {doing} ({reason}): {fix}")

"""Every build option, declared once: its type, default and help text.

:class:`BuildOptions` is the one place a build flag is written. ``tasks.py`` derives each
task's parameters and ``--help`` from the field metadata (:func:`flag_help`), the plan reads the
fields, and the build record stores them. A field marked ``site`` may also come from invoke's
configuration (``kilosort_docker.<field>`` in ``invoke.yaml`` or ``INVOKE_KILOSORT_DOCKER_<FIELD>``
in the environment), so a site writes its mirrors once instead of on every command.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kilosort_docker.errors import UserError
from kilosort_docker.images import references
from kilosort_docker.images.profiles import DEFAULT_PROFILE
from kilosort_docker.paths import MEX_BINARIES_DIR

#: The invoke configuration section that holds site settings.
CONFIG_SECTION = "kilosort_docker"


def _option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    site: bool = False,
    repeatable: bool = False,
    path: bool = False,
    cli: bool = True,
    task_help: Mapping[str, str] | None = None,
) -> Any:
    """A dataclass field whose metadata carries its command-line help.

    ``flag`` is the task parameter's name where it differs from the field's (``python_base`` for
    ``python_base_image``); ``site`` lets invoke's configuration set it; ``repeatable`` makes it
    an invoke iterable flag; ``path`` makes it a :class:`~pathlib.Path`; ``cli=False`` keeps it
    off the command line (tests, internal use). ``task_help`` words the option for the tasks
    where ``help`` would be wrong (``{"push": "push only this image ..."}``, keyed by the task
    function's name).
    """
    metadata = {
        "help": help,
        "task_help": dict(task_help or {}),
        "flag": flag,
        "site": site,
        "repeatable": repeatable,
        "path": path,
        "cli": cli,
    }
    if isinstance(default, tuple | list):
        return field(default=tuple(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class BuildOptions:
    """What a build may change beyond the pins; the defaults build the pinned stack.

    Paths are :class:`~pathlib.Path` once :meth:`from_flags` has checked them. Raises nothing
    itself; :meth:`from_flags` raises UserError for a path that is not there.
    """

    profile: str = _option(
        DEFAULT_PROFILE, "release profile (default r2022b; `invoke profiles` lists them)"
    )
    images: tuple[str, ...] = _option(
        (),
        "build only this image and its parents (repeatable; `invoke stack` lists them)",
        flag="image",
        repeatable=True,
        task_help={
            "push": "push only this image and its parents (repeatable; default: every image "
            "built for the profile)",
            "check_images": "check only this image and its parents (repeatable; default: every "
            "image built for the profile)",
        },
    )
    no_cache: bool = _option(
        False,
        "build without Docker's layer cache",
        task_help={"build_mex": "build the mex-build stage without Docker's layer cache"},
    )
    cuda: str | None = _option(
        None, "CUDA toolkit version; must match the profile unless --allow-cuda-mismatch"
    )
    allow_cuda_mismatch: bool = _option(
        False, "accept a CUDA version the MATLAB release does not expect (experts)"
    )
    base_image: str | None = _option(
        None,
        "MATLAB base image instead of the profile's (a mirror or air-gapped registry)",
        site=True,
    )
    mpm_url: str | None = _option(
        None, "where to download MPM from instead of MathWorks (a mirror)", site=True
    )
    python_base_image: str | None = _option(
        None,
        "base image for kilosort4 instead of the pinned Python image",
        flag="python_base",
        site=True,
    )
    kilosort_repository: str | None = _option(
        None,
        "fetch Kilosort from this URL or local path instead of GitHub",
        flag="kilosort_repo",
        site=True,
    )
    kilosort_commit: str | None = _option(
        None,
        "build this Kilosort commit instead of the pinned one (testing a fix)",
        task_help={
            "build_mex": "compile this Kilosort commit's mex files instead of the pinned one's"
        },
    )
    npy_matlab_repository: str | None = _option(
        None,
        "fetch npy-matlab from this URL or local path instead of GitHub",
        flag="npy_matlab_repo",
        site=True,
    )
    npy_matlab_commit: str | None = _option(
        None, "build this npy-matlab commit instead of the pinned one"
    )
    wheelhouse: Path | None = _option(
        None,
        "folder of wheels pip may install from in the kilosort4 image",
        site=True,
        path=True,
    )
    ca_bundle: Path | None = _option(
        None,
        "PEM file of CA certificates pip should trust while building (TLS proxy)",
        site=True,
        path=True,
    )
    mex_binaries: Path = _option(
        MEX_BINARIES_DIR,
        "folder of committed mex binaries (default mex-binaries/)",
        path=True,
        task_help={
            "build_mex": "keep the binaries in <folder>/<profile>/<commit>/ (default mex-binaries/)"
        },
    )
    cuda_toolkit: Path | None = _option(
        None,
        "compile with this installed CUDA toolkit folder instead of NVIDIA's installer",
        site=True,
        path=True,
    )
    host_compiler: str | None = _option(
        None, "host compiler for nvcc and the link instead of the profile's"
    )
    gencode: tuple[str, ...] = _option(
        (),
        "add an nvcc target, e.g. compute_80,compute_80 (repeatable; checked against CUDA)",
        repeatable=True,
    )
    ensure_determ: bool = _option(
        False, "compile mexMPnu8 with ENSURE_DETERM (deterministic, about 2x slower)"
    )
    namespace: str | None = _option(
        None,
        "repository namespace (default from kilosort-docker.toml)",
        site=True,
        task_help={
            "push": "repository namespace on the registry (default: the one they were built in)",
            "check_images": "repository namespace the images were built in (default from "
            "kilosort-docker.toml)",
            "acceptance": "repository namespace of the default image (default from "
            "kilosort-docker.toml)",
        },
    )
    mex_spec: Path | None = _option(
        None,
        "a mex spec JSON instead of Kilosort's own list (tests)",
        cli=False,
        path=True,
    )
    compile_mex: bool = _option(
        False, "compile even when committed binaries exist (invoke build-mex)", cli=False
    )

    @classmethod
    def from_flags(cls, **flags: Any) -> BuildOptions:
        """Options from task parameters (``python_base=...``) or field names; ``None`` and empty
        values keep the default.

        Raises UserError for an unknown flag, a wheelhouse or CUDA toolkit that is not a folder,
        a CA bundle that is not a file or holds a private key, and a name Docker or git would
        refuse (:meth:`check_names`).
        """
        by_flag = {flag_name(f): f for f in fields(cls)} | {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in flags.items():
            if key not in by_flag:
                raise UserError(f"unknown build option {key!r}")
            if value is None or value == () or value == []:
                continue
            spec = by_flag[key]
            values[spec.name] = _coerce(spec, value)
        options = cls(**values)
        options.check_paths()
        options.check_names()
        return options

    def check_names(self) -> None:
        """Raise UserError for a namespace or base image outside Docker's reference grammar,
        a malformed commit or a host compiler that is not one, before any work
        (:mod:`kilosort_docker.images.references`)."""
        from kilosort_docker.images.pins import check_commit

        references.check_namespace(self.namespace)
        for value, flag in (
            (self.base_image, "--base-image"),
            (self.python_base_image, "--python-base"),
        ):
            if value is not None:
                references.check_reference(
                    value, what=flag, fix=f"give {flag} as [registry/]name[:tag], lowercase"
                )
        if self.kilosort_commit is not None:
            check_commit(self.kilosort_commit, "--kilosort-commit")
        if self.npy_matlab_commit is not None:
            check_commit(self.npy_matlab_commit, "--npy-matlab-commit")
        references.check_host_compiler(self.host_compiler)

    def check_paths(self) -> None:
        """Raise UserError for a path option that does not hold what it should."""
        if self.wheelhouse and not self.wheelhouse.is_dir():
            raise UserError(
                f"wheelhouse {self.wheelhouse} is not a folder: pass a folder of .whl files "
                "(--wheelhouse, or the site setting kilosort_docker.wheelhouse)"
            )
        if self.cuda_toolkit and not self.cuda_toolkit.is_dir():
            raise UserError(
                f"CUDA toolkit {self.cuda_toolkit} is not a folder: pass a CUDA toolkit "
                "(--cuda-toolkit, or the site setting kilosort_docker.cuda_toolkit)"
            )
        if self.ca_bundle and not self.ca_bundle.is_file():
            raise UserError(
                f"CA bundle {self.ca_bundle} is not a file: pass a PEM file (--ca-bundle, or the "
                "site setting kilosort_docker.ca_bundle)"
            )
        if self.ca_bundle:
            text = self.ca_bundle.read_text(errors="replace")
            if "PRIVATE KEY" in text:
                raise UserError(
                    f"{self.ca_bundle} holds a private key: pass only public CA certificates"
                )
            if PEM_CERTIFICATE not in text:
                raise UserError(
                    f"CA bundle {self.ca_bundle} holds no PEM certificate ({PEM_CERTIFICATE} "
                    "lines): pass the PEM file of your proxy's CA (convert DER with openssl x509)"
                )
        for value, flag in (
            (self.kilosort_repository, "--kilosort-repo"),
            (self.npy_matlab_repository, "--npy-matlab-repo"),
        ):
            if value and not is_remote(value) and not Path(value).expanduser().is_dir():
                raise UserError(
                    f"{flag} {value}: no such folder; pass a git repository folder or a URL "
                    "(https://, ssh://, git@host:path, file://)"
                )
        if self.mpm_url and urlsplit(self.mpm_url).scheme not in ("http", "https"):
            raise UserError(
                f"--mpm-url {self.mpm_url}: Docker's ADD fetches only http:// and https:// URLs; "
                "serve MPM over http(s) (e.g. python -m http.server --bind 127.0.0.1)"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (paths as strings), for the build record."""
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BuildOptions:
        """The inverse of :meth:`to_dict` (unknown keys are ignored; paths are not checked)."""
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in data.items():
            if key not in known or value is None:
                continue
            values[key] = _coerce(known[key], value)
        return cls(**values)


def _coerce(spec: dataclasses.Field, value: Any) -> Any:
    """``value`` as the field holds it: a path option as a Path, a repeatable one as a tuple."""
    if spec.metadata["path"]:
        return Path(value)
    if spec.metadata["repeatable"]:
        return tuple(value)
    return value


#: What begins every certificate in a PEM file (RFC 7468, section 5).
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
#: URL schemes git fetches from, besides scp-like ``user@host:path`` (git-clone(1), GIT URLS).
GIT_SCHEMES = ("http", "https", "ssh", "git", "file", "ftp", "ftps")


def is_remote(repository: str) -> bool:
    """Whether ``repository`` is a URL git fetches (``https://...``, ``git@host:path``) rather
    than a local folder."""
    if urlsplit(repository).scheme in GIT_SCHEMES:
        return True
    return re.fullmatch(r"[\w.-]+@[\w.-]+:.*", repository) is not None


def flag_name(spec: dataclasses.Field) -> str:
    """The task parameter name of an option field (``python_base`` for ``python_base_image``)."""
    return spec.metadata.get("flag") or spec.name


def option_fields(names: Iterable[str] | None = None) -> list[dataclasses.Field]:
    """The command-line option fields, all or those whose field or flag name is in ``names``
    (in that order)."""
    cli = [f for f in fields(BuildOptions) if f.metadata["cli"]]
    if names is None:
        return cli
    by_name = {f.name: f for f in cli} | {flag_name(f): f for f in cli}
    return [by_name[n] for n in names]


def option_help(spec: dataclasses.Field, task: str | None = None) -> str:
    """An option field's help as the task named ``task`` (its function's name) words it."""
    return spec.metadata["task_help"].get(task or "", spec.metadata["help"])


def flag_help(names: Iterable[str] | None = None, *, task: str | None = None) -> dict[str, str]:
    """``{task parameter: help}`` for the named option fields (all if None), as ``task``
    words them."""
    return {flag_name(f): option_help(f, task) for f in option_fields(names)}


def site_defaults() -> dict[str, None]:
    """The keys of invoke's ``kilosort_docker`` configuration section, all unset: the options a
    site may set once (plus ``registry``, the push target)."""
    keys = {flag_name(f): None for f in fields(BuildOptions) if f.metadata["site"]}
    keys["registry"] = None
    return keys

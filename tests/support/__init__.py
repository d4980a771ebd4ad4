"""Helpers for the tests and the benchmarks: ``from tests import support``.

Everything is re-exported here; the modules split it by area:

- ``paths``: the repository, the tests, the stand-ins.
- ``repos``: git repositories (fixture repositories, a committed copy of the pin files).
- ``servers``: static files over HTTP and a real registry on 127.0.0.1; a closed port.
- ``images``: test image names, a debootstrapped Debian, the test Python base, builds.
- ``standins``: the Kilosort3 chain on stand-ins (MATLAB base, mex API, mex files) and its plan.
- ``release``: a local server answering like GitHub's and PyPI's APIs, for bump and release.
- ``cli``: running the invoke tasks as a user does; a refusal's one error line.
- ``toolkits``: Debian's CUDA 11.8 as a runfile-style toolkit folder (R2022b's gencode list).

Fixtures are in ``tests/conftest.py``.
"""

from .cli import invoke, one_error_line
from .images import (
    DEBIAN_IMAGE,
    MATLAB_STANDIN_IMAGE,
    NAMESPACE,
    PYTHON_IMAGE,
    build_dockerfile,
    build_python_base,
    debootstrap_image,
    host_ca_bundle,
    tar_bytes,
)
from .paths import REPO_ROOT, STANDINS, TESTS
from .release import (
    COMMITS,
    NOT_FOUND,
    OWNER_REPO,
    PAGES,
    PYPI_RELEASES,
    TAGS_PATH,
    TODAY,
    FakeAPI,
    github_tag,
    isolate,
    pypi_file,
    pypi_project,
    serve_fake_api,
)
from .repos import GIT_ENV, PINNED_FILES, git, make_git_copy, make_repo
from .servers import closed_port, free_port, http_server, registry
from .standins import (
    KILOSORT3_MEX,
    MAKE_ROOT,
    build_matlab_standin,
    kilosort_fixture_files,
    make_fixture_repos,
    make_matlab_root,
    npy_fixture_files,
    standin_chain_plan,
    write_standin_mex,
)
from .toolkits import (
    DEBIAN_CUDA_FOLDER,
    DEBIAN_CUDA_HOST_COMPILER,
    DEBIAN_CUDA_IMAGE,
    DEBIAN_CUDA_VERSION,
    MATLAB_STANDIN_CUDART_IMAGE,
    build_debian_cuda_image,
    debian_cuda_toolkit,
    real_kilosort3_plan,
    standin_with_cudart,
)

__all__ = [
    "invoke",
    "one_error_line",
    "COMMITS",
    "DEBIAN_CUDA_FOLDER",
    "DEBIAN_CUDA_HOST_COMPILER",
    "DEBIAN_CUDA_IMAGE",
    "DEBIAN_CUDA_VERSION",
    "DEBIAN_IMAGE",
    "GIT_ENV",
    "KILOSORT3_MEX",
    "MAKE_ROOT",
    "MATLAB_STANDIN_CUDART_IMAGE",
    "MATLAB_STANDIN_IMAGE",
    "NAMESPACE",
    "NOT_FOUND",
    "OWNER_REPO",
    "PAGES",
    "PINNED_FILES",
    "PYPI_RELEASES",
    "PYTHON_IMAGE",
    "REPO_ROOT",
    "STANDINS",
    "TAGS_PATH",
    "TESTS",
    "TODAY",
    "FakeAPI",
    "build_debian_cuda_image",
    "build_dockerfile",
    "build_matlab_standin",
    "build_python_base",
    "closed_port",
    "debian_cuda_toolkit",
    "debootstrap_image",
    "free_port",
    "git",
    "github_tag",
    "host_ca_bundle",
    "http_server",
    "isolate",
    "kilosort_fixture_files",
    "make_fixture_repos",
    "make_git_copy",
    "make_matlab_root",
    "make_repo",
    "npy_fixture_files",
    "pypi_file",
    "pypi_project",
    "registry",
    "serve_fake_api",
    "standin_chain_plan",
    "real_kilosort3_plan",
    "standin_with_cudart",
    "tar_bytes",
    "write_standin_mex",
]

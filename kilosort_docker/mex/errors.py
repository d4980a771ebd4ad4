"""The mex package's own error type (the project-wide one is ``kilosort_docker.errors``)."""

from __future__ import annotations

from kilosort_docker.errors import UserError


class MexBuildError(UserError):
    """The compiler or linker failed; the message names the file and the first error.

    Raised by :func:`kilosort_docker.mex.make.run_make` with the first ``error:`` line of
    nvcc, g++, nvlink or ld (see :func:`kilosort_docker.mex.make.first_error`).
    """

"""kilosort-docker: build, test and publish Docker images of the Kilosort spike sorter.

The logic lives here; ``tasks.py`` (invoke) and ``noxfile.py`` (nox) are thin front ends.
"""

from kilosort_docker.errors import UserError

__all__ = ["UserError"]

"""Runners that sort a simulation folder with Kilosort 4 or Kilosort 3, on the host or in a
Docker image, and return a :class:`SortResult` pointing at the phy output."""

from kilosort_docker.groundtruth.sorters.common import SortError, SortResult
from kilosort_docker.groundtruth.sorters.kilosort3 import (
    run_kilosort3_container,
    run_kilosort3_host,
)
from kilosort_docker.groundtruth.sorters.kilosort4 import (
    run_kilosort4_container,
    run_kilosort4_host,
)
from kilosort_docker.matlab import License, resolve_license

__all__ = [
    "License",
    "SortError",
    "SortResult",
    "resolve_license",
    "run_kilosort",
    "run_kilosort3_container",
    "run_kilosort3_host",
    "run_kilosort4_container",
    "run_kilosort4_host",
]


def run_kilosort(
    sorter: str,
    mode: str,
    data_dir,
    out_dir,
    *,
    image: str | None = None,
    device: str = "auto",
    gpu: bool = False,
    license: str | None = None,
    mac_address: str | None = None,
) -> SortResult:
    """Dispatch to the runner for ``sorter`` (kilosort4|kilosort3) and ``mode`` (host|container).

    Raises:
        UserError: an unknown sorter or mode, or a container mode without ``image``.
    """
    from kilosort_docker.errors import UserError

    if mode == "container" and not image:
        raise UserError("container mode needs an image: pass --image NAME:TAG")
    if sorter == "kilosort4" and mode == "host":
        return run_kilosort4_host(data_dir, out_dir, device=device)
    if sorter == "kilosort4" and mode == "container":
        return run_kilosort4_container(data_dir, out_dir, image=image, gpu=gpu)
    if sorter == "kilosort3" and mode == "host":
        return run_kilosort3_host(data_dir, out_dir, license=license)
    if sorter == "kilosort3" and mode == "container":
        return run_kilosort3_container(
            data_dir, out_dir, image=image, license=license, mac_address=mac_address
        )
    raise UserError(
        f"unknown sorter/mode {sorter}/{mode}: use kilosort4|kilosort3 and host|container"
    )

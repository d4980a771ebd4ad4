"""Where things are: this repository's folders on the host, and fixed paths inside the images.

The in-image paths are the contract between ``docker/<image>/Dockerfile`` (which creates them),
the image checks (which read them) and the runners (which mount into them); each is written
here once.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (holds ``kilosort-docker.toml``, ``VERSION``, ``docker/``, ``matlab/``).
ROOT = Path(__file__).resolve().parent.parent
#: One folder per image of the stack: ``docker/<image>/Dockerfile``.
DOCKER_DIR = ROOT / "docker"
#: MATLAB code copied into the images and mounted by the runners (start-up, entry points).
MATLAB_DIR = ROOT / "matlab"
#: Committed mex binaries: ``mex-binaries/<profile>/<kilosort commit>/``.
MEX_BINARIES_DIR = ROOT / "mex-binaries"
#: Pass/fail thresholds of the ground-truth test, one TOML per sorter.
THRESHOLDS_DIR = ROOT / "thresholds"
#: Build records written by ``invoke build``: ``build/<profile>.json``, or in the folder
#: ``$KILOSORT_DOCKER_BUILD_RECORD_DIR`` names.
BUILD_RECORD_DIR = Path(os.environ.get("KILOSORT_DOCKER_BUILD_RECORD_DIR") or ROOT / "build")

# ---- inside the images ------------------------------------------------------------------

#: Kilosort's checkout (its ``CUDA/`` folder receives the mex files).
KILOSORT_DIR = "/opt/kilosort"
#: npy-matlab's checkout (phy output).
NPY_MATLAB_DIR = "/opt/npy-matlab"
#: The project's own files in an image: commit records, the mex manifest, MATLAB code.
PROJECT_DIR = "/opt/kilosort-docker"
#: The Kilosort commit actually checked out, written by the kilosort3-code Dockerfile.
KILOSORT_COMMIT_FILE = f"{PROJECT_DIR}/kilosort.commit"
#: The mex files' manifest, copied from the mex-build stage.
MEX_MANIFEST_IN_IMAGE = f"{PROJECT_DIR}/mex-manifest.json"
#: Where a runner mounts this repository's ``matlab/`` folder.
MATLAB_MOUNT = f"{PROJECT_DIR}/matlab"
#: Where a runner mounts a MATLAB license file (read-only).
LICENSE_MOUNT = "/licenses/license.lic"
#: Where a runner mounts the input folder and the output folder.
DATA_MOUNT = "/data"
OUT_MOUNT = "/out"

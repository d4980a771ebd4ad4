"""The Kilosort3 chain on stand-ins: fixture repositories, stand-in mex files, the stand-in
MATLAB base and mex API (``tests/standins/``), and the chain's build plan over them.

Everything here exists for the tests only; stand-ins are named as such.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

from kilosort_docker import mex

from .images import MATLAB_STANDIN_IMAGE, NAMESPACE, build_dockerfile
from .paths import STANDINS
from .repos import make_repo

#: Kilosort3's mex files, as the project's mex spec lists them (names the stand-in binaries).
KILOSORT3_MEX = tuple(
    source.name for source in mex.get_spec("3.0.2").sources if not source.diagnostic
)

#: The stand-in mex API's builder: a standalone script (standard library only).
MAKE_ROOT = STANDINS / "mexapi" / "make_root.py"


def kilosort_fixture_files() -> dict[str, str]:
    """A Kilosort-shaped tree (fixture, not Kilosort's code): CUDA/ with .cu names, main file."""
    files = {f"CUDA/{name}.cu": f"// fixture source for {name}\n" for name in KILOSORT3_MEX}
    files["CUDA/mexGPUall.m"] = "% fixture: the real file compiles the mex files\n"
    files["main_kilosort3.m"] = "% fixture main file\n"
    files["README.md"] = "Fixture repository standing in for MouseLand/Kilosort in tests.\n"
    return files


def npy_fixture_files() -> dict[str, str]:
    return {
        "npy-matlab/readNPY.m": "function data = readNPY(filename)\n% fixture\ndata = [];\nend\n",
        "npy-matlab/writeNPY.m": "function writeNPY(var, filename)\n% fixture\nend\n",
    }


def make_fixture_repos(root: Path) -> dict[str, tuple[Path, str]]:
    """Local git repositories under ``root`` standing in for MouseLand/Kilosort (tagged
    v3.0.2) and kwikteam/npy-matlab: ``{"kilosort": (path, commit), "npy_matlab": ...}``."""
    kilosort = make_repo(root / "Kilosort", kilosort_fixture_files(), tag="v3.0.2")
    npy_matlab = make_repo(root / "npy-matlab", npy_fixture_files())
    return {
        "kilosort": (root / "Kilosort", kilosort),
        "npy_matlab": (root / "npy-matlab", npy_matlab),
    }


def write_standin_mex(folder: Path, *, profile: str, commit: str) -> Path:
    """Stand-in mex binaries (tiny shared objects exporting mexFunction) and their manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder.parent / "standin_mex.c"
    source.write_text(
        "/* STAND-IN mex file for tests: not Kilosort's code. */\n"
        "const char standin_mex_name[] = MEX_NAME;\n"
        "void mexFunction(int nlhs, void *plhs[], int nrhs, const void *prhs[]) {\n"
        "    (void)nlhs; (void)plhs; (void)nrhs; (void)prhs;\n}\n"
    )
    binaries = {}
    for name in KILOSORT3_MEX:
        target = folder / f"{name}.mexa64"
        subprocess.run(
            [
                "gcc",
                "-shared",
                "-fPIC",
                "-O1",
                f'-DMEX_NAME="{name}"',
                "-o",
                str(target),
                str(source),
            ],
            check=True,
        )
        data = target.read_bytes()
        binaries[target.name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    source.unlink()
    manifest = {"schema": 1, "profile": profile, "kilosort_commit": commit, "binaries": binaries}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


@functools.cache
def _make_root() -> ModuleType:
    spec = importlib.util.spec_from_file_location("standin_mexapi_make_root", MAKE_ROOT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_matlab_root(dest: str | os.PathLike) -> Path:
    """Build the stand-in MATLAB root (mex API headers and stub libraries) at ``dest``; see
    ``tests/standins/mexapi/make_root.py``. Raises RuntimeError if the C compiler fails."""
    return _make_root().make_matlab_root(dest)


def tini_for_standin() -> Path:
    """The ``tini`` of the stand-in MATLAB base: Debian's static tini (package ``tini``) from
    this host when it has one, else ``tests/standins/matlab-base/tini-standin.sh``."""
    for candidate in ("/usr/bin/tini-static", "/usr/sbin/tini-static"):
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    return STANDINS / "matlab-base" / "tini-standin.sh"


def build_matlab_standin(client, debian_base: str, context: Path) -> str:
    """The stand-in MATLAB base image, with the stand-in mex API in its root, built from
    ``context`` (a new or empty scratch folder) on ``debian_base``; returns its tag."""
    shutil.copytree(STANDINS / "matlab-base", context, dirs_exist_ok=True)
    shutil.copy2(tini_for_standin(), context / "tini")
    make_matlab_root(context / "matlab-root")
    return build_dockerfile(
        client,
        context,
        MATLAB_STANDIN_IMAGE,
        buildargs={"BASE_IMAGE": debian_base, "MATLAB_RELEASE": "R2022b"},
    )


def standin_chain_plan(
    matlab_base: str,
    mpm_url: str,
    *,
    kilosort: tuple[Path, str],
    npy_matlab: tuple[Path, str],
    mex_root: Path,
    namespace: str = NAMESPACE,
    **flags,
):
    """The build plan of the Kilosort3 chain on the stand-in MATLAB base, from fixture
    repositories, with stand-in mex binaries for the Kilosort commit written to ``mex_root``."""
    from kilosort_docker import commands

    write_standin_mex(mex_root / "r2022b" / kilosort[1], profile="r2022b", commit=kilosort[1])
    return commands.make_plan(
        images=["kilosort3"],
        base_image=matlab_base,
        mpm_url=f"{mpm_url}/mpm",
        kilosort_repo=str(kilosort[0]),
        kilosort_commit=kilosort[1],
        npy_matlab_repo=str(npy_matlab[0]),
        npy_matlab_commit=npy_matlab[1],
        mex_binaries=str(mex_root),
        namespace=namespace,
        **flags,
    )

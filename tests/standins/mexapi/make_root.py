"""Make a stand-in MATLAB root for the mex build tests (see README.md: not MathWorks code).

``make_matlab_root(dest)`` copies this folder's headers, version file and map to ``dest`` and
builds the stub libraries into ``dest/bin/glnxa64`` with the system C compiler (``cc``, or
``$CC``). Returns ``dest``. Raises RuntimeError if the compiler fails. Standard library only.
Run as a script: ``python3 make_root.py DEST``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: library name -> stub source
LIBRARIES = {
    "mx": "mx.c",
    "mex": "mex.c",
    "mwgpu": "mwgpu.c",
    "gpumexbinder": "mwgpu.c",
    "mat": "empty.c",
    "MatlabDataArray": "empty.c",
}


def make_matlab_root(dest: str | os.PathLike) -> Path:
    """Build the stand-in MATLAB root at ``dest`` (created; existing files are replaced)."""
    dest = Path(dest)
    for sub in ("extern", "simulink", "toolbox"):
        shutil.copytree(HERE / sub, dest / sub, dirs_exist_ok=True)
    libdir = dest / "bin" / "glnxa64"
    libdir.mkdir(parents=True, exist_ok=True)
    (dest / "extern" / "bin" / "glnxa64").mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    includes = [
        f"-I{dest / 'extern/include'}",
        f"-I{dest / 'toolbox/parallel/gpu/extern/include'}",
    ]
    for name, source in LIBRARIES.items():
        argv = [cc, "-shared", "-fPIC", "-O1", "-DMX_COMPAT_64", *includes]
        argv += [str(HERE / "stubs" / source), f"-Wl,-soname,lib{name}.so"]
        argv += ["-o", str(libdir / f"lib{name}.so")]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"building stand-in lib{name}.so failed: {result.stderr}")
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_root.py DEST")
    print(make_matlab_root(sys.argv[1]))

#!/usr/bin/env python3
"""On a real GPU: does code run the way ``kilosort_docker.mex.predict_runtime`` says?

Builds one tiny CUDA program in several gencode variants, runs each on the GPU, reads what
each binary holds with ``cuobjdump --list-elf --list-ptx`` and compares the outcome with the
prediction for the device's compute capability. Prints ONE line of JSON and exits 0 when
every required case matches its prediction (1 otherwise, 2 if it could not run at all).

R2022b's gencode list is SASS sm_35..sm_80 plus PTX compute_80; CUDA 13 cannot emit sm_35..70,
so this emulates it with what it can emit (for an sm_90 device such as the H200):

- sass80: SASS sm_80 only -> none ("no kernel image is available"); required.
- sass80_ptx80: SASS sm_80 + PTX compute_80 -> ptx-jit (the R2022b situation); required.
- sass_native: SASS for the device itself -> native (control); required.
- rdc_sass_native: ``-dc`` + ``nvcc -dlink``, device's own SASS, a kernel launching kernels
  (dynamic parallelism, as mexMPnu8's stable mode) -> native (control); required.
- rdc_sass80_ptx80: the same built like R2022b's mexMPnu8 (sm_80 + compute_80); the
  device-linked image holds SASS only, but the PTX kept with the relocatable code (listed by
  ``cuobjdump -all``) is JIT-compiled: seen running on an H200; informational.
- rdc_ptx80: ``-dc`` + ``nvcc -dlink`` with PTX compute_80 only; informational.

Needs: nvcc (PATH or /usr/local/cuda/bin), cuobjdump (same, or the ``nvidia-cuda-cuobjdump``
wheel), g++, python3; imports ``kilosort_docker.mex`` from this repository (standard
library only). Run from the repository root (which puts ``kilosort_docker`` on the path
without installing it): ``python3 -m tests.gpu.ptx_jit_check [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kilosort_docker import mex

PLAIN = r"""
#include <cstdio>
#include <cuda_runtime.h>
__global__ void square(int *x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = i * i;
}
int main() {
    const int n = 1000;
    int *d = nullptr, h[n];
    cudaError_t err = cudaMalloc(&d, n * sizeof(int));
    if (err == cudaSuccess) { square<<<(n + 255) / 256, 256>>>(d, n); err = cudaGetLastError(); }
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    if (err == cudaSuccess) err = cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    if (err != cudaSuccess) { printf("CUDA_ERROR %s\n", cudaGetErrorString(err)); return 3; }
    for (int i = 0; i < n; ++i)
        if (h[i] != i * i) { printf("WRONG at %d: %d\n", i, h[i]); return 4; }
    printf("OK\n");
    return 0;
}
"""

# Dynamic parallelism (a kernel launching kernels), as Kilosort's mexMPnu8 stable mode does.
TREE = r"""
#include <cstdio>
#include <cuda_runtime.h>
__global__ void addOne(int *x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1;
}
__global__ void tree(int *x, int n, int leaf) {
    if (n <= leaf) { addOne<<<(n + 127) / 128, 128>>>(x, n); return; }
    int half = n / 2;
    tree<<<1, 1>>>(x, half, leaf);
    tree<<<1, 1>>>(x + half, n - half, leaf);
}
int main() {
    const int n = 4096;
    int *d = nullptr, h[n];
    cudaError_t err = cudaMalloc(&d, n * sizeof(int));
    if (err == cudaSuccess) err = cudaMemset(d, 0, n * sizeof(int));
    if (err == cudaSuccess) { tree<<<1, 1>>>(d, n, 256); err = cudaGetLastError(); }
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    if (err == cudaSuccess) err = cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    if (err != cudaSuccess) { printf("CUDA_ERROR %s\n", cudaGetErrorString(err)); return 3; }
    for (int i = 0; i < n; ++i)
        if (h[i] != 1) { printf("WRONG at %d: %d\n", i, h[i]); return 4; }
    printf("OK\n");
    return 0;
}
"""

QUERY = r"""
#include <cstdio>
#include <cuda_runtime.h>
int main() {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return 1;
    int driver = 0; cudaDriverGetVersion(&driver);
    printf("%d.%d|%s|%d\n", p.major, p.minor, p.name, driver);
    return 0;
}
"""


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)


def build(nvcc: str, work: Path, name: str, source: str, targets, *, rdc: bool) -> Path:
    """Compile ``source`` for ``targets`` (mex.Gencode) into ``work/name``; returns the binary."""
    src = work / f"{name}.cu"
    src.write_text(source)
    flags = [t.flag() for t in targets]
    exe = work / name
    if not rdc:
        steps = [[nvcc, *flags, "-O2", str(src), "-o", str(exe)]]
    else:
        obj, dlink = work / f"{name}.o", work / f"{name}_dlink.o"
        steps = [
            [nvcc, "-dc", *flags, "-O2", str(src), "-o", str(obj)],
            [nvcc, "-dlink", *flags, str(obj), "-lcudadevrt", "-o", str(dlink)],
            [nvcc, *flags, str(obj), str(dlink), "-lcudadevrt", "-o", str(exe)],
        ]
    for argv in steps:
        result = run(argv)
        if result.returncode != 0:
            raise RuntimeError(f"{name}: {' '.join(argv)} failed: {result.stderr.strip()}")
    return exe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="build in this folder and keep it")
    args = parser.parse_args()
    nvcc = mex.find_tool("nvcc", "/usr/local/cuda")
    cuobjdump = mex.find_tool("cuobjdump", "/usr/local/cuda")
    if not nvcc or not cuobjdump:
        print(json.dumps({"ok": False, "error": f"nvcc={nvcc} cuobjdump={cuobjdump}"}))
        return 2
    work = Path(args.keep or tempfile.mkdtemp(prefix="ptx-jit-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        query_target = [mex.Gencode.parse("compute_75,compute_75")]
        query = build(nvcc, work, "query", QUERY, query_target, rdc=False)
        out = run([str(query)])
        if out.returncode != 0:
            print(json.dumps({"ok": False, "error": f"no GPU visible: {out.stdout}{out.stderr}"}))
            return 2
        cc, device, driver = out.stdout.strip().split("|")
        native = cc.replace(".", "")
        t = mex.Gencode.parse
        sass80, ptx80 = t("compute_80,sm_80"), t("compute_80,compute_80")
        # (case, source, targets, relocatable device code, required to match)
        cases = [
            ("sass80", PLAIN, [sass80], False, True),
            ("sass80_ptx80", PLAIN, [sass80, ptx80], False, True),
            ("sass_native", PLAIN, [t(f"compute_{native},sm_{native}")], False, True),
            ("rdc_sass_native", TREE, [t(f"compute_{native},sm_{native}")], True, True),
            ("rdc_sass80_ptx80", TREE, [sass80, ptx80], True, True),
            ("rdc_ptx80", TREE, [ptx80], True, False),
        ]
        results = []
        for name, source, targets, rdc, required in cases:
            entry = {
                "case": name,
                "gencode": [str(x) for x in targets],
                "rdc": rdc,
                "required": required,
            }
            try:
                exe = build(nvcc, work, name, source, targets, rdc=rdc)
            except RuntimeError as exc:
                entry.update(built=False, error=str(exc)[-400:], match=False)
                results.append(entry)
                continue
            sass, ptx = mex.device_code(exe, cuobjdump=cuobjdump)
            wanted = {t.code for t in targets if t.is_ptx}
            kept = [p for p in mex.relocatable_ptx(exe, cuobjdump=cuobjdump) if p in wanted]
            kept = kept if rdc else []
            predicted = mex.predict_runtime(sass, [*ptx, *kept], cc, binary=name)
            result = run([str(exe)])
            ran = result.returncode == 0 and result.stdout.strip().endswith("OK")
            entry.update(
                built=True,
                sass=list(sass),
                ptx=list(ptx),
                relocatable_ptx=kept,
                predicted=predicted.mode,
                ran=ran,
                output=(result.stdout + result.stderr).strip()[-200:],
                match=ran == predicted.runs,
            )
            results.append(entry)
        ok = all(r["match"] for r in results if r["required"])
        print(
            json.dumps(
                {
                    "ok": ok,
                    "device": device,
                    "compute_capability": cc,
                    "driver": driver,
                    "nvcc": mex.nvcc_version(nvcc),
                    "cases": results,
                },
                separators=(",", ":"),
            )
        )
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

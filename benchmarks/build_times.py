#!/usr/bin/env python3
"""Build times (cold and warm layer cache) and image sizes of the stack, as a figure.

What can be built on a machine without MathWorks or Docker Hub access: `kilosort4` for real
(debootstrapped Debian + Python, real `kilosort` from PyPI; a CPU-only torch wheel from
--wheelhouse if given) and the Kilosort3 chain on the tests' stand-in MATLAB base, with
Kilosort from a local fixture repository and stand-in mex files. "Cold" builds with
--no-cache (base images and downloads from PyPI/Debian still needed); "warm" rebuilds at once.

Run: python3 benchmarks/build_times.py [--wheelhouse /opt/wheels] [--out benchmarks/out]
Writes build_times.json and build_times.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import support  # noqa: E402
from kilosort_docker import build, commands, engine  # noqa: E402


def timed_build(client, plan) -> tuple[float, list]:
    start = time.monotonic()
    built = build.execute(plan, client)
    return time.monotonic() - start, built


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheelhouse", help="folder with a CPU-only torch wheel")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    client = engine.connect(timeout=3600)
    debian = support.debootstrap_image(client)
    python_base = support.build_dockerfile(
        client,
        support.TESTS / "images" / "python-base",
        support.PYTHON_IMAGE,
        buildargs={"BASE_IMAGE": debian},
    )
    sys.path.insert(0, str(support.STANDINS / "mexapi"))
    from make_root import make_matlab_root

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, support.http_server(support.STANDINS / "mpm") as mpm:
        tmp = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")
        context = tmp / "matlab-standin"
        import shutil

        shutil.copytree(support.STANDINS / "matlab-base", context)
        make_matlab_root(context / "matlab-root")
        standin = support.build_dockerfile(
            client,
            context,
            support.MATLAB_STANDIN_IMAGE,
            buildargs={"BASE_IMAGE": debian, "MATLAB_RELEASE": "R2022b"},
        )
        ks = support.make_repo(tmp / "Kilosort", support.kilosort_fixture_files(), tag="v3.0.2")
        npy = support.make_repo(tmp / "npy-matlab", support.npy_fixture_files())
        chain = {
            "base": standin,
            "mpm": mpm,
            "kilosort": (tmp / "Kilosort", ks),
            "npy_matlab": (tmp / "npy-matlab", npy),
        }
        flags = {
            "kilosort3 chain (stand-in MATLAB)": dict(chain=chain),
            "kilosort4": dict(
                images=["kilosort4"],
                python_base=python_base,
                wheelhouse=args.wheelhouse,
                ca_bundle=support.host_ca_bundle(),
            ),
        }

        def make(extra: dict, **more):
            chain = extra.get("chain")
            if chain:
                return support.standin_chain_plan(
                    chain["base"],
                    chain["mpm"],
                    kilosort=chain["kilosort"],
                    npy_matlab=chain["npy_matlab"],
                    mex_root=tmp / "mex",
                    namespace="kilosort-docker-bench",
                    **more,
                )
            return commands.make_plan(namespace="kilosort-docker-bench", **extra, **more)

        for name, extra in flags.items():
            cold, _ = timed_build(client, make(extra, no_cache=True))
            warm, built = timed_build(client, make(extra))
            results[name] = {
                "cold_s": round(cold, 1),
                "warm_s": round(warm, 1),
                "images": {b.step.spec.name: round(b.size / 1e6) for b in built},
            }
            print(
                f"{name}: cold {cold:.0f} s, warm {warm:.1f} s, sizes (MB) "
                f"{results[name]['images']}",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "build_times.json").write_text(json.dumps(results, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results)
    left.barh(names, [results[n]["cold_s"] for n in names], label="cold (--no-cache)")
    left.barh(names, [results[n]["warm_s"] for n in names], label="warm")
    left.set_xlabel("build time (s)")
    left.legend()
    sizes = {k: v for n in names for k, v in results[n]["images"].items()}
    right.barh(list(sizes), list(sizes.values()))
    right.set_xlabel("image size (MB)")
    fig.suptitle(f"Build times and sizes on {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(args.out / "build_times.png", dpi=120)
    print(f"wrote {args.out / 'build_times.json'} and build_times.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Build times (cold and warm layer cache) and image sizes of the stack, as a figure.

What can be built on a machine without MathWorks or Docker Hub access: `kilosort4` for real
(debootstrapped Debian + Python, real `kilosort` from PyPI; a CPU-only torch wheel from
--wheelhouse if given) and the Kilosort3 chain on the tests' stand-in MATLAB base, with
Kilosort from a local fixture repository and stand-in mex files. "Cold" builds with
--no-cache (base images and downloads from PyPI/Debian still needed); "warm" rebuilds at once.

Run from the repository root:
python -m benchmarks.build_times [--wheelhouse /opt/wheels] [--out benchmarks/out]
Writes build_times.json and build_times.png. The images, stand-ins and fixture repositories
are the tests' (``tests.support``), and so is the Kilosort3 chain's plan.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from kilosort_docker import commands, engine
from kilosort_docker.images import build
from tests import support

ROOT = support.REPO_ROOT
NAMESPACE = "kilosort-docker-bench"


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
    python_base = support.build_python_base(client, debian)

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, support.http_server(support.STANDINS / "mpm") as mpm:
        tmp = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")
        standin = support.build_matlab_standin(client, debian, tmp / "matlab-standin")
        repos = support.make_fixture_repos(tmp / "repos")
        flags = {
            "kilosort3 chain (stand-in MATLAB)": None,
            "kilosort4": dict(
                images=["kilosort4"],
                python_base=python_base,
                wheelhouse=args.wheelhouse,
                ca_bundle=support.host_ca_bundle(),
            ),
        }

        def make(extra: dict | None, **more):
            if extra is None:  # the tests' plan of the chain on the stand-ins
                return support.standin_chain_plan(
                    standin, mpm, **repos, mex_root=tmp / "mex", namespace=NAMESPACE, **more
                )
            return commands.make_plan(namespace=NAMESPACE, **extra, **more)

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

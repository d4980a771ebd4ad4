#!/usr/bin/env python3
"""A rebuild with nothing changed: `invoke build` against the same `docker build` commands run
directly, and the bytes a push uploads after it (issue 12 item 1).

The stack is what can be built here (as in ``benchmarks/build_times.py``): ``kilosort4`` on the
tests' Python base and the Kilosort3 chain (``matlab-toolboxes``, ``kilosort3-code``,
``kilosort3``) on the stand-in MATLAB base, with fixture Kilosort sources and stand-in mex files,
all four images in one ``invoke build``. After a first build, each round times

- ``invoke build`` (a fresh process, the project's code path: plan, fetch and stage the
  contexts, build through the Docker SDK, tag, write the build record), and
- the same four builds as ``docker build`` commands (classic builder, ``DOCKER_BUILDKIT=0``,
  the build args, labels and tags of the plan) on contexts staged once beforehand,

and reports the medians and their ratio (target: at most 1.2). A control round dates the images
with the clock (``SOURCE_DATE_EPOCH`` = now, what every build did before the fix). The push
part starts Debian's docker-registry on 127.0.0.1, pushes the stack, rebuilds, pushes again
and sums the bytes the engine reports uploading per layer (target: 0 after a no-op rebuild);
the same after the clock-dated control. Where ``invoke build`` spends its time is measured in
process (plan, staging, build, tag) and as the start-up of a bare ``invoke --list``.

It runs in a clone of the last commit (commits made meanwhile would change the labels). Run
from the repository root (the images nox environment has the packages):
python -m benchmarks.noop_rebuild [--runs 5] [--wheelhouse /opt/wheels] [--out benchmarks/results]
Writes noop_rebuild.json and noop_rebuild.png. Everything it tags is under the namespace
``kilosort-docker-bench-noop``; images it made are removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker.errors

from kilosort_docker import commands, engine
from kilosort_docker.images import build
from tests import support

ROOT = support.REPO_ROOT
NAMESPACE = "kilosort-docker-bench-noop"
INVOKE = Path(sys.executable).with_name("invoke")
SNAPSHOT_ENV = "KILOSORT_DOCKER_BENCH_SNAPSHOT"


def in_snapshot(out: Path) -> int:
    """Run this benchmark again in a clone of this repository's last commit, so that commits
    made meanwhile (the ``created`` and ``revision`` labels) do not change what it builds."""
    with tempfile.TemporaryDirectory(prefix="noop-rebuild-checkout-") as checkout:
        subprocess.run(["git", "clone", "--quiet", "--shared", str(ROOT), checkout], check=True)
        env = {**os.environ, SNAPSHOT_ENV: "1", "PYTHONPATH": checkout}
        command = [sys.executable, "-m", "benchmarks.noop_rebuild", *sys.argv[1:]]
        command += ["--out", str(out.resolve())]
        return subprocess.run(command, cwd=checkout, env=env, check=False).returncode


def short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def invoke_build(flags: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``invoke build FLAGS``; returns its wall time in seconds. Raises on failure."""
    start = time.monotonic()
    with log.open("a") as out:
        subprocess.run(
            [str(INVOKE), "build", *flags], cwd=ROOT, env=env, stdout=out, stderr=out, check=True
        )
    return time.monotonic() - start


def cli_commands(plan, contexts: dict[str, tuple[Path, dict[str, str]]]) -> list[list[str]]:
    """The ``docker build`` command of every step: its build args, labels, tags, context."""
    result = []
    for step in plan.steps:
        context, buildargs = contexts[step.spec.name]
        cmd = ["docker", "build", "--rm", "--force-rm"]
        for key, value in buildargs.items():
            cmd += ["--build-arg", f"{key}={value}"]
        for key, value in step.labels.items():
            cmd += ["--label", f"{key}={value}"]
        for ref in step.refs:
            cmd += ["-t", ref]
        result.append([*cmd, str(context)])
    return result


def cli_build(cmds: list[list[str]], env: dict[str, str], log: Path) -> float:
    start = time.monotonic()
    with log.open("a") as out:
        for cmd in cmds:
            subprocess.run(cmd, env=env, stdout=out, stderr=out, check=True)
    return time.monotonic() - start


def image_ids(client, plan) -> dict[str, str]:
    return {step.spec.name: client.images.get(step.refs[0]).id for step in plan.steps}


def push_bytes(client, plan, registry: str) -> dict[str, int]:
    """Push every reference of ``plan`` to ``registry``; returns the bytes the engine reported
    uploading (the largest ``progressDetail.current`` of each layer it pushed) and the layers
    pushed and found already there."""
    uploaded: dict[str, int] = {}
    existed: set[str] = set()
    for step in plan.steps:
        for ref in step.refs:
            repo, _, tag = ref.rpartition(":")
            remote = f"{registry}/{repo}"
            client.api.tag(ref, remote, tag, force=True)
            for event in client.api.push(remote, tag, stream=True, decode=True):
                if "error" in event:
                    raise RuntimeError(f"push of {remote}:{tag} failed: {event['error']}")
                layer, status = event.get("id", ""), event.get("status", "")
                if status == "Pushing":
                    current = int(event.get("progressDetail", {}).get("current") or 0)
                    uploaded[layer] = max(uploaded.get(layer, 0), current)
                elif status == "Layer already exists":
                    existed.add(layer)
    return {
        "bytes": sum(uploaded.values()),
        "layers_pushed": len(uploaded),
        "layers_already_there": len(existed - set(uploaded)),
    }


def breakdown(plan, client) -> dict[str, float]:
    """Where a no-op ``build.execute`` spends its time, per phase, in seconds (in process)."""
    times = {"stage_s": 0.0, "docker_build_s": 0.0, "tag_s": 0.0}
    for step in plan.steps:
        start = time.monotonic()
        with build.staged_context(step, plan) as (context, buildargs):
            staged = time.monotonic()
            times["stage_s"] += staged - start
            image_id = build._run_build(
                client, step, context, buildargs, no_cache=False, events=build.BuildEvents()
            )
            times["docker_build_s"] += time.monotonic() - staged
        start = time.monotonic()
        build.tag_all(client, image_id, step.refs)
        times["tag_s"] += time.monotonic() - start
    return {k: round(v, 2) for k, v in times.items()}


def top_functions(prof: Path, count: int = 25, *, where: str = "", column: int = 3):
    """The ``count`` functions of a cProfile file with the most time (``column`` 3: cumulative,
    2: their own), in seconds; only those in files whose path holds ``where``."""
    import pstats

    stats = pstats.Stats(str(prof)).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    chosen = [item for item in stats.items() if where in item[0][0]]
    ranked = sorted(chosen, key=lambda item: item[1][column], reverse=True)[:count]
    return {
        f"{Path(file).name}:{line}({name})": round(value[column], 3)
        for (file, line, name), value in ranked
    }


def logged_images(log: Path) -> set[str]:
    """Short IDs of the images the builds in ``log`` name (every step's and the result)."""
    found = re.findall(r"(?:---> |Successfully built )([0-9a-f]{12})$", log.read_text(), re.M)
    return set(found)


def cleanup(client, before: set[str], made: set[str], registry_prefix: str | None) -> int:
    """Remove the benchmark's tags, then the images its builds made (``made``, short IDs) that
    were not there at the start and are left untagged, children first. Returns how many went.
    """
    for image in client.api.images(all=True):
        for ref in image.get("RepoTags") or []:
            ours = ref.startswith(f"{NAMESPACE}/")
            if ours or (registry_prefix and ref.startswith(registry_prefix)):
                with contextlib.suppress(docker.errors.APIError):
                    client.api.remove_image(ref, noprune=True)
    removed = 0
    while True:
        gone = 0
        for image in client.api.images(all=True):  # the raw list: others remove images too
            untagged = not [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]
            ours = short(image["Id"]) in made - before
            if untagged and ours:
                with contextlib.suppress(docker.errors.APIError):
                    client.api.remove_image(image["Id"], noprune=True)
                    gone += 1
        removed += gone
        if not gone:
            return removed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument(
        "--wheelhouse",
        default="/opt/wheels" if any(Path("/opt/wheels").glob("torch-*.whl")) else None,
        help="folder with a CPU-only torch wheel (default: /opt/wheels if it has one)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not os.environ.get(SNAPSHOT_ENV):
        return in_snapshot(args.out)
    client = engine.connect(timeout=3600)
    debian = support.debootstrap_image(client)
    python_base = support.build_python_base(client, debian)
    before = {short(i["Id"]) for i in client.api.images(all=True)}
    load = {"before": list(os.getloadavg())}
    results: dict = {"cpu_count": os.cpu_count(), "runs": args.runs}
    registry_prefix = None
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="noop-rebuild-")))
        mpm = stack.enter_context(support.http_server(support.STANDINS / "mpm"))
        env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
        env |= {
            "XDG_CACHE_HOME": str(tmp / "cache"),
            "KILOSORT_DOCKER_BUILD_RECORD_DIR": str(tmp / "record"),
            "DOCKER_BUILDKIT": "0",
        }
        saved = dict(os.environ)  # given back before the figure (matplotlib caches fonts)
        stack.callback(lambda: (os.environ.clear(), os.environ.update(saved)))
        os.environ.update(
            {k: env[k] for k in ("XDG_CACHE_HOME", "KILOSORT_DOCKER_BUILD_RECORD_DIR")}
        )
        os.environ.pop("SOURCE_DATE_EPOCH", None)
        standin = support.build_matlab_standin(client, debian, tmp / "matlab-standin")
        repos = support.make_fixture_repos(tmp / "repos")
        (ks_repo, ks_commit), (npy_repo, npy_commit) = repos["kilosort"], repos["npy_matlab"]
        support.write_standin_mex(
            tmp / "mex" / "r2022b" / ks_commit, profile="r2022b", commit=ks_commit
        )
        flags = {
            "base_image": standin,
            "mpm_url": f"{mpm}/mpm",
            "kilosort_repo": str(ks_repo),
            "kilosort_commit": ks_commit,
            "npy_matlab_repo": str(npy_repo),
            "npy_matlab_commit": npy_commit,
            "mex_binaries": str(tmp / "mex"),
            "python_base": python_base,
            "ca_bundle": support.host_ca_bundle(),
            "wheelhouse": args.wheelhouse,
            "namespace": NAMESPACE,
        }
        flags = {k: v for k, v in flags.items() if v}
        cli_flags = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
        log = tmp / "build.log"
        print("first build (fills the cache) ...", flush=True)
        results["first_build_s"] = round(invoke_build(cli_flags, env, log), 2)
        plan = commands.make_plan(**flags)
        ids = image_ids(client, plan)
        results["images"] = {name: short(i) for name, i in ids.items()}
        results["revision"] = plan.steps[0].labels["org.opencontainers.image.revision"]
        results["created"] = plan.steps[0].labels["org.opencontainers.image.created"]

        contexts = {}
        for step in plan.steps:  # staged once, kept: the CLI rounds do not stage
            with build.staged_context(step, plan) as (context, buildargs):
                kept = tmp / "contexts" / step.spec.name
                shutil.copytree(context, kept, symlinks=True)
                contexts[step.spec.name] = (kept, buildargs)
        cmds = cli_commands(plan, contexts)
        cli_build(cmds, env, log)  # the CLI gives the same images (same cache keys)
        if image_ids(client, plan) != ids:
            raise RuntimeError(
                f"docker build gave other image IDs than invoke build: {image_ids(client, plan)} "
                f"!= {ids}; log in {log}"
            )

        invoke_s, cli_s = [], []
        for number in range(args.runs):
            invoke_s.append(invoke_build(cli_flags, env, log))
            if image_ids(client, plan) != ids:
                raise RuntimeError("a no-op invoke build changed an image ID")
            cli_s.append(cli_build(cmds, env, log))
            print(f"round {number + 1}: invoke {invoke_s[-1]:.2f} s, CLI {cli_s[-1]:.2f} s")
        results["invoke_build_s"] = [round(t, 2) for t in invoke_s]
        results["docker_cli_s"] = [round(t, 2) for t in cli_s]
        results["invoke_median_s"] = round(statistics.median(invoke_s), 2)
        results["cli_median_s"] = round(statistics.median(cli_s), 2)
        results["ratio"] = round(statistics.median(invoke_s) / statistics.median(cli_s), 2)
        results["target_ratio"] = 1.2

        # where the time goes: Python and invoke start-up, and the phases in process
        start = time.monotonic()
        subprocess.run([str(INVOKE), "--list"], cwd=ROOT, env=env, capture_output=True, check=True)
        startup = time.monotonic() - start
        start = time.monotonic()
        plan = commands.make_plan(**flags)
        planned = time.monotonic() - start
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        bare = time.monotonic() - start
        prof = tmp / "invoke-build.prof"
        profiled = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "invoke"]
        subprocess.run([*profiled, "build", *cli_flags], cwd=ROOT, env=env, capture_output=True)
        results["profile_cumulative_s"] = top_functions(prof)
        results["profile_project_cumulative_s"] = top_functions(prof, where="kilosort_docker")
        results["profile_own_time_s"] = top_functions(prof, column=2)
        results["breakdown_s"] = {
            "python_startup_s": round(bare, 2),
            "invoke_startup_s": round(startup, 2),
            "plan_s": round(planned, 2),
            **breakdown(plan, client),
        }

        registry = stack.enter_context(support.registry())
        registry_prefix = f"{registry}/"
        push: dict[str, dict] = {"first push": push_bytes(client, plan, registry)}
        invoke_build(cli_flags, env, log)
        if image_ids(client, plan) != ids:
            raise RuntimeError("a no-op invoke build changed an image ID")
        push["after a no-op rebuild"] = push_bytes(client, plan, registry)
        dated = {**env, "SOURCE_DATE_EPOCH": str(int(time.time()))}
        results["clock_dated_build_s"] = round(invoke_build(cli_flags, dated, log), 2)
        push["after a clock-dated rebuild (before the fix)"] = push_bytes(client, plan, registry)
        results["push"] = push
        for name, pushed in push.items():
            print(f"{name}: {pushed['bytes']} bytes in {pushed['layers_pushed']} layers")
        load["after"] = list(os.getloadavg())
        results["load_average"] = load
        results["uptime"] = subprocess.run(
            ["uptime"], capture_output=True, text=True
        ).stdout.strip()
        results["removed_images"] = cleanup(client, before, logged_images(log), registry_prefix)
    print(json.dumps(results, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "noop_rebuild.json").write_text(json.dumps(results, indent=2) + "\n")
    figure(results, args.out / "noop_rebuild.png")
    print(f"wrote {args.out / 'noop_rebuild.json'} and noop_rebuild.png")
    return 0


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = [
        "docker build (CLI)",
        "invoke build",
        "invoke build, clock-dated\n(before the fix; 1 run)",
    ]
    values = [results["cli_median_s"], results["invoke_median_s"], results["clock_dated_build_s"]]
    left.barh(names, values, color=["#888888", "#1f77b4", "#d62728"])
    for y, runs in ((0, results["docker_cli_s"]), (1, results["invoke_build_s"])):
        left.plot(runs, [y] * len(runs), "k.", alpha=0.6)
    left.axvline(1.2 * results["cli_median_s"], color="k", ls="--", lw=1, label="1.2x CLI")
    for y, v in enumerate(values):
        left.text(v, y, f" {v:.2f} s", va="center")
    left.set_xlim(0, max(values) * 1.25)
    left.set_xlabel(f"no-op rebuild of 4 images, s (median of {results['runs']}; dots: runs)")
    left.set_title(f"invoke build / docker build = {results['ratio']:.2f}x")
    left.legend(loc="lower right")
    push = results["push"]
    labels = [name.replace(" (before", "\n(before") for name in push]
    right.barh(labels, [p["bytes"] / 1e6 for p in push.values()], color="#2ca02c")
    right.set_xlim(0, max(p["bytes"] for p in push.values()) / 1e6 * 1.9)
    for y, p in enumerate(push.values()):
        right.text(
            p["bytes"] / 1e6, y, f" {p['bytes']:,} B, {p['layers_pushed']} layers", va="center"
        )
    right.set_xlabel("bytes a push uploads (MB)")
    right.set_title("push to a local registry")
    load = results["load_average"]
    fig.suptitle(
        f"No-op rebuild on {results['cpu_count']} cores, shared machine "
        f"(load {load['before'][0]:.1f} -> {load['after'][0]:.1f})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python3 -m kilosort_docker.mex COMMAND ...`` or ``python3 mex.pyz COMMAND ...``.

Commands: ``plan`` (the build plan JSON), ``commands`` (dry run), ``makefile``, ``manifest``,
``build`` (compile + manifest, swapped into place atomically) and ``verify`` (checksums, and
with ``--compute-capability`` how each binary runs on that GPU). The build stage of the
kilosort3 image runs ``python3 -I mex.pyz build --plan plan.json ...`` (see
:mod:`kilosort_docker.mex.pyz`). Exit status: 0 ok, 1 verification errors, 2 a UserError
(printed as one ``error: ...`` line on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from kilosort_docker.errors import UserError
from kilosort_docker.mex.commands import dry_run, write_makefile
from kilosort_docker.mex.gencode import Gencode
from kilosort_docker.mex.make import build
from kilosort_docker.mex.manifest import verify_manifest, write_manifest
from kilosort_docker.mex.runtime import predict_directory
from kilosort_docker.mex.sources import MexSpec, get_spec
from kilosort_docker.mex.toolchain import MexPlan, Toolchain, toolchain_from_profile


def _plan_from_args(args: argparse.Namespace) -> MexPlan:
    if args.plan:
        plan = MexPlan.from_json(Path(args.plan).read_text())
    else:
        if args.profile:
            try:
                from kilosort_docker.images.profiles import get_profile
            except ImportError as exc:
                raise UserError(
                    "--profile needs the kilosort_docker package: pass --plan or the "
                    "toolchain flags instead"
                ) from exc
            chain = toolchain_from_profile(get_profile(args.profile), args.gencode or ())
        else:
            if not (args.matlab_root and args.cuda_root and args.cuda_version):
                raise UserError(
                    "give --plan FILE, --profile NAME, or --matlab-root, --cuda-root and "
                    "--cuda-version"
                )
            chain = Toolchain(
                profile=args.profile_name or "custom",
                matlab_root=args.matlab_root,
                cuda_root=args.cuda_root,
                cuda_version=args.cuda_version,
                host_compiler=args.host_compiler or "g++",
                gencode=tuple(Gencode.parse(g) for g in (args.gencode or [])),
                gpu_mex_library=args.gpu_mex_library,
            ).validated()
        if args.spec:
            spec = MexSpec.from_dict(json.loads(Path(args.spec).read_text()))
        else:
            spec = get_spec(
                args.kilosort_version,
                ensure_determ=args.ensure_determ,
                diagnostic=not args.no_diagnostic,
            )
        plan = MexPlan(chain, spec, args.src_dir or "Kilosort/CUDA", args.kilosort_commit)
    if args.plan and args.gencode:
        chain = replace(
            plan.toolchain,
            gencode=plan.toolchain.gencode + tuple(Gencode.parse(g) for g in args.gencode),
        )
        plan = replace(plan, toolchain=chain)
    plan = plan.with_paths(
        matlab_root=args.matlab_root, cuda_root=args.cuda_root, src_dir=args.src_dir
    )
    return replace(plan, toolchain=plan.toolchain.validated())


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Build Kilosort's CUDA mex files the way mexcuda does."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plan", help="build plan JSON (from the `plan` command)")
    common.add_argument("--profile", help="profile name (host side only)")
    common.add_argument("--profile-name", help="profile name to record (with toolchain flags)")
    common.add_argument("--matlab-root")
    common.add_argument("--cuda-root")
    common.add_argument("--cuda-version")
    common.add_argument("--host-compiler")
    common.add_argument("--gpu-mex-library", default="mwgpu")
    common.add_argument("--gencode", action="append", help="compute_XY,sm_XY (repeatable)")
    common.add_argument("--kilosort-version", default="3.0.2")
    common.add_argument("--kilosort-commit", default="unknown")
    common.add_argument("--spec", help="mex spec JSON instead of a Kilosort version")
    common.add_argument("--ensure-determ", action="store_true")
    common.add_argument("--no-diagnostic", action="store_true", help="skip mexGPUExample")
    common.add_argument("--src-dir", help="Kilosort's CUDA folder")
    common.add_argument("--out-dir", default="mex-out")
    common.add_argument("--obj-dir", default="obj")

    sub.add_parser("plan", parents=[common], help="write the build plan JSON to stdout")
    sub.add_parser("commands", parents=[common], help="print the commands (dry run)")
    mk = sub.add_parser("makefile", parents=[common], help="write a Makefile")
    mk.add_argument("-o", "--output", default="Makefile")
    man = sub.add_parser("manifest", parents=[common], help="write the manifest into --out-dir")
    man.add_argument("--cuobjdump")
    bld = sub.add_parser("build", parents=[common], help="compile + manifest, atomically")
    bld.add_argument("-j", "--jobs", type=int)
    bld.add_argument("--replace", action="store_true")
    ver = sub.add_parser("verify", help="check a folder against its manifest")
    ver.add_argument("directory")
    ver.add_argument("--compute-capability", help="predict how each binary runs, e.g. 9.0")
    ver.add_argument("--expect-profile")
    ver.add_argument("--expect-commit")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Command-line entry point; returns the exit status (1 for verification errors, 2 for a
    UserError). ``prog`` is the program name in usage lines (default: ``sys.argv[0]``'s)."""
    args = _parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "verify":
            problems = verify_manifest(
                args.directory, profile=args.expect_profile, kilosort_commit=args.expect_commit
            )
            for problem in problems:
                print(problem)
            if args.compute_capability and not any(p.severity == "error" for p in problems):
                for pred in predict_directory(args.directory, args.compute_capability):
                    print(f"{pred.binary}: {pred.mode}" + (f" ({pred.via})" if pred.via else ""))
            return 1 if any(p.severity == "error" for p in problems) else 0
        plan = _plan_from_args(args)
        if args.command == "plan":
            print(plan.to_json())
        elif args.command == "commands":
            sys.stdout.write(dry_run(plan, out_dir=args.out_dir, obj_dir=args.obj_dir))
        elif args.command == "makefile":
            write_makefile(plan, args.output, out_dir=args.out_dir, obj_dir=args.obj_dir)
        elif args.command == "manifest":
            write_manifest(args.out_dir, plan, obj_var=args.obj_dir, cuobjdump=args.cuobjdump)
            problems = verify_manifest(args.out_dir)
            for problem in problems:
                print(problem)
        elif args.command == "build":
            build(plan, args.out_dir, jobs=args.jobs, replace_existing=args.replace)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

"""``python -m kilosort_docker.sorting RECORDING --probe PROBE --out DIR [...]``: the same
command as ``invoke sort`` (both call :func:`execute`).

Exit status: 0 sorted (or a dry run that found nothing wrong); 1 the sort ran and failed
(``OUT/sort-record.json`` says how); 2 bad input, refused before any work, one line on stderr
naming the fix.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from kilosort_docker.errors import UserError
from kilosort_docker.sorting import runner
from kilosort_docker.sorting.runner import (
    DEVICES,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_SORTED,
    SORTERS,
    SortRequest,
)

log = logging.getLogger(__name__)

#: Help of each option, shared by argparse here and ``invoke sort --help``.
HELP = {
    "probe": "probe file: probeinterface JSON, .prb, a SpikeGLX .meta (Neuropixels 1.0/2.0) "
    "or Kilosort's chanMap.mat",
    "out": "output folder: phy files, sort-record.json, and sort-complete.json once finished",
    "sorter": "kilosort4 (default) or kilosort3",
    "image": "image to sort in (default: the one `invoke build` made for the profile)",
    "device": "Kilosort 4: cuda, cpu or auto (default: cuda when there is a GPU)",
    "settings": "JSON file: Kilosort 4 settings, or Kilosort 3 ops overrides",
    "channels": "channels per sample of a raw int16 binary with no SpikeGLX .meta beside it",
    "sampling_rate": "sampling rate in Hz of such a binary",
    "runtime": "container runtime (default docker)",
    "host": "sort on this machine, no container (Kilosort 4: the kilosort package; "
    "Kilosort 3: a local MATLAB)",
    "overwrite": "replace a sort already in --out (only the files its record lists)",
    "license": "Kilosort 3: MATLAB license in any FlexLM form: port@host, @host, a triad, a "
    "colon-separated list, a license file or a folder of .lic files (default $MLM_LICENSE_FILE)",
    "mac_address": "Kilosort 3: the licensed MAC address of a host-locked license",
    "dry_run": "check the inputs and print what would be done; run and write nothing",
    "profile": "release profile whose built image is the default --image",
    "verbose": "show debug logging",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kilosort_docker.sorting",
        description="Sort a recording with Kilosort 4 or 3 in this project's image; write a "
        "phy folder you own, sort-record.json and, once finished, sort-complete.json.",
    )
    p.add_argument("recording", type=Path, help="raw int16 binary, SpikeGLX/Open Ephys folder, NWB")
    p.add_argument("--probe", type=Path, required=True, help=HELP["probe"])
    p.add_argument("--out", type=Path, required=True, help=HELP["out"])
    p.add_argument("--sorter", choices=SORTERS, default="kilosort4", help=HELP["sorter"])
    p.add_argument("--image", help=HELP["image"])
    p.add_argument("--device", choices=DEVICES, default="auto", help=HELP["device"])
    p.add_argument("--settings", type=Path, help=HELP["settings"])
    p.add_argument("--channels", type=int, help=HELP["channels"])
    p.add_argument("--sampling-rate", type=float, help=HELP["sampling_rate"])
    p.add_argument("--runtime", default="docker", help=HELP["runtime"])
    p.add_argument("--host", action="store_true", help=HELP["host"])
    p.add_argument("--overwrite", action="store_true", help=HELP["overwrite"])
    p.add_argument("--license", help=HELP["license"])
    p.add_argument("--mac-address", help=HELP["mac_address"])
    p.add_argument("--dry-run", action="store_true", help=HELP["dry_run"])
    p.add_argument("--profile", help=HELP["profile"])
    p.add_argument("-v", "--verbose", action="store_true", help=HELP["verbose"])
    return p


def request_from_args(args: argparse.Namespace) -> SortRequest:
    return SortRequest(
        recording=args.recording,
        probe=args.probe,
        out=args.out,
        sorter=args.sorter,
        image=args.image,
        device=args.device,
        settings=args.settings,
        channels=args.channels,
        sampling_rate=args.sampling_rate,
        runtime=args.runtime,
        host=args.host,
        overwrite=args.overwrite,
        license=args.license,
        mac_address=args.mac_address,
        dry_run=args.dry_run,
        profile=args.profile,
    )


def _number(kind, value, flag: str):
    if value is None or isinstance(value, kind):
        return value
    try:
        return kind(value)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise UserError(f"{flag} must be {what}, not {value!r}") from None


def request_from_flags(
    recording: str | None, *, probe: str | None, out: str | None, **flags
) -> SortRequest:
    """A request from ``invoke sort``'s flags (text where invoke gives text).

    Raises:
        UserError: a required flag is missing, or ``--channels``/``--sampling-rate`` is not a
            number.
    """
    missing = [
        n for n, v in (("RECORDING", recording), ("--probe", probe), ("--out", out)) if not v
    ]
    if missing:
        raise UserError(f"missing {', '.join(missing)}: invoke sort RECORDING --probe P --out DIR")
    flags["channels"] = _number(int, flags.get("channels"), "--channels")
    flags["sampling_rate"] = _number(float, flags.get("sampling_rate"), "--sampling-rate")
    return SortRequest(recording=recording, probe=probe, out=out, **flags)


def execute(request: SortRequest) -> int:
    """Run ``request`` with terminal output (progress, the summary, one-line errors on
    stderr); returns the exit status (see the module docstring)."""
    from kilosort_docker import ui
    from kilosort_docker.sorting.summary import summary_table

    try:
        if request.dry_run:
            plan = runner.sort(request).plan  # checks only, the image's presence included
            ui.console.print(plan.describe(), markup=False, highlight=False, soft_wrap=True)
            ui.console.print("dry run: nothing was run or written", markup=False)
            return EXIT_SORTED
        bar: dict = {}

        def on_convert(done: int, total: int) -> None:
            # a progress bar for the conversion only: the sorter's own lines follow it
            if not bar:
                bar["progress"] = ui.progress_bar()
                bar["progress"].start()
                bar["task"] = bar["progress"].add_task("converting to int16", total=total)
            bar["progress"].update(bar["task"], completed=done)
            if done >= total:
                bar["progress"].stop()

        try:
            outcome = runner.sort(request, on_convert=on_convert)
        finally:
            if bar:
                bar["progress"].stop()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    record = f"{outcome.plan.out}/sort-record.json"
    if not outcome.ok:
        print(
            f"error: the sort failed: {outcome.error}; see {record}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAILED
    title = f"{request.sorter} sorted {outcome.plan.recording.path.name}"
    ui.console.print(summary_table(outcome.summary, title=title, out=outcome.plan.out))
    ui.console.print(f"record: {record}", markup=False, highlight=False, soft_wrap=True)
    return EXIT_SORTED


def main(argv: Sequence[str] | None = None) -> int:
    from kilosort_docker import ui

    args = build_parser().parse_args(argv)
    ui.setup_logging(args.verbose)
    logging.getLogger("faiss").setLevel(logging.WARNING)
    return execute(request_from_args(args))

"""Terminal output for the front ends: live build progress and summary tables (rich)."""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from kilosort_docker.images.build import BuildEvents, BuiltImage
from kilosort_docker.images.plan import BuildPlan, BuildStep
from kilosort_docker.images.profiles import PROFILES
from kilosort_docker.images.push import Pushed
from kilosort_docker.images.stack import STACK

#: The width of tables and plans written off a terminal (CI logs, files, pipes), where rich
#: would otherwise assume 80 columns and cut references and digests to ``sha256:33b8…``.
#: Tables take only the width their content needs; ``COLUMNS`` still wins where it is set.
OFF_TERMINAL_WIDTH = 1000


def make_console(*, stderr: bool = False) -> Console:
    """A console for stdout (or stderr): the terminal's width on a terminal, else
    :data:`OFF_TERMINAL_WIDTH` (unless ``COLUMNS`` is set), so nothing is truncated in logs."""
    probe = Console(stderr=stderr)
    wide = not probe.is_terminal and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, highlight=False, width=OFF_TERMINAL_WIDTH if wide else None)


console = make_console()


def setup_logging(verbose: bool = False) -> None:
    """One rich handler on the root logger; INFO by default, DEBUG with ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, markup=False)],
        force=True,
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("docker").setLevel(logging.WARNING)


class ProgressEvents(BuildEvents):
    """Build events shown as a progress bar per image, with the build output above it."""

    def __init__(self, progress: Progress, plan: BuildPlan) -> None:
        super().__init__()
        self.progress = progress
        self.tasks = {
            step.spec.name: progress.add_task(step.spec.name, total=None, start=False)
            for step in plan.steps
        }
        self.on_start = self._start
        self.on_step = self._step
        self.on_output = self._output
        self.on_done = self._done

    def _start(self, step: BuildStep, index: int) -> None:
        self.progress.start_task(self.tasks[step.spec.name])

    def _step(self, step: BuildStep, number: int, total: int, text: str) -> None:
        self.progress.update(
            self.tasks[step.spec.name],
            total=total,
            completed=number - 1,
            description=f"{step.spec.name}: {text[:60]}",
        )

    def _output(self, step: BuildStep, line: str) -> None:
        self.progress.console.print(f"{step.spec.name} | {line}", markup=False, highlight=False)

    def _done(self, built: BuiltImage) -> None:
        task = self.tasks[built.step.spec.name]
        total = self.progress.tasks[task].total or 1
        self.progress.update(task, completed=total, description=f"{built.step.spec.name}: done")


def progress_bar() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.0f} MB"


def built_table(built: list[BuiltImage]) -> Table:
    table = Table(title="Built images")
    for column in ("image", "tags", "size", "build time", "image ID (digest)"):
        table.add_column(column)
    for item in built:
        table.add_row(
            item.step.repository,
            "\n".join(item.step.tags),
            _size(item.size),
            f"{item.seconds:.0f} s",
            item.image_id,
        )
    return table


def pushed_table(pushed: list[Pushed]) -> Table:
    table = Table(title="Pushed")
    table.add_column("reference")
    table.add_column("manifest digest")
    for item in pushed:
        table.add_row(item.ref, item.digest)
    return table


def stack_table() -> Table:
    table = Table(title="Image stack (parents first)")
    for column in ("image", "parent", "needs a license to run", "what it holds"):
        table.add_column(column)
    for spec in STACK:
        parent = spec.parent or spec.external_base
        table.add_row(spec.name, parent, "yes" if spec.needs_license else "no", spec.title)
    return table


def profiles_table(default: str) -> Table:
    table = Table(title="Release profiles")
    columns = ("profile", "MATLAB", "base image", "Ubuntu", "CUDA", "compiler", "gencode", "values")
    for column in columns:
        table.add_column(column)
    for name, p in PROFILES.items():
        label = f"{name} (default)" if name == default else name
        if not p.verified:
            label += " (inferred)"
        gencode = ", ".join(g.code for g in p.gencode)
        # A profile not read off MathWorks' image says so in its own column, in red.
        values = "verified" if p.verified else "[bold red]UNVERIFIED: inferred[/]"
        table.add_row(
            label,
            p.matlab_release,
            p.base_image,
            p.ubuntu,
            p.cuda,
            p.host_compiler,
            gencode,
            values,
        )
    if any(not p.verified for p in PROFILES.values()):
        table.caption = (
            "UNVERIFIED: values inferred from MathWorks' documentation, not read off the image"
        )
    return table


def runtime_table(predictions, compute_capability: str) -> Table:
    """How each mex file runs on a GPU of ``compute_capability``."""
    table = Table(title=f"On a GPU of compute capability {compute_capability}")
    for column in ("mex file", "runs", "through"):
        table.add_column(column)
    words = {"native": "natively (SASS)", "ptx-jit": "through PTX JIT", "none": "NOT AT ALL"}
    for item in predictions:
        table.add_row(item.binary, words.get(item.mode, item.mode), item.via or "-")
    return table


def findings_table(findings) -> Table:
    """One row per image check: image, check, PASS/FAIL, what it found."""
    table = Table(title="Image checks")
    for column in ("image", "check", "result", "found"):
        table.add_column(column)
    for item in findings:
        table.add_row(item.image, item.check, "PASS" if item.ok else "FAIL", item.detail)
    return table

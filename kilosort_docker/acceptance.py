"""``invoke acceptance``: a licensed maintainer's end-to-end check of a ``kilosort3`` image.

On a machine with a MATLAB license and an NVIDIA GPU it runs, in order, stopping at the first
step that does not pass:

1. ``check-gpu``: :func:`kilosort_docker.commands.check_gpu` (``gpuDevice`` and
   ``mexGPUExample`` in the image, through :func:`kilosort_docker.matlab.run_batch`);
2. ``ground-truth``: the Kilosort3 ground-truth test in container mode,
   ``python -m kilosort_docker.groundtruth --sorter kilosort3 --mode container`` (see
   :mod:`kilosort_docker.groundtruth.run` for its exit codes: 0 pass, 1 fail, 2 usage, 77
   skipped with ``skipped: <reason>`` as the last stderr line).

Whatever happens once the steps start, it writes a JSON report (:class:`Report`) under
``benchmarks/acceptance/`` for the maintainer to commit: each step's status and wall time,
the image (reference, ID, digests, Kilosort commit), the GPU and its compute capability,
whether CUDA forward compatibility was on, the license's form (never its value, host names,
path or contents), the ground-truth verdict and scores, and the kilosort-docker version. A
report is never overwritten.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kilosort_docker import matlab
from kilosort_docker.errors import UserError
from kilosort_docker.paths import ROOT
from kilosort_docker.secrets import redact

log = logging.getLogger(__name__)

#: Where reports go by default: ``<profile>-<UTC date>-<gpu>.json``, committed by maintainers.
REPORT_DIR = ROOT / "benchmarks" / "acceptance"
#: Where the ground-truth test writes its phy folders and figures (``build/`` is not committed).
WORK_DIR = ROOT / "build" / "acceptance"
#: Version of the report's layout; bumped when a field changes meaning.
SCHEMA = 1
#: The ground-truth recording's length: 120 s is what the ``small`` size of
#: ``thresholds/kilosort3.toml`` (32-64 channels) is stated for.
DEFAULT_DURATION_S = 120.0
STEPS = ("check-gpu", "ground-truth")
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
#: How the ground-truth test is started; its arguments follow.
GROUNDTRUTH_COMMAND = (sys.executable, "-m", "kilosort_docker.groundtruth")
#: The ground-truth harness's exit codes (kilosort_docker/groundtruth/run.py).
GT_PASS, GT_FAIL, GT_USAGE, GT_SKIP = 0, 1, 2, 77
GT_SKIP_PREFIX = "skipped: "
#: Image labels read into the report (set by ``invoke build``; the Kilosort commit by the
#: kilosort3-code Dockerfile from the commit actually checked out).
KILOSORT_COMMIT_LABEL = "io.kilosort-docker.kilosort.commit"
PROFILE_LABEL = matlab.PROFILE_LABEL
VERSION_LABEL = "org.opencontainers.image.version"
REVISION_LABEL = "org.opencontainers.image.revision"
#: The summary.json keys of the ground-truth test copied into the report (its host paths,
#: such as ``simulation_folder``, are left out).
SUMMARY_KEYS = (
    "passed",
    "reasons",
    "n_gt_units",
    "n_well_detected",
    "n_high_snr",
    "n_well_detected_high_snr",
    "median_accuracy",
    "n_clusters",
    "n_good_clusters",
    "thresholds",
    "simulation",
    "runs",
    "identical_runs",
)


# --------------------------------------------------------------------------- the records


@dataclass(frozen=True)
class Gpu:
    """The host's GPU as ``nvidia-smi --query-gpu=name,compute_cap,driver_version`` reports
    it (the one with the highest compute capability when there are several).

    Attributes:
        name: e.g. ``NVIDIA H200``.
        compute_capability: ``"X.Y"``, e.g. ``"9.0"``.
        driver_version: the NVIDIA driver, e.g. ``"550.90.07"``.
        count: how many GPUs nvidia-smi lists.
    """

    name: str
    compute_capability: str | None
    driver_version: str | None
    count: int = 1

    @property
    def slug(self) -> str:
        """The name for a file name: ``NVIDIA H200`` -> ``nvidia-h200``."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "gpu"


@dataclass(frozen=True)
class LicenseForm:
    """What kind of license was used, without the license itself.

    Attributes:
        form: ``server`` (a server given as ``port@host``, ``@host``, a triad or a list of
            them), ``file`` (a license file or folder of ``.lic`` files whose ``SERVER`` lines
            name the server) or ``host-locked`` (a license file or folder naming no server:
            MATLAB checks the container's MAC address against it).
        detail: e.g. ``three-server triad``, ``license file with SERVER lines``.
        servers: how many license servers it names (0 for host-locked).
        mac_address_given: whether ``--mac-address`` was passed (its value is not recorded).
    """

    form: str
    detail: str
    servers: int
    mac_address_given: bool = False


@dataclass(frozen=True)
class ImageInfo:
    """The image the acceptance ran, as the Docker engine describes it.

    Attributes:
        ref: the reference given (``kilosortdocker/kilosort3:3.0.2-r2022b-b1``).
        id: the image ID (``sha256:...``, the digest of its configuration).
        repo_digests: registry digests (``repo@sha256:...``); empty for an image never pushed
            or pulled.
        profile: its ``io.kilosort-docker.profile`` label.
        kilosort_commit: its ``io.kilosort-docker.kilosort.commit`` label.
        version: its ``org.opencontainers.image.version`` label.
        revision: its ``org.opencontainers.image.revision`` label (this repository's commit).
    """

    ref: str
    id: str | None = None
    repo_digests: tuple[str, ...] = ()
    profile: str | None = None
    kilosort_commit: str | None = None
    version: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class StepResult:
    """One step of the acceptance.

    Attributes:
        name: ``check-gpu`` or ``ground-truth``.
        status: ``passed``, ``failed`` or ``skipped``.
        reason: one line (license and MAC address redacted); None when it passed.
        seconds: wall-clock seconds the step took (0 when it did not run).
    """

    name: str
    status: str
    reason: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Report:
    """The acceptance report written as JSON (:func:`write_report`).

    ``status`` is ``passed`` only when every step passed; a skipped step (the ground-truth
    test's preflight found something missing) leaves the acceptance ``failed``: a check that
    could not run does not pass. Times are UTC ISO 8601; durations in seconds.
    """

    status: str
    profile: str
    image: ImageInfo
    gpu: Gpu | None
    forward_compatibility: bool
    license: LicenseForm
    duration_s: float
    steps: tuple[StepResult, ...]
    started: str
    finished: str
    seconds: float
    groundtruth: Mapping[str, Any] | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        data = asdict(self)
        data["image"]["repo_digests"] = list(self.image.repo_digests)
        data["steps"] = [asdict(s) | {"seconds": round(s.seconds, 3)} for s in self.steps]
        data["groundtruth"] = dict(self.groundtruth) if self.groundtruth is not None else None
        data["versions"] = dict(self.versions)
        return data

    @property
    def first_failure(self) -> StepResult | None:
        """The first step that did not pass, or None."""
        return next((s for s in self.steps if s.status != PASSED), None)


@dataclass(frozen=True)
class Plan:
    """What one acceptance run does, checked before any work (:func:`make_plan`).

    Attributes:
        profile: release profile name (``r2022b``).
        image: the ``kilosort3`` image reference.
        license: the resolved license (its value never leaves this object but for the runs).
        mac_address: for a host-locked license (``docker run --mac-address``).
        duration_s: length of the simulated recording, in seconds.
        report_path: where the report will be written (a new file).
        pick_free_name: when the report path is taken by the time the report is written, add
            ``-2``, ``-3``... instead of failing (the default path; not a given ``--out``).
        work_dir: the ground-truth test's output folder.
        gpu: the host's GPU (None when nvidia-smi lists none).
    """

    profile: str
    image: str
    license: matlab.License = field(repr=False)
    mac_address: str | None = field(default=None, repr=False)
    duration_s: float = DEFAULT_DURATION_S
    report_path: Path = REPORT_DIR / "report.json"
    pick_free_name: bool = True
    work_dir: Path = WORK_DIR
    gpu: Gpu | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Strings kept out of every reason and log line: the license, its servers, the MAC."""
        return (*self.license.secrets, *((self.mac_address,) if self.mac_address else ()))

    def groundtruth_argv(self, command: Sequence[str] = GROUNDTRUTH_COMMAND) -> list[str]:
        """The ground-truth test's command line. The license is not on it (a command line is
        visible to every user of the machine): it goes in the environment, see
        :meth:`groundtruth_environment`."""
        argv = [
            *command,
            "--sorter",
            "kilosort3",
            "--mode",
            "container",
            "--image",
            self.image,
            "--duration",
            f"{self.duration_s:g}",
            "--out",
            str(self.work_dir),
        ]
        if self.mac_address:
            argv += ["--mac-address", self.mac_address]
        return argv

    def groundtruth_environment(self) -> dict[str, str]:
        """This process's environment with ``MLM_LICENSE_FILE`` set to the license (the
        ground-truth test reads it there when ``--license`` is not given)."""
        return {**os.environ, "MLM_LICENSE_FILE": self.license.value}

    def describe(self) -> str:
        """What a dry run prints: the steps and the report path (no license value)."""
        form = license_form(self.license, mac_address=self.mac_address)
        gpu = (
            f"{self.gpu.name} (compute capability {self.gpu.compute_capability or '?'})"
            if self.gpu
            else "none found by nvidia-smi"
        )
        shown = self.groundtruth_argv(("python", "-m", "kilosort_docker.groundtruth"))
        if self.mac_address:
            shown[-1] = "<MAC address>"
        return "\n".join(
            [
                f"profile: {self.profile}",
                f"image: {self.image}",
                f"license: {form.form} ({form.detail}), given to the containers at run time",
                f"GPU: {gpu}",
                "steps:",
                f"  1. check-gpu: gpuDevice and mexGPUExample in {self.image}",
                "  2. ground-truth: MLM_LICENSE_FILE=<license> " + " ".join(shown),
                f"report: {self.report_path}",
            ]
        )


# --------------------------------------------------------------------------- inputs


def license_form(lic: matlab.License, *, mac_address: str | None = None) -> LicenseForm:
    """The form of ``lic`` (see :class:`LicenseForm`), from what
    :func:`kilosort_docker.matlab.resolve_license` found; never its value."""
    n = len(lic.servers)
    if lic.kind == "server":
        items = lic.value.split(":")
        if len(items) > 1:
            detail = f"list of {len(items)} license server entries"
        elif "," in lic.value:
            detail = "three-server triad"
        else:
            detail = "port@host" if lic.servers and lic.servers[0][1] else "@host"
        return LicenseForm("server", detail, n, bool(mac_address))
    where = "license file" if lic.kind == "file" else "folder of .lic files"
    if n:
        return LicenseForm("file", f"{where} with SERVER lines", n, bool(mac_address))
    return LicenseForm("host-locked", f"host-locked {where}", 0, bool(mac_address))


def query_gpu(nvidia_smi: str = "nvidia-smi") -> Gpu | None:
    """The host's GPU from ``nvidia-smi --query-gpu=name,compute_cap,driver_version
    --format=csv,noheader`` (one line per GPU; NVIDIA's nvidia-smi documentation); the one
    with the highest compute capability. None when nvidia-smi is absent, fails or lists none."""
    rows = matlab.nvidia_smi_query(["name", "compute_cap", "driver_version"], nvidia_smi)
    if not rows:
        return None

    def key(row: list[str]) -> tuple[int, int]:
        m = re.fullmatch(r"(\d+)\.(\d+)", row[1])
        return (int(m[1]), int(m[2])) if m else (-1, -1)

    name, cc, driver = max(rows, key=key)
    return Gpu(name, cc if key([name, cc, driver]) >= (0, 0) else None, driver or None, len(rows))


def default_report_path(profile: str, gpu: Gpu | None, *, folder: Path = REPORT_DIR) -> Path:
    """``folder/<profile>-<UTC date>-<gpu>.json``, or with ``-2``, ``-3``... when taken."""
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    stem = f"{profile}-{date}-{gpu.slug if gpu else 'no-gpu'}"
    return _free_name(folder / f"{stem}.json")


def _free_name(path: Path) -> Path:
    n = 1
    candidate = path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def make_plan(
    *,
    license: str | None,
    profile: str,
    image: str | None = None,
    namespace: str | None = None,
    mac_address: str | None = None,
    out: str | os.PathLike | None = None,
    duration_s: float | str = DEFAULT_DURATION_S,
    gpu: Gpu | None = None,
) -> Plan:
    """Check the inputs and decide what to run, before any work (no container starts).

    Args:
        license: any ``MLM_LICENSE_FILE`` form; None reads ``$MLM_LICENSE_FILE``.
        profile: release profile; picks the default image.
        image: the ``kilosort3`` image; default: the one ``invoke build`` made for
            ``profile`` (its build record, else the default tag).
        namespace: repository namespace of the default image.
        mac_address: the licensed MAC address of a host-locked license.
        out: the report file; default :func:`default_report_path`.
        duration_s: simulated recording length in seconds (> 0, finite), or its text.
        gpu: the host's GPU; default :func:`query_gpu`.

    Raises:
        UserError: no license or one FlexLM does not accept (see
            :func:`kilosort_docker.matlab.resolve_license`); an unknown profile; a duration
            that is not positive; ``out`` exists already or is not a ``.json`` file name;
            ``image`` breaks Docker's reference grammar.
    """
    from kilosort_docker import commands
    from kilosort_docker.images.profiles import get_profile
    from kilosort_docker.images.references import check_reference

    chosen = get_profile(profile).name
    lic = matlab.resolve_license(license)
    try:  # the task passes the flag's text through: a bad value is this one line
        seconds = float(duration_s)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not (seconds > 0 and seconds != float("inf")):
        raise UserError(f"--duration must be a positive number of seconds, not {duration_s!r}")
    duration_s = seconds
    if image is None:
        _, built = commands.built_plan(profile=chosen, images=["kilosort3"], namespace=namespace)
        image = built[-1][0].refs[0]
    check_reference(image, what="--image", fix="give --image as [registry/]name[:tag], lowercase")
    gpu = gpu if gpu is not None else query_gpu()
    if out is not None:
        path = Path(out)
        if path.suffix != ".json":
            raise UserError(f"--out {path} must name a .json file: the report is JSON")
        if path.exists():
            raise UserError(
                f"{path} exists: reports are never overwritten; pass another --out or leave "
                "it out for a new name"
            )
        pick_free = False
    else:
        path = default_report_path(chosen, gpu)
        pick_free = True
    return Plan(
        profile=chosen,
        image=image,
        license=lic,
        mac_address=mac_address,
        duration_s=float(duration_s),
        report_path=path,
        pick_free_name=pick_free,
        work_dir=WORK_DIR / path.stem,
        gpu=gpu,
    )


# --------------------------------------------------------------------------- the steps


def image_info(client, ref: str) -> ImageInfo:
    """What the engine says about ``ref`` (see :class:`ImageInfo`).

    Raises:
        UserError: ``ref`` breaks Docker's reference grammar, the image is not present (build
            it first), or the engine refused the lookup (one line).
    """
    import docker.errors

    from kilosort_docker.images.references import check_reference

    check_reference(ref, what="--image", fix="give --image as [registry/]name[:tag], lowercase")
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        raise UserError(f"{ref} is not built: run `invoke build --image kilosort3` first") from None
    except docker.errors.DockerException as error:
        said = str(error).strip()
        message = said.splitlines()[-1] if said else type(error).__name__
        raise UserError(f"could not look up {ref}: {message}") from None
    labels = image.labels or {}
    return ImageInfo(
        ref=ref,
        id=image.id,
        repo_digests=tuple(image.attrs.get("RepoDigests") or ()),
        profile=labels.get(PROFILE_LABEL),
        kilosort_commit=labels.get(KILOSORT_COMMIT_LABEL),
        version=labels.get(VERSION_LABEL),
        revision=labels.get(REVISION_LABEL),
    )


def check_gpu_step(plan: Plan, *, gpu: bool = True) -> StepResult:
    """Run ``check-gpu`` (:func:`kilosort_docker.commands.check_gpu`) in the plan's image,
    after probing the license (:meth:`kilosort_docker.matlab.License.reachable`: a file is
    readable, a server answers), so that an unreachable server fails before a container starts.

    ``gpu=False`` starts the container without GPUs (tests on the stand-in MATLAB base).
    A UserError (MATLAB failed, Docker refused the GPU request...) is a failed step whose
    reason is its one line, license and MAC address redacted.
    """
    from kilosort_docker import commands

    start = time.perf_counter()
    unusable = plan.license.reachable()
    if unusable:
        reason = _one_line(f"license: {unusable}", plan.secrets)
        return StepResult("check-gpu", FAILED, reason, time.perf_counter() - start)
    try:
        commands.check_gpu(
            image=plan.image, license=plan.license.value, mac_address=plan.mac_address, gpu=gpu
        )
    except UserError as exc:
        return StepResult(
            "check-gpu", FAILED, _one_line(str(exc), plan.secrets), time.perf_counter() - start
        )
    return StepResult("check-gpu", PASSED, None, time.perf_counter() - start)


def groundtruth_step(
    plan: Plan,
    *,
    command: Sequence[str] = GROUNDTRUTH_COMMAND,
    on_line: Callable[[str], None] | None = None,
) -> tuple[StepResult, dict[str, Any] | None]:
    """Run the Kilosort3 ground-truth test in container mode (``command`` plus
    :meth:`Plan.groundtruth_argv`'s arguments) and read its verdict.

    Its output is logged line by line (``on_line`` gets each line too), license and MAC
    address redacted. Exit 0 is ``passed``; 77 is ``skipped`` with the reason from its last
    stderr line (``skipped: <reason>``); any other exit is ``failed``, with the harness's
    ``FAIL:`` line or its last stderr line as the reason.

    Returns:
        The step, and the verdict and scores from its ``summary.json`` (the keys in
        :data:`SUMMARY_KEYS`), or None when it wrote none (skipped, crashed).
    """
    summary_path = plan.work_dir / "summary.json"
    summary_path.unlink(missing_ok=True)  # never report a previous run's verdict
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    argv = plan.groundtruth_argv(command)
    start = time.perf_counter()
    last_err, fail_line = "", ""
    try:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=plan.groundtruth_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        reason = f"the ground-truth test did not start ({exc.strerror or exc})"
        return StepResult("ground-truth", FAILED, reason, time.perf_counter() - start), None
    lines: list[tuple[str, str]] = []
    with process:

        def pump(stream, name: str) -> None:
            for raw in stream:
                lines.append((name, redact(raw.rstrip("\n"), plan.secrets)))

        threads = [
            threading.Thread(target=pump, args=(process.stdout, "out"), daemon=True),
            threading.Thread(target=pump, args=(process.stderr, "err"), daemon=True),
        ]
        for t in threads:
            t.start()
        shown = 0
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.2)
                shown = _show(lines, shown, on_line)
            code = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        _show(lines, shown, on_line)
    seconds = time.perf_counter() - start
    for name, text in lines:
        if name == "err" and text.strip():
            last_err = text.strip()
        if "FAIL:" in text:
            fail_line = text.split("FAIL:", 1)[1].strip()
    summary = _read_summary(summary_path)
    if code == GT_PASS:
        return StepResult("ground-truth", PASSED, None, seconds), summary
    if code == GT_SKIP:
        reason = (
            last_err.removeprefix(GT_SKIP_PREFIX) if last_err.startswith(GT_SKIP_PREFIX) else ""
        )
        reason = reason or "the preflight found something missing (see the log)"
        return StepResult("ground-truth", SKIPPED, _one_line(reason, plan.secrets), seconds), None
    why = fail_line or last_err or "no message"
    reason = f"exit {code}: {why}"
    return StepResult("ground-truth", FAILED, _one_line(reason, plan.secrets), seconds), summary


def _show(lines: list[tuple[str, str]], shown: int, on_line) -> int:
    for _, text in lines[shown:]:
        log.info("| %s", text)
        if on_line:
            on_line(text)
    return len(lines)


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {k: data[k] for k in SUMMARY_KEYS if k in data}


def _one_line(text: str, secrets: Sequence[str]) -> str:
    return " ".join(redact(text, secrets).split())


# --------------------------------------------------------------------------- the run


def versions() -> dict[str, str]:
    """kilosort-docker's version (``VERSION``, or the installed package's) and this
    repository's commit (``-dirty`` with uncommitted changes to tracked files)."""
    from importlib import metadata

    from kilosort_docker import git

    found: dict[str, str] = {}
    version_file = ROOT / "VERSION"
    if version_file.is_file():
        found["kilosort_docker"] = version_file.read_text().strip()
    else:
        try:
            found["kilosort_docker"] = metadata.version("kilosort-docker")
        except metadata.PackageNotFoundError:
            found["kilosort_docker"] = "unknown"
    found["repository_commit"] = git.revision(ROOT)
    found["python"] = sys.version.split()[0]
    return found


def _forward_compatibility(plan: Plan, info: ImageInfo) -> bool:
    """Whether ``run_batch`` turns CUDA forward compatibility on for this GPU and image:
    the GPU's compute capability above the image's profile's ``max_compute_capability``."""
    from kilosort_docker.images.profiles import PROFILES

    profile = PROFILES.get(info.profile or "") or PROFILES.get(plan.profile)
    limit = profile.max_compute_capability if profile else None
    cc = plan.gpu.compute_capability if plan.gpu else None
    return matlab.needs_forward_compatibility(cc, limit)


def _now() -> str:
    return (
        dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    )


def run(
    plan: Plan,
    *,
    client=None,
    gpu: bool = True,
    groundtruth_command: Sequence[str] = GROUNDTRUTH_COMMAND,
    on_step: Callable[[str, StepResult | None], None] | None = None,
) -> tuple[Report, Path]:
    """Run the steps in order, stopping at the first that does not pass, and write the
    report (also when a step fails, or on Ctrl-C, which is recorded as a failure).

    Args:
        plan: from :func:`make_plan`.
        client: docker SDK client for reading the image's ID, digests and labels (default
            :func:`kilosort_docker.engine.connect`); the steps connect to the same engine
            (``DOCKER_HOST``) themselves.
        gpu: False starts check-gpu's container without GPUs (tests on the stand-in
            MATLAB base); the ground-truth test always asks for them.
        groundtruth_command: how the ground-truth test is started (its arguments follow).
        on_step: called with ``(name, None)`` when a step starts and ``(name, result)``
            when it ends (progress display).

    Returns:
        The report and the path it was written to.

    Raises:
        UserError: no Docker engine; the image is not built (before any step, no report);
            the report cannot be written.
    """
    from kilosort_docker import engine

    client = client or engine.connect()
    info = image_info(client, plan.image)
    started, t0 = _now(), time.perf_counter()
    results: list[StepResult] = []
    summary: dict[str, Any] | None = None
    interrupted = False
    for name in STEPS:
        if results and results[-1].status != PASSED:
            results.append(StepResult(name, SKIPPED, f"not run: {results[-1].name} did not pass"))
            continue
        if on_step:
            on_step(name, None)
        step_start = time.perf_counter()
        try:
            if name == "check-gpu":
                result = check_gpu_step(plan, gpu=gpu)
            else:
                result, summary = groundtruth_step(plan, command=groundtruth_command)
        except KeyboardInterrupt:
            result = StepResult(name, FAILED, "interrupted", time.perf_counter() - step_start)
            interrupted = True
        results.append(result)
        if on_step:
            on_step(name, result)
    passed = all(r.status == PASSED for r in results)
    report = Report(
        status=PASSED if passed else FAILED,
        profile=plan.profile,
        image=info,
        gpu=plan.gpu,
        forward_compatibility=_forward_compatibility(plan, info),
        license=license_form(plan.license, mac_address=plan.mac_address),
        duration_s=plan.duration_s,
        steps=tuple(results),
        started=started,
        finished=_now(),
        seconds=round(time.perf_counter() - t0, 3),
        groundtruth=summary,
        versions=versions(),
    )
    path = write_report(report, plan.report_path, pick_free_name=plan.pick_free_name)
    if interrupted:
        log.warning("interrupted: the report so far is in %s", path)
        raise KeyboardInterrupt
    return report, path


def write_report(report: Report, path: Path, *, pick_free_name: bool = False) -> Path:
    """Write ``report`` as JSON to a new file ``path`` (its folder is made); never replaces a
    file. With ``pick_free_name`` a taken path becomes ``<stem>-2.json``, ``-3``...

    Returns:
        The path written.

    Raises:
        UserError: ``path`` exists (without ``pick_free_name``), or it cannot be written.
    """
    text = json.dumps(report.to_dict(), indent=1) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot make {path.parent} ({exc.strerror}): pass another --out") from None
    while True:
        try:
            with open(path, "x", encoding="utf-8") as handle:  # "x": fails if it exists
                handle.write(text)
            return path
        except FileExistsError:
            if not pick_free_name:
                raise UserError(
                    f"{path} exists: reports are never overwritten; pass another --out"
                ) from None
            path = _free_name(path)
        except OSError as exc:
            raise UserError(f"cannot write {path} ({exc.strerror}): pass another --out") from None


# --------------------------------------------------------------------------- display


def summary_table(report: Report, path: Path):
    """A one-screen rich table of the report: steps, image, GPU, license form, verdict."""
    from rich.table import Table

    table = Table(title=f"Acceptance: {report.status.upper()}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for step in report.steps:
        mark = {PASSED: "[green]passed[/]", FAILED: "[red]failed[/]"}.get(
            step.status, "[yellow]skipped[/]"
        )
        extra = f" ({step.seconds:.1f} s)" if step.seconds else ""
        table.add_row(
            step.name, f"{mark}{extra}" + (f": {_escape(step.reason)}" if step.reason else "")
        )
    table.add_row("image", _escape(f"{report.image.ref} ({report.image.id or '?'})"))
    table.add_row("profile / Kilosort", f"{report.profile} / {report.image.kilosort_commit or '?'}")
    gpu = report.gpu
    table.add_row(
        "GPU",
        _escape(f"{gpu.name}, compute capability {gpu.compute_capability or '?'}")
        if gpu
        else "none found",
    )
    table.add_row("CUDA forward compatibility", "on" if report.forward_compatibility else "off")
    table.add_row("license", f"{report.license.form} ({report.license.detail})")
    gt = report.groundtruth
    if gt:
        accuracy = gt.get("median_accuracy")
        table.add_row(
            "ground truth",
            f"{'PASS' if gt.get('passed') else 'FAIL'}: {gt.get('n_well_detected')}/"
            f"{gt.get('n_gt_units')} well detected, median accuracy "
            + (f"{accuracy:.3f}" if isinstance(accuracy, int | float) else "?"),
        )
    table.add_row("report", _escape(str(path)))
    return table


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def progress_printer(console) -> Callable[[str, StepResult | None], None]:
    """An ``on_step`` for :func:`run` that prints ``[n/2] step: running`` and its outcome on
    ``console`` (rich)."""

    def on_step(name: str, result: StepResult | None) -> None:
        n = STEPS.index(name) + 1
        if result is None:
            console.print(f"[bold][{n}/{len(STEPS)}] {name}[/]: running", highlight=False)
            return
        colour = {PASSED: "green", FAILED: "red"}.get(result.status, "yellow")
        reason = f": {_escape(result.reason)}" if result.reason else ""
        console.print(
            f"[bold][{n}/{len(STEPS)}] {name}[/]: [{colour}]{result.status}[/] "
            f"in {result.seconds:.1f} s{reason}",
            highlight=False,
        )

    return on_step

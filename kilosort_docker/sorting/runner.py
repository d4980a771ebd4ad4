"""Sort one recording: :func:`validate` (every bad-input check, nothing run) and :func:`sort`.

``invoke sort`` and ``python -m kilosort_docker.sorting`` are front ends over these two
(:mod:`kilosort_docker.sorting.cli`). A sort:

1. checks everything (:func:`validate`): the recording and its layout, the probe and its
   channel count, the settings, the output folder, the paths Docker must mount, the free
   disk for a conversion, the license (Kilosort 3), the image reference;
2. looks the image up (never pulls), creates ``OUT``, removes a previous sort's files with
   ``--overwrite`` (only those its record lists), converts the recording if it must;
3. writes the sorter's inputs into ``OUT/kilosort-inputs/`` (Kilosort 4 settings and probe
   dict, 0-based; Kilosort 3 ``ops.mat`` and ``chanMap.mat``, 1-based) and
   ``OUT/sort-record.json``;
4. runs the sorter in the image (or on the host with ``--host``), its output streamed to the
   log, the recording mounted read-only, the network off (Kilosort 3: on only for a license
   server or a host-locked license's MAC address);
5. hands every output file to the caller, completes the record and, on success only, writes
   the completion marker ``OUT/sort-complete.json`` last.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kilosort_docker.errors import UserError
from kilosort_docker.sorting import record as records
from kilosort_docker.sorting import recordings, runtimes
from kilosort_docker.sorting.probes import ChannelMap, load_probe
from kilosort_docker.sorting.recordings import RecordingSource
from kilosort_docker.sorting.summary import SortSummary, summarize

log = logging.getLogger(__name__)

SORTERS = ("kilosort4", "kilosort3")
DEVICES = ("auto", "cuda", "cpu")
#: Exit statuses of the front ends: sorted; a sort that ran and failed; bad input, refused
#: before any work.
EXIT_SORTED, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
#: The sorter's inputs inside the output folder.
INPUTS_NAME = "kilosort-inputs"
#: Where the containers see things.
INPUTS_MOUNT, OUT_MOUNT, RECORDING_DIR_MOUNT = "/inputs", "/out", "/recording"
#: Kilosort 3 ops the sort sets itself (paths); a --settings file may not.
KS3_RESERVED = ("fbinary", "fproc", "chanMap", "root", "saveDir")
#: Kilosort 3 reads the binary from its data folder under this name (ops.fbinary).
KS3_BINARY_NAME = "recording.bin"


@dataclass(frozen=True)
class SortRequest:
    """One sort, as the command line gives it.

    Attributes:
        recording: the recording (see :mod:`kilosort_docker.sorting.recordings`).
        probe: the probe file (see :mod:`kilosort_docker.sorting.probes`).
        out: the output folder (phy files, ``sort-record.json``, ``sort-complete.json``).
        sorter: ``kilosort4`` or ``kilosort3``.
        image: the image to sort in; None: the one ``invoke build`` made for ``profile``.
        device: Kilosort 4: ``cuda``, ``cpu`` or ``auto`` (CUDA when there is a GPU).
        settings: a JSON file of Kilosort 4 settings, or of Kilosort 3 ops overrides.
        channels: channels per sample of a raw binary without a ``.meta``.
        sampling_rate: its sampling rate in Hz.
        runtime: the container runtime (:data:`kilosort_docker.sorting.runtimes.RUNTIMES`).
        host: sort on this machine, no container (Kilosort 4: the ``kilosort`` package;
            Kilosort 3: a local ``matlab``).
        overwrite: replace a sort already in ``out``.
        license: Kilosort 3: the MATLAB license, any FlexLM form (default
            ``$MLM_LICENSE_FILE``).
        mac_address: Kilosort 3: the licensed MAC address of a host-locked license.
        dry_run: check and describe; run and write nothing.
        profile: the release profile whose built image is the default.
    """

    recording: Path
    probe: Path
    out: Path
    sorter: str = "kilosort4"
    image: str | None = None
    device: str = "auto"
    settings: Path | None = None
    channels: int | None = None
    sampling_rate: float | None = None
    runtime: str = "docker"
    host: bool = False
    overwrite: bool = False
    license: str | None = field(default=None, repr=False)
    mac_address: str | None = field(default=None, repr=False)
    dry_run: bool = False
    profile: str | None = None

    def __post_init__(self) -> None:
        for name in ("recording", "probe", "out", "settings"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))


@dataclass(frozen=True)
class SortPlan:
    """A checked request: what :func:`sort` will do (from :func:`validate`).

    Attributes:
        request: the request.
        recording: what the recording holds.
        probe: the probe's channel map.
        settings: the sorter's settings (Kilosort 4 ``settings`` / Kilosort 3 ``ops``) after
            the ``--settings`` overrides.
        image: the image reference, None with ``--host``.
        out: the output folder, absolute (symlinks kept: they are what Docker mounts).
    """

    request: SortRequest
    recording: RecordingSource
    probe: ChannelMap
    settings: Mapping[str, Any]
    image: str | None
    out: Path

    @property
    def where(self) -> str:
        return "host" if self.request.host else f"{self.request.runtime}: {self.image}"

    def describe(self) -> str:
        """What the sort would do, a few lines (``--dry-run``)."""
        rec, req = self.recording, self.request
        lines = [
            f"sorter:    {req.sorter} ({self.where}), device {req.device}",
            f"recording: {rec.path} ({rec.format}; {rec.n_channels} channels, "
            f"{rec.fs:g} Hz, {rec.n_samples} samples = {rec.duration_s:.1f} s)",
            f"probe:     {self.probe.source} ({self.probe.n_channels} channels, {self.probe.name})",
            f"out:       {self.out}" + (" (replacing the sort there)" if req.overwrite else ""),
        ]
        if rec.convert:
            lines.append(f"convert:   to {rec.binary} ({rec.size_bytes / 1e9:.2f} GB, int16) first")
        else:
            lines.append(f"binary:    {rec.binary} (read in place, not copied)")
        lines.append(f"settings:  {json.dumps(dict(self.settings), sort_keys=True)}")
        return "\n".join(lines)


@dataclass(frozen=True)
class SortOutcome:
    """How a sort ended.

    Attributes:
        plan: what was done.
        exit_status: :data:`EXIT_SORTED` or :data:`EXIT_FAILED` (0 for a dry run).
        record: the sort record as written (empty for a dry run).
        summary: the numbers of a successful sort.
        error: one line, for a failed sort.
    """

    plan: SortPlan
    exit_status: int
    record: Mapping[str, Any] = field(default_factory=dict)
    summary: SortSummary | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_status == EXIT_SORTED


# --------------------------------------------------------------------------- validate


def validate(request: SortRequest) -> SortPlan:
    """Every bad-input check of ``request``, running nothing and writing nothing.

    Raises:
        UserError: one line naming the fix, for the first problem found.
    """
    req = request
    if req.sorter not in SORTERS:
        raise UserError(f"unknown --sorter {req.sorter!r}: use kilosort4 or kilosort3")
    if req.device not in DEVICES:
        raise UserError(f"unknown --device {req.device!r}: use cuda, cpu or auto")
    if req.sorter == "kilosort3" and req.device == "cpu":
        raise UserError("Kilosort 3 sorts on an NVIDIA GPU only: leave --device out")
    if not req.host:
        if req.runtime not in runtimes.RUNTIMES:
            known = ", ".join(sorted(runtimes.RUNTIMES))
            raise UserError(f"unknown --runtime {req.runtime!r}: use one of {known}")
        if req.sorter == "kilosort3" and req.runtime != "docker":
            raise UserError(
                f"Kilosort 3 runs in --runtime docker only (MATLAB's image needs Docker's user "
                f"and GPU handling), not {req.runtime}: pass --runtime docker or --host"
            )
    if req.mac_address and req.sorter != "kilosort3":
        raise UserError("--mac-address is for Kilosort 3's host-locked license: leave it out")
    out = Path(os.path.abspath(req.out))
    records.check_output_folder(out, overwrite=req.overwrite)
    if req.sorter == "kilosort3":
        _check_kilosort3_license(req)
    rec = recordings.inspect_recording(
        req.recording, channels=req.channels, sampling_rate=req.sampling_rate, out=out
    )
    probe = load_probe(req.probe)
    probe.check_fits(rec.n_channels, rec.n_neural, recording=str(rec.path))
    overrides = _read_settings(req.settings)
    if req.sorter == "kilosort4":
        settings = _kilosort4_settings(rec, overrides, source=req.settings)
    else:
        settings = _kilosort3_ops(rec, probe, overrides, source=req.settings)
    if not req.host:
        runtimes.check_mountable(out, what="output folder")
        if not rec.convert:
            runtimes.check_mountable(rec.binary, what="recording")
    if rec.convert:
        recordings.check_free_space(out, rec.size_bytes, disk_usage=_disk_usage())
    image = None
    if req.host:
        _check_host(req)
    else:
        image = req.image or default_image(req.sorter, profile=req.profile)
        from kilosort_docker.images.references import check_reference

        check_reference(image, what="--image", fix="give --image as [registry/]name[:tag]")
    return SortPlan(req, rec, probe, settings, image, out)


def _disk_usage():
    """``shutil.disk_usage`` as :mod:`recordings` sees it (tests replace it there)."""
    return recordings.shutil.disk_usage


def _read_settings(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"the settings file {path} does not exist: pass --settings FILE") from None
    except OSError as exc:
        raise UserError(f"cannot read the settings file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UserError(
            f"the settings file {path} is not JSON ({exc}): write one JSON object"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"the settings file {path} must hold one JSON object of settings")
    return data


def _contradicts(overrides: Mapping[str, Any], key: str, value: float, source) -> None:
    if key in overrides:
        try:
            same = math.isclose(float(overrides[key]), float(value))
        except (TypeError, ValueError):
            same = False
        if not same:
            raise UserError(
                f"{source} sets {key}={overrides[key]!r} but the recording has {value:g}: "
                f"leave {key} out (it is read from the recording)"
            )


def _kilosort4_settings(rec: RecordingSource, overrides, *, source) -> dict[str, Any]:
    from kilosort_docker.groundtruth.sorters import kilosort4 as ks4
    from kilosort_docker.groundtruth.sorters.ks4_entry import KS4_BATCH_SIZE, KS4_NT

    _contradicts(overrides, "n_chan_bin", rec.n_channels, source)
    _contradicts(overrides, "fs", rec.fs, source)
    settings = {**overrides, "n_chan_bin": rec.n_channels, "fs": rec.fs}
    try:
        batch = int(settings.get("batch_size", KS4_BATCH_SIZE))
        nt = int(settings.get("nt", KS4_NT))
    except (TypeError, ValueError):
        raise UserError(f"{source}: batch_size and nt must be whole numbers of samples") from None
    ks4.check_recording(
        rec.n_samples, rec.fs, batch_size=batch, nt=nt, fix="sort a longer recording"
    )
    return settings


def _kilosort3_ops(rec: RecordingSource, probe: ChannelMap, overrides, *, source) -> dict:
    from kilosort_docker.groundtruth.simulate import kilosort3_ops
    from kilosort_docker.groundtruth.sorters import kilosort3 as ks3

    reserved = [k for k in overrides if k in KS3_RESERVED]
    if reserved:
        raise UserError(
            f"{source} sets {', '.join(reserved)}: the sort sets the file names itself; "
            "leave them out"
        )
    _contradicts(overrides, "NchanTOT", rec.n_channels, source)
    _contradicts(overrides, "fs", rec.fs, source)
    ops = kilosort3_ops(rec.n_channels, rec.fs)
    ops.update(overrides)
    ops.update(
        NchanTOT=float(rec.n_channels),
        Nchan=float(sum(probe.connected)),
        fs=float(rec.fs),
        fbinary=KS3_BINARY_NAME,
        chanMap="chanMap.mat",
        fproc="temp_wh.dat",
        root=".",
    )
    try:
        nt = int(ops["NT"])
    except (TypeError, ValueError):
        raise UserError(f"{source}: NT must be a whole number of samples") from None
    ks3.check_recording(rec.n_samples, rec.fs, nt=nt, fix="sort a longer recording")
    return ops


def _check_kilosort3_license(req: SortRequest) -> None:
    from kilosort_docker import matlab

    if req.host:
        matlab.host_license(req.license, matlab.local_matlab())
        return
    lic = matlab.resolve_license(req.license)
    if lic.kind != "server":
        runtimes.check_mountable(lic.value, what="license file")


def _check_host(req: SortRequest) -> None:
    if req.sorter == "kilosort4":
        import importlib.util

        if importlib.util.find_spec("kilosort") is None:
            raise UserError(
                "--host sorts with the kilosort package, which is not installed: pip install "
                "'kilosort-docker[groundtruth]', or leave --host out to sort in the image"
            )


def default_image(sorter: str, *, profile: str | None = None) -> str:
    """The image ``invoke build`` made for ``sorter`` and ``profile`` (its build record,
    else the tag the default build would make)."""
    from kilosort_docker import commands
    from kilosort_docker.images.profiles import DEFAULT_PROFILE

    _, built = commands.built_plan(profile=profile or DEFAULT_PROFILE, images=[sorter])
    return built[-1][0].refs[0]


# --------------------------------------------------------------------------- sort


def sort(
    request: SortRequest,
    *,
    runtime: runtimes.Runtime | None = None,
    on_convert: Callable[[int, int], None] | None = None,
) -> SortOutcome:
    """Validate, then sort (see the module docstring); a dry run stops after validating.

    Args:
        request: what to sort.
        runtime: the container runtime (default: ``request.runtime``'s).
        on_convert: ``(samples done, samples in all)`` while a conversion writes.

    Returns:
        :class:`SortOutcome`; a sort that ran and failed is ``EXIT_FAILED`` with its one-line
        error, not an exception.

    Raises:
        UserError: bad input, found before any work (nothing written).
    """
    plan = validate(request)
    req, out = plan.request, plan.out
    image_info = None
    if not req.host:
        runtime = runtime or runtimes.get_runtime(req.runtime)
        image_info = runtime.image(plan.image)  # before anything is written; dry runs too
    if request.dry_run:
        return SortOutcome(plan, EXIT_SORTED)
    out.mkdir(parents=True, exist_ok=True)
    if req.overwrite:
        records.clear_previous(out)
    inputs = out / INPUTS_NAME
    rec = plan.recording
    ours = {n for n in records.existing_names(out) if n.startswith(f"{INPUTS_NAME}/")}
    if rec.convert:
        ours.add(recordings.CONVERTED_NAME)
    before = records.existing_names(out) - ours  # rewritten by this sort: its outputs too
    base = {
        "sorter": req.sorter,
        "sorter_version": _sorter_version(req.sorter, image_info),
        "image": plan.image,
        "digest": image_info.id if image_info else None,
        "repo_digests": list(image_info.repo_digests) if image_info else [],
        "runtime": "host" if req.host else req.runtime,
        "device": req.device,
        "recording": str(rec.path),
        "recording_format": rec.format,
        "binary": str(rec.binary),
        "converted": rec.convert,
        "recording_sha256": None,
        "n_channels": rec.n_channels,
        "sampling_rate": rec.fs,
        "n_samples": rec.n_samples,
        "probe": str(plan.probe.source),
        "settings": dict(plan.settings),
        "host": records.host_name(),
        "user": f"{os.getuid()}:{os.getgid()}",
        "started": records.now(),
        "ended": None,
        "exit_status": None,
        "gpu": None,
    }
    records.write_record(out, base)  # the sort is attempted from here on
    start = time.perf_counter()
    try:
        if rec.convert:
            log.info("converting %s (%s) to %s", rec.path, rec.format, rec.binary)
            recordings.convert(rec, on_progress=on_convert)
        log.info("sha256 of %s", rec.binary)
        base["recording_sha256"] = recordings.sha256(rec.binary)
        _write_inputs(plan, inputs)
        records.write_record(out, base)
        status, error = _run_sorter(plan, inputs, runtime)
    except KeyboardInterrupt:
        records.write_record(out, base | {"ended": records.now(), "error": "interrupted"})
        raise
    except (UserError, OSError) as exc:  # the conversion or the runtime failed part-way
        status, error = EXIT_FAILED, " ".join(str(exc).split())
    wall = time.perf_counter() - start
    info = _run_info(out)
    _tidy_inputs(inputs)
    summary = None
    if status == 0:
        try:
            summary = summarize(
                out,
                seconds=float(info.get("seconds", wall)),
                recording_seconds=rec.duration_s,
                gpu=info.get("gpu"),
                device=info.get("device"),
            )
            if req.sorter == "kilosort4" and not req.host:
                point_params_at(out / "params.py", rec.binary)
        except (OSError, ValueError) as exc:
            status, error = 1, f"the sorter wrote no readable phy output ({exc})"
    if not req.host and os.getuid() == 0:
        runtimes.hand_back([str(out)], uid=0, gid=os.getgid())
    final = base | {
        "ended": records.now(),
        "exit_status": status,
        "error": error,
        "seconds": float(info.get("seconds", wall)),
        "wall_seconds": wall,
        "gpu": info.get("gpu"),
        "device_used": info.get("device"),
        "summary": summary.to_dict() if summary else None,
    }
    final["outputs"] = [
        n for n in records.output_names(out, before) if n not in records.SORT_FILES[:2]
    ]
    if not rec.convert:  # never list the input for deletion by a later --overwrite
        final["outputs"] = [n for n in final["outputs"] if out / n != rec.binary]
    digest = records.write_record(out, final)
    if status == 0:
        records.write_marker(out, digest)
        return SortOutcome(plan, EXIT_SORTED, final, summary)
    return SortOutcome(plan, EXIT_FAILED, final, None, error)


def _sorter_version(sorter: str, info: runtimes.ImageInfo | None) -> str | None:
    if info is None:
        if sorter == "kilosort4":
            try:
                import kilosort

                return str(getattr(kilosort, "__version__", "unknown"))
            except ImportError:
                return None
        return None
    labels = info.labels
    if sorter == "kilosort4":
        return labels.get("io.kilosort-docker.kilosort.version")
    commit = labels.get("io.kilosort-docker.kilosort.commit")
    version = labels.get("org.opencontainers.image.version")
    return " ".join(v for v in (version, f"commit {commit}" if commit else None) if v) or None


def _write_inputs(plan: SortPlan, inputs: Path) -> None:
    """The sorter's input files in ``inputs``: Kilosort 4's settings and probe (0-based), or
    Kilosort 3's ``ops.mat`` and ``chanMap.mat`` (1-based) and the name its ops give the
    binary (a symlink on the host; an empty file a container mounts the binary over)."""
    inputs.mkdir(parents=True, exist_ok=True)
    if plan.request.sorter == "kilosort4":
        (inputs / "ks4_settings.json").write_text(json.dumps(dict(plan.settings), indent=1))
        (inputs / "ks4_probe.json").write_text(json.dumps(plan.probe.kilosort4_probe(), indent=1))
        return
    import scipy.io

    from kilosort_docker.groundtruth.simulate import _for_matlab

    scipy.io.savemat(inputs / "chanMap.mat", plan.probe.kilosort3_chanmap(plan.recording.fs))
    scipy.io.savemat(inputs / "ops.mat", {"ops": _for_matlab(dict(plan.settings))})
    (inputs / "ops.json").write_text(json.dumps(dict(plan.settings), indent=1, allow_nan=True))
    link = inputs / KS3_BINARY_NAME
    if link.is_symlink() or link.exists():
        link.unlink()
    if plan.request.host:
        link.symlink_to(os.path.abspath(plan.recording.binary))
    else:
        link.touch()


def _tidy_inputs(inputs: Path) -> None:
    """Remove the binary's stand-in from the inputs (it only served the sort)."""
    link = inputs / KS3_BINARY_NAME
    if link.is_symlink() or (link.is_file() and link.stat().st_size == 0):
        link.unlink()


def _run_info(out: Path) -> dict:
    from kilosort_docker.groundtruth.sorters.common import read_run_info

    return read_run_info(out)


def _run_sorter(plan: SortPlan, inputs: Path, runtime) -> tuple[int, str | None]:
    """Run the sorter; ``(exit status, one-line error or None)``."""
    req = plan.request
    if req.sorter == "kilosort4":
        return _run_kilosort4(plan, inputs, runtime)
    return _run_kilosort3(plan, inputs)


def _gpu_wanted(device: str) -> bool:
    if device != "auto":
        return device == "cuda"
    from kilosort_docker.groundtruth.run import gpu_visible

    return gpu_visible() is None


def _run_kilosort4(plan: SortPlan, inputs: Path, runtime) -> tuple[int, str | None]:
    from kilosort_docker.groundtruth.sorters import ks4_entry
    from kilosort_docker.groundtruth.sorters.common import PYTHON_ENVIRONMENT

    req, out, binary = plan.request, plan.out, plan.recording.binary
    if req.host:
        code = ks4_entry.main([str(inputs), str(out), req.device, str(binary)])
        return code, _ks4_error(code, out)
    gpu = _gpu_wanted(req.device)
    device = "cuda" if gpu else "cpu"
    mounted = f"{RECORDING_DIR_MOUNT}/{binary.name}"
    argv = [
        "python",
        "-c",
        Path(ks4_entry.__file__).read_text(),
        INPUTS_MOUNT,
        OUT_MOUNT,
        device,
        mounted,
    ]
    result = runtime.run(
        plan.image,
        argv,
        ro={str(inputs): INPUTS_MOUNT, os.path.abspath(binary): mounted},
        rw={str(out): OUT_MOUNT},
        gpu=gpu,
        environment=PYTHON_ENVIRONMENT,
    )
    error = _ks4_error(result.exit_status, out) if result.exit_status else None
    return result.exit_status, (error or result.last_line) if result.exit_status else None


def _ks4_error(code: int, out: Path) -> str | None:
    from kilosort_docker.groundtruth.sorters import ks4_entry

    if code == 0:
        return None
    if code == ks4_entry.EXIT_NO_CUDA:
        return "device cuda asked for but torch sees no GPU: use --device cpu or auto"
    return _run_info(out).get("error") or f"kilosort4 exited with {code}"


def _run_kilosort3(plan: SortPlan, inputs: Path) -> tuple[int, str | None]:
    from kilosort_docker import matlab
    from kilosort_docker.groundtruth.sorters.kilosort3 import matlab_statement
    from kilosort_docker.paths import DATA_MOUNT, MATLAB_DIR, MATLAB_MOUNT

    req, out = plan.request, plan.out
    try:
        if req.host:
            exe = matlab.local_matlab()
            lic = matlab.host_license(req.license, exe)
            stmt = matlab_statement(str(inputs), str(out), matlab_dir=str(MATLAB_DIR))
            matlab.run_batch(stmt, license=lic, matlab=exe, cwd=out)
        else:
            lic = matlab.resolve_license(req.license)
            volumes = {
                str(inputs): {"bind": DATA_MOUNT, "mode": "ro"},
                os.path.abspath(plan.recording.binary): {
                    "bind": f"{DATA_MOUNT}/{KS3_BINARY_NAME}",
                    "mode": "ro",
                },
                str(out): {"bind": OUT_MOUNT, "mode": "rw"},
                str(MATLAB_DIR): {"bind": MATLAB_MOUNT, "mode": "ro"},
            }
            stmt = matlab_statement(DATA_MOUNT, OUT_MOUNT, matlab_dir=MATLAB_MOUNT)
            matlab.run_batch(
                stmt, image=plan.image, license=lic, volumes=volumes, mac_address=req.mac_address
            )
    except matlab.MatlabError as exc:
        return exc.exit_code or 1, str(exc)
    return 0, None


_DAT_PATH = re.compile(r"^dat_path\s*=.*$", re.M)


def point_params_at(params: Path, binary: Path) -> None:
    """Make phy's ``params.py`` name the recording where it is on this host (Kilosort 4.1.7
    ``kilosort/io.py`` ``save_to_phy`` writes ``dat_path`` as the path the sorter read,
    inside the container)."""
    if not params.is_file():
        return
    text = params.read_text()
    line = f"dat_path = {[os.path.abspath(binary)]!r}"
    params.write_text(_DAT_PATH.sub(lambda _: line, text, count=1))


def with_defaults(request: SortRequest, **changes) -> SortRequest:
    """``request`` with ``changes`` (a convenience for front ends and the batch)."""
    return replace(request, **changes)

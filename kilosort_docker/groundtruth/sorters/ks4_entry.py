"""Run Kilosort 4 on a folder of inputs:
``python ks4_entry.py DATA_DIR OUT_DIR [auto|cuda|cpu [BINARY]] [--deterministic[=strict|warn]]``.

Self-contained on purpose (standard library, numpy, torch and kilosort only): the host runner
imports it, and the container runner sends its source to ``python -c`` inside the
``kilosort4`` image, which does not have this package. Reads ``ks4_settings.json`` and
``ks4_probe.json`` from DATA_DIR, and the int16 binary BINARY (default DATA_DIR/recording.bin,
as a simulation folder holds it), writes phy files and ``ks_run.json`` (device, seconds,
versions) into OUT_DIR.

Exit status: 0 sorted; 2 usage, or a recording Kilosort 4 cannot sort (too short: see
:func:`min_samples`); 3 CUDA asked for but absent; 4 Kilosort 4 raised an exception
(:data:`EXIT_CRASHED`): the last line on stderr is the exception as one line
(``ValueError: ...``), ``ks_run.json`` holds it under ``error``, and Kilosort's own
``kilosort4.log`` in OUT_DIR the full traceback.

``--deterministic`` (strict) asks PyTorch for deterministic kernels
(:func:`deterministic_settings`); an operation that has none then raises, and the sort fails
with that error. ``--deterministic=warn`` only warns for such operations. Measured on the
H200 (Kilosort 4.1.7, torch 2.11, ``benchmarks/groundtruth_sweeps.py``): strict fails at once
("median CUDA with indices output does not have a deterministic implementation", Kilosort's
``torch.median`` in kilosort/io.py ``BinaryFiltered.filter``), and warn gives the same spikes
as the default kernels, bit for bit, so it does not make repeats identical. The option is
therefore not offered by ``python -m kilosort_docker.groundtruth``; it stays here for that
benchmark.
"""

import json
import logging
import os
import sys
import time
import warnings

EXIT_USAGE, EXIT_NO_CUDA, EXIT_CRASHED = 2, 3, 4
#: Kilosort 4.1.7 defaults (kilosort/parameters.py): ``batch_size`` 60000 samples per batch,
#: ``nt`` 61 samples per spike waveform.
KS4_BATCH_SIZE = 60000
KS4_NT = 61
#: ``--deterministic`` modes: off, strict (raise on an operation with no deterministic kernel),
#: warn (warn on it and go on).
DETERMINISTIC_MODES = ("off", "strict", "warn")
#: cuBLAS needs a fixed workspace for reproducible results on CUDA 10.2 and later
#: (PyTorch "Reproducibility" notes; NVIDIA cuBLAS docs, "Results reproducibility").
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def deterministic_settings(mode):
    """Make PyTorch pick deterministic kernels; returns what was set (for ``ks_run.json``).

    ``mode`` is one of :data:`DETERMINISTIC_MODES`. Sets ``CUBLAS_WORKSPACE_CONFIG`` (before
    cuBLAS starts: call this before any CUDA work), ``torch.use_deterministic_algorithms(True,
    warn_only=mode == "warn")``, ``torch.backends.cudnn.deterministic = True`` and
    ``torch.backends.cudnn.benchmark = False`` (PyTorch docs, "Reproducibility").

    Raises:
        ValueError: an unknown mode.
    """
    import torch

    if mode not in DETERMINISTIC_MODES:
        raise ValueError(f"deterministic mode must be one of {DETERMINISTIC_MODES}, got {mode!r}")
    if mode == "off":
        return {"deterministic": "off"}
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(True, warn_only=mode == "warn")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return {
        "deterministic": mode,
        "CUBLAS_WORKSPACE_CONFIG": os.environ["CUBLAS_WORKSPACE_CONFIG"],
    }


def parse_args(args):
    """``(data_dir, out_dir, device, binary, deterministic)`` from the argument list, or None
    when it is not ``DATA_DIR OUT_DIR [auto|cuda|cpu [BINARY]] [--deterministic[=strict|warn]]``
    (BINARY defaults to ``DATA_DIR/recording.bin``)."""
    mode = "off"
    rest = []
    for arg in args:
        if arg == "--deterministic":
            mode = "strict"
        elif arg.startswith("--deterministic="):
            mode = arg.split("=", 1)[1]
            if mode not in DETERMINISTIC_MODES:
                return None
        else:
            rest.append(arg)
    if len(rest) not in (2, 3, 4):
        return None
    device = rest[2] if len(rest) >= 3 else "auto"
    if device not in ("auto", "cuda", "cpu"):
        return None
    binary = rest[3] if len(rest) == 4 else os.path.join(rest[0], "recording.bin")
    return rest[0], rest[1], device, binary, mode


def min_samples(batch_size=KS4_BATCH_SIZE, nt=KS4_NT):
    """The fewest samples Kilosort 4 sorts: more than one batch, the last of at least ``nt``.

    Kilosort 4.1.7 kilosort/preprocessing.py ``get_whitening_matrix`` averages the covariance
    over batches ``0 .. n_batches - 2`` and divides by their count: with one batch it divides
    by zero and ``torch.linalg.svd`` fails on the non-finite matrix. kilosort/io.py
    (``BinaryRWFile``) drops a last batch shorter than ``nt`` samples.
    """
    return int(batch_size) + int(nt)


def one_line(exc):
    """An exception as the last line of its traceback, on one line: ``Type: message``."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class _ShortTraceback(logging.Formatter):
    """Kilosort's console format, an exception cut to :func:`one_line` (the whole traceback
    goes to ``kilosort4.log`` through Kilosort's own file handler)."""

    def formatException(self, ei):  # noqa: N802 (logging's name)
        return one_line(ei[1]) + " (traceback in kilosort4.log)"

    def format(self, record):
        # logging caches the formatted exception on the record (exc_text) for the handlers
        # after this one: leave it unset, so that kilosort4.log gets the whole traceback
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached


def _console_logging():
    """Show Kilosort's log once, without a traceback; returns what :func:`_restore` needs.

    Kilosort 4.1.7 run_kilosort.py ``setup_logger`` adds its own console handler only when
    the ``kilosort`` logger has none, and ``run_kilosort`` logs a failure with
    ``logger.exception`` before raising it again; ``close_logger`` removes every handler.
    """
    ks_log = logging.getLogger("kilosort")
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO)
    handler.setFormatter(_ShortTraceback("%(name)-12s: %(message)s"))
    ks_log.addHandler(handler)
    propagate, ks_log.propagate = ks_log.propagate, False  # no second copy via the root logger
    return ks_log, handler, propagate


def _restore(ks_log, handler, propagate):
    if handler in ks_log.handlers:  # run_kilosort failed before its own close_logger
        ks_log.removeHandler(handler)
    handler.close()
    ks_log.propagate = propagate


def main(argv=None):
    import kilosort
    import numpy as np
    import torch
    from kilosort import run_kilosort

    parsed = parse_args(list(sys.argv[1:] if argv is None else argv))
    if parsed is None:
        sys.stderr.write(
            "usage: ks4_entry.py DATA_DIR OUT_DIR [auto|cuda|cpu [BINARY]] "
            "[--deterministic[=strict|warn]]\n"
        )
        return EXIT_USAGE
    data_dir, out_dir, want, binary, mode = parsed
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("CUDA requested but torch sees no GPU\n")
        return EXIT_NO_CUDA
    device = torch.device(want)

    with open(os.path.join(data_dir, "ks4_settings.json")) as f:
        settings = json.load(f)
    with open(os.path.join(data_dir, "ks4_probe.json")) as f:
        raw = json.load(f)
    n_samples = os.path.getsize(binary) // (2 * int(settings["n_chan_bin"]))
    need = min_samples(settings.get("batch_size", KS4_BATCH_SIZE), settings.get("nt", KS4_NT))
    if n_samples < need:
        fs = float(settings.get("fs", 30000.0))
        sys.stderr.write(
            f"the recording is too short for Kilosort 4: {n_samples} samples "
            f"({n_samples / fs:g} s), it needs at least {need} ({need / fs:.3f} s at {fs:g} Hz): "
            "sort a longer recording\n"
        )
        return EXIT_USAGE
    probe = {
        "chanMap": np.asarray(raw["chanMap"], dtype=np.int64),
        "xc": np.asarray(raw["xc"], dtype=np.float32),
        "yc": np.asarray(raw["yc"], dtype=np.float32),
        "kcoords": np.asarray(raw["kcoords"], dtype=np.float32),
        "n_chan": int(raw["n_chan"]),
    }
    os.makedirs(out_dir, exist_ok=True)
    determinism = deterministic_settings(mode)
    torch.manual_seed(0)
    np.random.seed(0)
    info = {
        "sorter": "kilosort4",
        "device": str(device),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "kilosort": getattr(kilosort, "__version__", "unknown"),
        "torch": torch.__version__,
        **determinism,
    }
    logging_state = _console_logging()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_kilosort(
                settings=settings,
                probe=probe,
                filename=binary,
                results_dir=out_dir,
                data_dtype="int16",
                device=device,
            )
        if mode == "warn":
            # PyTorch's warning for an operation without a deterministic kernel names it
            info["nondeterministic_operations"] = sorted(
                {str(w.message).split("\n")[0] for w in caught if "determinis" in str(w.message)}
            )
        for w in caught:  # the others are shown as they would have been
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    except Exception as exc:  # any failure of the sort is reported, as one line
        info.update(seconds=time.perf_counter() - start, error=one_line(exc))
        with open(os.path.join(out_dir, "ks_run.json"), "w") as f:
            json.dump(info, f, indent=1)
        sys.stderr.write(info["error"] + "\n")
        return EXIT_CRASHED
    finally:
        _restore(*logging_state)
        if mode != "off":  # the host runner calls main in its own process: leave torch as found
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.deterministic = False
    info["seconds"] = time.perf_counter() - start
    with open(os.path.join(out_dir, "ks_run.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"kilosort4 finished on {device} in {info['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Recordings in, the int16 binary Kilosort reads out.

Kilosort 3 and 4 read one file of int16 samples, sample-major (``(n_samples, n_channels)`` in
C order: every channel of sample 0, then of sample 1, ...). :func:`inspect_recording` finds
out what a path holds, reading headers only:

* a raw binary (``.bin``, ``.dat``, ``.raw``; or a SpikeGLX ``.meta`` naming its ``.bin``):
  channels and sampling rate from ``--channels`` / ``--sampling-rate`` or, when a SpikeGLX
  ``.meta`` lies beside it, from that file (``nSavedChans``, ``imSampRate``/``niSampRate``,
  ``snsApLfSy``: SpikeGLX's metadata guide, billkarsh.github.io/SpikeGLX). It is sorted
  where it is (mounted read-only), never copied;
* a SpikeGLX run folder: its one ``*.ap.bin`` with its ``.meta``, as above;
* an Open Ephys binary folder with one stream: its ``continuous.dat`` (int16, interleaved),
  read in place (:func:`_openephys_binary`);
* anything else SpikeInterface's extractors read (other Open Ephys folders, an NWB file, a
  folder SpikeInterface saved): when the recording already is one int16 binary in Kilosort's
  layout (``BaseRecording.is_binary_compatible``) that file is used as it is; otherwise it is
  converted to ``OUT/recording.bin`` in chunks (:func:`convert`), after
  :func:`check_free_space`.

SpikeInterface is imported only for that last kind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kilosort_docker.errors import UserError

log = logging.getLogger(__name__)

#: Suffixes read as raw int16 binaries.
BINARY_SUFFIXES = (".bin", ".dat", ".raw")
#: Where a conversion writes, inside the output folder.
CONVERTED_NAME = "recording.bin"
#: Bytes of an int16 sample.
SAMPLE_BYTES = 2
#: Kept free beyond the converted file's size (file system metadata, the sorter's logs).
FREE_SPACE_MARGIN = 64 * 1024**2
#: Samples per chunk of a conversion (one second at 30 kHz).
CHUNK_SAMPLES = 30000


@dataclass(frozen=True)
class RecordingSource:
    """What a recording path holds, as far as sorting is concerned.

    Attributes:
        path: the path given.
        format: in words: ``raw int16 binary``, ``SpikeGLX``, ``Open Ephys``, ``NWB``...
        binary: the int16 binary the sorter reads (for a conversion: the file it will write).
        n_channels: channels per sample in the binary (Kilosort's ``n_chan_bin``/``NchanTOT``).
        n_neural: the neural channels among them (SpikeGLX's sync channel left out); the
            probe maps exactly these.
        fs: sampling rate in Hz.
        n_samples: samples per channel.
        meta: the SpikeGLX ``.meta`` the layout was read from, if any.
        convert: True when :func:`convert` must write ``binary`` first.
        extractor: for a conversion, what :func:`open_extractor` needs (the reader's name).
    """

    path: Path
    format: str
    binary: Path
    n_channels: int
    n_neural: int
    fs: float
    n_samples: int
    meta: Path | None = None
    convert: bool = False
    extractor: str | None = None

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    @property
    def size_bytes(self) -> int:
        """Size of the int16 binary in bytes."""
        return self.n_samples * self.n_channels * SAMPLE_BYTES


# --------------------------------------------------------------------------- SpikeGLX


def read_meta(path: Path) -> dict[str, str]:
    """A SpikeGLX ``.meta`` file as ``{key: value}`` text (a leading ``~`` dropped from keys,
    as SpikeGLX writes ``~imroTbl``).

    Raises:
        UserError: the file cannot be read.
    """
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}: fix its permissions") from None
    meta = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            meta[key.strip().lstrip("~")] = value.strip()
    return meta


def meta_layout(meta: dict[str, str], *, path: Path) -> tuple[int, int, float]:
    """``(channels in the file, neural channels, sampling rate in Hz)`` from a SpikeGLX meta.

    SpikeGLX's metadata guide: ``nSavedChans`` is the channels per sample in the ``.bin``;
    ``snsApLfSy`` (imec) or ``snsMnMaXaDw`` (nidq) counts the saved channels by kind, the
    last of imec's being the sync (``SY``) channel; ``imSampRate`` / ``niSampRate`` is the
    sampling rate.

    Raises:
        UserError: a field is missing or not a number (names the field and the file).
    """
    try:
        n_saved = int(meta["nSavedChans"])
        fs = float(meta.get("imSampRate") or meta["niSampRate"])
    except (KeyError, ValueError):
        raise UserError(
            f"{path} is not a SpikeGLX meta file with nSavedChans and imSampRate/niSampRate: "
            "pass --channels and --sampling-rate, or the .meta SpikeGLX wrote"
        ) from None
    sync = 0
    if "snsApLfSy" in meta:
        try:
            sync = int(meta["snsApLfSy"].split(",")[2])
        except (IndexError, ValueError):
            raise UserError(f"{path}: snsApLfSy is not 'AP,LF,SY' counts: fix the file") from None
    return n_saved, n_saved - sync, fs


def meta_beside(binary: Path) -> Path | None:
    """The SpikeGLX ``.meta`` of ``binary`` (same name, ``.meta`` for ``.bin``), if present."""
    candidate = binary.with_suffix(".meta")
    return candidate if candidate.is_file() else None


# --------------------------------------------------------------------------- inspection


#: Sampling rates a spike sorter can work with: Kilosort's filters are set for spikes of about
#: 1 ms (a 300 Hz high-pass; Kilosort 4's default ``fs`` is 30000 Hz), so a rate below a few kHz
#: (30 from a typo in kHz) cannot hold them, and none above 1 MHz is recorded.
MIN_RATE_HZ = 2000.0
MAX_RATE_HZ = 1_000_000.0


def inspect_recording(
    path: Path | str,
    *,
    channels: int | None = None,
    sampling_rate: float | None = None,
    out: Path | str | None = None,
) -> RecordingSource:
    """What ``path`` holds (see the module docstring); reads headers, never the samples.

    Args:
        path: a binary file, a SpikeGLX ``.meta``, a SpikeGLX or Open Ephys folder, an NWB
            file, a SpikeInterface folder.
        channels: channels per sample of a raw binary (``--channels``).
        sampling_rate: Hz of a raw binary (``--sampling-rate``).
        out: the output folder, where a conversion would write.

    Raises:
        UserError: the path does not exist or cannot be read; an unknown format; a raw
            binary without its channel count or rate, or whose size is not a whole number of
            samples; flags that contradict the ``.meta``; a recording with several segments.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"the recording {path} does not exist: pass the recording's path")
    if channels is not None and channels < 1:
        raise UserError(f"--channels must be a positive number of channels, not {channels}")
    if sampling_rate is not None and not MIN_RATE_HZ <= sampling_rate <= MAX_RATE_HZ:
        raise UserError(
            f"--sampling-rate {sampling_rate:g} Hz is not an extracellular recording's rate "
            f"({MIN_RATE_HZ:g} to {MAX_RATE_HZ:g} Hz): give it in Hz, e.g. 30000"
        )
    if path.is_dir():
        found = _spikeglx_binary(path)
        if found is not None:
            return _binary(found, channels, sampling_rate)
        raw = _openephys_binary(path)
        if raw is not None:
            return raw
        return _spikeinterface(path, out)
    suffix = path.suffix.lower()
    if suffix == ".meta":
        binary = path.with_suffix(".bin")
        if not binary.is_file():
            raise UserError(f"{path} has no {binary.name} beside it: pass the .bin itself")
        return _binary(binary, channels, sampling_rate)
    if suffix in BINARY_SUFFIXES:
        return _binary(path, channels, sampling_rate)
    if suffix == ".nwb":
        return _spikeinterface(path, out)
    raise UserError(
        f"unknown recording format {path.name}: give a raw int16 binary (.bin/.dat/.raw, with "
        "--channels and --sampling-rate or its SpikeGLX .meta beside it), a SpikeGLX or Open "
        "Ephys folder, or an NWB file (.nwb)"
    )


def _spikeglx_binary(folder: Path) -> Path | None:
    """The one ``*.ap.bin`` (else ``*.bin``) with a ``.meta`` beside it in ``folder``."""
    for pattern in ("*.ap.bin", "*.bin"):
        found = sorted(p for p in folder.glob(pattern) if meta_beside(p))
        if len(found) > 1:
            names = ", ".join(p.name for p in found[:4])
            raise UserError(
                f"{folder} holds several SpikeGLX binaries ({names}): pass the one to sort"
            )
        if found:
            return found[0]
    return None


def _binary(path: Path, channels: int | None, fs: float | None) -> RecordingSource:
    meta_path = meta_beside(path)
    n_neural = channels
    fmt = "raw int16 binary"
    if meta_path is not None:
        n_saved, neural, meta_fs = meta_layout(read_meta(meta_path), path=meta_path)
        if channels is not None and channels != n_saved:
            raise UserError(
                f"--channels {channels} contradicts {meta_path.name} (nSavedChans={n_saved}): "
                "leave --channels out to use the .meta"
            )
        if fs is not None and abs(fs - meta_fs) > 1e-6 * meta_fs:
            raise UserError(
                f"--sampling-rate {fs:g} contradicts {meta_path.name} ({meta_fs:g} Hz): leave "
                "--sampling-rate out to use the .meta"
            )
        channels, n_neural, fs, fmt = n_saved, neural, meta_fs, "SpikeGLX binary"
    if channels is None or fs is None:
        missing = " and ".join(
            flag for flag, v in (("--channels", channels), ("--sampling-rate", fs)) if v is None
        )
        raise UserError(
            f"{path.name} is a raw binary with no SpikeGLX .meta beside it: pass {missing}"
        )
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot read the recording {path}: {exc.strerror or exc}: fix its permissions"
        ) from None
    check_binary_size(size, channels, name=str(path))
    return RecordingSource(
        path=path,
        format=fmt,
        binary=path,
        n_channels=channels,
        n_neural=n_neural if n_neural is not None else channels,
        fs=float(fs),
        n_samples=size // (channels * SAMPLE_BYTES),
        meta=meta_path,
    )


def check_binary_size(size: int, channels: int, *, name: str) -> None:
    """Refuse a binary that is not a whole number of int16 samples of ``channels`` channels.

    Raises:
        UserError: empty, or ``size`` is not a multiple of ``channels x 2`` bytes (names the
            size, the channel count and the remainder).
    """
    frame = channels * SAMPLE_BYTES
    if size == 0:
        raise UserError(f"the recording {name} is empty: pass the recorded file")
    remainder = size % frame
    if remainder:
        raise UserError(
            f"the recording {name} has {size} bytes, not a multiple of {channels} channels x 2 "
            f"bytes ({frame}): {remainder} bytes are left over; pass the right --channels "
            "(or the file's .meta)"
        )


# --------------------------------------------------------------------------- Open Ephys


def _openephys_binary(folder: Path) -> RecordingSource | None:
    """An Open Ephys binary recording with one continuous stream, read in place.

    The Open Ephys GUI's binary format (open-ephys.github.io, "Binary format"): each
    recording folder holds ``structure.oebin`` (JSON; ``continuous[*]`` gives ``folder_name``,
    ``sample_rate``, ``num_channels``) and ``continuous/<folder_name>/continuous.dat``, int16
    samples interleaved by channel: Kilosort's layout. None when there is no
    ``structure.oebin``, or more than one recording or stream (SpikeInterface then asks which).
    """
    import json

    found = sorted(folder.rglob("structure.oebin"))
    if len(found) != 1:
        return None
    try:
        streams = json.loads(found[0].read_text()).get("continuous") or []
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{found[0]} is not Open Ephys JSON: check the recording") from None
    if len(streams) != 1:
        return None
    stream = streams[0]
    try:
        n_channels, fs = int(stream["num_channels"]), float(stream["sample_rate"])
        name = str(stream["folder_name"]).strip("/")
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"{found[0]} lacks num_channels/sample_rate/folder_name: check the recording"
        ) from None
    binary = found[0].parent / "continuous" / name / "continuous.dat"
    if not binary.is_file():
        raise UserError(f"{found[0]} names {binary}, which does not exist: check the recording")
    size = binary.stat().st_size
    check_binary_size(size, n_channels, name=str(binary))
    n_samples = size // (n_channels * SAMPLE_BYTES)
    return RecordingSource(
        folder, "Open Ephys binary", binary, n_channels, n_channels, fs, n_samples
    )


# --------------------------------------------------------------------------- SpikeInterface


def _reader(path: Path) -> tuple[str, Callable[[], Any]]:
    """``(format in words, a function that opens it)`` for a SpikeInterface-readable path."""
    import spikeinterface.extractors as se

    if path.suffix.lower() == ".nwb":
        return "NWB", lambda: se.read_nwb_recording(path)
    if any(path.rglob("structure.oebin")) or any(path.rglob("settings.xml")):
        return "Open Ephys", lambda: se.read_openephys(path)
    if (path / "si_folder.json").is_file() or (path / "binary.json").is_file():
        import spikeinterface.core as sc

        return "SpikeInterface folder", lambda: sc.load(path)
    raise UserError(
        f"unknown recording format in {path}: give a raw int16 binary, a SpikeGLX folder "
        "(*.ap.bin and .meta), an Open Ephys folder (structure.oebin or settings.xml) or an "
        "NWB file"
    )


def open_extractor(path: Path):
    """The SpikeInterface recording of ``path`` (one segment).

    Raises:
        UserError: spikeinterface is not installed, the format is unknown, the reader fails
            (its message, one line), or the recording has several segments.
    """
    try:
        fmt, read = _reader(path)
    except ImportError:
        raise UserError(
            f"reading {path.name} needs spikeinterface: pip install 'kilosort-docker[groundtruth]'"
            " (raw binaries need nothing)"
        ) from None
    try:
        recording = read()
    except UserError:
        raise
    except Exception as exc:  # the reader's own error, as one line
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UserError(f"cannot read {path} as {fmt} ({reason}): check the recording") from None
    if recording.get_num_segments() != 1:
        raise UserError(
            f"{path} holds {recording.get_num_segments()} segments: Kilosort sorts one; "
            "concatenate them first (spikeinterface.concatenate_recordings) and save"
        )
    return fmt, recording


def _spikeinterface(path: Path, out: Path | str | None) -> RecordingSource:
    fmt, recording = open_extractor(path)
    n_channels = int(recording.get_num_channels())
    fs = float(recording.get_sampling_frequency())
    n_samples = int(recording.get_num_samples(segment_index=0))
    raw = _raw_binary(recording)
    if raw is not None:
        log.info("%s is already an int16 binary in Kilosort's layout: %s", path, raw)
        return RecordingSource(path, fmt, raw, n_channels, n_channels, fs, n_samples)
    dtype = str(recording.get_dtype())
    if dtype not in ("int16", "uint16"):
        raise UserError(
            f"{path} holds {dtype} samples; Kilosort reads int16: save it as int16 first "
            "(spikeinterface.preprocessing.scale to int16, then save)"
        )
    target = Path(out if out is not None else ".") / CONVERTED_NAME
    return RecordingSource(
        path, fmt, target, n_channels, n_channels, fs, n_samples, convert=True, extractor=fmt
    )


def _raw_binary(recording) -> Path | None:
    """The file of a recording that already is one int16 binary in Kilosort's layout (no
    header offset, sample-major), else None."""
    try:
        if not recording.is_binary_compatible():
            return None
        info = recording.get_binary_description()
    except Exception:
        return None
    files = list(info.get("file_paths") or [])
    if (
        len(files) == 1
        and str(info.get("dtype")) == "int16"
        and int(info.get("time_axis", 0)) == 0
        and int(info.get("file_offset", 0)) == 0
        and int(info.get("num_channels", -1)) == recording.get_num_channels()
    ):
        return Path(files[0])
    return None


# --------------------------------------------------------------------------- conversion


def check_free_space(
    folder: Path | str,
    needed: int,
    *,
    disk_usage: Callable[[str], Any] | None = None,
) -> None:
    """Refuse a conversion that would not fit: ``needed`` bytes plus
    :data:`FREE_SPACE_MARGIN` must be free on the file system that will hold ``folder``
    (its nearest existing parent when it does not exist yet).

    Args:
        disk_usage: ``shutil.disk_usage`` (default) or a stand-in returning ``.free``.

    Raises:
        UserError: not enough space; names what is needed, what is free and where.
    """
    probe = Path(os.path.abspath(folder))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = (disk_usage or shutil.disk_usage)(str(probe)).free
    if free < needed + FREE_SPACE_MARGIN:
        raise UserError(
            f"the conversion needs {_gb(needed + FREE_SPACE_MARGIN)} in {probe} but only "
            f"{_gb(free)} is free: free some space or pass another --out"
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def convert(
    source: RecordingSource,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    chunk_samples: int = CHUNK_SAMPLES,
) -> Path:
    """Write ``source`` (a SpikeInterface recording) to ``source.binary`` as int16,
    sample-major, in chunks of ``chunk_samples`` samples; returns the file.

    Written under a temporary name beside it and renamed at the end, so a failed or
    interrupted conversion leaves no half file under the final name. ``uint16`` samples are
    shifted by 32768 into int16. ``on_progress(done, total)`` gets samples written.

    Raises:
        UserError: the recording cannot be read, or the result has the wrong size.
    """
    import numpy as np

    _, recording = open_extractor(source.path)
    target = source.binary
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    total = source.n_samples
    try:
        with open(partial, "wb") as f:
            for start in range(0, total, chunk_samples):
                stop = min(start + chunk_samples, total)
                traces = recording.get_traces(start_frame=start, end_frame=stop, segment_index=0)
                if traces.dtype == np.uint16:
                    traces = (traces.astype(np.int32) - 32768).astype(np.int16)
                np.ascontiguousarray(traces, dtype=np.int16).tofile(f)
                if on_progress is not None:
                    on_progress(stop, total)
        size = partial.stat().st_size
        if size != source.size_bytes:
            raise UserError(
                f"the conversion of {source.path} wrote {size} bytes, expected "
                f"{source.size_bytes}: check the recording"
            )
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def sha256(path: Path, *, block: int = 16 * 1024**2) -> str:
    """The sha256 of a file, read in blocks (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()

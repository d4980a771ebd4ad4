"""Probe files in, the channel map each sorter needs out.

:func:`load_probe` reads, by the file's suffix:

``.json``
    probeinterface's JSON (``probeinterface.write_probeinterface``): one probe, or a probe
    group whose probes become shanks (``kcoords``).
``.prb``
    a PRB file (``probeinterface.read_prb``; the file is Python, read by probeinterface).
``.meta``
    a SpikeGLX meta file of a Neuropixels probe (1.0, 2.0 and the others probeinterface knows:
    ``probeinterface.read_spikeglx`` builds the probe from its own catalogue and the meta's
    ``imroTbl`` and ``snsSaveChanSubset``; nothing is downloaded).
``.mat``
    Kilosort's ``chanMap.mat`` (``chanMap`` 1-based, ``xcoords``, ``ycoords``, ``kcoords``,
    ``connected``), read with ``scipy.io.loadmat``.

Whatever the format, the result is a :class:`ChannelMap` whose ``rows`` are 0-based rows of the
binary file (channel ``k`` of the probe is read from row ``rows[k]`` of each sample).
:meth:`ChannelMap.kilosort4_probe` writes them 0-based (Kilosort 4.1.7 ``kilosort/io.py``
``load_probe`` turns a ``chanMap.mat`` into ``chanMap - 1``, "0-indexing in Python");
:meth:`ChannelMap.kilosort3_chanmap` writes them 1-based (Kilosort v3.0.2
``configFiles/createChannelMapFile.m``: ``chanMap = 1:Nchannels; chanMap0ind = chanMap - 1``).

probeinterface, numpy and scipy are imported only for the formats that need them; a
probeinterface JSON file is read without them when probeinterface is not installed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kilosort_docker.errors import UserError

log = logging.getLogger(__name__)

#: Suffixes :func:`load_probe` reads.
PROBE_SUFFIXES = (".json", ".prb", ".meta", ".mat")


@dataclass(frozen=True)
class ChannelMap:
    """A probe as a sorter sees it: one entry per recorded channel of the probe.

    Attributes:
        rows: 0-based row of each channel in the binary (its device channel index).
        x_um, y_um: contact positions in micrometres.
        shanks: shank (channel group) of each channel, from 0.
        connected: False for a channel the sorter must leave out (``chanMap.mat``'s
            ``connected``); all True for the other formats.
        source: the file it was read from.
        name: a short name (the probe's model or the file's stem).
    """

    rows: tuple[int, ...]
    x_um: tuple[float, ...]
    y_um: tuple[float, ...]
    shanks: tuple[int, ...]
    connected: tuple[bool, ...]
    source: str = ""
    name: str = "probe"

    def __post_init__(self) -> None:
        n = len(self.rows)
        if not n:
            raise UserError(f"{self.source or 'the probe'} has no channels: pass a probe file")
        lengths = {len(self.x_um), len(self.y_um), len(self.shanks), len(self.connected)}
        if lengths != {n}:
            raise UserError(
                f"{self.source}: the probe's channel lists differ in length: fix the probe file"
            )
        if len(set(self.rows)) != n or min(self.rows) < 0:
            raise UserError(
                f"{self.source}: the probe's channel indices repeat or are negative: give every "
                "contact its own channel (device_channel_indices / chanMap)"
            )

    @property
    def n_channels(self) -> int:
        """How many channels the probe maps (connected or not)."""
        return len(self.rows)

    def check_fits(self, n_binary_channels: int, n_neural: int, *, recording: str) -> None:
        """Refuse a probe that does not match the recording.

        Args:
            n_binary_channels: channels per sample in the binary (rows).
            n_neural: the recording's neural channels (the binary's less a SpikeGLX sync
                channel); the probe must map exactly as many.
            recording: the recording's name, for the message.

        Raises:
            UserError: the channel counts differ, or a channel's row is past the binary's.
        """
        if self.n_channels != n_neural:
            raise UserError(
                f"the probe {self.source} has {self.n_channels} channels but the recording "
                f"{recording} has {n_neural}: pass the probe file of this recording (or the "
                "recording's right --channels)"
            )
        if max(self.rows) >= n_binary_channels:
            raise UserError(
                f"the probe {self.source} maps a channel to row {max(self.rows)} but the "
                f"recording {recording} has {n_binary_channels} rows (0-based): fix the probe's "
                "channel indices"
            )

    def kilosort4_probe(self) -> dict[str, Any]:
        """Kilosort 4's probe dictionary as JSON-able lists: ``chanMap`` 0-based rows of the
        connected channels, ``xc``, ``yc``, ``kcoords``, and ``n_chan`` the channels mapped
        (Kilosort 4.1.7 ``kilosort/io.py`` ``load_probe`` keeps only connected channels and
        sets ``n_chan`` to the length of the whole channel map)."""
        keep = [i for i, c in enumerate(self.connected) if c]
        return {
            "chanMap": [int(self.rows[i]) for i in keep],
            "xc": [float(self.x_um[i]) for i in keep],
            "yc": [float(self.y_um[i]) for i in keep],
            "kcoords": [float(self.shanks[i]) for i in keep],
            "n_chan": self.n_channels,
        }

    def kilosort3_chanmap(self, fs: float) -> dict[str, Any]:
        """The variables of Kilosort 3's ``chanMap.mat`` (Kilosort v3.0.2
        ``configFiles/createChannelMapFile.m``): ``chanMap`` 1-based, ``chanMap0ind``,
        ``xcoords``, ``ycoords``, ``kcoords`` (groups from 1), ``connected``, ``fs``,
        ``name``; columns of floats (``connected`` logical) for ``scipy.io.savemat``."""
        import numpy as np

        def column(values: Sequence[float], dtype=float):
            return np.asarray(values, dtype=dtype).reshape(-1, 1)

        rows = np.asarray(self.rows, dtype=float)
        return {
            "chanMap": column(rows + 1),
            "chanMap0ind": column(rows),
            "xcoords": column(self.x_um),
            "ycoords": column(self.y_um),
            "kcoords": column([s + 1 for s in self.shanks]),
            "connected": column(self.connected, bool),
            "fs": float(fs),
            "name": self.name,
        }


def load_probe(path: Path | str) -> ChannelMap:
    """Read a probe file (format by suffix, see the module docstring).

    Raises:
        UserError: the file does not exist or cannot be read, its suffix is none of
            :data:`PROBE_SUFFIXES`, or its content is not a probe of that format.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"the probe file {path} does not exist: pass --probe FILE")
    suffix = path.suffix.lower()
    readers = {".json": _read_json, ".prb": _read_prb, ".meta": _read_meta, ".mat": _read_mat}
    if suffix not in readers:
        raise UserError(
            f"unknown probe format {path.name}: give probeinterface JSON (.json), a PRB file "
            "(.prb), a SpikeGLX .meta of a Neuropixels probe or Kilosort's chanMap.mat (.mat)"
        )
    try:
        return readers[suffix](path)
    except UserError:
        raise
    except ImportError as exc:
        raise UserError(
            f"reading {path.name} needs {exc.name}: pip install 'kilosort-docker[groundtruth]'"
        ) from None
    except OSError as exc:
        raise UserError(
            f"cannot read the probe file {path}: {exc.strerror or exc}: fix its permissions"
        ) from None
    except Exception as exc:  # a library's own parse error: one line naming the file
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UserError(
            f"{path} is not a readable {suffix} probe file ({type(exc).__name__}: {reason}): "
            "check the file"
        ) from None


def from_probeinterface(probe_or_group, *, source: str) -> ChannelMap:
    """A :class:`ChannelMap` from a probeinterface ``Probe`` or ``ProbeGroup`` (each probe a
    shank group); channels ordered by device channel index.

    Raises:
        UserError: a contact has no device channel index (the probe is not wired).
    """
    probes = getattr(probe_or_group, "probes", None) or [probe_or_group]
    entries = []
    for group, probe in enumerate(probes):
        wiring = probe.device_channel_indices
        if wiring is None or any(int(d) < 0 for d in wiring):
            raise UserError(
                f"{source}: the probe has contacts without a device channel index: wire it "
                "(probe.set_device_channel_indices) and save it again"
            )
        shank_ids = getattr(probe, "shank_ids", None)
        for k, row in enumerate(wiring):
            x, y = probe.contact_positions[k][:2]
            shank = group
            if len(probes) == 1 and shank_ids is not None and str(shank_ids[k]).strip():
                shank = int(float(shank_ids[k]))
            entries.append((int(row), float(x), float(y), shank))
    entries.sort()
    return _channel_map(entries, source=source, name=_probe_name(probes[0], source))


def _channel_map(entries, *, source: str, name: str) -> ChannelMap:
    rows, xs, ys, shanks = zip(*entries, strict=True) if entries else ((), (), (), ())
    return ChannelMap(
        rows=tuple(rows),
        x_um=tuple(xs),
        y_um=tuple(ys),
        shanks=tuple(shanks),
        connected=(True,) * len(rows),
        source=source,
        name=name,
    )


def _probe_name(probe, source: str) -> str:
    annotations = getattr(probe, "annotations", {}) or {}
    return str(annotations.get("model_name") or annotations.get("part_number") or Path(source).stem)


def _read_json(path: Path) -> ChannelMap:
    try:
        from probeinterface import read_probeinterface
    except ImportError:
        return _read_json_plain(path)
    return from_probeinterface(read_probeinterface(path), source=str(path))


def _read_json_plain(path: Path) -> ChannelMap:
    """probeinterface's JSON without probeinterface: ``probes[*]`` with ``contact_positions``,
    ``device_channel_indices`` and, optionally, ``shank_ids``."""
    data = json.loads(path.read_text())
    probes = data.get("probes") if isinstance(data, dict) else None
    if not probes:
        raise UserError(
            f"{path} is not probeinterface JSON (no 'probes'): write it with "
            "probeinterface.write_probeinterface"
        )
    entries = []
    for group, probe in enumerate(probes):
        wiring = probe.get("device_channel_indices")
        positions = probe["contact_positions"]
        if wiring is None or any(int(d) < 0 for d in wiring):
            raise UserError(
                f"{path}: the probe has contacts without a device channel index: wire it "
                "(probe.set_device_channel_indices) and save it again"
            )
        for k, row in enumerate(wiring):
            entries.append((int(row), float(positions[k][0]), float(positions[k][1]), group))
    entries.sort()
    return _channel_map(entries, source=str(path), name=path.stem)


def _read_prb(path: Path) -> ChannelMap:
    from probeinterface import read_prb

    return from_probeinterface(read_prb(path), source=str(path))


def _read_meta(path: Path) -> ChannelMap:
    from probeinterface import read_spikeglx

    return from_probeinterface(read_spikeglx(path), source=str(path))


def _read_mat(path: Path) -> ChannelMap:
    import numpy as np
    import scipy.io

    mat = scipy.io.loadmat(path)
    missing = [k for k in ("chanMap", "xcoords", "ycoords") if k not in mat]
    if missing:
        raise UserError(
            f"{path} is not Kilosort's chanMap.mat (it lacks {', '.join(missing)}): make it with "
            "Kilosort's configFiles/createChannelMapFile.m"
        )
    # Kilosort v3.0.2 configFiles/createChannelMapFile.m: chanMap is 1-based (1:Nchannels).
    one_based = np.asarray(mat["chanMap"], dtype=float).ravel()
    n = one_based.size
    if n and one_based.min() < 1:
        raise UserError(
            f"{path}: chanMap holds {one_based.min():g}, but Kilosort's chanMap is 1-based "
            "(chanMap0ind is the 0-based one): fix the file"
        )
    connected = np.asarray(mat.get("connected", np.ones(n)), dtype=bool).ravel()
    kcoords = np.asarray(mat.get("kcoords", np.ones(n)), dtype=float).ravel()
    name = mat.get("name")
    return ChannelMap(
        rows=tuple(int(r) - 1 for r in one_based),
        x_um=tuple(float(v) for v in np.asarray(mat["xcoords"], dtype=float).ravel()),
        y_um=tuple(float(v) for v in np.asarray(mat["ycoords"], dtype=float).ravel()),
        shanks=tuple(max(int(k) - 1, 0) for k in kcoords),
        connected=tuple(bool(c) for c in connected),
        source=str(path),
        name=str(name.ravel()[0]) if name is not None and name.size else path.stem,
    )

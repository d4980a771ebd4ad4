"""SpikeGLX ``.meta`` files written by tests, with the fields SpikeGLX writes (its metadata
guide, billkarsh.github.io/SpikeGLX) and probeinterface's ``read_spikeglx`` reads: the probe's
part number, the IMRO table of every readout channel, the saved channel subset with the sync
channel last, the sampling rate."""

from __future__ import annotations

from pathlib import Path

#: IMRO entry of readout channel ``c``, per IMRO table type (probeinterface 0.4.2's catalogue,
#: ``z_imro_formats``): Neuropixels 1.0 ``(channel bank ref_id ap_gain lf_gain ap_hipas_flt)``,
#: bank 0; Neuropixels 2.0 ``(channel bank_mask ref_id electrode)``, electrode ``c``.
IMRO = {
    "NP1000": ("0", lambda c: f"({c} 0 0 500 250 1)"),
    "NP2000": ("21", lambda c: f"({c} 1 0 {c})"),
}
READOUT_CHANNELS = 384


def write_meta(
    path: Path,
    *,
    part_number: str = "NP1000",
    n_neural: int = 16,
    sync: bool = True,
    fs: float = 30000.0,
    file_size: int = 0,
) -> Path:
    """Write an imec AP-band ``.meta`` saving readout channels ``0 .. n_neural-1`` (and the
    sync channel, readout channel 384, when ``sync``); returns ``path``."""
    imro_type, entry = IMRO[part_number]
    imro = f"({imro_type},{READOUT_CHANNELS})" + "".join(entry(c) for c in range(READOUT_CHANNELS))
    subset = f"0:{n_neural - 1}" + (f",{READOUT_CHANNELS}" if sync else "")
    fields = {
        "typeThis": "imec",
        "imDatPrb_pn": part_number,
        "imSampRate": f"{fs:g}",
        "nSavedChans": str(n_neural + int(sync)),
        "snsApLfSy": f"{n_neural},0,{int(sync)}",
        "snsSaveChanSubset": subset,
        "fileSizeBytes": str(file_size),
        "~imroTbl": imro,
    }
    path.write_text("".join(f"{k}={v}\n" for k, v in fields.items()))
    return path

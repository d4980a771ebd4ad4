"""Run Kilosort 4 on a simulation folder: ``python ks4_entry.py DATA_DIR OUT_DIR [auto|cuda|cpu]``.

Self-contained on purpose (standard library, numpy, torch and kilosort only): the host runner
imports it, and the container runner sends its source to ``python -c`` inside the
``kilosort4`` image, which does not have this package. Reads ``ks4_settings.json``,
``ks4_probe.json`` and ``recording.bin`` from DATA_DIR, writes phy files and ``ks_run.json``
(device, seconds, versions) into OUT_DIR.
"""

import json
import os
import sys
import time


def main(argv=None):
    import kilosort
    import numpy as np
    import torch
    from kilosort import run_kilosort

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3):
        sys.stderr.write("usage: ks4_entry.py DATA_DIR OUT_DIR [auto|cuda|cpu]\n")
        return 2
    data_dir, out_dir = args[0], args[1]
    want = args[2] if len(args) == 3 else "auto"
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("CUDA requested but torch sees no GPU\n")
        return 3
    device = torch.device(want)

    with open(os.path.join(data_dir, "ks4_settings.json")) as f:
        settings = json.load(f)
    with open(os.path.join(data_dir, "ks4_probe.json")) as f:
        raw = json.load(f)
    probe = {
        "chanMap": np.asarray(raw["chanMap"], dtype=np.int64),
        "xc": np.asarray(raw["xc"], dtype=np.float32),
        "yc": np.asarray(raw["yc"], dtype=np.float32),
        "kcoords": np.asarray(raw["kcoords"], dtype=np.float32),
        "n_chan": int(raw["n_chan"]),
    }
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    np.random.seed(0)
    start = time.perf_counter()
    run_kilosort(
        settings=settings,
        probe=probe,
        filename=os.path.join(data_dir, "recording.bin"),
        results_dir=out_dir,
        data_dtype="int16",
        device=device,
    )
    seconds = time.perf_counter() - start
    info = {
        "sorter": "kilosort4",
        "device": str(device),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "seconds": seconds,
        "kilosort": getattr(kilosort, "__version__", "unknown"),
        "torch": torch.__version__,
    }
    with open(os.path.join(out_dir, "ks_run.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"kilosort4 finished on {device} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

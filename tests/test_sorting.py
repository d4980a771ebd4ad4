"""``invoke sort`` / ``python -m kilosort_docker.sorting`` without an engine: every bad input
is one line, exit 2 and nothing written; formats, channel maps, the record and the marker.

A stand-in :class:`Runtime` (it writes a small phy folder into the read-write mount) runs
:func:`kilosort_docker.sorting.runner.sort` end to end; tests/test_sort_container.py sorts
for real in the kilosort4 image.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from kilosort_docker.errors import UserError
from kilosort_docker.sorting import cli, record, recordings, runner, runtimes
from kilosort_docker.sorting.probes import load_probe
from kilosort_docker.sorting.runner import SortRequest
from tests.support.spikeglx import write_meta

N_CHANNELS, FS = 16, 30000.0
N_SAMPLES = 60000 + 61 + 1000  # more than one Kilosort 4 batch
IMAGE = "kilosort-docker-test/kilosort4:test"


@pytest.fixture
def probe_json(tmp_path: Path) -> Path:
    from probeinterface import write_probeinterface

    from kilosort_docker.groundtruth.simulate import neuropixels_probe

    path = tmp_path / "probe.json"
    write_probeinterface(path, neuropixels_probe(N_CHANNELS))
    return path


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    path = tmp_path / "rec" / "data.bin"
    path.parent.mkdir()
    rng = np.random.default_rng(0)
    rng.integers(-100, 100, size=(N_SAMPLES, N_CHANNELS), dtype=np.int16).tofile(path)
    return path


def request(binary: Path, probe: Path, out: Path, **kw) -> SortRequest:
    kw.setdefault("channels", N_CHANNELS)
    kw.setdefault("sampling_rate", FS)
    kw.setdefault("image", IMAGE)
    return SortRequest(recording=binary, probe=probe, out=out, **kw)


def refused(capsys, req: SortRequest) -> str:
    """Run the front end; assert exit 2 with one line on stderr; return the line."""
    assert cli.execute(req) == runner.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# --------------------------------------------------------------------------- bad input


def test_binary_size_not_a_multiple_names_size_channels_remainder(
    capsys, tmp_path, binary, probe_json
):
    with open(binary, "ab") as f:
        f.write(b"\0" * 6)
    size = binary.stat().st_size
    out = tmp_path / "out"
    err = refused(capsys, request(binary, probe_json, out))
    assert f"{size} bytes" in err and "16 channels" in err and "6 bytes are left over" in err
    assert not out.exists()


def test_probe_channel_count_differs(capsys, tmp_path, binary):
    from probeinterface import write_probeinterface

    from kilosort_docker.groundtruth.simulate import neuropixels_probe

    probe = tmp_path / "probe8.json"
    write_probeinterface(probe, neuropixels_probe(8))
    out = tmp_path / "out"
    err = refused(capsys, request(binary, probe, out))
    assert "has 8 channels but the recording" in err and "has 16" in err
    assert not out.exists()


def test_unknown_and_unreadable_formats(capsys, tmp_path, binary, probe_json):
    out = tmp_path / "out"
    odd = tmp_path / "rec.xyz"
    odd.write_bytes(b"\0" * 64)
    assert "unknown recording format rec.xyz" in refused(capsys, request(odd, probe_json, out))
    bad_probe = tmp_path / "probe.csv"
    bad_probe.write_text("x,y\n")
    assert "unknown probe format probe.csv" in refused(capsys, request(binary, bad_probe, out))
    garbage = tmp_path / "broken.json"
    garbage.write_text("{not json")
    assert "not a readable .json probe file" in refused(capsys, request(binary, garbage, out))
    missing = tmp_path / "none.bin"
    assert "does not exist" in refused(capsys, request(missing, probe_json, out))
    settings = tmp_path / "settings.json"
    settings.write_text("[1, 2]")
    err = refused(capsys, request(binary, probe_json, out, settings=settings))
    assert "one JSON object" in err
    assert not out.exists()


def test_raw_binary_without_layout_names_the_flags(capsys, tmp_path, binary, probe_json):
    err = refused(capsys, request(binary, probe_json, tmp_path / "o", channels=None))
    assert "no SpikeGLX .meta beside it: pass --channels" in err


def test_output_folder_with_a_sort_is_refused_without_overwrite(
    capsys, tmp_path, binary, probe_json
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "spike_times.npy").write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    err = refused(capsys, request(binary, probe_json, out))
    assert "already holds a sort" in err and "--overwrite" in err
    assert (out / "spike_times.npy").read_bytes() == b"x"
    assert runner.validate(request(binary, probe_json, out, overwrite=True)).out == out


def test_overwrite_deletes_only_what_the_previous_record_lists(tmp_path):
    out = tmp_path / "out"
    (out / "kilosort-inputs").mkdir(parents=True)
    for name in ("spike_times.npy", "params.py", "kilosort-inputs/ks4_probe.json", "notes.txt"):
        (out / name).write_text("old")
    digest = record.write_record(
        out, {"outputs": ["spike_times.npy", "params.py", "kilosort-inputs/ks4_probe.json"]}
    )
    record.write_marker(out, digest)
    assert record.is_finished(out)
    removed = record.clear_previous(out)
    assert set(removed) >= {"sort-complete.json", "spike_times.npy", "sort-record.json"}
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["notes.txt"]


def test_colon_in_a_path_suggests_a_symlink(capsys, tmp_path, binary, probe_json):
    odd = tmp_path / "day:1"
    odd.mkdir()
    moved = odd / "data.bin"
    binary.rename(moved)
    err = refused(capsys, request(moved, probe_json, tmp_path / "out"))
    assert "holds ':', which Docker cannot mount" in err and "ln -s" in err
    err = refused(capsys, request(binary.parent, probe_json, odd / "out"))
    assert "output folder" in err or "unknown recording format" in err
    # the symlink the message suggests works
    link = tmp_path / "day-1.bin"
    link.symlink_to(moved)
    assert runner.validate(request(link, probe_json, tmp_path / "out")).recording.binary == link
    # on the host nothing is mounted: a ':' is fine
    plan = runner.validate(request(moved, probe_json, tmp_path / "out", host=True, image=None))
    assert plan.image is None


def test_not_enough_disk_for_a_conversion(capsys, tmp_path, probe_json, monkeypatch):
    folder = uint16_folder(tmp_path)
    capsys.readouterr()
    out = tmp_path / "out"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(recordings.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    err = refused(capsys, request(folder, probe_json, out, channels=None, sampling_rate=None))
    assert "the conversion needs" in err and "1.0 kB" not in err and "free" in err
    assert not out.exists()


def test_flags_contradicting_the_meta_and_bad_numbers(capsys, tmp_path, probe_json):
    path = spikeglx_pair(tmp_path)
    err = refused(capsys, request(path, probe_json, tmp_path / "o", channels=16))
    assert "contradicts" in err and "nSavedChans=17" in err
    with pytest.raises(UserError, match="--channels must be a whole number"):
        cli.request_from_flags("r", probe="p", out="o", channels="many")
    with pytest.raises(UserError, match="missing --probe"):
        cli.request_from_flags("r", probe=None, out="o")


def test_kilosort3_requests_that_cannot_run(capsys, tmp_path, binary, probe_json, monkeypatch):
    monkeypatch.delenv("MLM_LICENSE_FILE", raising=False)
    out = tmp_path / "out"
    err = refused(capsys, request(binary, probe_json, out, sorter="kilosort3", device="cpu"))
    assert "GPU only" in err
    assert "no MATLAB license" in refused(
        capsys, request(binary, probe_json, out, sorter="kilosort3")
    )
    err = refused(capsys, request(binary, probe_json, out, mac_address="02:42:ac:11:00:02"))
    assert "--mac-address is for Kilosort 3" in err
    # Kilosort 3 needs more than one batch of ops.NT = 65472 samples (v3.0.2)
    monkeypatch.setenv("MLM_LICENSE_FILE", "27000@licenses.example.org")
    err = refused(capsys, request(binary, probe_json, out, sorter="kilosort3"))
    assert "too short for Kilosort 3" in err


def test_settings_may_not_contradict_the_recording(capsys, tmp_path, binary, probe_json):
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps({"n_chan_bin": 32, "nblocks": 0}))
    err = refused(capsys, request(binary, probe_json, tmp_path / "o", settings=settings))
    assert "n_chan_bin=32" in err
    settings.write_text(json.dumps({"nblocks": 0, "batch_size": 30000}))
    plan = runner.validate(request(binary, probe_json, tmp_path / "o", settings=settings))
    assert plan.settings == {"nblocks": 0, "batch_size": 30000, "n_chan_bin": 16, "fs": FS}


def test_dry_run_writes_nothing(capsys, tmp_path, binary, probe_json, monkeypatch):
    out = tmp_path / "out"
    looked_up = []

    class Runtime(StandInRuntime):
        def image(self, ref):
            looked_up.append(ref)
            return super().image(ref)

    monkeypatch.setitem(runtimes.RUNTIMES, "docker", Runtime)
    assert cli.execute(request(binary, probe_json, out, dry_run=True)) == 0
    said = capsys.readouterr().out
    assert "read in place, not copied" in said and "16 channels" in said
    assert not out.exists()
    assert looked_up == [IMAGE]  # a dry run checks the image is there


def test_dry_run_refuses_an_image_that_is_not_there(
    capsys, tmp_path, binary, probe_json, monkeypatch
):
    class Runtime(StandInRuntime):
        def image(self, ref):
            raise UserError(f"image {ref} is not present: build it")

    monkeypatch.setitem(runtimes.RUNTIMES, "docker", Runtime)
    err = refused(capsys, request(binary, probe_json, tmp_path / "out", dry_run=True))
    assert f"image {IMAGE} is not present" in err


def test_an_output_folder_that_cannot_be_made_is_refused_first(
    capsys, tmp_path, binary, probe_json
):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    err = refused(capsys, request(binary, probe_json, a_file / "sub", dry_run=True))
    assert "is a file, not a folder" in err
    link = tmp_path / "outlink"
    link.symlink_to(tmp_path / "not-yet")
    err = refused(capsys, request(binary, probe_json, link, dry_run=True))
    assert "is a symlink to" in err and "does not exist: create that folder first" in err
    assert not (tmp_path / "not-yet").exists()


# --------------------------------------------------------------------------- formats


def spikeglx_pair(tmp_path: Path, *, part_number: str = "NP1000") -> Path:
    """A SpikeGLX-style ``.ap.bin`` (16 neural channels and the sync channel) and its
    ``.meta``."""
    path = tmp_path / "run_g0_t0.imec0.ap.bin"
    np.zeros((N_SAMPLES, N_CHANNELS + 1), dtype=np.int16).tofile(path)
    write_meta(path.with_suffix(".meta"), part_number=part_number, file_size=path.stat().st_size)
    return path


def test_spikeglx_meta_gives_the_layout_and_the_probe(tmp_path):
    path = spikeglx_pair(tmp_path)
    for given in (path, path.with_suffix(".meta"), tmp_path):
        source = recordings.inspect_recording(given)
        assert (source.n_channels, source.n_neural, source.fs) == (17, 16, FS)
        assert source.binary == path and not source.convert
    probe = load_probe(path.with_suffix(".meta"))
    probe.check_fits(17, 16, recording="r")
    assert probe.rows == tuple(range(16)) and probe.name == "NP1000"
    np2 = load_probe(write_meta(tmp_path / "np2.ap.meta", part_number="NP2000"))
    assert np2.n_channels == 16 and np2.y_um[2] - np2.y_um[0] == 15  # NP2.0: 15 um rows


def test_chanmap_mat_is_1_based_and_kilosort4_reads_what_we_write(tmp_path):
    import scipy.io

    plan_probe = load_probe(chanmap_file(tmp_path, rows=[3, 0, 2, 1], connected=[1, 1, 0, 1]))
    assert plan_probe.rows == (3, 0, 2, 1)
    ks4 = plan_probe.kilosort4_probe()
    assert ks4["chanMap"] == [3, 0, 1] and ks4["n_chan"] == 4
    written = tmp_path / "ours.mat"
    scipy.io.savemat(written, plan_probe.kilosort3_chanmap(FS))
    mat = scipy.io.loadmat(written)
    assert mat["chanMap"].ravel().tolist() == [4, 1, 3, 2]
    assert mat["chanMap0ind"].ravel().tolist() == [3, 0, 2, 1]
    kilosort_io = pytest.importorskip("kilosort.io")
    theirs = kilosort_io.load_probe(written)  # Kilosort 4.1.7's own reader of chanMap.mat
    assert theirs["chanMap"].tolist() == ks4["chanMap"]
    assert theirs["n_chan"] == ks4["n_chan"]
    assert theirs["xc"].tolist() == ks4["xc"]


def chanmap_file(tmp_path: Path, *, rows, connected) -> Path:
    import scipy.io

    path = tmp_path / "chanMap.mat"
    n = len(rows)
    scipy.io.savemat(
        path,
        {
            "chanMap": np.asarray(rows, float).reshape(-1, 1) + 1,
            "chanMap0ind": np.asarray(rows, float).reshape(-1, 1),
            "xcoords": np.arange(n, dtype=float).reshape(-1, 1),
            "ycoords": 20 * np.arange(n, dtype=float).reshape(-1, 1),
            "kcoords": np.ones((n, 1)),
            "connected": np.asarray(connected, bool).reshape(-1, 1),
            "fs": FS,
        },
    )
    return path


def test_prb_probe(tmp_path):
    prb = tmp_path / "tetrode.prb"
    prb.write_text(
        "channel_groups = {0: {'channels': [1, 0, 3, 2], "
        "'geometry': {0: (0, 0), 1: (0, 20), 2: (20, 0), 3: (20, 20)}}}\n"
    )
    probe = load_probe(prb)
    assert probe.rows == (0, 1, 2, 3)
    positions = dict(zip(probe.rows, zip(probe.x_um, probe.y_um, strict=True), strict=True))
    assert positions[1] == (0.0, 20.0)


def uint16_folder(tmp_path: Path) -> Path:
    """A SpikeInterface binary folder of uint16 samples: readable, not Kilosort's layout."""
    from spikeinterface.core import NumpyRecording

    data = np.random.default_rng(1).integers(0, 65535, (N_SAMPLES, N_CHANNELS), dtype=np.uint16)
    folder = tmp_path / "si"
    NumpyRecording([data], sampling_frequency=FS).save(
        folder=folder, dtype="uint16", progress_bar=False
    )
    np.save(tmp_path / "si-data.npy", data)
    return folder


def test_conversion_streams_to_int16(tmp_path):
    folder = uint16_folder(tmp_path)
    source = recordings.inspect_recording(folder, out=tmp_path / "out")
    assert source.convert and source.binary == tmp_path / "out" / "recording.bin"
    seen = []
    recordings.convert(source, on_progress=lambda d, t: seen.append(d), chunk_samples=20000)
    written = np.fromfile(source.binary, dtype=np.int16).reshape(-1, N_CHANNELS)
    original = np.load(tmp_path / "si-data.npy")
    assert np.array_equal(written, (original.astype(np.int32) - 32768).astype(np.int16))
    assert seen == [20000, 40000, 60000, N_SAMPLES]


def test_an_int16_spikeinterface_folder_is_not_copied(tmp_path):
    from spikeinterface.core import NumpyRecording

    data = np.zeros((N_SAMPLES, N_CHANNELS), dtype=np.int16)
    NumpyRecording([data], sampling_frequency=FS).save(folder=tmp_path / "si16", progress_bar=False)
    source = recordings.inspect_recording(tmp_path / "si16", out=tmp_path / "out")
    assert not source.convert and source.binary.parent == tmp_path / "si16"


# --------------------------------------------------------------------------- sort, stand-in


class StandInRuntime:
    """Writes what Kilosort 4 would (a few phy files, ks_run.json) into the ``rw`` mount
    and records what it was asked; ``exit_status`` 4 plays a crash."""

    name = "stand-in"

    def __init__(self, exit_status: int = 0) -> None:
        self.exit_status, self.calls = exit_status, []

    def image(self, ref):
        return runtimes.ImageInfo(ref, "sha256:" + "ab" * 32, (), {})

    def run(self, image, argv, *, ro=None, rw=None, gpu=False, **kw):
        ro, rw = dict(ro or {}), dict(rw or {})
        self.calls.append({"image": image, "argv": list(argv), "ro": ro, "rw": rw})
        out = Path(next(iter(rw)))
        assert not (out / record.MARKER_NAME).exists()
        if self.exit_status:
            (out / "ks_run.json").write_text(json.dumps({"error": "ValueError: boom"}))
            return runtimes.RunResult(self.exit_status, "ValueError: boom")
        np.save(out / "spike_times.npy", np.arange(30, dtype=np.int64))
        np.save(out / "spike_clusters.npy", np.repeat([0, 1, 2], 10))
        (out / "cluster_KSLabel.tsv").write_text("cluster_id\tKSLabel\n0\tgood\n1\tmua\n2\tgood\n")
        (out / "params.py").write_text("dat_path = ['/recording/data.bin']\n")
        (out / "ks_run.json").write_text(json.dumps({"seconds": 2.0, "device": "cpu", "gpu": None}))
        return runtimes.RunResult(0, "kilosort4 finished")


def test_sort_writes_record_then_marker(tmp_path, binary, probe_json):
    fake = StandInRuntime()
    outcome = runner.sort(request(binary, probe_json, tmp_path / "out", device="cpu"), runtime=fake)
    out = tmp_path / "out"
    assert outcome.ok and record.is_finished(out)
    rec = json.loads((out / "sort-record.json").read_text())
    for key in (
        "image",
        "digest",
        "sorter",
        "sorter_version",
        "settings",
        "recording_sha256",
        "started",
        "ended",
        "host",
        "gpu",
        "exit_status",
        "runtime",
    ):
        assert key in rec, key
    assert rec["exit_status"] == 0 and rec["recording_sha256"] == recordings.sha256(binary)
    assert (outcome.summary.units, outcome.summary.good_units, outcome.summary.spikes) == (3, 2, 30)
    call = fake.calls[0]
    assert call["ro"][str(binary)] == "/recording/data.bin"  # the input: read-only, in place
    assert call["argv"][-2:] == ["cpu", "/recording/data.bin"]
    probe = json.loads((out / "kilosort-inputs" / "ks4_probe.json").read_text())
    assert probe["chanMap"] == list(range(16))  # 0-based for Kilosort 4
    assert f"dat_path = ['{binary}']" in (out / "params.py").read_text()
    assert "spike_times.npy" in rec["outputs"] and "data.bin" not in rec["outputs"]
    # a second sort is refused; --overwrite replaces it
    with pytest.raises(UserError, match="already holds a finished sort"):
        runner.validate(request(binary, probe_json, out))
    again = runner.sort(
        request(binary, probe_json, out, device="cpu", overwrite=True), runtime=fake
    )
    assert again.ok and record.is_finished(out)


def test_a_failed_sort_leaves_a_record_and_no_marker(capsys, tmp_path, binary, probe_json):
    out = tmp_path / "out"
    outcome = runner.sort(request(binary, probe_json, out, device="cpu"), runtime=StandInRuntime(4))
    assert outcome.exit_status == runner.EXIT_FAILED and outcome.error == "ValueError: boom"
    assert not (out / record.MARKER_NAME).exists() and not record.is_finished(out)
    assert json.loads((out / "sort-record.json").read_text())["exit_status"] == 4


def test_marker_must_match_the_record(tmp_path):
    digest = record.write_record(tmp_path, {"exit_status": 0})
    record.write_marker(tmp_path, digest)
    assert record.is_finished(tmp_path)
    record.write_record(tmp_path, {"exit_status": 1})
    assert not record.is_finished(tmp_path)


def test_hand_back_gives_files_to_the_caller(tmp_path):
    if os.getuid() != 0:
        pytest.skip("only root can give files to another user")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    os.chown(tmp_path / "d", 1000, 1000)
    os.chown(tmp_path / "d" / "f", 1000, 1000)
    assert runtimes.hand_back([tmp_path], uid=0, gid=0) == []
    assert {p.stat().st_uid for p in tmp_path.rglob("*")} == {0}


def test_module_and_task_share_the_options():
    """``python -m kilosort_docker.sorting`` and ``invoke sort`` take the same options."""
    import tasks

    parser = cli.build_parser()
    flags = {a.dest for a in parser._actions} - {"help", "recording"}
    task = tasks.ns["sort"]
    params = set(list(task.argspec(task.body).parameters)) - {"recording"}
    assert flags == set(cli.HELP) == params
    assert set(runtimes.RUNTIMES) >= {"docker"}


def test_a_meta_without_the_layout_is_refused(capsys, tmp_path, probe_json):
    path = tmp_path / "x.ap.bin"
    np.zeros((N_SAMPLES, 17), dtype=np.int16).tofile(path)
    path.with_suffix(".meta").write_text("this is not a meta file\n")
    err = refused(capsys, request(path, probe_json, tmp_path / "o", channels=None))
    assert "not a SpikeGLX meta file with nSavedChans" in err


def test_kilosort3_gets_1_based_chanmap_and_the_binary_mounted_read_only(
    tmp_path, probe_json, monkeypatch
):
    """The Kilosort 3 route up to MATLAB (which cannot run here): ``run_batch`` is replaced by
    a stand-in that checks what it is given and writes phy files as ``rezToPhy2`` would."""
    import scipy.io

    from kilosort_docker import matlab

    path = tmp_path / "long.bin"
    np.zeros((70000, N_CHANNELS), dtype=np.int16).tofile(path)  # > ops.NT = 65472 samples
    seen = {}

    def run_batch(statement, *, image, license, volumes, mac_address=None, **kw):
        seen.update(statement=statement, image=image, volumes=volumes, mac=mac_address)
        inputs = next(h for h, v in volumes.items() if v["bind"] == "/data")
        out = Path(next(h for h, v in volumes.items() if v["bind"] == "/out"))
        seen["chanMap"] = scipy.io.loadmat(Path(inputs) / "chanMap.mat")["chanMap"].ravel()
        seen["ops"] = scipy.io.loadmat(Path(inputs) / "ops.mat", simplify_cells=True)["ops"]
        assert (Path(inputs) / "recording.bin").stat().st_size == 0  # the mount point
        np.save(out / "spike_times.npy", np.arange(5))
        np.save(out / "spike_clusters.npy", np.zeros(5, dtype=int))
        (out / "ks_run.json").write_text(json.dumps({"gpu": "NVIDIA H200", "seconds": 1.0}))
        return ""

    monkeypatch.setattr(matlab, "run_batch", run_batch)
    monkeypatch.setenv("MLM_LICENSE_FILE", "27000@licenses.example.org")
    settings = tmp_path / "ops.json"
    settings.write_text(json.dumps({"Th": [10, 4]}))
    image = "kilosort-docker-test/kilosort3:test"
    req = request(path, probe_json, tmp_path / "out", sorter="kilosort3", image=image)
    req = runner.with_defaults(req, settings=settings, mac_address="02:42:ac:11:00:02")
    outcome = runner.sort(req, runtime=StandInRuntime())
    assert outcome.ok and outcome.summary.gpu == "NVIDIA H200"
    assert seen["chanMap"].tolist() == list(range(1, 17))  # 1-based for Kilosort 3
    assert seen["ops"]["fbinary"] == "recording.bin" and list(seen["ops"]["Th"]) == [10, 4]
    assert seen["ops"]["NchanTOT"] == 16 and seen["ops"]["NT"] == 65472
    mounted = seen["volumes"][str(path)]
    assert mounted == {"bind": "/data/recording.bin", "mode": "ro"}
    assert seen["mac"] == "02:42:ac:11:00:02" and seen["image"] == image
    assert not (tmp_path / "out" / "kilosort-inputs" / "recording.bin").exists()


def openephys_folder(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """An Open Ephys binary recording (GUI 0.6 layout: ``structure.oebin``, and
    ``continuous/<stream>/continuous.dat`` int16 interleaved with ``sample_numbers.npy``)."""
    root = tmp_path / "oe"
    rec = root / "Record Node 101" / "experiment1" / "recording1"
    stream = rec / "continuous" / "Acquisition_Board-100.Rhythm Data"
    stream.mkdir(parents=True)
    data = np.random.default_rng(2).integers(-500, 500, (N_SAMPLES, N_CHANNELS), dtype=np.int16)
    data.tofile(stream / "continuous.dat")
    np.save(stream / "sample_numbers.npy", np.arange(N_SAMPLES, dtype=np.int64))
    np.save(stream / "timestamps.npy", np.arange(N_SAMPLES) / FS)
    channel = {"description": "", "identifier": "", "history": "", "bit_volts": 0.195}
    oebin = {
        "GUI version": "0.6.7",
        "continuous": [
            {
                "folder_name": "Acquisition_Board-100.Rhythm Data/",
                "sample_rate": FS,
                "source_processor_name": "Acquisition Board",
                "source_processor_id": 100,
                "stream_name": "Rhythm Data",
                "recorded_processor": "Acquisition Board",
                "recorded_processor_id": 100,
                "num_channels": N_CHANNELS,
                "channels": [
                    channel | {"channel_name": f"CH{i + 1}", "units": "uV", "type": 0}
                    for i in range(N_CHANNELS)
                ],
            }
        ],
        "events": [],
        "spikes": [],
    }
    (rec / "structure.oebin").write_text(json.dumps(oebin))
    return root, data


def test_an_openephys_binary_folder_is_read_in_place(tmp_path):
    import spikeinterface.extractors as se

    root, data = openephys_folder(tmp_path)
    source = recordings.inspect_recording(root, out=tmp_path / "out")
    assert not source.convert and source.binary.name == "continuous.dat"
    assert (source.n_channels, source.fs, source.n_samples) == (N_CHANNELS, FS, N_SAMPLES)
    # SpikeInterface's own reader sees the same samples in the file we hand to Kilosort
    theirs = se.read_openephys(root).get_traces(start_frame=100, end_frame=110)
    ours = np.fromfile(source.binary, dtype=np.int16).reshape(-1, N_CHANNELS)[100:110]
    assert np.array_equal(theirs, ours) and np.array_equal(ours, data[100:110])

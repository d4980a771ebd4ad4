"""``invoke acceptance`` (issue 10): the licensed maintainer's check-gpu + Kilosort3
ground-truth run and its JSON report.

Unit tests cover the report writer (never overwrites), the license-form redaction for every
FlexLM form, the GPU query, the dry run (a real ``invoke`` process) and how the ground-truth
harness's exit codes become step results. ``docker`` tests run the steps for real against the
``kilosort3`` image built on the faithful stand-in MATLAB base (tests/standins/matlab-base):
the stand-in cannot do GPU work, so on a host whose Docker has no NVIDIA runtime they assert
what really happens there: ``check-gpu`` with a GPU fails at the container start (one line,
report written, no container left), and without a GPU it passes and the real ground-truth
harness is skipped by its preflight, naming the missing runtime.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from kilosort_docker import acceptance, containers, matlab
from kilosort_docker.errors import UserError
from tests.support import REPO_ROOT
from tests.support.fakes import leftovers

TRIAD = "27000@lic1.example.org,27000@lic2.example.org,27000@lic3.example.org"
COLON_LIST = "27000@a.example.org:27000@b.example.org"
HOSTID = "0123456789ab"
MAC = "02:42:ac:11:00:02"
SERVER_FILE = f"SERVER lic.example.org {HOSTID} 27000\nUSE_SERVER\n"
HOSTLOCKED_FILE = f"INCREMENT MATLAB MLM 99 permanent uncounted HOSTID={HOSTID}\n"
H200 = acceptance.Gpu("NVIDIA H200", "9.0", "580.159.04")


def _license_file(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def _plan(tmp_path: Path, license: str, **kw) -> acceptance.Plan:
    kw.setdefault("out", tmp_path / "reports" / "r.json")
    plan = acceptance.make_plan(license=license, profile="r2022b", image="ks3:test", gpu=H200, **kw)
    return replace(plan, work_dir=tmp_path / "work")


def _report(plan: acceptance.Plan, steps, **kw) -> acceptance.Report:
    fields = dict(
        status=acceptance.FAILED,
        profile=plan.profile,
        image=acceptance.ImageInfo(plan.image, "sha256:" + "1" * 64, profile="r2022b"),
        gpu=plan.gpu,
        forward_compatibility=True,
        license=acceptance.license_form(plan.license, mac_address=plan.mac_address),
        duration_s=plan.duration_s,
        steps=tuple(steps),
        started="2026-11-30T01:00:00Z",
        finished="2026-11-30T01:01:00Z",
        seconds=60.0,
        versions=acceptance.versions(),
    )
    return acceptance.Report(**(fields | kw))


# --------------------------------------------------------------------------- license forms


def _forms(tmp_path: Path) -> list[tuple[str, str, str, int, tuple[str, ...]]]:
    """(value, form, detail, servers, strings that must not reach the report)."""
    server = _license_file(tmp_path / "srv", "server.lic", SERVER_FILE)
    locked = _license_file(tmp_path / "locked", "a.lic", HOSTLOCKED_FILE)
    folder = _license_file(tmp_path / "folder", "b.lic", HOSTLOCKED_FILE).parent
    return [
        ("27000@lic.example.org", "server", "port@host", 1, ("lic.example.org",)),
        ("@lic.example.org", "server", "@host", 1, ("lic.example.org",)),
        (TRIAD, "server", "three-server triad", 3, ("lic1.", "lic2.", "lic3.")),
        (COLON_LIST, "server", "list of 2 license server entries", 2, ("a.example", "b.ex")),
        (str(server), "file", "license file with SERVER lines", 1, ("server.lic", "srv/")),
        (str(locked), "host-locked", "host-locked license file", 0, ("a.lic", "locked/")),
        (str(folder), "host-locked", "host-locked folder of .lic files", 0, ("b.lic", "folder/")),
    ]


def test_every_license_form_is_recorded_by_its_form_only(tmp_path):
    for i, (value, form, detail, servers, hidden) in enumerate(_forms(tmp_path)):
        mac = MAC if form == "host-locked" else None
        plan = _plan(tmp_path, value, mac_address=mac, out=tmp_path / f"r{i}.json")
        said = f"MATLAB said: no license at {value} for {mac or 'this host'}"
        reason = acceptance._one_line(said, plan.secrets)
        report = _report(plan, [acceptance.StepResult("check-gpu", "failed", reason, 1.0)])
        path = acceptance.write_report(report, plan.report_path)
        text = path.read_text()
        saved = json.loads(text)
        assert saved["license"] == {
            "form": form,
            "detail": detail,
            "servers": servers,
            "mac_address_given": mac is not None,
        }, value
        shown = "***" if mac else "this host"
        assert saved["steps"][0]["reason"] == f"MATLAB said: no license at *** for {shown}"
        contents = ("SERVER lic", "HOSTID=", "INCREMENT MATLAB", "USE_SERVER")
        for secret in (value, MAC, HOSTID, "example.org", *contents, *hidden):
            assert secret not in text, (value, secret)
            assert secret not in plan.describe(), (value, secret)
        assert str(tmp_path) not in text


def test_a_wrong_license_is_a_one_line_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("MLM_LICENSE_FILE", raising=False)
    for value, match in [
        (None, "no MATLAB license"),
        ("27000@a,27000@b", "not a license FlexLM accepts"),
        (str(tmp_path / "missing.lic"), "does not exist"),
    ]:
        with pytest.raises(UserError, match=match) as exc:
            _plan(tmp_path, value)
        assert "\n" not in str(exc.value)
    assert not any(tmp_path.iterdir())  # nothing written: no report, no work folder


def test_plan_keeps_the_license_off_the_command_line(tmp_path):
    plan = _plan(tmp_path, TRIAD, mac_address=MAC, duration_s=30)
    argv = plan.groundtruth_argv()
    assert argv[:3] == [sys.executable, "-m", "kilosort_docker.groundtruth"]
    assert argv[3:] == [
        "--sorter",
        "kilosort3",
        "--mode",
        "container",
        "--image",
        "ks3:test",
        "--duration",
        "30",
        "--out",
        str(tmp_path / "work"),
        "--mac-address",
        MAC,
    ]
    assert TRIAD not in " ".join(argv)
    assert plan.groundtruth_environment()["MLM_LICENSE_FILE"] == TRIAD
    assert TRIAD not in repr(plan) and MAC not in repr(plan)
    assert MAC not in plan.describe() and "example.org" not in plan.describe()


# --------------------------------------------------------------------------- the report file


def test_reports_are_never_overwritten(tmp_path):
    plan = _plan(tmp_path, "27000@lic.example.org")
    report = _report(plan, [acceptance.StepResult("check-gpu", "passed", None, 2.5)])
    first = acceptance.write_report(report, plan.report_path)
    before = first.read_bytes()
    with pytest.raises(UserError, match="exists: reports are never overwritten") as exc:
        acceptance.write_report(report, first)
    assert "\n" not in str(exc.value) and first.read_bytes() == before
    second = acceptance.write_report(report, first, pick_free_name=True)
    third = acceptance.write_report(report, first, pick_free_name=True)
    assert (second.name, third.name) == ("r-2.json", "r-3.json")
    assert first.read_bytes() == before
    # a given --out that exists is refused before any work; the default path takes a new name
    with pytest.raises(UserError, match="never overwritten"):
        _plan(tmp_path, "27000@lic.example.org", out=first)
    with pytest.raises(UserError, match="must name a .json file"):
        _plan(tmp_path, "27000@lic.example.org", out=tmp_path / "report.txt")
    taken = acceptance.default_report_path("r2022b", H200, folder=tmp_path / "acc")
    assert taken.parent == tmp_path / "acc" and taken.name.endswith("-nvidia-h200.json")
    assert taken.name.startswith("r2022b-20")
    taken.parent.mkdir()
    taken.write_text("{}")
    again = acceptance.default_report_path("r2022b", H200, folder=tmp_path / "acc")
    assert again.name == taken.name.replace(".json", "-2.json")
    assert acceptance.default_report_path("r2022b", None, folder=tmp_path).name.endswith(
        "-no-gpu.json"
    )


def test_report_content(tmp_path):
    plan = _plan(tmp_path, "27000@lic.example.org")
    steps = [acceptance.StepResult("check-gpu", "passed", None, 2.5)]
    saved = json.loads(acceptance.write_report(_report(plan, steps), plan.report_path).read_text())
    assert saved["schema"] == acceptance.SCHEMA and saved["status"] == "failed"
    assert saved["gpu"] == {
        "name": "NVIDIA H200",
        "compute_capability": "9.0",
        "driver_version": "580.159.04",
        "count": 1,
    }
    assert saved["steps"] == [
        {"name": "check-gpu", "status": "passed", "reason": None, "seconds": 2.5}
    ]
    version = (REPO_ROOT / "VERSION").read_text().strip()
    assert saved["versions"]["kilosort_docker"] == version
    assert len(saved["versions"]["repository_commit"].split("-")[0]) == 40


@pytest.mark.parametrize(
    "cc, image_profile, expected", [("9.0", "r2022b", True), ("8.6", "r2022b", False)]
)
def test_forward_compatibility_follows_the_image_profile(tmp_path, cc, image_profile, expected):
    plan = replace(_plan(tmp_path, "27000@h"), gpu=replace(H200, compute_capability=cc))
    info = acceptance.ImageInfo("ks3:test", profile=image_profile)
    assert acceptance._forward_compatibility(plan, info) is expected
    assert acceptance._forward_compatibility(replace(plan, gpu=None), info) is False


def _fake_nvidia_smi(folder: Path, output: str, code: int = 0) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\nprintf '{output}'\nexit {code}\n")
    exe.chmod(0o755)
    return str(folder)


def test_query_gpu(tmp_path, monkeypatch):
    # the format a real H200 printed: "NVIDIA H200, 9.0, 580.159.04"
    two = "NVIDIA A100-SXM4-80GB, 8.0, 580.159.04\\nNVIDIA H200, 9.0, 580.159.04\\n"
    monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path / "two", two))
    gpu = acceptance.query_gpu()
    assert gpu == acceptance.Gpu("NVIDIA H200", "9.0", "580.159.04", 2)
    assert gpu.slug == "nvidia-h200"
    monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path / "bad", "oops\\n", code=9))
    assert acceptance.query_gpu() is None
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert acceptance.query_gpu() is None


# --------------------------------------------------------------------------- the dry run


def _invoke(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "acceptance", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_dry_run_prints_the_steps_and_runs_nothing(tmp_path):
    locked = _license_file(tmp_path / "lic", "license.lic", HOSTLOCKED_FILE)
    out = tmp_path / "reports" / "report.json"
    # no Docker engine at all: a dry run must not need one
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "PATH": os.environ["PATH"]}
    done = _invoke(
        "--dry-run",
        "--license",
        str(locked),
        "--mac-address",
        MAC,
        "--image",
        "ks3:test",
        "--out",
        str(out),
        "--duration",
        "30",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    said = done.stdout
    assert "1. check-gpu" in said and "2. ground-truth" in said and "--duration 30" in said
    assert f"report: {out}" in said and "license: host-locked (host-locked license file)" in said
    for secret in (str(locked), HOSTID, MAC):
        assert secret not in said + done.stderr
    assert not out.parent.exists()
    assert (REPO_ROOT / "build" / "acceptance" / "report").exists() is False
    # bad input: one line, non-zero, before anything
    done = _invoke("--dry-run", "--license", "27000@a,27000@b", env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: " + str(_error(lambda: matlab.resolve_license("27000@a,27000@b")))
    ]
    existing = _license_file(tmp_path, "taken.json", "{}")
    done = _invoke("--dry-run", "--license", "27000@h", "--out", str(existing), env=env)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "never overwritten" in done.stderr and existing.read_text() == "{}"


@pytest.mark.parametrize("duration", ["abc", "0", "-8", "nan", "inf"])
def test_dry_run_refuses_a_duration_that_is_not_a_positive_number(tmp_path, duration):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "PATH": os.environ["PATH"]}
    done = _invoke("--dry-run", "--license", "27000@h", "--duration", duration, env=env)
    assert done.returncode == 1, done.stdout
    assert done.stderr.strip().splitlines() == [
        f"error: --duration must be a positive number of seconds, not {duration!r}"
    ]


@pytest.mark.parametrize("image", ["MyLab/Kilosort3:latest", "lab/ks3:bad tag", "lab//ks3"])
def test_dry_run_refuses_an_image_reference_docker_would_refuse(tmp_path, image):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "PATH": os.environ["PATH"]}
    done = _invoke("--dry-run", "--license", "27000@h", "--image", image, env=env)
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --image"), done.stderr
    assert "Traceback" not in done.stderr


def test_image_lookup_refused_by_the_engine_is_one_line():
    import docker.errors

    class Images:
        def get(self, ref):
            raise docker.errors.APIError('500 Server Error: Internal Server Error ("boom")')

    client = type("Client", (), {"images": Images()})()
    with pytest.raises(UserError, match=r"^could not look up lab/ks3:1: .*boom") as caught:
        acceptance.image_info(client, "lab/ks3:1")
    assert "\n" not in str(caught.value)


def _error(call) -> Exception:
    try:
        call()
    except UserError as exc:
        return exc
    raise AssertionError("no UserError")


# --------------------------------------------------------------------------- the harness


FAKE_HARNESS = textwrap.dedent(
    """
    # A test double for `python -m kilosort_docker.groundtruth`: it behaves as named by
    # FAKE_HARNESS (its exit codes and stderr convention are those of groundtruth/run.py).
    import json, os, sys
    args = sys.argv[1:]
    out = args[args.index("--out") + 1]
    lic = os.environ.get("MLM_LICENSE_FILE", "")
    how = os.environ["FAKE_HARNESS"]
    print("[groundtruth] licensed by " + lic, flush=True)
    summary = {"passed": how == "pass", "reasons": [], "n_gt_units": 10, "n_well_detected": 9,
               "median_accuracy": 0.93, "simulation_folder": "/home/someone/.cache/sim",
               "runs": [{"seconds": 12.5, "device": "cuda"}]}
    if how in ("pass", "fail"):
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f)
    if how == "pass":
        print("[groundtruth] PASS"); sys.exit(0)
    if how == "fail":
        print("[groundtruth] FAIL: 9/10 well detected, median accuracy 0.40 < 0.6")
        sys.exit(1)
    if how == "skip":
        print("skipped: no NVIDIA GPU visible for " + lic, file=sys.stderr); sys.exit(77)
    if how == "usage":
        print("error: --mode container needs --image NAME:TAG", file=sys.stderr); sys.exit(2)
    raise RuntimeError("crashed with " + lic)
    """
)


@pytest.mark.parametrize(
    "how, status, reason, has_summary",
    [
        ("pass", "passed", None, True),
        ("fail", "failed", "exit 1: 9/10 well detected, median accuracy 0.40 < 0.6", True),
        ("skip", "skipped", "no NVIDIA GPU visible for ***", False),
        ("usage", "failed", "exit 2: error: --mode container needs --image NAME:TAG", False),
        ("crash", "failed", "exit 1: RuntimeError: crashed with ***", False),
    ],
)
def test_groundtruth_exit_codes_become_step_results(
    tmp_path, monkeypatch, caplog, how, status, reason, has_summary
):
    harness = tmp_path / "harness.py"
    harness.write_text(FAKE_HARNESS)
    monkeypatch.setenv("FAKE_HARNESS", how)
    plan = _plan(tmp_path, TRIAD)
    (plan.work_dir).mkdir()
    (plan.work_dir / "summary.json").write_text('{"passed": true}')  # a previous run's
    seen: list[str] = []
    with caplog.at_level("INFO"):
        step, summary = acceptance.groundtruth_step(
            plan, command=(sys.executable, str(harness)), on_line=seen.append
        )
    assert (step.status, step.reason) == (status, reason)
    assert step.name == "ground-truth" and step.seconds > 0
    assert "[groundtruth] licensed by ***" in seen
    assert "example.org" not in caplog.text and "example.org" not in " ".join(seen)
    if has_summary:
        assert summary["n_well_detected"] == 9 and summary["median_accuracy"] == 0.93
        assert summary["passed"] is (how == "pass") and "simulation_folder" not in summary
    else:
        assert summary is None


def test_groundtruth_that_cannot_start_fails(tmp_path):
    plan = _plan(tmp_path, "27000@h")
    step, summary = acceptance.groundtruth_step(plan, command=(str(tmp_path / "no-python"),))
    assert step.status == "failed" and step.reason.startswith("the ground-truth test did not")
    assert summary is None


# --------------------------------------------------------------------------- the stand-in


def _kilosort3_image(kilosort3_stack) -> str:
    return kilosort3_stack["built"]["kilosort3"].step.refs[0]


def _ours(client, image: str) -> set[str]:
    """Containers this module's runner made from ``image`` (``docker ps -a``)."""
    return {
        c.name
        for c in client.containers.list(all=True)
        if c.name.startswith(containers.NAME_PREFIX) and (c.image and image in c.image.tags)
    }


def _needs_gpu_refused(client, image: str) -> None:
    """Skip unless Docker refuses this host's containers a GPU (the stand-in cannot do GPU
    work, so on a GPU host check-gpu would pass and the harness would sort for real)."""
    try:
        containers.run(image, [], entrypoint=["true"], gpu=True, client=client)
    except UserError:
        return
    pytest.skip("containers get a GPU on this host: the stand-in MATLAB cannot do GPU work")


@pytest.mark.docker
def test_acceptance_fails_at_check_gpu_without_a_gpu(docker_client, kilosort3_stack, tmp_path):
    """The task on this GPU-less host: check-gpu asks Docker for the GPU and is refused."""
    image = _kilosort3_image(kilosort3_stack)
    _needs_gpu_refused(docker_client, image)
    locked = _license_file(tmp_path / "lic", "license.lic", HOSTLOCKED_FILE)
    out = tmp_path / "reports" / "r2022b.json"
    before = _ours(docker_client, image)
    done = _invoke(
        "--license", str(locked), "--mac-address", MAC, "--image", image, "--out", str(out)
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: acceptance failed at check-gpu: ")
    assert "NVIDIA" in last and last.endswith(f"report: {out}")
    text = out.read_text()
    saved = json.loads(text)
    assert saved["status"] == "failed"
    assert [(s["name"], s["status"]) for s in saved["steps"]] == [
        ("check-gpu", "failed"),
        ("ground-truth", "skipped"),
    ]
    assert saved["steps"][1]["reason"] == "not run: check-gpu did not pass"
    assert "NVIDIA" in saved["steps"][0]["reason"] and saved["steps"][0]["seconds"] > 0
    assert saved["groundtruth"] is None
    assert saved["license"]["form"] == "host-locked" and saved["license"]["mac_address_given"]
    real = docker_client.images.get(image)
    assert saved["image"]["id"] == real.id and saved["image"]["ref"] == image
    assert saved["image"]["kilosort_commit"] == real.labels[acceptance.KILOSORT_COMMIT_LABEL]
    assert saved["image"]["profile"] == "r2022b"
    for secret in (str(locked), HOSTID, MAC):
        assert secret not in text + done.stdout + done.stderr
    assert _ours(docker_client, image) == before
    assert leftovers(docker_client, image) == []


@pytest.mark.docker
def test_acceptance_steps_in_order_on_the_standin(docker_client, kilosort3_stack, tmp_path):
    """Both steps for real: check-gpu passes on the stand-in when no GPU is asked for; the real
    ground-truth harness gets the license and is skipped by its preflight (no NVIDIA runtime);
    the acceptance is then failed, and says why."""
    pytest.importorskip("spikeinterface")
    image = _kilosort3_image(kilosort3_stack)
    _needs_gpu_refused(docker_client, image)
    with socket.create_server(("127.0.0.1", 0)) as listener:  # a license server that answers
        value = f"{listener.getsockname()[1]}@127.0.0.1"
        plan = acceptance.make_plan(
            license=value, profile="r2022b", image=image, out=tmp_path / "r.json"
        )
        plan = replace(plan, work_dir=tmp_path / "work")
        events: list[tuple[str, str | None]] = []
        report, path = acceptance.run(
            plan,
            client=docker_client,
            gpu=False,
            on_step=lambda name, r: events.append((name, r.status if r else None)),
        )
    assert events == [
        ("check-gpu", None),
        ("check-gpu", "passed"),
        ("ground-truth", None),
        ("ground-truth", "skipped"),
    ]
    check, truth = report.steps
    assert check.status == "passed" and check.seconds > 0
    # the harness saw the license (else its preflight stops at "no MATLAB license") and the
    # image, and stopped where Docker gives containers no GPU
    assert truth.status == "skipped" and truth.seconds > 0
    assert re.search(r"NVIDIA runtime|GPU access", truth.reason), truth.reason
    assert report.status == "failed" and report.first_failure == truth
    assert report.groundtruth is None
    assert path == tmp_path / "r.json"
    text = path.read_text()
    assert value not in text and "127.0.0.1" not in text
    assert json.loads(text)["license"]["form"] == "server"
    assert leftovers(docker_client, image) == []

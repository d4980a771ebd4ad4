"""The image checks, both ways: they pass on the project's images and fail, naming the
problem, on images broken on purpose (tests/broken/)."""

from __future__ import annotations

import pytest

from kilosort_docker.images import checks, stack
from tests import support

pytestmark = pytest.mark.docker

BROKEN = support.TESTS / "broken"


def failures(findings):
    return {f.check: f.detail for f in findings if not f.ok}


def test_checks_derive_from_the_stack():
    names = {c.name for c in checks.checks_for(stack.get_image("kilosort3"))}
    # a parent's checks also run on its children
    assert {"non-root", "toolboxes", "kilosort-commit", "mex-checksums"} <= names
    assert "kilosort4-versions" not in names
    assert "toolboxes" not in {c.name for c in checks.checks_for(stack.get_image("kilosort4"))}


def test_project_images_pass(docker_client, kilosort3_stack):
    plan = kilosort3_stack["plan"]
    for step in plan.steps:
        findings = checks.run_checks(docker_client, step.refs[0], pins=plan.pins)
        assert findings, step.spec.name
        assert failures(findings) == {}, step.spec.name


@pytest.mark.parametrize(
    ("broken", "check", "expected"),
    [
        ("mex-removed", "mex-present", "mexWtW2.mexa64"),
        ("mex-swapped", "mex-checksums", "mexWtW2.mexa64"),
        ("secret-in-layer", "no-secrets", "license.lic"),
        ("wrong-commit", "kilosort-commit", "differs from the label"),
    ],
)
def test_broken_images_fail_the_right_check(
    docker_client, kilosort3_stack, broken, check, expected
):
    plan = kilosort3_stack["plan"]
    base = plan.step("kilosort3").refs[0]
    ref = f"{support.NAMESPACE}/broken:{broken}"
    support.build_dockerfile(docker_client, BROKEN / broken, ref, buildargs={"BASE_IMAGE": base})
    try:
        findings = checks.run_checks(
            docker_client, ref, pins=plan.pins, spec=stack.get_image("kilosort3")
        )
        failed = failures(findings)
        assert set(failed) == {check}, failed
        assert expected in failed[check]
    finally:
        docker_client.api.remove_image(ref, noprune=True)


def test_secret_scan_finds_extra_strings_but_never_prints_them():
    layer = support.tar_bytes(
        {
            "etc/app.conf": b"token=hunter2-registry-pass\n",
            "home/u/.docker/config.json": b"{}",
        }
    )
    saved = support.tar_bytes({"abc123/layer.tar": layer, "manifest.json": b"[]"})
    chunks = [saved[i : i + 1000] for i in range(0, len(saved), 1000)]
    found = checks.scan_for_secrets(chunks, extra=["hunter2-registry-pass"])
    assert any("etc/app.conf: holds secret #1" in f for f in found)
    assert any(".docker/config.json" in f for f in found)
    assert not any("hunter2" in f for f in found)


def test_check_images_task_reports_a_table(kilosort4_image):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "invoke", "check-images", "--image", "kilosort4",
         "--namespace", support.NAMESPACE],
        cwd=support.TESTS.parent, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("non-root", "kilosort4-versions", "no-secrets", "size-budget"):
        assert check in result.stdout
    assert "FAIL" not in result.stdout

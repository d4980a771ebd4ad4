"""A sort's container under SLURM gets the task's GPUs, CPUs and memory (SLURM confines the
task, not a container the engine makes for it)."""

from __future__ import annotations

import pytest

from kilosort_docker.sorting import runtimes


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, ["0", "1"]),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, []),
        # ConstrainDevices: CUDA_VISIBLE_DEVICES counts inside the cgroup; the node's indices win
        ({"CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_GPUS": "3"}, ["3"]),
        (
            {"SLURM_STEP_GPUS": "2,3", "SLURM_JOB_GPUS": "1,2,3", "CUDA_VISIBLE_DEVICES": "0,1"},
            ["2", "3"],
        ),
        ({"CUDA_VISIBLE_DEVICES": "GPU-8a1b, GPU-77c2"}, ["GPU-8a1b", "GPU-77c2"]),
    ],
)
def test_allotted_gpus(environ: dict[str, str], expected: list[str]) -> None:
    assert runtimes.allotted_gpus(environ) == expected


def test_limits_from_slurm() -> None:
    assert runtimes.Limits.from_slurm({}) == runtimes.Limits(None, None)
    both = runtimes.Limits.from_slurm({"SLURM_CPUS_PER_TASK": "2", "SLURM_MEM_PER_NODE": "4000"})
    assert both == runtimes.Limits(cpus=2, memory_mb=4000)
    per_cpu = runtimes.Limits.from_slurm({"SLURM_CPUS_PER_TASK": "4", "SLURM_MEM_PER_CPU": "1000"})
    assert per_cpu.memory_mb == 4000
    assert runtimes.Limits.from_slurm({"SLURM_MEM_PER_NODE": "0"}).memory_mb is None
    assert both.thread_environment()["OMP_NUM_THREADS"] == "2"
    assert runtimes.Limits().thread_environment() == {}


def test_podman_devices_follow_the_allotted_gpus(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_GPUS", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    args = runtimes.PodmanRuntime().command("img", ["true"], name="n", gpu=True)
    assert args[args.index("--device") + 1] == "nvidia.com/gpu=3"


@pytest.mark.docker
def test_the_docker_container_gets_the_tasks_cpus_memory_and_threads(
    docker_client, debian_base, monkeypatch
) -> None:
    """Read back from inside the container: the CFS quota of 1 CPU, 300 MB, OMP_NUM_THREADS."""
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "300")
    script = (
        "q=$(cat /sys/fs/cgroup/cpu.max 2>/dev/null | cut -d' ' -f1 || true); "
        '[ -n "$q" ] || q=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us); '
        "m=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes); "
        'echo "quota=$q memory=$m threads=$OMP_NUM_THREADS"'
    )
    result = runtimes.DockerRuntime(docker_client).run(debian_base, ["sh", "-c", script])
    assert result.exit_status == 0
    assert result.last_line == f"quota=100000 memory={300 * 1024 * 1024} threads=1"

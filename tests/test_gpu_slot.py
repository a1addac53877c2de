"""`zoommil.workflow.gpu_slot`: one GPU per local job on a machine with several, no GPU needed
(GPU lists faked through CUDA_VISIBLE_DEVICES and a stub nvidia-smi)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import zoommil
from zoommil.workflow import gpu_slot

# The job: prints the GPU it was given, then holds it (no shell: the lock dies with it).
JOB = [
    sys.executable,
    "-c",
    "import os, time; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'), flush=True); "
    "time.sleep(60)",
]
SMI_4 = "".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i}aaa-bbb)\n" for i in range(4))
SMI_MIG = (
    "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-0aaa)\n"
    "  MIG 3g.20gb     Device  0: (UUID: MIG-11111111-2222)\n"
    "  MIG 3g.20gb     Device  1: (UUID: MIG-33333333-4444)\n"
    "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-1aaa)\n"
)


def stub_smi(folder: Path, listing: str, rc: int = 0) -> str:
    """A PATH whose nvidia-smi prints `listing` (and exits `rc`), then the usual PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{listing}EOF\nexit {rc}\n")
    smi.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def start(workdir: Path, **env: str) -> subprocess.Popen:
    """The prefix running JOB in `workdir`, with `env` over a copy of this environment
    (CUDA_VISIBLE_DEVICES removed unless given)."""
    environ = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    environ["PYTHONPATH"] = str(Path(zoommil.__file__).resolve().parents[1])
    environ.update(env)
    command = [sys.executable, "-m", "zoommil.workflow.gpu_slot", "--", *JOB]
    return subprocess.Popen(
        command, cwd=workdir, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def given(job: subprocess.Popen) -> str:
    return job.stdout.readline().strip()


@pytest.fixture
def jobs():
    started: list[subprocess.Popen] = []
    yield started
    for job in started:
        job.kill()
        job.communicate()


def test_concurrent_jobs_get_different_gpus_and_a_dead_jobs_gpu_is_free_again(
    tmp_path: Path, jobs: list
) -> None:
    """Snakemake names no GPU to a local job: 4 concurrent features jobs all ran on cuda:0."""
    for _ in range(2):
        jobs.append(start(tmp_path, CUDA_VISIBLE_DEVICES="0,1"))
    first, second = given(jobs[0]), given(jobs[1])
    assert {first, second} == {"0", "1"}
    waiting = start(tmp_path, CUDA_VISIBLE_DEVICES="0,1")
    jobs.append(waiting)
    assert "all 2 GPUs are held by other jobs, waiting" in waiting.stderr.readline()
    jobs[0].kill()  # SIGKILL: no clean-up of its own, the kernel drops its lock
    jobs[0].wait()
    assert given(waiting) == first


def test_the_gpus_come_from_nvidia_smi_where_cuda_visible_devices_is_unset(
    tmp_path: Path, jobs: list
) -> None:
    path = stub_smi(tmp_path / "bin", SMI_4)
    for _ in range(4):
        jobs.append(start(tmp_path, PATH=path))
    assert sorted(given(job) for job in jobs) == [f"GPU-{i}aaa-bbb" for i in range(4)]


@pytest.mark.parametrize(
    ("env", "listing", "expected"),
    [
        ({"CUDA_VISIBLE_DEVICES": "3"}, SMI_4, "3"),  # a SLURM job granted one GPU
        ({"CUDA_VISIBLE_DEVICES": ""}, SMI_4, ""),  # hidden (`--resources gpu=0` timing)
        ({}, SMI_4.splitlines(keepends=True)[0], "unset"),  # one GPU
        ({}, "", "unset"),  # no GPU
    ],
)
def test_with_one_gpu_or_none_the_command_runs_unchanged(
    tmp_path: Path, jobs: list, env: dict, listing: str, expected: str
) -> None:
    jobs.append(start(tmp_path, PATH=stub_smi(tmp_path / "bin", listing), **env))
    assert given(jobs[0]) == expected
    assert not (tmp_path / ".snakemake").exists()


def test_gpu_lists() -> None:
    assert gpu_slot.visible_gpus({"CUDA_VISIBLE_DEVICES": "0, 1,2,3"}) == ["0", "1", "2", "3"]
    assert gpu_slot.visible_gpus({"CUDA_VISIBLE_DEVICES": "", "PATH": ""}) == []
    # MIG: CUDA runs a process on one MIG device, so those are the slots of a MIG card
    assert gpu_slot._uuids(SMI_MIG) == ["MIG-11111111-2222", "MIG-33333333-4444", "GPU-1aaa"]


def test_a_failing_nvidia_smi_means_no_gpu(tmp_path: Path) -> None:
    path = stub_smi(tmp_path / "bin", SMI_4, rc=9)
    assert gpu_slot.visible_gpus({"PATH": path}) == []
    assert gpu_slot.visible_gpus({"PATH": str(tmp_path / "empty")}) == []

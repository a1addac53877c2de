"""Real SLURM: the shipped profiles submit every job through a single-node cluster.

Needs the test cluster (tests/cluster/slurm-up.sh, or root + slurm-wlm so the fixture starts it).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from slurmtest import (
    MAX_MEM_MB,
    MAX_THREADS,
    REPO,
    clamp_profile,
    remote_rules,
    scontrol_job,
    slurm_args,
    snakemake,
    submitted_ids,
)

pytestmark = pytest.mark.cluster

# Two rules named like the workflow's, so the profile's per-rule settings apply: `features`
# declares gpu=1 as the real rule does; `tables` is a CPU job. Each records the SLURM
# environment it ran in.
TINY_SNAKEFILE = """
rule all:
    input: "results/tables.txt"

rule features:
    output: "results/features/{slide}.txt"
    threads: 1
    resources: gpu=1
    shell:
        "echo job=$SLURM_JOB_ID cpus=$SLURM_CPUS_PER_TASK "
        "gpus=${{CUDA_VISIBLE_DEVICES:-none}} threads={threads} > {output}"

rule tables:
    input: expand("results/features/{slide}.txt", slide=["a", "b"])
    output: "results/tables.txt"
    shell: "cat {input} > {output}; echo job=$SLURM_JOB_ID >> {output}"
"""


def _run_tiny(tmp_path: Path, profile: str, *extra: str, env: dict | None = None):
    work = tmp_path / "work"
    work.mkdir()
    (work / "Snakefile").write_text(TINY_SNAKEFILE)
    prof = clamp_profile(REPO / "profiles" / profile, tmp_path / "profile")
    result = snakemake("--profile", str(prof), *extra, cwd=work, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return work, result.stdout + result.stderr


def test_slurm_profile_submits_every_job_with_its_resources(slurm_cluster, tmp_path):
    work, log = _run_tiny(
        tmp_path,
        "slurm",
        *slurm_args(),
        env={"ZOOMMIL_SLURM_GPU_PARTITION": "debug", "ZOOMMIL_SLURM_PARTITION": ""},
    )
    ids = submitted_ids(log)
    rules = remote_rules(log)
    assert sorted(r for r, _ in rules) == ["features", "features", "tables"]
    assert all(job in ids for _, job in rules), log  # every non-local job went to SLURM
    for rule, job in rules:
        info = scontrol_job(ids[job])
        assert "JobState=COMPLETED" in info
        assert f"mem={MAX_MEM_MB}M" in info  # the profile's mem_mb (capped) became --mem
        if rule == "features":
            # gpu=1 became --gpus=1, threads (profile: 8, capped) became --cpus-per-task,
            # and the GPU partition came from ZOOMMIL_SLURM_GPU_PARTITION
            assert "gres:gpu:1" in info or "gres/gpu=1" in info, info
            assert f"NumCPUs={MAX_THREADS}" in info
            assert "Partition=debug" in info
        else:
            assert "gpu" not in info.split("TRES=")[1].split()[0]
            assert "NumCPUs=1" in info
    lines = (work / "results" / "tables.txt").read_text().split("\n")
    job_ids = {line.split()[0].removeprefix("job=") for line in lines if line}
    assert job_ids == set(ids.values())  # each output was written inside its SLURM job
    for line in lines[:2]:  # features: SLURM's threads and GPU reach the job's environment
        assert f"threads={MAX_THREADS} " in line + " " and f"cpus={MAX_THREADS}" in line
        assert "gpus=0" in line
    logs = list((work / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert sorted(p.stem for p in logs) == sorted(ids.values())


def test_cluster_generic_profile_runs_on_slurm(slurm_cluster, tmp_path):
    work, log = _run_tiny(tmp_path, "cluster-generic", "--max-threads", str(MAX_THREADS))
    rules = remote_rules(log)
    external = dict(re.findall(r"Submitted job (\d+) with external jobid '(\d+)'", log))
    assert len(rules) == 3 and all(job in external for _, job in rules), log
    for rule, job in rules:
        info = scontrol_job(external[job])
        assert f"JobName=smk-{rule}-{job}" in info
        assert ("gres:gpu:1" in info or "gres/gpu=1" in info) == (rule == "features")
    assert len(list((work / ".snakemake" / "cluster_logs").glob("smk-*.log"))) == 3


# --- the real workflow ------------------------------------------------------------------------

WORKFLOW_CONFIG = REPO / "tests" / "workflow_config" / "config.yaml"
# Up to ZoomMIL's evaluation: every per-slide stage, both QC checkpoints, training and
# evaluation, without the (timing-only) efficiency and figure jobs.
TARGETS = ["results/models/zoommil/seed~0/metrics.json", "results/eval/zoommil/seed~0.json"]


def _metrics(root: Path) -> dict[str, dict]:
    """The targets' JSON, with the run's own folder (checkpoints record absolute paths) as
    ``ROOT`` so that two copies of the workflow compare equal."""

    def read(target: str) -> dict:
        text = (root / target).read_text()
        for prefix in {str(root.resolve()), str(root)}:
            text = text.replace(json.dumps(prefix)[1:-1], "ROOT")
        return json.loads(text)

    return {target: read(target) for target in TARGETS}


WALL_CLOCK = ("seconds", "time", "created", "duration")  # differ between any two runs


def _assert_same(a, b, where: str) -> None:
    if where.endswith(WALL_CLOCK):
        return
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == b, f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
def test_tiny_workflow_on_slurm_equals_local_run(slurm_cluster, tmp_path):
    """The tiny config through profiles/slurm: every job is a SLURM job, and the metrics are
    those of the same config run locally (same inputs, seeds and thread counts)."""
    sys.path.insert(0, str(WORKFLOW_CONFIG.parent))
    import harness

    local_dir = harness.copy_workflow(tmp_path / "local")
    slurm_dir = harness.copy_workflow(tmp_path / "slurm")
    harness.make_tiny_sheet(local_dir, n_slides=6, bad=False)
    shutil.copytree(local_dir / "data", slurm_dir / "data")
    shutil.copy2(local_dir / "slides.tsv", slurm_dir / "slides.tsv")
    config = harness.load_config()
    prof = clamp_profile(REPO / "profiles" / "slurm", tmp_path / "profile")
    # The profile's thread counts in both runs, so that only the executor differs.
    threads = [f"{rule}={n}" for rule, n in _profile_threads(prof).items()]
    common = ["--set-threads", *threads, "--max-threads", str(MAX_THREADS)]

    local = snakemake(
        *TARGETS,
        "--configfile",
        str(harness.write_config(local_dir, config)),
        "--cores",
        str(MAX_THREADS),
        *common,
        cwd=local_dir,
        timeout=1800,
    )
    assert local.returncode == 0, local.stdout[-5000:] + local.stderr[-5000:]
    remote = snakemake(
        *TARGETS,
        "--configfile",
        str(harness.write_config(slurm_dir, config)),
        "--profile",
        str(prof),
        *common,
        *slurm_args(),
        cwd=slurm_dir,
        timeout=1800,
    )
    log = remote.stdout + remote.stderr
    assert remote.returncode == 0, log[-10000:]

    ids = submitted_ids(log)
    rules = remote_rules(log)
    ran = {rule for rule, _ in rules}
    assert {"inspect", "tissue", "tile", "features", "train"} <= ran, ran
    missing = [(rule, job) for rule, job in rules if job not in ids]
    assert not missing, f"jobs that did not go through SLURM: {missing}"
    for rule, job in rules:
        if rule == "features":  # the GPU stage asked SLURM for a GPU
            info = scontrol_job(ids[job])
            assert "gres:gpu:1" in info or "gres/gpu=1" in info, info

    local_metrics, slurm_metrics = _metrics(local_dir), _metrics(slurm_dir)
    for name in TARGETS:
        _assert_same(local_metrics[name], slurm_metrics[name], name)


def _profile_threads(profile: Path) -> dict[str, int]:
    return dict(yaml.safe_load((profile / "config.yaml").read_text())["set-threads"])

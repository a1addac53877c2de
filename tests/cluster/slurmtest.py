"""Helpers for the cluster tests: SLURM state, profile copies, Snakemake runs, log parsing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
UP = REPO / "tests" / "cluster" / "slurm-up.sh"
DOWN = REPO / "tests" / "cluster" / "slurm-down.sh"
MARKER = "# managed by zoommil tests/cluster/slurm-up.sh"
# What the test node offers each job at most (2 CPUs, a few GB), so the production profile's
# requests (8 CPUs, 32 GB) still fit one small node.
MAX_THREADS = 2
MAX_MEM_MB = 1500


def node_state() -> str:
    """State of the first node (idle, mixed, ...) or '' when SLURM does not answer."""
    if not shutil.which("sinfo"):
        return ""
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return ""
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else ""


def ours() -> bool:
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    return conf.is_file() and MARKER in conf.read_text(errors="replace")


def usable() -> bool:
    return node_state().startswith(("idle", "mixed", "allocated")) and (
        ours() or os.environ.get("ZOOMMIL_TEST_SLURM") == "1"
    )


def clamp_profile(src: Path, dst: Path) -> Path:
    """Copy a profile, capping every memory request at MAX_MEM_MB to fit the test node (also
    of the rules it names that size their memory themselves).

    Everything else (executor, set-threads, GPU requests, partition expressions) stays as
    shipped, so the test exercises the real profile. Threads are capped with --max-threads.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_file():
            shutil.copy2(item, dst / item.name)
    conf = yaml.safe_load((src / "config.yaml").read_text())

    def cap(resources: dict) -> None:
        # a rule the profile leaves the memory to sizes it itself (profile, train: 8000 MB
        # and more), above the test node too
        resources["mem_mb"] = f"min({resources.get('mem_mb', MAX_MEM_MB)}, {MAX_MEM_MB})"
        if resources.get("slurm_extra") == "'--exclusive'":
            resources.pop("slurm_extra")  # one shared test node

    cap(conf.setdefault("default-resources", {}))
    conf["default-resources"].setdefault("mem_mb", MAX_MEM_MB)
    for resources in (conf.get("set-resources") or {}).values():
        cap(resources)
    (dst / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    return dst


def snakemake(*args: str, cwd: Path, env: dict | None = None, timeout: int = 900):
    """Run Snakemake from this interpreter (so jobs on the node use the same environment)."""
    bindir = str(Path(sys.executable).parent)
    full_env = {**os.environ, **(env or {}), "PATH": bindir + os.pathsep + os.environ["PATH"]}
    if (cwd / "src" / "zoommil").is_dir():  # a workflow copy with sources runs them
        path = [str(cwd / "src"), full_env.get("PYTHONPATH")]
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    full_env.pop("SNAKEMAKE_PROFILE", None)
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def slurm_args() -> list[str]:
    """Options for a cluster without accounting database (status via squeue), fast polling."""
    return [
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--slurm-keep-successful-logs",
        "--max-threads",
        str(MAX_THREADS),
    ]


def submitted_ids(log: str) -> dict[str, str]:
    """Snakemake job id -> SLURM job id from the slurm executor's log lines."""
    return dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))


def remote_rules(log: str) -> list[tuple[str, str]]:
    """(rule, Snakemake job id) of every non-local job Snakemake started."""
    return re.findall(
        r"^(?:rule|checkpoint) (\w+):\n(?:    .*\n)*?    jobid: (\d+)", log, flags=re.M
    )


def scontrol_job(jobid: str) -> str:
    out = subprocess.run(
        ["scontrol", "show", "job", jobid], capture_output=True, text=True, timeout=20
    )
    return out.stdout

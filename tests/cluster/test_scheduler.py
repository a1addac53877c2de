"""profiles/cluster-generic/scheduler.py run as Snakemake runs it, against stub scheduler
commands (no SLURM or PBS needed): what it prints when the scheduler answers, refuses or is
down.

Why these cases: `failed` for a job that is still running makes Snakemake submit it again
(duplicates writing the same outputs), and a refused submission must show the scheduler's
reason, not a Python traceback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from slurmtest import REPO

PROFILE = REPO / "profiles" / "cluster-generic"

# A stub prints $STUB_<NAME>_OUT to stdout, $STUB_<NAME>_ERR to stderr and exits with
# $STUB_<NAME>_RC (0 when unset), and logs its arguments.
STUB = """#!/bin/sh
echo "{name} $*" >> "$STUB_LOG"
[ -n "$STUB_{upper}_OUT" ] && printf '%s\\n' "$STUB_{upper}_OUT"
[ -n "$STUB_{upper}_ERR" ] && printf '%s\\n' "$STUB_{upper}_ERR" >&2
exit "${{STUB_{upper}_RC:-0}}"
"""
OUTAGE = "slurm_load_jobs error: Socket timed out on send/recv operation"


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("sbatch", "sacct", "squeue", "scancel", "qsub", "qstat"):
        path = bindir / name
        path.write_text(STUB.format(name=name, upper=name.upper()))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bindir


def _run(script: str, *args: str, stubs: Path, cwd: Path, **stub_env: str):
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STUB_", "ZOOMMIL_SLURM_", "ZOOMMIL_PBS_", "ZOOMMIL_SCHEDULER"))
    }
    env.update(stub_env, PATH=f"{stubs}{os.pathsep}{env['PATH']}", STUB_LOG=str(cwd / "calls"))
    return subprocess.run(
        ["sh", str(PROFILE / script), *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def _status(stubs: Path, cwd: Path, **stub_env: str) -> str:
    result = _run("status.sh", "42", stubs=stubs, cwd=cwd, **stub_env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_status_reads_sacct_then_squeue(stubs, tmp_path):
    assert _status(stubs, tmp_path, STUB_SACCT_OUT="RUNNING") == "running"
    assert _status(stubs, tmp_path, STUB_SACCT_OUT="COMPLETED") == "success"
    assert _status(stubs, tmp_path, STUB_SACCT_OUT="CANCELLED by 7") == "failed"
    # held in the queue after its reservation was deleted: still to run
    assert _status(stubs, tmp_path, STUB_SACCT_OUT="RESV_DEL_HOLD") == "running"
    # no accounting database: sacct fails, squeue knows the job
    no_db = {"STUB_SACCT_RC": "1", "STUB_SACCT_ERR": "Slurm accounting storage is disabled"}
    assert _status(stubs, tmp_path, **no_db, STUB_SQUEUE_OUT="PENDING") == "running"
    assert _status(stubs, tmp_path, **no_db, STUB_SQUEUE_OUT="COMPLETED") == "success"


def test_status_of_a_job_slurm_does_not_know_is_failed(stubs, tmp_path):
    """Purged after MinJobAge: squeue answers "Invalid job id", or nothing."""
    invalid = {
        "STUB_SQUEUE_RC": "1",
        "STUB_SQUEUE_ERR": "slurm_load_jobs error: Invalid job id specified",
    }
    assert _status(stubs, tmp_path, **invalid) == "failed"
    assert _status(stubs, tmp_path) == "failed"  # both answer, with nothing
    assert _status(stubs, tmp_path, STUB_SACCT_RC="1", **invalid) == "failed"


def test_status_while_slurm_does_not_answer_is_running(stubs, tmp_path):
    """Both queries fail (controller down): `failed` here resubmitted running jobs."""
    down = {
        "STUB_SACCT_RC": "1",
        "STUB_SACCT_ERR": "sacct: error: Problem talking to the database: Connection refused",
        "STUB_SQUEUE_RC": "1",
        "STUB_SQUEUE_ERR": OUTAGE,
    }
    assert _status(stubs, tmp_path, **down) == "running"
    # accounting answers (not yet recorded), the controller does not
    assert _status(stubs, tmp_path, STUB_SQUEUE_RC="1", STUB_SQUEUE_ERR=OUTAGE) == "running"


def test_pbs_status_while_the_server_does_not_answer_is_running(stubs, tmp_path):
    pbs = {"ZOOMMIL_SCHEDULER": "pbs", "STUB_QSTAT_RC": "1"}
    refused = "Connection refused\nqstat: cannot connect to server pbs (errno=111)"
    assert _status(stubs, tmp_path, **pbs, STUB_QSTAT_ERR=refused) == "running"
    assert _status(stubs, tmp_path, **pbs, STUB_QSTAT_ERR="qstat: Unknown Job Id 42") == "failed"
    done = "job_state = F\n    Exit_status = 0"
    assert _status(stubs, tmp_path, ZOOMMIL_SCHEDULER="pbs", STUB_QSTAT_OUT=done) == "success"


@pytest.mark.parametrize(
    ("state", "exit_status", "expected"),
    [("R", None, "running"), ("Q", None, "running"), ("C", "0", "success"), ("C", "1", "failed")],
)
def test_pbs_status_reads_torques_xml(stubs, tmp_path, state, exit_status, expected):
    """Torque's `qstat -x -f` answers in XML: its job_state was not found, and every job,
    running or done, read as failed (Snakemake then gives up on it or submits it again)."""
    xml = f"<Data><Job><Job_Id>42.torque</Job_Id><job_state>{state}</job_state>"
    if exit_status is not None:
        xml += f"<exit_status>{exit_status}</exit_status>"
    xml += "</Job></Data>"
    pbs = {"ZOOMMIL_SCHEDULER": "pbs", "STUB_QSTAT_OUT": xml}
    assert _status(stubs, tmp_path, **pbs) == expected


def _jobscript(tmp_path: Path, resources: dict) -> Path:
    props = {"rule": "features", "jobid": 7, "threads": 8, "resources": resources}
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/sh\n# properties = {json.dumps(props)}\necho run\n")
    return script


def test_submit_prints_the_job_id(stubs, tmp_path):
    script = _jobscript(tmp_path, {"mem_mb": 1000})
    result = _run("submit.sh", str(script), stubs=stubs, cwd=tmp_path, STUB_SBATCH_OUT="99")
    assert (result.returncode, result.stdout) == (0, "99\n"), result.stderr


def test_a_job_on_another_cluster_is_asked_for_there(stubs, tmp_path):
    """`slurm_extra: -M c2`: sbatch answers "99;c2"; the id alone made sacct and squeue look
    on the local cluster, not know the job, and Snakemake submit it again."""
    script = _jobscript(tmp_path, {"mem_mb": 1000, "slurm_extra": "-M c2"})
    result = _run("submit.sh", str(script), stubs=stubs, cwd=tmp_path, STUB_SBATCH_OUT="99;c2")
    assert (result.returncode, result.stdout) == (0, "99;c2\n"), result.stderr
    status = _run("status.sh", "99;c2", stubs=stubs, cwd=tmp_path, STUB_SACCT_OUT="RUNNING")
    assert status.stdout.strip() == "running"
    assert "sacct -X -n -P -j 99 -M c2 -o State" in (tmp_path / "calls").read_text()
    _run("cancel.sh", "99;c2", "100", stubs=stubs, cwd=tmp_path)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[-2:] == ["scancel -M c2 99", "scancel 100"]


def test_refused_submission_shows_sbatch_message_and_code(stubs, tmp_path):
    script = _jobscript(tmp_path, {"mem_mb": 1000})
    reason = "sbatch: error: Invalid account or account/partition combination specified"
    result = _run(
        "submit.sh", str(script), stubs=stubs, cwd=tmp_path, STUB_SBATCH_RC="1",
        STUB_SBATCH_ERR=reason,
    )  # fmt: skip
    assert result.returncode == 1
    # on stdout: the cluster-generic plugin puts only that in the job's error (Snakemake's log)
    assert result.stdout.strip() == reason and result.stderr == ""


def _scheduler():
    spec = importlib.util.spec_from_file_location("zoommil_scheduler", PROFILE / "scheduler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("resources", "gpu_option"),
    [
        ({"gpu": 0, "gres": "gpu:1"}, "--gres=gpu:1"),  # a --gres-only site (docs/cluster.md)
        ({"gpu": 1}, "--gpus=1"),
        ({"gpu_model": "a100"}, "--gpus=a100:1"),  # as the slurm executor plugin
    ],
)
def test_every_form_of_gpu_request_goes_to_the_gpu_partition(
    resources, gpu_option, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOOMMIL_SLURM_PARTITION", "cpu")
    monkeypatch.setenv("ZOOMMIL_SLURM_GPU_PARTITION", "gpu")
    args = _scheduler().slurm_submit_args({"rule": "features", "resources": resources})
    assert gpu_option in args and "--partition=gpu" in args, args

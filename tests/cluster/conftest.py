"""Fixtures for the cluster tests: a real single-node SLURM cluster and profile copies.

The `slurm_cluster` fixture uses a cluster started by tests/cluster/slurm-up.sh (CI calls it
before pytest). If none answers, and we are root with slurm-wlm installed, it starts one itself
with the same script and stops it (by recorded pid, slurm-down.sh) at the end of the session.
Otherwise the tests skip with the reason. A site's real cluster is never used unless
ZOOMMIL_TEST_SLURM=1 says so: the tests submit jobs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from slurmtest import DOWN, UP, node_state, ours, usable

# What the slurm executor plugin and these tests call. Without one of them the plugin waits
# for a job state it can never read, so a test would hang until its timeout instead.
CLIENT_COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


def _require_client_commands() -> None:
    missing = [name for name in CLIENT_COMMANDS if not shutil.which(name)]
    if missing:
        pytest.fail(
            f"SLURM client commands not on PATH: {', '.join(missing)} "
            "(apt-get install --reinstall slurm-client, or tests/cluster/slurm-up.sh)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    if usable():
        _require_client_commands()
        yield
        return
    if shutil.which("sinfo") and node_state() and not ours():
        pytest.skip("a SLURM cluster answers but is not the test cluster (ZOOMMIL_TEST_SLURM=1)")
    if os.geteuid() != 0:
        pytest.skip("no SLURM test cluster running, and starting one needs root")
    if not shutil.which("slurmctld") or not shutil.which("munged"):
        pytest.skip(
            "slurm-wlm/munge not installed: run tests/cluster/slurm-up.sh (installs them) first"
        )
    _require_client_commands()
    env = {**os.environ, "ZOOMMIL_SLURM_INSTALL": "0"}
    up = subprocess.run(["bash", str(UP)], capture_output=True, text=True, env=env, timeout=180)
    try:
        if not usable():
            pytest.skip(f"could not start SLURM: {(up.stderr or up.stdout).strip()}")
        yield
    finally:
        subprocess.run(["bash", str(DOWN)], capture_output=True, text=True, timeout=120)

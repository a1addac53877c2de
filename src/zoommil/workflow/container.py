"""What a run inside a container needs that a workstation does not: a user name, a core count.

Why: `docker run -u 1234` (or a Kubernetes `runAsUser`, an OpenShift arbitrary uid) gives a
user id without a passwd entry and no USER variable; Snakemake 9.27.1 asks `getpass.getuser()`
for its run header, which then raises KeyError (Python < 3.13; OSError from 3.13), a
traceback before the first job, also of a dry run. A container's CPU limit is a quota that
`snakemake --cores all` does not see (`zoommil.cgroup`), so the run started a job per host core.
"""

from __future__ import annotations

import getpass
import os

from zoommil.cgroup import cpu_quota


def set_missing_user() -> str | None:
    """Set USER to the numeric user id where no user name can be found, and say so (one
    line); None where `getpass.getuser` works. The jobs inherit it (nothing reads it)."""
    try:
        getpass.getuser()
        return None
    except (KeyError, OSError):
        uid = str(os.getuid())
    os.environ["USER"] = uid
    return (
        f"zoommil: user id {uid} has no passwd entry (a container run with --user?): USER={uid} "
        "set for this run, which Snakemake needs for its run header"
    )


def cores_above_quota(cores: int) -> str | None:
    """One line where ``cores`` (the run's --cores) exceed the CPUs of this process's cgroup
    quota, naming the count to pass; None otherwise."""
    quota = cpu_quota()
    if quota is None or cores <= quota:
        return None
    return (
        f"zoommil: --cores {cores}, but this container's CPU limit is {quota} CPU(s) (a cgroup "
        f"quota, which `--cores all` does not see): up to {cores} jobs would share {quota} "
        f"CPUs' time, each with its own memory; run with --cores {quota} (README: Running in "
        "a container)"
    )

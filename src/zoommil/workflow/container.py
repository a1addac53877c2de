"""What a run inside a container needs that a workstation does not: a user name.

Why: `docker run -u 1234` (or a Kubernetes `runAsUser`, an OpenShift arbitrary uid) gives a
user id without a passwd entry and no USER variable; Snakemake 9.27.1 asks `getpass.getuser()`
for its run header, which then raises KeyError (Python < 3.13; OSError from 3.13), a
traceback before the first job, also of a dry run.
"""

from __future__ import annotations

import getpass
import os


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

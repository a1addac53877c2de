"""The CPUs a process may use, for every count of "all cores" in the package.

Why a module of its own: the commands' ``--threads all`` and the feature readers' default both
need it, and the commands must not import torch (the feature code does) to parse an option.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (a SLURM job's cpuset, `taskset`), not
    the node's count, which on a shared node is many more than the job was given."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1

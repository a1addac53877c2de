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


#: Most reader processes a GPU encoder gets: past it, reading outruns the encoder.
MAX_GPU_READERS = 8


def gpu_readers(cpus: int) -> int:
    """Reader processes that keep a GPU encoder fed: one per CPU but the encoding process's,
    at least 1, at most `MAX_GPU_READERS` (`zoommil features` starts them; the workflow sizes
    the job's memory by them)."""
    return min(MAX_GPU_READERS, max(1, cpus - 1))

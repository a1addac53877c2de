"""Worker processes exit on their own, so what they registered is cleaned up, not leaked."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from zoommil.processes import starmap_in_processes

_HELD: list = []


def _hold_a_named_semaphore(tag: int) -> tuple[int, str]:
    """What tqdm does in a worker: a spawn-context lock, alive until the process exits."""
    lock = multiprocessing.get_context("spawn").Lock()
    _HELD.append(lock)
    return tag, lock._semlock.name


def _fail_on_one(tag: int) -> int:
    if tag == 1:
        raise ValueError(f"job {tag} failed")
    return tag


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="POSIX named semaphores in /dev/shm")
def test_workers_exit_cleanly_and_unlink_their_semaphores():
    """A terminated worker (what `with Pool()` does on exit) leaves its semaphore in /dev/shm
    for the resource tracker to report as leaked; a worker that exits runs its finalisers.
    Killed or not is a race with a terminated pool, so several pools are checked."""
    for _ in range(6):
        results = starmap_in_processes(_hold_a_named_semaphore, [(i,) for i in range(4)], 2)
        assert [tag for tag, _ in results] == [0, 1, 2, 3]  # in order
        for _, name in results:
            assert not Path("/dev/shm", "sem." + name.lstrip("/")).exists(), name


def test_an_error_in_a_worker_reaches_the_caller():
    with pytest.raises(ValueError, match="job 1 failed"):
        starmap_in_processes(_fail_on_one, [(0,), (1,), (2,)], 2)

"""Work spread over spawned processes that are let to exit, not killed.

`multiprocessing.Pool` used as a context manager *terminates* its workers on the way out. A
worker killed that way skips its exit handlers, so a named semaphore it created (tqdm makes one
for its progress-bar lock the first time a bar is built, even a disabled one) stays registered
with the resource tracker, which then prints "There appear to be N leaked semaphore objects"
into the job's log when the parent exits: about every second `zoommil profile --threads all`
log of the demo carried that warning. Closing and joining the pool first lets each worker run
its handlers and unlink what it made.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def starmap_in_processes(
    fn: Callable[..., Any], args: Iterable[Sequence[Any]], processes: int
) -> list[Any]:
    """``[fn(*a) for a in args]`` over ``processes`` spawned processes (no inherited thread
    pools or locks), in order; the workers exit on their own once the work is done."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        results = pool.starmap(fn, args)
        pool.close()  # on an error the with-block terminates the workers instead
        pool.join()
    return results

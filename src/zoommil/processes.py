"""Work spread over spawned processes that are let to exit, not killed, and that lose only
their own task when one dies.

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
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ProcessDied:
    """The outcome of a task whose process died before returning (killed, out of memory, a
    crash inside a C library) while it ran alone: with one process at once, else when rerun
    alone after dying among others."""

    reason: str = "its worker process died (killed, out of memory, or a crash in a C library)"


def map_isolated(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    processes: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[tuple[int, Any]]:
    """``(index, fn(item))`` as tasks finish, over ``processes`` spawned processes.

    Why not `Pool.imap`: a `Pool` worker that dies loses its task and the pool waits for it
    forever. Here each process runs one task at a time; when one dies, the tasks then in flight
    are rerun one by one in a fresh process, so only a task that kills its process alone yields
    `ProcessDied`, and the others go on. An exception ``fn`` raises reaches the caller (a task
    that may fail should return its failure instead).
    """
    ctx = multiprocessing.get_context("spawn")
    todo = deque(enumerate(items))
    while todo:
        in_flight: dict[Future, tuple[int, Any]] = {}
        hit: list[tuple[int, Any]] = []
        with ProcessPoolExecutor(processes, ctx, initializer, initargs) as pool:
            while (todo or in_flight) and not hit:
                while todo and len(in_flight) < processes:
                    index, item = todo.popleft()
                    in_flight[pool.submit(fn, item)] = (index, item)
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    index, item = in_flight.pop(future)
                    if isinstance(future.exception(), BrokenProcessPool):
                        hit.append((index, item))
                    else:
                        yield index, future.result()
        for future, (index, item) in in_flight.items():  # settled once the executor is down
            if isinstance(future.exception(), BrokenProcessPool):
                hit.append((index, item))
            else:
                yield index, future.result()
        for index, item in sorted(hit, key=lambda pair: pair[0]):
            alone = processes == 1  # it was alone already: its death is its own
            yield index, ProcessDied() if alone else _alone(fn, item, ctx, initializer, initargs)


def _alone(
    fn: Callable[[Any], Any],
    item: Any,
    ctx: Any,
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
) -> Any:
    """``fn(item)`` in a fresh process of its own (a suspect after a process died)."""
    with ProcessPoolExecutor(1, ctx, initializer, initargs) as pool:
        future = pool.submit(fn, item)
        if isinstance(future.exception(), BrokenProcessPool):
            return ProcessDied()
        return future.result()

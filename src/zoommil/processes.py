"""Work spread over spawned processes that exit on their own, and whose death is an answer,
not a hang.

`multiprocessing.Pool` has two traps. Used as a context manager it *terminates* its workers,
and a worker killed that way skips its exit handlers, so a named semaphore it created (tqdm
makes one for its progress-bar lock, even for a disabled bar) stays registered with the
resource tracker, which prints "There appear to be N leaked semaphore objects" into the job's
log: about every second `zoommil profile --threads all` log of the demo carried that warning.
And a worker that dies (killed, out of memory, a crash in a C library) loses its task, for which
the pool then waits forever. `ProcessPoolExecutor` workers exit on their own after the work,
and a dead one breaks the executor (`BrokenProcessPool`), which these functions turn into an
error or a per-task outcome; `wait_watched` breaks it where CPython's executor misses a death
(a worker killed half-way through writing its result back).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from zoommil.errors import ZoomMILError

#: What is known of a worker process that died under a task.
DIED = "killed, out of memory, or a crash in a C library"


def exit_with_parent(every_s: float = 1.0, parent: int | None = None) -> None:
    """Call in a worker process: it exits once its parent is gone.

    A parent killed outright (SIGKILL, the OOM killer, a cancelled job's SIGTERM) runs no
    clean-up, and an idle `ProcessPoolExecutor` worker then waits on its task queue forever
    (it holds that queue's write end itself, so no end-of-file comes), an orphan holding its
    memory. A daemon thread polls the parent's pid. ``parent``: the pid the parent passed
    down; a worker that starts slowly (imports torch) may outlive its parent before this is
    called, when its own parent pid is already another process's.
    """
    if parent is None:
        parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def worker_logging() -> None:
    """Call in a spawned worker: its warnings look like the command's (level, logger name).

    Why: a spawned process starts with logging unconfigured, so a worker's warning went to
    logging's last-resort handler as the bare message (``encoder ... uses RANDOM weights``
    under the parent's formatted one). Info lines stay with the parent (the command's log)."""
    from zoommil.cli import LOG_FORMAT

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)


#: How often a caller waiting on an executor checks that its workers live (seconds).
WATCH_S = 2.0


def init_worker(parent: int) -> None:
    """Call first in a spawned worker: it leaves Ctrl-C to the command, which stops and says
    so once (a worker's own KeyboardInterrupt traceback came first), exits once ``parent``
    is gone (`exit_with_parent`; its pid passed down, as a worker may start after it died)
    and logs as the command does (`worker_logging`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent=parent)
    worker_logging()


def wait_watched(
    pool: ProcessPoolExecutor, futures: Iterable[Future], every_s: float = WATCH_S
) -> set[Future]:
    """The futures that are done, once at least one is (`wait` with ``FIRST_COMPLETED``),
    breaking ``pool`` when it has a dead worker that it fails to notice.

    Why: a worker killed while it writes a large result back leaves a partial message in the
    executor's result pipe. Its manager thread then reads on forever, since the parent and the
    other workers still hold the pipe's write end, never looks at the dead worker's sentinel
    and never fails the futures: the command hangs. Every ``every_s`` without a result this
    checks the workers; a dead one still unnoticed a period later means the executor is wedged,
    and `_break` makes it fail its futures with `BrokenProcessPool`, which callers already
    handle as a death.
    """
    futures = list(futures)
    dead_seen = False
    while True:
        done, _ = wait(futures, timeout=every_s, return_when=FIRST_COMPLETED)
        if done:
            return done
        if not _has_dead_worker(pool):
            dead_seen = False
        elif dead_seen:  # a whole period after the death, and still no answer
            _break(pool)
        else:
            dead_seen = True


def result_watched(pool: ProcessPoolExecutor, future: Future, every_s: float = WATCH_S) -> Any:
    """``future.result()`` that raises `BrokenProcessPool` instead of hanging on a wedged
    ``pool`` (see `wait_watched`)."""
    wait_watched(pool, [future], every_s)
    return future.result()


def _workers(pool: ProcessPoolExecutor) -> list[Any]:
    """The executor's worker processes. CPython keeps them in ``_processes`` (3.8-3.13);
    without it there are none to check or kill, and `wait_watched` is a plain wait."""
    return list((getattr(pool, "_processes", None) or {}).values())


def _has_dead_worker(pool: ProcessPoolExecutor) -> bool:
    return any(worker.exitcode is not None for worker in _workers(pool))


def _break(pool: ProcessPoolExecutor) -> None:
    """Kill the executor's workers and close the parent's copy of the result pipe's write end:
    with no writer left, the manager thread's read ends (EOF), and it fails every pending
    future with `BrokenProcessPool`. The other workers must go too: the dead one may have held
    the pipe's write lock, and they would wait for it forever."""
    for worker in _workers(pool):
        if worker.exitcode is None:
            worker.kill()
    queue = getattr(pool, "_result_queue", None)
    writer = getattr(queue, "_writer", None)
    if writer is not None:
        writer.close()


def starmap_in_processes(
    fn: Callable[..., Any], args: Iterable[Sequence[Any]], processes: int
) -> list[Any]:
    """``[fn(*a) for a in args]`` over ``processes`` spawned processes (no inherited thread
    pools or locks), in order; the workers exit on their own once the work is done. A worker
    that dies is a `ZoomMILError` (a `Pool` would wait for its result forever)."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, ctx) as pool:
        futures: list[Future] = []
        try:
            for a in args:  # a worker may die while the rest are still being submitted
                futures.append(pool.submit(fn, *a))
            return [result_watched(pool, future) for future in futures]
        except BrokenProcessPool:
            raise ZoomMILError(f"a worker process died ({DIED})") from None
        finally:
            for future in futures:  # after an error: the rest is not started
                future.cancel()


@dataclass(frozen=True)
class ProcessDied:
    """The outcome of a task whose process died before returning (killed, out of memory, a
    crash inside a C library) while it ran alone: with one process at once, else when rerun
    alone after dying among others."""

    reason: str = f"its worker process died ({DIED})"


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
            broken = False
            while (todo or in_flight) and not hit and not broken:
                while todo and len(in_flight) < processes:
                    index, item = todo.popleft()
                    try:
                        future = pool.submit(fn, item)
                    except BrokenProcessPool:
                        # a process died after the last wait returned, before its own future
                        # was marked: this item never ran; the ones in flight settle below
                        todo.appendleft((index, item))
                        broken = True
                        break
                    in_flight[future] = (index, item)
                if broken:
                    break
                done = wait_watched(pool, in_flight)
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
        wait_watched(pool, [future])
        if isinstance(future.exception(), BrokenProcessPool):
            return ProcessDied()
        return future.result()

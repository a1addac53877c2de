"""Patches of the lattice from a slide: one read per region, and reader processes to hide it.

Why per region: the lattice is aligned by construction (a parent at magnification m covers
exactly 2^d x 2^d patches at 2^d m), so reading the parent's level-0 extent once at the finest
magnification's resolution and area-resizing it down in exact 2x steps yields every
magnification's patches with one read per pixel; a child's pixels are by construction the
matching quadrant of its parent at the finer scale.

Why processes: decoding JPEG tiles and resizing costs about as much as a fast encoder; in their
own (spawned, single-threaded) processes they run while the encoder computes. `ReaderPool`
keeps a bounded window of chunks in flight, so memory is a few batches whatever the slide's
size, and it is kept alive across slides (spawning costs about a second). A reader process
that dies (a crash inside OpenSlide, the out-of-memory killer) has its chunks read again by
fresh readers once, and a second death is the slide's `SlideError`, not a command that waits
forever for its chunk as with a `multiprocessing.Pool`, even when the reader died half-way
through writing a chunk back (`zoommil.processes.result_watched`). This module imports neither
torch nor the encoder, so reader processes start fast and stay small.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import openslide

from zoommil.errors import SlideError
from zoommil.processes import exit_with_parent, result_watched
from zoommil.wsi.lattice import descendant_offsets

log = logging.getLogger(__name__)


def derive_patches(
    region: np.ndarray,
    depths: Sequence[int],
    patch_size: int,
    offsets: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Cut one parent's region (read at the highest magnification) into every magnification.

    ``region`` is [P * 2^D, P * 2^D, 3] with D = max(depths). Coarser scales are made by exact
    2x INTER_AREA steps (2x2 block means), so each coarser image's quadrant equals the
    area-resized quadrant of the finer image. Returns, per depth d, uint8 [4^d, P, P, 3] in the
    order of ``offsets[k]`` (grid (row, col) offsets inside the parent; default depth-first).
    """
    top = max(depths)
    side = patch_size * 2**top
    if region.shape[:2] != (side, side):
        raise ValueError(f"region is {region.shape[:2]}, expected {(side, side)}")
    scales = {top: np.ascontiguousarray(region)}
    image = scales[top]
    for d in range(top - 1, min(depths) - 1, -1):
        s = patch_size * 2**d
        image = cv2.resize(image, (s, s), interpolation=cv2.INTER_AREA)
        scales[d] = image
    out = []
    for k, d in enumerate(depths):
        grid = descendant_offsets(d) if offsets is None else np.asarray(offsets[k])
        img = scales[d]
        p = patch_size
        # view as [2^d, P, 2^d, P, 3] blocks, then gather the (row, col) blocks in order
        blocks = img.reshape(2**d, p, 2**d, p, 3).transpose(0, 2, 1, 3, 4)
        out.append(np.ascontiguousarray(blocks[grid[:, 0], grid[:, 1]]))
    return out


def read_parent_patches(
    slide: openslide.OpenSlide,
    x0: int,
    y0: int,
    side0: int,
    depths: Sequence[int],
    patch_size: int,
    offsets: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """One read of a parent's level-0 extent at the finest resolution, then `derive_patches`."""
    from zoommil.wsi import slide as slide_module  # looked up per call: tests patch it

    out_px = patch_size * 2 ** max(depths)
    region = slide_module.read_region_at(slide, int(x0), int(y0), int(side0), out_px)
    return derive_patches(region, depths, patch_size, offsets)


@dataclass(frozen=True)
class RegionTask:
    """Regions of one slide to cut into patches: level-0 top-left corners of squares of
    ``side0`` px, each cut into ``depths`` (see `derive_patches`); ``offsets[i]`` optionally
    gives region i's per-depth (row, col) order."""

    slide: str
    xy: np.ndarray
    side0: int
    depths: tuple[int, ...]
    patch_size: int
    offsets: tuple[np.ndarray, ...] | None = None

    @property
    def patches_per_region(self) -> int:
        return sum(4**d for d in self.depths)


# one handle per slide per process (OpenSlide handles are never pickled or shared by a fork)
_HANDLES: dict[str, tuple[int, openslide.OpenSlide]] = {}


def _handle(path: str) -> openslide.OpenSlide:
    entry = _HANDLES.get(path)
    if entry is None or entry[0] != os.getpid():
        from zoommil.wsi.slide import open_slide

        for old in list(_HANDLES):  # a few handles at most: slides are read one after another
            if len(_HANDLES) < 2:
                break
            _close(old)
        _HANDLES[path] = (os.getpid(), open_slide(path, test_read=False))
    return _HANDLES[path][1]


def _close(path: str) -> None:
    entry = _HANDLES.pop(path, None)
    if entry is not None and entry[0] == os.getpid():
        entry[1].close()


def close_handles() -> None:
    """Close this process's cached handles."""
    for path in list(_HANDLES):
        _close(path)


def read_task(task: RegionTask) -> np.ndarray | str:
    """Patches of every region of ``task`` stacked in order (uint8 [n * per_region, P, P, 3]),
    or the reason they cannot be read (a string: pool workers return errors as values).

    An OpenSlide error latches on the handle: the slide is reopened and the read tried once more.
    """
    out = np.empty(
        (len(task.xy) * task.patches_per_region, task.patch_size, task.patch_size, 3), np.uint8
    )
    row = 0
    for i, (x0, y0) in enumerate(task.xy):
        offsets = None if task.offsets is None else [o[i] for o in task.offsets]
        error = ""
        for _attempt in range(2):
            try:
                patches = read_parent_patches(
                    _handle(task.slide),
                    int(x0),
                    int(y0),
                    task.side0,
                    task.depths,
                    task.patch_size,
                    offsets,
                )
                break
            except SlideError as exc:
                return exc.reason
            except openslide.OpenSlideError as exc:
                error = f"cannot read the region at level-0 ({int(x0)}, {int(y0)}): {exc}"
                _close(task.slide)
        else:
            return error
        for p in patches:
            out[row : row + len(p)] = p
            row += len(p)
    return out


def _init_reader(parent: int) -> None:
    """Readers are single-threaded (the cores belong to the encoder) and leave Ctrl-C to the
    parent, which then lets them finish their chunk and exit (no traceback of theirs); they
    exit with ``parent`` (its pid, passed down: a reader may start after it died)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    exit_with_parent(parent=parent)


def _started() -> None:
    """A no-op task: the executor starts a process for each task while none is idle."""


#: Why a slide's read failed when its reader process died under it.
READER_DIED = "a reader process died while reading it (a crash inside OpenSlide, or out of memory)"


class ReaderPool:
    """Spawned reader processes that read `RegionTask` chunks ahead of the consumer.

    ``workers=0`` reads in the calling process (one core, nothing hidden). Use as a context
    manager, or call `close`; the processes are reused across `imap` calls and slides.
    Not fork: a process that already ran OpenCV/OpenMP thread pools can hand a forked child a
    locked mutex and hang it.
    """

    def __init__(self, workers: int = 1, prefetch: int = 4) -> None:
        self.workers = max(0, int(workers))
        self.window = max(1, self.workers * max(1, prefetch))
        self._pool: Any = None

    def start(self) -> ReaderPool:
        """Start the reader processes now rather than at the first read, so their start-up
        (~0.5 s: a fresh interpreter importing OpenSlide) overlaps the caller's own set-up,
        such as building the encoder or detecting tissue."""
        self._ensure()
        return self

    def _ensure(self) -> ProcessPoolExecutor | None:
        if self._pool is None and self.workers > 0:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, ctx, initializer=_init_reader,
                                             initargs=(os.getpid(),))  # fmt: skip
            for _ in range(self.workers):
                self._pool.submit(_started)
        return self._pool

    def imap(self, tasks: Iterable[RegionTask]) -> Iterator[np.ndarray]:
        """Each task's patches in order; at most ``window`` tasks in flight."""
        pool = self._ensure()
        if pool is None:
            for task in tasks:
                yield self._checked(task, read_task(task))
            return
        pending: deque[tuple[RegionTask, Future]] = deque()
        retried = False

        def submit(task: RegionTask) -> Future:
            try:
                return pool.submit(read_task, task)
            except BrokenProcessPool as error:  # a reader died since the last chunk
                failed: Future = Future()
                failed.set_exception(error)
                return failed

        def take() -> np.ndarray:
            """The oldest chunk; after a reader's death, all pending chunks go to fresh
            readers once (an OOM kill may not recur), and a second death is the slide's."""
            nonlocal pool, retried
            task, future = pending[0]
            try:
                result = result_watched(pool, future)
            except BrokenProcessPool:
                self._shutdown(wait=False)  # broken for good: the next read starts a fresh pool
                if retried:
                    raise SlideError(task.slide, READER_DIED) from None
                retried = True
                log.warning("%s: %s; reading again with fresh readers", task.slide, READER_DIED)
                pool = self._ensure()
                for i, (again, _) in enumerate(pending):
                    pending[i] = (again, submit(again))
                return take()
            pending.popleft()
            return self._checked(task, result)

        try:
            for task in tasks:
                pending.append((task, submit(task)))
                if len(pending) >= self.window:
                    yield take()
            while pending:
                yield take()
        finally:
            for _, future in pending:  # a consumer that stops early leaves nothing queued
                future.cancel()

    @staticmethod
    def _checked(task: RegionTask, result: np.ndarray | str) -> np.ndarray:
        if isinstance(result, str):
            raise SlideError(task.slide, result)
        return result

    def _shutdown(self, wait: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)

    def close(self) -> None:
        """Let the reader processes finish their chunk and exit (queued chunks are dropped)."""
        self._shutdown(wait=True)
        close_handles()

    def __enter__(self) -> ReaderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chunk_tasks(
    slide: str,
    xy: np.ndarray,
    side0: int,
    depths: Sequence[int],
    patch_size: int,
    regions_per_task: int,
    offsets: Sequence[np.ndarray] | None = None,
    first_regions: int | None = None,
) -> Iterator[RegionTask]:
    """``xy`` (and per-depth ``offsets``, indexed by region) split into tasks of a few regions.

    ``first_regions``: the first task holds that many regions and each next one twice as many
    up to ``regions_per_task``. Why: the consumer waits for the first task whole, and in
    `zoommil predict` every zoom step starts a stream (ZoomMIL's 40x BRIGHT slide waited 0.16
    s a slide for three 16-patch first tasks, against 6 s of bf16 encoding); doubling keeps a
    reader that is twice as fast as the encoder ahead of it from the first batch on.
    """
    n = max(1, int(regions_per_task))
    size = n if first_regions is None else max(1, min(n, int(first_regions)))
    i = 0
    while i < len(xy):
        yield RegionTask(
            slide=str(slide),
            xy=np.asarray(xy[i : i + size]),
            side0=int(side0),
            depths=tuple(int(d) for d in depths),
            patch_size=int(patch_size),
            offsets=None if offsets is None else tuple(o[i : i + size] for o in offsets),
        )
        i += size
        size = min(n, 2 * size)

"""Patches of the lattice from a slide, read as `zoommil predict` reads them, in reader processes.

Why these reads: the lattice is aligned by construction (a parent at magnification m covers
exactly 2^d x 2^d patches at 2^d m). A parent is read whole at its own magnification, and each
finer listed magnification one patch of the previous one at a time, the region `zoommil
predict` reads when it zooms into that patch; every read takes the coarsest pyramid level fine
enough for it. So training features and prediction see the same pixels for a patch, whatever
the scanner's pyramid (lossy levels, non-integer downsamples).

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
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openslide

from zoommil.errors import SlideError
from zoommil.processes import init_worker, result_watched
from zoommil.wsi.lattice import descendant_offsets

log = logging.getLogger(__name__)


def cut_patches(
    image: np.ndarray, depth: int, patch_size: int, grid: np.ndarray | None = None
) -> np.ndarray:
    """Cut a parent's image at depth ``depth`` ([P * 2^d, P * 2^d, 3]) into its 4^d patches,
    uint8 [4^d, P, P, 3], in the order of ``grid`` ((row, col) offsets inside the parent;
    default depth-first)."""
    p = patch_size
    side = p * 2**depth
    if image.shape[:2] != (side, side):
        raise ValueError(f"region is {image.shape[:2]}, expected {(side, side)}")
    grid = descendant_offsets(depth) if grid is None else np.asarray(grid)
    # view as [2^d, P, 2^d, P, 3] blocks, then gather the (row, col) blocks in order
    blocks = image.reshape(2**depth, p, 2**depth, p, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(blocks[grid[:, 0], grid[:, 1]])


def read_parent_patches(
    slide: openslide.OpenSlide,
    x0: int,
    y0: int,
    side0: int,
    depths: Sequence[int],
    patch_size: int,
    offsets: Sequence[np.ndarray] | None = None,
    keep: Sequence[bool] | None = None,
) -> list[np.ndarray]:
    """Every listed magnification (``depths`` below the parent, increasing) of one parent's
    level-0 square, as uint8 [4^d, P, P, 3] per depth, in the order of ``offsets[k]``; with
    ``keep``, only the depths it marks (the others are not read, but still decide how the next
    depth is read: a model that reads the 10x rows of a 5/10x file gets the pixels the file's
    10x rows were made from, one read per 5x patch, not one per 10x patch, which differ by a
    sub-pixel shift on a pyramid with non-integer downsamples).

    The first depth is the parent read whole; each next depth is read one patch of the
    previous depth at a time. These are exactly the reads `zoommil predict` makes when it
    zooms (a selected patch's region at the next magnification), so a patch has the same
    pixels in a feature file and in prediction, also on a scanner's lossy pyramid with
    non-integer downsamples, where one fine read area-resized to the coarser scales did not
    (a 2.5x patch made from 10x pixels differs from one read from the 2.5x level). Each read
    takes the coarsest pyramid level fine enough for it (`read_rect_at`).
    """
    from zoommil.wsi import pixels  # looked up per call: tests patch it

    kept = [True] * len(depths) if keep is None else [bool(k) for k in keep]
    images: dict[int, np.ndarray] = {}
    previous: int | None = None
    for d, wanted in zip(depths, kept, strict=True):
        if not wanted:
            previous = d
            continue
        out_px = patch_size * 2**d
        if previous is None:
            image = pixels.read_region_at(slide, int(x0), int(y0), int(side0), out_px)
        else:
            cells = 2**previous
            cell0 = int(side0) // cells
            cell_px = out_px // cells
            image = np.empty((out_px, out_px, 3), dtype=np.uint8)
            for r in range(cells):
                for c in range(cells):
                    image[r * cell_px : (r + 1) * cell_px, c * cell_px : (c + 1) * cell_px] = (
                        pixels.read_region_at(
                            slide, int(x0) + c * cell0, int(y0) + r * cell0, cell0, cell_px
                        )
                    )
        images[d] = image
        previous = d
    return [
        cut_patches(images[d], d, patch_size, None if offsets is None else offsets[k])
        for k, d in enumerate(depths)
        if kept[k]
    ]


@dataclass(frozen=True)
class RegionTask:
    """Regions of one slide to cut into patches: level-0 top-left corners of squares of
    ``side0`` px, each cut into ``depths`` (see `read_parent_patches`); ``offsets[i]`` optionally
    gives region i's per-depth (row, col) order; ``keep`` the depths returned (default all)."""

    slide: str
    xy: np.ndarray
    side0: int
    depths: tuple[int, ...]
    patch_size: int
    offsets: tuple[np.ndarray, ...] | None = None
    keep: tuple[bool, ...] | None = None

    @property
    def patches_per_region(self) -> int:
        keep = self.keep if self.keep is not None else (True,) * len(self.depths)
        return sum(4**d for d, k in zip(self.depths, keep, strict=True) if k)


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
                    task.keep,
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
    init_worker(parent)
    cv2.setNumThreads(1)


def _started() -> None:
    """A no-op task: the executor starts a process for each task while none is idle."""


#: Why a slide's read failed when its reader process died under it.
READER_DIED = "a reader process died while reading it (a crash inside OpenSlide, or out of memory)"


def reader_died() -> str:
    """`READER_DIED`, plus the likeliest cause in a user's own script: readers are spawned,
    so each one imports the script as its ``__main__``, and a script without an
    ``if __name__ == "__main__":`` guard starts its work again there and kills the reader."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if not script or getattr(main, "__spec__", None) is not None:  # python -m, or notebooks
        return READER_DIED
    try:
        guarded = "__name__" in Path(script).read_text(errors="replace")
    except OSError:
        return READER_DIED
    if guarded:
        return READER_DIED
    return (
        f"{READER_DIED}; or {script} has no 'if __name__ == \"__main__\":' guard around its "
        "work: reader processes are spawned and import it again"
    )


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
                    raise SlideError(task.slide, reader_died()) from None
                retried = True
                log.warning("%s: %s; reading again with fresh readers", task.slide, reader_died())
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
    keep: Sequence[bool] | None = None,
) -> Iterator[RegionTask]:
    """``xy`` (and per-depth ``offsets``, indexed by region) split into tasks of a few regions;
    ``keep``: the depths read and returned (`read_parent_patches`).

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
            keep=None if keep is None else tuple(bool(k) for k in keep),
        )
        i += size
        size = min(n, 2 * size)

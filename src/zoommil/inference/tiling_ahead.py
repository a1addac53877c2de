"""Tissue detection and tiling of the next slides while this one is encoded.

Why: ZoomMIL encodes few patches per slide, so its fixed cost per slide (opening the file,
decoding a thumbnail, tissue detection, the lattice: ~0.6 s on a 40x slide) is a large share
of a slide: 5% of one CPU core's time at fp32, 11% at bf16, and most of it on a GPU, where the
encoding takes a fraction of a second. Slides are independent, so one process working a few
slides ahead takes that cost off the encoder's path when `zoommil predict` classifies several
slides in one process (``--threads 1``, or a GPU).

This module imports no torch: the tiling process starts in a fraction of a second and holds
no model. A slide whose tiling fails there comes back as its error (`TilingFailure`), which
the caller raises as `tile_for_inference` would have, without detecting its tissue again; a
read error, a missing file and a process that died are left to the caller, which tiles the
slide itself (a read gets its one retry on a fresh handle, `zoommil.inference.predict`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import openslide

from zoommil.errors import SlideCheckError, SlideError, ZoomMILError
from zoommil.processes import init_worker
from zoommil.recipe import PreprocessingRecipe
from zoommil.wsi.lattice import NO_TISSUE, Lattice, check_native_resolution, no_tissue_found
from zoommil.wsi.pixels import read_thumbnail_at_mpp
from zoommil.wsi.slide import open_with_mpp
from zoommil.wsi.tiling import tile_open_slide
from zoommil.wsi.tissue import MASK_MPP, method_params, saturation

log = logging.getLogger(__name__)


#: Level-0 area (mm^2) under which a slide is too small for "no tissue found" to be trusted:
#: the detector works on an 8 um/px thumbnail and drops pieces under 0.05 mm^2, so a crop of a
#: few hundred um can hold tissue it cannot see. Whole slides are tens to hundreds of mm^2;
#: CMU-1-Small-Region.svs (1.6 mm^2) is detected.
SMALL_SLIDE_MM2 = 1.0

#: What a predict/profile user can do about a slide scanned coarser than the checkpoint reads:
#: not the tiling options (the checkpoint fixes the magnifications), only fix wrong metadata.
UPSAMPLING_REMEDY = (
    "the checkpoint reads these magnifications (its training features were not upsampled), so "
    "classify scans at least this fine; if the slide's mpp metadata is wrong, give its level-0 "
    "mpp (zoommil predict --mpp, the sheet's mpp column in the workflow)"
)


def tile_for_inference(
    recipe: PreprocessingRecipe,
    slide_path: str | Path,
    mpp: float | None = None,
    default_mpp: float | None = None,
) -> Lattice:
    """The checkpoint's lattice of a slide file; its attrs carry the level-0 mpp (``mpp``) and
    where it came from (``mpp_source``). ``mpp`` replaces the slide's metadata, ``default_mpp``
    is used only where the metadata has none (`zoommil.wsi.resolution.resolve_mpp`).

    A slide without tissue is a `SlideCheckError` with status `NO_TISSUE`, whatever the
    recipe's policy: a prediction from its background patches would read like any other
    (cohort runs list it as a ``no_tissue`` row and go on). Below `SMALL_SLIDE_MM2` the
    detector is not trusted where its thumbnail has a pixel that could be tissue
    (`could_hold_tissue`): every patch is classified, with a warning and ``tissue_note`` in
    the lattice's attrs (and so in the prediction JSON); a small slide of bare glass is
    `NO_TISSUE` like a large one."""
    slide, mpp0, source = open_with_mpp(slide_path, mpp, default_mpp)
    try:
        if not recipe.allow_upsampling:  # the checkpoint fixes the magnifications: say so
            check_native_resolution(slide_path, mpp0, recipe.mags, remedy=UPSAMPLING_REMEDY)
        width, height = slide.dimensions
        area_mm2 = width * height * mpp0**2 / 1e6
        # too small to trust "no tissue found", unless no pixel could be tissue (bare glass)
        fallback = area_mm2 < SMALL_SLIDE_MM2 and could_hold_tissue(slide, mpp0, recipe)
        policy = "all" if fallback else "exclude"
        try:
            lattice = tile_open_slide(
                slide, slide_path, mpp0, source, recipe.replace(no_tissue=policy)
            )
        except SlideCheckError as error:
            if error.status != NO_TISSUE:
                raise
            reason = f"{no_tissue_found(recipe)}: not classified"
            raise SlideCheckError(error.slide, NO_TISSUE, reason) from None
    finally:
        slide.close()
    if fallback and lattice.attrs.get("no_tissue_applied"):
        note = (
            f"no tissue found, but the slide is only {area_mm2:.2g} mm^2, too small for the "
            f"detector (< {SMALL_SLIDE_MM2:g} mm^2): every patch classified"
        )
        log.warning("%s: %s", slide_path, note)
        lattice.attrs["tissue_note"] = note
    return lattice


def could_hold_tissue(slide: Any, mpp0: float, recipe: PreprocessingRecipe) -> bool:
    """Whether any pixel of the detector's thumbnail of an open slide is saturated enough to
    be tissue: at least the detector's ``min_saturation`` floor, below which both detectors
    call a pixel background.

    Why: a slide under `SMALL_SLIDE_MM2` is classified from every patch when the detector
    finds nothing, as it can miss tissue that small; but bare glass has no pixel above the
    floor, and an 800 x 800 um crop of it was given a confident class. Only small slides are
    read here: their thumbnail is at most ~125 x 125 px."""
    params = method_params(recipe.tissue_method, recipe.tissue_params)
    floor = int(params.get("min_saturation", 0))
    thumb = read_thumbnail_at_mpp(slide, mpp0, max(MASK_MPP, mpp0))
    return bool((saturation(np.ascontiguousarray(thumb[..., :3], dtype=np.uint8)) >= floor).any())


@dataclass(frozen=True)
class TilingFailure:
    """A slide's tiling error as picklable data: the project's errors take two or three
    arguments and cannot be unpickled, which would break the pool for every slide.

    Why not tile the slide again in the caller, as before: it detected the slide's tissue a
    second time and logged its warnings twice."""

    message: str
    slide: str | None = None  # a `SlideError`'s; None: a `ZoomMILError` (or another error)
    reason: str = ""
    status: str | None = None  # a `SlideCheckError`'s

    @classmethod
    def of(cls, error: Exception) -> TilingFailure:
        """``error`` as data; another exception than the project's keeps its type's name,
        as a cohort's failure row names it."""
        if isinstance(error, SlideError):
            status = error.status if isinstance(error, SlideCheckError) else None
            return cls(str(error), error.slide, error.reason, status)
        if isinstance(error, ZoomMILError):
            return cls(str(error))
        return cls(f"{type(error).__name__}: {error}")

    def error(self) -> ZoomMILError:
        """The error to raise in the caller, of the class `tile_for_inference` raised."""
        if self.slide is None:
            return ZoomMILError(self.message)
        if self.status is None:
            return SlideError(self.slide, self.reason)
        return SlideCheckError(self.slide, self.status, self.reason)


def _tile_or_failure(
    recipe: PreprocessingRecipe, slide_path: str, mpp: float | None, default_mpp: float | None
) -> Lattice | TilingFailure | None:
    """`tile_for_inference` in the tiling process, its error as `TilingFailure`. None leaves
    the slide to the caller: a missing file (its own one-line error, before any tiling) and a
    read error (retried there on a fresh handle)."""
    if not Path(slide_path).exists():
        return None
    try:
        return tile_for_inference(recipe, slide_path, mpp, default_mpp)
    except openslide.OpenSlideError:
        return None
    except Exception as error:  # raised by the caller, not tiled again
        return TilingFailure.of(error)


class TilingAhead:
    """Tiles ``slides[i + 1 .. i + ahead]`` in a process of its own while slide ``i`` is
    classified. ``get(i)`` returns slide ``i``'s lattice, raises the error its tiling raised
    (`TilingFailure`), or returns None where the caller should tile it itself: the first
    slide (nothing was ahead of it yet), a missing file, a read error, and a slide whose
    process died."""

    def __init__(
        self,
        recipe: PreprocessingRecipe,
        slides: Sequence[str | Path],
        mpp: float | None = None,
        ahead: int = 2,
        default_mpp: float | None = None,
    ) -> None:
        self.recipe = recipe
        self.slides = [str(s) for s in slides]
        self.mpp = mpp
        self.default_mpp = default_mpp
        self.ahead = max(1, int(ahead))
        self._pending: dict[int, Future] = {}
        self._next = 1  # the first slide is tiled by the caller: nothing runs ahead of it
        self._pool: ProcessPoolExecutor | None = None
        if len(self.slides) > 1:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,  # Ctrl-C is the command's (review A)
                initargs=(os.getpid(),),  # this pid: the worker may start after we die
            )

    def get(self, index: int) -> Lattice | None:
        self._submit_up_to(index + self.ahead)
        future = self._pending.pop(index, None)
        if future is None:
            return None
        try:
            result = future.result()
        except Exception as error:  # the process died: the caller tiles
            log.debug("%s: tiling ahead failed (%s)", self.slides[index], error)
            return None
        if isinstance(result, TilingFailure):
            raise result.error()
        return result

    def _submit_up_to(self, last: int) -> None:
        while self._pool is not None and self._next <= min(last, len(self.slides) - 1):
            try:
                slide = self.slides[self._next]
                self._pending[self._next] = self._pool.submit(
                    _tile_or_failure, self.recipe, slide, self.mpp, self.default_mpp
                )
            except RuntimeError:  # the pool broke (its process died): the caller tiles
                self.close()
                return
            self._next += 1

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> TilingAhead:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""The aligned multi-magnification lattice: the geometry every stage shares.

One integer lattice anchored at level-0 (0, 0): the patch side at the highest magnification
is ``s = round(patch_size * (10 / mag_high) / mpp0)`` level-0 px, and ``s * 2**k`` at k steps
lower. A patch at (row, col) of magnification m has its top-left corner at level-0
``(col * side_m, row * side_m)``, so every patch covers exactly ``2**d x 2**d`` patches
``d`` steps higher: alignment holds by construction, with no padding or rounding drift.

Only the lowest magnification ("parents") is filtered by tissue; every descendant of a kept
parent is kept. Rows are depth-first: the ``4**d`` descendants of row i at the next listed
magnification are rows ``i*4**d .. (i+1)*4**d - 1`` (`descendant_rows`); one quadtree step
orders the children (2r, 2c), (2r+1, 2c), (2r, 2c+1), (2r+1, 2c+1), recursively
(`children_order`, ZoomMIL's contract). Feature extraction, `zoommil predict` and the ZoomMIL
model use these functions, so the order is written once.

Reading slides into a lattice is `zoommil.wsi.tiling`; the coords file is `zoommil.io.coords`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoommil.errors import SlideCheckError, SlideError, ZoomMILError
from zoommil.recipe import PreprocessingRecipe, mag_key, validate_mags

log = logging.getLogger(__name__)

__all__ = [
    "NO_TISSUE",
    "Lattice",
    "build_lattice",
    "check_lattice",
    "children_order",
    "depth_first_problem",
    "depths",
    "descendant_offsets",
    "descendant_ratios",
    "descendant_rows",
    "descendants",
    "mag_key",
    "parent_grid",
    "patch_side_level0",
    "steps_between",
    "tissue_fractions",
    "validate_mags",
]

#: The status of a slide where no lowest-magnification patch passes the tissue threshold: the
#: `SlideCheckError` of the "exclude" policy, the QC table's and `zoommil predict`'s.
NO_TISSUE = "no_tissue"

#: One quadtree step: offsets (d_row, d_col) of the four children, in row order.
CHILD_OFFSETS = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.int64)


def steps_between(low: float, high: float) -> int:
    """d with high = low * 2**d (mags assumed validated)."""
    return int(round(math.log2(high / low)))


def depths(mags: Sequence[float]) -> list[int]:
    """Quadtree depth of each magnification below the lowest (e.g. 2.5, 5, 20 -> 0, 1, 3)."""
    return [steps_between(mags[0], m) for m in mags]


def descendant_ratios(mags: Sequence[float]) -> list[int]:
    """Rows per parent row between neighbouring magnifications (``4**d`` for a 2^d ratio).

    ``mags`` must be listed lowest first (the rows' order); `ZoomMILError` otherwise.
    """
    values = validate_mags(mags)
    if values != [float(m) for m in mags]:
        raise ZoomMILError(f"magnifications must be listed lowest first, got {list(mags)}")
    return [4 ** steps_between(lo, hi) for lo, hi in zip(values, values[1:], strict=False)]


def patch_side_level0(mpp0: float, mag_high: float, patch_size: int) -> int:
    """Level-0 side of a ``patch_size`` patch at ``mag_high`` (mag = 10 / mpp)."""
    side = round(patch_size * (10.0 / mag_high) / mpp0)
    if side < 1:
        raise ZoomMILError(
            f"{mag_high:g}x with patch size {patch_size} is finer than the slide "
            f"({10.0 / mpp0:.3g}x): a patch would be smaller than one level-0 pixel"
        )
    return int(side)


#: A highest magnification up to this fraction above the slide's native one (10 / level-0
#: mpp) is not upsampling worth refusing: scanners sold as "40x" store 0.2527 (Aperio AT2,
#: 39.6x) or 0.2627 um/px (Leica GT450, 38.1x; 5% refused its 40x), less than the ~16% spread
#: of pixel sizes at one nominal power (`zoommil.wsi.resolution.FORTY_X_RANGE_TEXT`).
UPSAMPLING_TOLERANCE = 0.10


def check_native_resolution(
    slide_path: str | Path,
    mpp0: float,
    mags: Sequence[float],
    allow_upsampling: bool = False,
    remedy: str | None = None,
) -> bool:
    """Refuse magnifications finer than the scan (they would be made by upsampling).

    Returns whether upsampling happens (only possible with ``allow_upsampling``), so that it
    is recorded in the coords and feature files. ``remedy``: what the caller's user can do
    (default: the tiling options; `zoommil predict` has neither, its checkpoint sets both).
    """
    native = 10.0 / mpp0
    finest = max(float(m) for m in mags)
    if finest <= native * (1.0 + UPSAMPLING_TOLERANCE):
        return False
    if allow_upsampling:
        log.warning(
            "%s: %gx is finer than the slide's native %.3gx; upsampling (--allow-upsampling)",
            slide_path,
            finest,
            native,
        )
        return True
    if remedy is None:
        remedy = (
            f"use magnifications up to {native:.3g}x, or allow it explicitly with "
            "--allow-upsampling (workflow: preprocess.allow_upsampling: true)"
        )
    raise SlideError(
        slide_path,
        f"{finest:g}x is finer than the slide's native magnification {native:.3g}x "
        f"(level-0 {mpp0:.4g} um/px): the patches would be upsampled; {remedy}",
    )


def sides_level0(mags: Sequence[float], s_high: int) -> list[int]:
    """Level-0 side per magnification (ascending mags): ``s_high * 2**k`` k steps below."""
    high = mags[-1]
    return [s_high * 2 ** steps_between(m, high) for m in mags]


def parent_grid(dims: tuple[int, int], side: int) -> np.ndarray:
    """(row, col) of every parent touching the slide, row-major; none lies entirely outside."""
    w, h = dims
    rows, cols = math.ceil(h / side), math.ceil(w / side)
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.int64)


def children_order(rc: np.ndarray) -> np.ndarray:
    """One quadtree step: [N, 2] (row, col) -> [4N, 2], the 4 children of row i at 4i..4i+3."""
    rc = np.asarray(rc, dtype=np.int64).reshape(-1, 2)
    return (2 * rc[:, None, :] + CHILD_OFFSETS[None]).reshape(-1, 2)


def descendants(rc: np.ndarray, depth: int) -> np.ndarray:
    """``depth`` quadtree steps in depth-first order: [N, 2] -> [N * 4**depth, 2]."""
    out = np.asarray(rc, dtype=np.int64).reshape(-1, 2)
    for _ in range(depth):
        out = children_order(out)
    return out


def descendant_offsets(depth: int) -> np.ndarray:
    """(row, col) offsets of a parent's ``4**depth`` descendants inside it, depth-first order."""
    return descendants(np.zeros((1, 2), dtype=np.int64), depth)


def descendant_rows(rows: np.ndarray, ratio: int) -> np.ndarray:
    """Row indices at the next magnification of the descendants of ``rows`` (``ratio = 4**d``
    rows each): row i -> ``i*ratio .. (i+1)*ratio - 1``, in order."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    return (rows[:, None] * ratio + np.arange(ratio)[None, :]).reshape(-1)


def depth_first_problem(mags: Sequence[float], coords: Sequence[np.ndarray]) -> str | None:
    """Why grid (row, col) rows of ``mags`` (lowest first, power-of-two ratios) break the
    depth-first order, else None: row j at a magnification ``d`` steps above the previous
    listed one must be exactly ``descendants(previous, d)[j]``, the ``j % 4**d``-th descendant
    (quadtree order) of row ``j // 4**d`` there, so ``N_next = 4**d N_prev``.

    Why: files with rows in another order have the right counts and pass every shape check,
    yet ZoomMIL zooms into the wrong patches and every model sees children that are not their
    parents'. One vectorised comparison per magnification, O(N): ~2.5 ms for 50k rows.
    """
    for k in range(1, len(mags)):
        low, high = float(mags[k - 1]), float(mags[k])
        d = steps_between(low, high)
        parents = np.asarray(coords[k - 1]).reshape(-1, 2)
        rows = np.asarray(coords[k]).reshape(-1, 2)
        ratio = 4**d
        if len(rows) != ratio * len(parents):
            return (
                f"{len(rows)} rows at {mag_key(high)} but {len(parents)} at {mag_key(low)} "
                f"need {ratio * len(parents)} (4^{d} each): the rows break the lattice's "
                "descendant layout"
            )
        expected = descendants(parents, d)
        bad = np.flatnonzero((rows != expected).any(axis=1))
        if len(bad):
            j = int(bad[0])
            return (
                f"row {j} at {mag_key(high)} is (row, col) {_pair(rows[j])}, but depth-first "
                f"order puts {_pair(expected[j])} there (descendant {j % ratio} of row "
                f"{j // ratio} at {mag_key(low)}, {_pair(parents[j // ratio])}): rows must be "
                f"parent-major, the 4^{d} descendants of row i at rows i*{ratio}.."
                f"(i+1)*{ratio}-1, in quadtree order"
            )
    return None


def _pair(rc: np.ndarray) -> str:
    return f"({rc[0]}, {rc[1]})"


def tissue_fractions(
    mask: np.ndarray, dims: tuple[int, int], rc: np.ndarray, side: int
) -> np.ndarray:
    """Fraction of each patch ``(row, col)`` of side ``side`` (level-0 px) covered by tissue.

    ``mask`` covers the whole slide (``dims`` = level-0 width, height); fractions come from an
    integral image over mask pixels, and the part of a patch outside the slide counts as
    background (the denominator is the full patch area).
    """
    mask = np.asarray(mask, dtype=bool)
    mh, mw = mask.shape
    w0, h0 = dims
    fx, fy = mw / w0, mh / h0
    integral = _integral(mask)
    rc = np.asarray(rc, dtype=np.int64).reshape(-1, 2)
    y0 = rc[:, 0] * side
    x0 = rc[:, 1] * side
    # Mask-pixel bounds of each patch (rounded to the nearest mask pixel edge), clipped.
    c0 = np.clip(np.round(x0 * fx), 0, mw).astype(np.int64)
    c1 = np.clip(np.round((x0 + side) * fx), 0, mw).astype(np.int64)
    r0 = np.clip(np.round(y0 * fy), 0, mh).astype(np.int64)
    r1 = np.clip(np.round((y0 + side) * fy), 0, mh).astype(np.int64)
    count = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    area = max(side * fx, 1e-9) * max(side * fy, 1e-9)
    return np.clip(count / area, 0.0, 1.0).astype(np.float32)


def _integral(mask: np.ndarray) -> np.ndarray:
    """Integral image of a boolean mask, [h + 1, w + 1] with a zero first row and column.

    OpenCV's (imported here only: tiling imports it anyway) is ~15x NumPy's two cumsums over
    int64 on a 40x slide's mask; its int32 sums hold any mask below 2^31 pixels."""
    if mask.size >= 2**31:
        integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
        integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
        return integral
    import cv2

    return cv2.integral(np.ascontiguousarray(mask).view(np.uint8), sdepth=cv2.CV_32S)


@dataclass
class Lattice:
    """Kept patches of one slide at every magnification (lowest first), plus provenance."""

    mags: list[float]
    patch_size: int
    sides: list[int]
    coords: list[np.ndarray]
    xy: list[np.ndarray]
    tissue_fraction: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def side0(self, mag: float) -> int:
        """Level-0 side of a patch at ``mag``."""
        return self.sides[self.mags.index(float(mag))]

    def num_patches(self) -> list[int]:
        return [len(c) for c in self.coords]

    def children_per_parent(self, index: int) -> int:
        """Rows at ``mags[index]`` per row at ``mags[index - 1]`` (``4**d``)."""
        return 4 ** steps_between(self.mags[index - 1], self.mags[index])

    def restricted_to(self, mags: Sequence[float]) -> Lattice:
        """The rows of some of the magnifications, their lowest now the parents.

        Why: a model trained on some magnifications of a feature file (ABMIL on the 10x rows
        of a 1.25/2.5/10x file) read the patches kept by the tissue filter at the file's
        lowest magnification; its bag at inference must be those rows, not a lattice tiled
        and filtered at its own magnification. Row order stays depth-first, so the result
        is a valid lattice (the tissue fraction is each new parent's old parent's).
        """
        wanted = [float(m) for m in mags]
        if wanted == self.mags:
            return self
        missing = [m for m in wanted if m not in self.mags]
        if missing or wanted != sorted(wanted) or not wanted:
            raise ZoomMILError(
                f"magnifications {wanted} are not an ordered subset of the lattice's {self.mags}"
            )
        keep = [self.mags.index(m) for m in wanted]
        per_parent = 4 ** steps_between(self.mags[0], wanted[0])
        return Lattice(
            mags=wanted,
            patch_size=self.patch_size,
            sides=[self.sides[k] for k in keep],
            coords=[self.coords[k] for k in keep],
            xy=[self.xy[k] for k in keep],
            tissue_fraction=np.repeat(self.tissue_fraction, per_parent),
            attrs=dict(self.attrs),
        )


def no_tissue_found(recipe: PreprocessingRecipe) -> str:
    """Why a slide has no tissue under ``recipe``: 'no tissue found (no 1.25x patch has a
    tissue fraction >= 0.1)'."""
    return (
        f"no tissue found (no {mag_key(recipe.mags[0])} patch has a tissue fraction >= "
        f"{recipe.tissue_threshold:g})"
    )


def build_lattice(
    slide_path: str | Path,
    dims: tuple[int, int],
    mpp0: float,
    recipe: PreprocessingRecipe,
    mask: np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Lattice:
    """Lattice of a slide of level-0 size ``dims`` (width, height) at ``mpp0`` um/px.

    Parents (lowest mag) are kept if their tissue fraction in ``mask`` is >= the recipe's
    threshold (no mask: all parents, fraction 1). If none is kept, the no-tissue policy "all"
    keeps every parent with a warning and "exclude" raises `SlideCheckError` (status
    `NO_TISSUE`, reason `no_tissue_found`).
    """
    mags = list(recipe.mags)
    patch_size, threshold, no_tissue = recipe.patch_size, recipe.tissue_threshold, recipe.no_tissue
    s_high = patch_side_level0(mpp0, mags[-1], patch_size)
    sides = sides_level0(mags, s_high)
    parents = parent_grid(dims, sides[0])
    if mask is None:
        fractions = np.ones(len(parents), dtype=np.float32)
    else:
        fractions = tissue_fractions(mask, dims, parents, sides[0])
    keep = fractions >= threshold
    applied = False
    if not keep.any():
        if no_tissue == "exclude":
            raise SlideCheckError(
                slide_path,
                NO_TISSUE,
                f"{no_tissue_found(recipe)}; excluded by the no-tissue policy 'exclude'",
            )
        log.warning(
            "%s: no tissue found (threshold %g); keeping all %d parents (no-tissue policy 'all')",
            slide_path,
            threshold,
            len(parents),
        )
        keep[:] = True
        applied = True
    coords = [parents[keep]]
    for prev, mag in zip(mags, mags[1:], strict=False):
        coords.append(descendants(coords[-1], steps_between(prev, mag)))
    xy = [
        np.stack([c[:, 1] * s, c[:, 0] * s], axis=1).astype(np.int64)
        for c, s in zip(coords, sides, strict=True)
    ]
    meta = {
        "slide": str(slide_path),
        **recipe.tiling_attrs(),
        "side0": [int(s) for s in sides],
        "mpp": float(mpp0),
        "dimensions": [int(d) for d in dims],
        "no_tissue_applied": bool(applied),
        "n_parents_total": int(len(parents)),
        "n_parents_kept": int(len(coords[0])),
    }
    meta.update(attrs or {})
    return Lattice(
        mags=mags,
        patch_size=int(patch_size),
        sides=sides,
        coords=coords,
        xy=xy,
        tissue_fraction=fractions[keep].astype(np.float32),
        attrs=meta,
    )


def check_lattice(lattice: Lattice, source: str = "coords file") -> None:
    """Check the invariants readers rely on (sorted power-of-two mags, aligned sides,
    ``4**d`` rows per parent, depth-first order); a violation is a user-facing error."""
    mags = lattice.mags
    if not mags:
        raise ZoomMILError(f"{source}: no magnifications")
    if sorted(mags) != list(mags):
        raise ZoomMILError(f"{source}: magnifications must be listed lowest first, got {mags}")
    try:
        validate_mags(mags)
    except ZoomMILError as error:
        raise ZoomMILError(f"{source}: {error}") from None
    n_parents = len(lattice.xy[0])
    for k, (m, d) in enumerate(zip(mags, depths(mags), strict=True)):
        side = lattice.sides[k]
        if side * 2**d != lattice.sides[0]:
            raise ZoomMILError(
                f"{source}: level-0 side {side} at {mag_key(m)} is not "
                f"{lattice.sides[0]} / 2^{d}: the lattice is not aligned"
            )
        n = len(lattice.xy[k])
        if n != n_parents * 4**d or len(lattice.coords[k]) != n:
            raise ZoomMILError(
                f"{source}: {n} patches at {mag_key(m)} but {n_parents} parents "
                f"at {mag_key(mags[0])} need {n_parents * 4**d} (4^{d} each)"
            )
        if n == 0:
            continue
        grid_xy = np.asarray(lattice.coords[k])[:, ::-1] * side
        if not np.array_equal(grid_xy, lattice.xy[k]):
            raise ZoomMILError(
                f"{source}: (row, col) and level-0 (x, y) at {mag_key(m)} disagree "
                f"(expected x = col * {side}, y = row * {side})"
            )
    # (row, col) agree with (x, y) at every magnification: the grid order is the order
    problem = depth_first_problem(mags, lattice.coords)
    if problem is not None:
        raise ZoomMILError(f"{source}: {problem}")

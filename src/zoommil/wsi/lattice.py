"""The aligned multi-magnification lattice and its coords HDF5.

One integer lattice anchored at level-0 (0, 0): the patch side at the highest magnification
is ``s = round(patch_size * (10 / mag_high) / mpp0)`` level-0 px, and ``s * 2**k`` at k steps
lower. A patch at (row, col) of magnification m has its top-left corner at level-0
``(col * side_m, row * side_m)``, so every patch covers exactly ``2**d x 2**d`` patches
``d`` steps higher: alignment holds by construction, with no padding or rounding drift.

Only the lowest magnification ("parents") is filtered by tissue; every descendant of a kept
parent is kept. Rows are depth-first: the ``4**d`` descendants of row i at the next listed
magnification are rows ``i*4**d .. (i+1)*4**d - 1``; one quadtree step orders the children
(2r, 2c), (2r+1, 2c), (2r, 2c+1), (2r+1, 2c+1), recursively (ZoomMIL's contract).

Coords file (written atomically): per magnification ``{mag}x_coords`` (int64 [N, 2] row, col)
and ``{mag}x_xy`` (int64 [N, 2] level-0 x, y); ``tissue_fraction`` (float32 [N_parents],
aligned with the lowest magnification's rows); attributes: mags, patch_size, side0 (per
mag), mpp, mpp_source, dimensions, tissue method/params/threshold, no-tissue policy.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zoommil import __version__
from zoommil.errors import SlideError, ZoomMILError
from zoommil.io.featurefile import decode_attr, encode_attr, mag_key, write_hdf5_bytes

log = logging.getLogger(__name__)

__all__ = [
    "Lattice",
    "build_lattice",
    "children_order",
    "descendants",
    "load_coords",
    "mag_key",
    "parent_grid",
    "patch_side_level0",
    "tissue_fractions",
    "validate_mags",
    "write_coords",
]

NO_TISSUE_POLICIES = ("all", "exclude")

#: One quadtree step: offsets (d_row, d_col) of the four children, in row order.
CHILD_OFFSETS = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.int64)


def validate_mags(mags: Sequence[float]) -> list[float]:
    """Sorted ascending; each a power-of-two multiple of the lowest, else `ZoomMILError`."""
    if not mags:
        raise ZoomMILError("no magnifications given")
    try:
        values = sorted(float(m) for m in mags)
    except (TypeError, ValueError):
        raise ZoomMILError(f"magnifications must be numbers, got {list(mags)}") from None
    if any(not math.isfinite(m) or m <= 0 for m in values):
        raise ZoomMILError(f"magnifications must be positive, got {values}")
    if len(set(values)) != len(values):
        raise ZoomMILError(f"magnifications must be distinct, got {values}")
    for low, high in zip(values, values[1:], strict=False):
        steps = math.log2(high / low)
        if abs(steps - round(steps)) > 1e-9:
            raise ZoomMILError(
                f"magnifications {low:g}x and {high:g}x are not power-of-two multiples of each "
                f"other (ratio {high / low:g}); a patch at one must cover exactly 2^d x 2^d "
                "patches at the other, e.g. --mags 2.5 5 10 or 1.25 2.5 10"
            )
    return values


def steps_between(low: float, high: float) -> int:
    """d with high = low * 2**d (mags assumed validated)."""
    return int(round(math.log2(high / low)))


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
#: mpp) is not upsampling worth refusing: "40x" scans are often 0.2527 um/px (39.6x).
UPSAMPLING_TOLERANCE = 0.05


def check_native_resolution(
    slide_path: str | Path, mpp0: float, mags: Sequence[float], allow_upsampling: bool = False
) -> bool:
    """Refuse magnifications finer than the scan (they would be made by upsampling).

    Returns whether upsampling happens (only possible with ``allow_upsampling``), so that it
    is recorded in the coords and feature files.
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
    raise SlideError(
        slide_path,
        f"{finest:g}x is finer than the slide's native magnification {native:.3g}x "
        f"(level-0 {mpp0:.4g} um/px): the patches would be upsampled; use magnifications up to "
        f"{native:.3g}x, or allow it explicitly with --allow-upsampling "
        "(workflow: preprocess.allow_upsampling: true)",
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
    integral = np.zeros((mh + 1, mw + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
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


def build_lattice(
    slide_path: str | Path,
    dims: tuple[int, int],
    mpp0: float,
    mags: Sequence[float],
    patch_size: int = 256,
    mask: np.ndarray | None = None,
    threshold: float = 0.1,
    no_tissue: str = "all",
    attrs: Mapping[str, Any] | None = None,
) -> Lattice:
    """Lattice of a slide of level-0 size ``dims`` (width, height) at ``mpp0`` um/px.

    Parents (lowest mag) are kept if their tissue fraction in ``mask`` is >= ``threshold``
    (no mask: all parents, fraction 1). If none is kept, ``no_tissue="all"`` keeps every parent
    with a warning and ``"exclude"`` raises `SlideError` ("no tissue found").
    """
    mags = validate_mags(mags)
    if no_tissue not in NO_TISSUE_POLICIES:
        raise ZoomMILError(
            f"unknown no-tissue policy {no_tissue!r} (choose from {', '.join(NO_TISSUE_POLICIES)})"
        )
    _check_patch_size(patch_size)
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
            raise SlideError(
                slide_path,
                f"no tissue found (no {mag_key(mags[0])} patch has a tissue fraction >= "
                f"{threshold:g}); excluded by the no-tissue policy 'exclude'",
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
        "mags": [float(m) for m in mags],
        "patch_size": int(patch_size),
        "side0": [int(s) for s in sides],
        "mpp": float(mpp0),
        "dimensions": [int(d) for d in dims],
        "tissue_threshold": float(threshold),
        "no_tissue_policy": no_tissue,
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


# --------------------------------------------------------------------------- HDF5


def write_coords(path: str | Path, lattice: Lattice) -> Path:
    """Write the coords HDF5 atomically (temporary file in the same folder, then rename)."""
    attrs = {
        **lattice.attrs,
        "mags": [float(m) for m in lattice.mags],
        "patch_size": lattice.patch_size,
        "side0": [int(s) for s in lattice.sides],
        "zoommil_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        for mag, rc, xy in zip(lattice.mags, lattice.coords, lattice.xy, strict=True):
            key = mag_key(mag)
            h5.create_dataset(f"{key}_coords", data=np.asarray(rc, np.int64).reshape(-1, 2))
            h5.create_dataset(f"{key}_xy", data=np.asarray(xy, np.int64).reshape(-1, 2))
        h5.create_dataset("tissue_fraction", data=np.asarray(lattice.tissue_fraction, np.float32))
        for name, value in attrs.items():
            h5.attrs[name] = encode_attr(value)
    return write_hdf5_bytes(path, buffer)


def load_coords(path: str | Path) -> Lattice:
    """Read a coords HDF5 written by `write_coords` (mags lowest first)."""
    path = Path(path)
    if not path.exists():
        raise ZoomMILError(f"{path}: coords file not found")
    try:
        with h5py.File(path, "r") as h5:
            attrs = {name: decode_attr(value) for name, value in h5.attrs.items()}
            mags = [float(m) for m in attrs["mags"]]
            coords = [h5[f"{mag_key(m)}_coords"][()] for m in mags]
            xy = [h5[f"{mag_key(m)}_xy"][()] for m in mags]
            fractions = h5["tissue_fraction"][()]
    except (OSError, KeyError) as error:
        raise ZoomMILError(f"{path}: not a valid coords file ({error})") from error
    return Lattice(
        mags=mags,
        patch_size=int(attrs["patch_size"]),
        sides=[int(s) for s in attrs["side0"]],
        coords=coords,
        xy=xy,
        tissue_fraction=fractions,
        attrs=attrs,
    )


# --------------------------------------------------------------------------- slide -> coords


def _check_mask_fits(mask_path: Path, mask: np.ndarray, meta: Mapping[str, Any], dims) -> None:
    """A mask covers the whole slide; refuse one made for another slide."""
    w0, h0 = dims
    if "dimensions" in meta and [int(d) for d in meta["dimensions"]] != [int(w0), int(h0)]:
        raise ZoomMILError(
            f"{mask_path}: tissue mask was made for a slide of {meta['dimensions'][0]}x"
            f"{meta['dimensions'][1]} px, but this slide is {w0}x{h0} px"
        )
    mh, mw = mask.shape
    # Each mask side is round(dim * scale), so |mw*h0 - mh*w0| <= (w0 + h0) / 2.
    if abs(mw * h0 - mh * w0) > max(w0, h0):
        raise ZoomMILError(
            f"{mask_path}: tissue mask ({mw}x{mh}) does not have the slide's aspect ratio "
            f"({w0}x{h0}); was it made for another slide?"
        )


def _check_patch_size(patch_size: int) -> None:
    if isinstance(patch_size, bool) or int(patch_size) != patch_size or patch_size < 1:
        raise ZoomMILError(f"patch size must be a positive number of pixels, got {patch_size}")


def _check_tiling_args(
    mags: Sequence[float], threshold: float, patch_size: int = 256
) -> list[float]:
    _check_patch_size(patch_size)
    if not 0.0 <= threshold <= 1.0:
        raise ZoomMILError(f"tissue threshold must be within 0-1, got {threshold}")
    return validate_mags(mags)


def tile_slide(
    slide_path: str | Path,
    mags: Sequence[float],
    patch_size: int = 256,
    mpp: float | None = None,
    default_mpp: float | None = None,
    mask_path: str | Path | None = None,
    tissue_method: str = "gaussian",
    tissue_params: Mapping[str, Any] | None = None,
    threshold: float = 0.1,
    no_tissue: str = "all",
    allow_upsampling: bool = False,
) -> Lattice:
    """Slide -> `Lattice`: resolve mpp, get a tissue mask (given PNG or computed), filter parents.

    All user mistakes raise `ZoomMILError`/`SlideError` before anything is written.
    """
    from zoommil.wsi.slide import open_with_mpp

    _check_tiling_args(mags, threshold, patch_size)  # before touching the file
    slide, mpp0, source = open_with_mpp(slide_path, mpp, default_mpp)
    try:
        return tile_open_slide(
            slide, slide_path, mpp0, source, mags, patch_size, mask_path, tissue_method,
            tissue_params, threshold, no_tissue, allow_upsampling,
        )  # fmt: skip
    finally:
        slide.close()


def tile_open_slide(
    slide: Any,
    slide_path: str | Path,
    mpp0: float,
    mpp_source: str,
    mags: Sequence[float],
    patch_size: int = 256,
    mask_path: str | Path | None = None,
    tissue_method: str = "gaussian",
    tissue_params: Mapping[str, Any] | None = None,
    threshold: float = 0.1,
    no_tissue: str = "all",
    allow_upsampling: bool = False,
) -> Lattice:
    """`tile_slide` on a slide that is already open (from `open_with_mpp`), so that a caller
    that goes on to read patches (`zoommil predict`) opens the file once. The slide is left
    open. The lattice's attributes name the slide (resolved path and OpenSlide quickhash), so
    `zoommil features` can refuse the coords file of another slide."""
    from zoommil.wsi.slide import quickhash
    from zoommil.wsi.tissue import load_mask, method_params, tissue_mask_from_slide

    mags = _check_tiling_args(mags, threshold, patch_size)
    dims = (int(slide.dimensions[0]), int(slide.dimensions[1]))
    upsampled = check_native_resolution(slide_path, mpp0, mags, allow_upsampling)
    patch_side_level0(mpp0, mags[-1], patch_size)  # fail early on impossible mags
    if mask_path is not None:
        if tissue_params:
            log.warning("%s: tissue parameters are ignored with a given mask", slide_path)
        mask, meta = load_mask(mask_path)
        _check_mask_fits(Path(mask_path), mask, meta, dims)
        tissue = {
            "tissue_mask": str(mask_path),
            "tissue_method": str(meta.get("method", "unknown")),
            "tissue_params": meta.get("params", {}),
            "mask_mpp": float(meta.get("mask_mpp", mpp0 * dims[0] / mask.shape[1])),
        }
    else:
        params = method_params(tissue_method, tissue_params)
        mask, mask_mpp, _ = tissue_mask_from_slide(slide, mpp0, tissue_method, params)
        if not mask.any():
            log.warning("%s: the %s detector found no tissue", slide_path, tissue_method)
        tissue = {
            "tissue_mask": None,
            "tissue_method": tissue_method,
            "tissue_params": params,
            "mask_mpp": float(mask_mpp),
        }
    return build_lattice(
        slide_path,
        dims,
        mpp0,
        mags,
        patch_size,
        mask=mask,
        threshold=threshold,
        no_tissue=no_tissue,
        attrs={
            "mpp_source": mpp_source,
            "slide_path": str(Path(slide_path).resolve()),
            "slide_quickhash": quickhash(slide) or "",
            "native_magnification": 10.0 / mpp0,
            "upsampling": bool(upsampled),
            **tissue,
        },
    )

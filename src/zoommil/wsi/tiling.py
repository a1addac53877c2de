"""Slide -> `Lattice`: resolve the mpp, get a tissue mask (given PNG or computed), keep parents.

The recipe says how (magnifications, patch size, tissue detector and threshold, no-tissue
policy); `zoommil.wsi.lattice` says where the patches are. All user mistakes raise
`ZoomMILError`/`SlideError` before anything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zoommil.errors import ZoomMILError
from zoommil.recipe import PreprocessingRecipe
from zoommil.wsi.lattice import (
    Lattice,
    build_lattice,
    check_native_resolution,
    patch_side_level0,
)
from zoommil.wsi.slide import open_with_mpp, quickhash
from zoommil.wsi.tissue import (
    DETECTOR_VERSIONS,
    load_mask,
    method_params,
    tissue_mask_from_slide,
)

log = logging.getLogger(__name__)


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


def tile_slide(
    slide_path: str | Path,
    recipe: PreprocessingRecipe,
    mpp: float | None = None,
    default_mpp: float | None = None,
    mask_path: str | Path | None = None,
) -> Lattice:
    """The recipe's lattice of one slide file (opened, tiled, closed)."""
    slide, mpp0, source = open_with_mpp(slide_path, mpp, default_mpp)
    try:
        return tile_open_slide(slide, slide_path, mpp0, source, recipe, mask_path)
    finally:
        slide.close()


def tile_open_slide(
    slide: Any,
    slide_path: str | Path,
    mpp0: float,
    mpp_source: str,
    recipe: PreprocessingRecipe,
    mask_path: str | Path | None = None,
) -> Lattice:
    """`tile_slide` on a slide that is already open (from `open_with_mpp`), so that a caller
    that goes on to read patches (`zoommil predict`) opens the file once. The slide is left
    open. The lattice's attributes name the slide (resolved path and OpenSlide quickhash), so
    `zoommil features` can refuse the coords file of another slide."""
    dims = (int(slide.dimensions[0]), int(slide.dimensions[1]))
    upsampled = check_native_resolution(slide_path, mpp0, recipe.mags, recipe.allow_upsampling)
    patch_side_level0(mpp0, recipe.mags[-1], recipe.patch_size)  # fail early on impossible mags
    if mask_path is not None:
        if recipe.tissue_params:
            log.warning("%s: tissue parameters are ignored with a given mask", slide_path)
        mask, meta = load_mask(mask_path)
        _check_mask_fits(Path(mask_path), mask, meta, dims)
        tissue = {
            "tissue_mask": str(mask_path),
            "tissue_method": str(meta.get("method", "unknown")),
            "tissue_params": meta.get("params", {}),
            "mask_mpp": float(meta.get("mask_mpp", mpp0 * dims[0] / mask.shape[1])),
        }
        if isinstance(meta.get("version"), int):  # none in a mask of another tool
            tissue["tissue_version"] = meta["version"]
    else:
        method = recipe.tissue_method
        params = method_params(method, recipe.tissue_params)
        mask, mask_mpp, _ = tissue_mask_from_slide(slide, mpp0, method, params)
        if not mask.any():
            log.warning("%s: the %s detector found no tissue", slide_path, method)
        tissue = {
            "tissue_mask": None,
            "tissue_method": method,
            "tissue_version": DETECTOR_VERSIONS[method],
            "tissue_params": params,
            "mask_mpp": float(mask_mpp),
        }
    attrs = {
        "mpp_source": mpp_source,
        "slide_path": str(Path(slide_path).resolve()),
        "slide_quickhash": quickhash(slide) or "",
        "native_magnification": 10.0 / mpp0,
        "upsampling": bool(upsampled),
        **tissue,
    }
    return build_lattice(slide_path, dims, mpp0, recipe, mask=mask, attrs=attrs)

"""Write an RGB image as a pyramidal tiled TIFF that OpenSlide opens as a generic TIFF.

Deflate (zlib) with the horizontal predictor: lossless, reproducible byte for byte and needs no
imagecodecs. The resolution is written in centimetres so OpenSlide reports `openslide.mpp-x`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from zoommil.io.atomic import atomic_path


def pyramid_levels(image: np.ndarray, min_levels: int = 3, min_side: int = 256) -> list[np.ndarray]:
    """Level 0 and its 2x area reductions: at least `min_levels`, then until a side < min_side.

    Means are carried in float and rounded only for output, so level k is the rounded mean of
    the aligned 2^k x 2^k blocks of level 0: an area resize of level 0, whichever level a
    reader picks.
    """
    levels = [image]
    current = image.astype(np.float32)
    while True:
        h, w = current.shape[0] // 2, current.shape[1] // 2
        if len(levels) >= min_levels and min(h, w) < min_side or min(h, w) < 16:
            break
        # each 2x2 block summed from four strided views, several times faster than a mean over
        # reshaped axes, and the same bits: up to level 7, every sum is a multiple of 4^-k
        # below 1024, which float32 holds exactly whatever the order of the additions
        current = (
            current[0 : 2 * h : 2, 0 : 2 * w : 2]
            + current[1 : 2 * h : 2, 0 : 2 * w : 2]
            + current[0 : 2 * h : 2, 1 : 2 * w : 2]
            + current[1 : 2 * h : 2, 1 : 2 * w : 2]
        ) / 4
        levels.append(np.rint(current).astype(np.uint8))
    return levels


def write_pyramidal_tiff(
    path: str | Path, image: np.ndarray, mpp: float, tile: int = 256, min_levels: int = 3
) -> list[tuple[int, int]]:
    """Write `image` (uint8 [H, W, 3], level 0 at `mpp` um/px); returns the (W, H) of each level.

    Written to a temporary name and renamed, so an interrupted run never leaves a half file.
    """
    path = Path(path)
    levels = pyramid_levels(image, min_levels=min_levels)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as writer:
        for k, level in enumerate(levels):
            px_per_cm = 1e4 / (mpp * 2**k)
            writer.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                compressionargs={"level": 3},
                predictor=True,
                resolution=(px_per_cm, px_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=1 if k else 0,
                metadata=None,
                software="zoommil synth",
            )
    return [(lv.shape[1], lv.shape[0]) for lv in levels]

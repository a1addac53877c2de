"""Tiny deterministic pyramidal TIFFs for tests (a plain module, not a conftest, so test
files can import it by a name no other conftest shadows)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile

#: A tissue threshold that keeps every patch of a tiny test slide, whose 8 um/px thumbnail (48 x
#: 32 px for 768 x 512 px at 0.5 um/px) is too small for the detector to find tissue in:
#: `zoommil predict` refuses a slide without tissue, whatever the no-tissue policy.
KEEP_EVERY_PATCH = 0.0


def synthetic_tissue_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """White background with an elliptical H&E-like region (pink stroma, purple nuclei)."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    cy, cx = 0.45 * height, 0.4 * width
    ry, rx = 0.3 * height, 0.28 * width
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
    stroma = np.array([232, 150, 190], dtype=np.float32)
    noise = rng.normal(0.0, 12.0, size=(height, width, 1)).astype(np.float32)
    tissue = np.clip(stroma + noise, 0, 255)
    img[inside] = tissue[inside].astype(np.uint8)
    n_nuclei = max(1, int(inside.sum() / 400))
    ys, xs = np.nonzero(inside)
    pick = rng.choice(len(ys), size=n_nuclei, replace=False)
    for y, x in zip(ys[pick], xs[pick], strict=True):
        radius = int(rng.integers(3, 7))
        cv2.circle(img, (int(x), int(y)), radius, (90, 40, 130), -1)
    return img


def write_pyramid_tiff(
    path: str | Path,
    rgb: np.ndarray | None = None,
    width: int = 2048,
    height: int = 1536,
    mpp: float | None = 0.5,
    levels: int = 3,
    tile: int = 256,
    seed: int = 0,
    tissue: bool = True,
    mpp_y: float | None = None,
) -> Path:
    """Write a tiled pyramidal TIFF (levels downsampled by 2 with INTER_AREA).

    ``mpp=None`` writes no resolution tags (a slide without mpp); otherwise the resolution is
    stored per centimetre (``mpp_y``: another vertical one, non-square pixels). ``tissue=False``
    gives an all-white slide.
    """
    path = Path(path)
    if rgb is None:
        rgb = (
            synthetic_tissue_rgb(width, height, seed)
            if tissue
            else np.full((height, width, 3), 255, dtype=np.uint8)
        )
    with tifffile.TiffWriter(path) as tw:
        level = np.ascontiguousarray(rgb)
        for index in range(levels):
            kwargs = {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * 2**index)
                per_cm_y = 1e4 / ((mpp_y or mpp) * 2**index)
                kwargs = {"resolution": (per_cm, per_cm_y), "resolutionunit": "CENTIMETER"}
            tw.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                subfiletype=0 if index == 0 else 1,
                **kwargs,
            )
            h, w = level.shape[:2]
            level = cv2.resize(
                level, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA
            )
    return path


def dark_field_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A fluorescence-like image: near-black background, dim blue/green cells in an ellipse."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 8, dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    inside = ((yy - 0.5 * height) / (0.3 * height)) ** 2 + (
        (xx - 0.5 * width) / (0.3 * width)
    ) ** 2 < 1.0
    img[inside] = (20, 40, 60)
    ys, xs = np.nonzero(inside)
    for k in rng.choice(len(ys), size=max(1, int(inside.sum() / 300)), replace=False):
        cv2.circle(img, (int(xs[k]), int(ys[k])), 4, (30, 90, 220), -1)
    return img


def tiles_touched_by_test_read(width: int, height: int, tile: int = 256) -> set[tuple[int, int]]:
    """(tile_row, tile_col) of level 0 that `zoommil inspect`'s test read decodes (9 points)."""
    touched = set()
    for fy in (0.0, 0.5, 1.0):
        for fx in (0.0, 0.5, 1.0):
            x = int(max(0, fx * width - 256))
            y = int(max(0, fy * height - 256))
            for ty in range(y // tile, (min(height, y + 256) - 1) // tile + 1):
                for tx in range(x // tile, (min(width, x + 256) - 1) // tile + 1):
                    touched.add((ty, tx))
    return touched


def corrupt_level_tiles(path: str | Path, level: int = 0, spare: set | None = None) -> int:
    """Overwrite the compressed data of a pyramid level's tiles with garbage, in place.

    Tiles in ``spare`` ((tile_row, tile_col)) are left intact, e.g. those the inspection's
    test read decodes, so that the slide passes inspection and fails where the pixels are
    read (feature extraction). Returns the number of corrupted tiles.
    """
    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[level]
        per_row = -(-page.imagewidth // page.tilewidth)
        spans = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    count = 0
    with open(path, "r+b") as fh:
        for index, (offset, size) in enumerate(spans):
            if spare and (index // per_row, index % per_row) in spare:
                continue
            fh.seek(offset)
            fh.write(bytes([0xFF, 0x00] * (size // 2)) + b"\xff" * (size % 2))
            count += 1
    return count

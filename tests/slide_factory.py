"""Tiny deterministic pyramidal TIFFs for tests (a plain module, not a conftest, so test
files can import it by a name no other conftest shadows)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile


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
) -> Path:
    """Write a tiled pyramidal TIFF (levels downsampled by 2 with INTER_AREA).

    ``mpp=None`` writes no resolution tags (a slide without mpp); otherwise the resolution is
    stored per centimetre. ``tissue=False`` gives an all-white slide.
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
                kwargs = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
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

"""Real-size pyramidal JPEG slides made from a real H&E region, written tile by tile.

Why: speed and memory problems only show at the size users scan (40,000 x 30,000 px at 20x,
60,000 x 50,000 px at 40x). The slide is a mosaic of square blocks: each block is either
background (flat near-white, as a scanner's glass) or a tissue-rich crop of the source region
turned by one of the 8 flips/rotations; tissue blocks fill an ellipse covering about two
thirds of the blocks, so about half of the slide is tissue. Nothing is held but the source
image and its downsampled copies: every tile of every level is cut from them on demand
(numpy views, one copy per tile), so memory does not grow with the slide. Level k is made from
the source area-downsampled by 4^k (offsets are multiples of the largest downsample, so this is
the exact area reduction of level 0 away from block seams).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

from zoommil.io.atomic import atomic_path

#: Background colour (RGB): the near-white of an empty scanner field.
BACKGROUND = (243, 243, 243)
#: A crop is a usable tissue block when at least this fraction of it is tissue.
MIN_BLOCK_TISSUE = 0.6


@dataclass(frozen=True)
class LargeSlideSpec:
    """What to write: level-0 size, resolution, block and tile geometry, pyramid factor."""

    width: int
    height: int
    mpp: float
    block: int = 1024
    tile: int = 256
    level_factor: int = 4
    min_level_side: int = 1024
    quality: int = 80
    tissue_fraction: float = 0.65  # of the blocks; ~0.75 tissue each -> ~half the slide
    seed: int = 0

    @property
    def objective(self) -> float:
        return round(10.0 / self.mpp, 2)

    def level_factors(self) -> list[int]:
        """Downsample of each level: 1, f, f^2, ... while the long side stays >= min_level_side."""
        out = [1]
        while max(self.width, self.height) // (out[-1] * self.level_factor) >= self.min_level_side:
            out.append(out[-1] * self.level_factor)
        return out


#: The two sizes of the issue: a 20x (0.5 um/px) and a 40x (0.25 um/px) scan.
PRESETS = {
    "20x": LargeSlideSpec(width=40960, height=30720, mpp=0.5, block=1024),
    "40x": LargeSlideSpec(width=61440, height=51200, mpp=0.25, block=2048),
}


def load_source(path: str | Path, mpp: float) -> np.ndarray:
    """The source region's level 0 as RGB uint8, resampled from its own mpp to ``mpp``."""
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        image = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
        src_mpp = float(slide.properties.get("openslide.mpp-x") or 0.5)
    scale = src_mpp / mpp
    if not math.isclose(scale, 1.0, rel_tol=0.02):
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(image)


class Mosaic:
    """Pixels of every level of the mosaic slide, computed on demand per rectangle."""

    def __init__(self, source: np.ndarray, spec: LargeSlideSpec) -> None:
        self.spec = spec
        self.factors = spec.level_factors()
        fmax = self.factors[-1]
        if spec.block % fmax or spec.width % spec.block or spec.height % spec.block:
            raise ValueError(
                f"block {spec.block} must divide the size {spec.width}x{spec.height} and be "
                f"a multiple of the largest downsample {fmax}"
            )
        h = source.shape[0] // fmax * fmax
        w = source.shape[1] // fmax * fmax
        if min(h, w) < spec.block:
            raise ValueError(f"source {w}x{h} is smaller than one block ({spec.block} px)")
        source = source[:h, :w]
        self.sources = [
            source if f == 1 else cv2.resize(source, (w // f, h // f), interpolation=cv2.INTER_AREA)
            for f in self.factors
        ]
        self.offsets = self._tissue_offsets(source, fmax)
        self.rows = spec.height // spec.block
        self.cols = spec.width // spec.block
        rng = np.random.default_rng(spec.seed)
        yy, xx = np.mgrid[0 : self.rows, 0 : self.cols]
        # an ellipse of tissue blocks (radius s: area pi s^2 / 4 of the rectangle = fraction)
        s = math.sqrt(4 * spec.tissue_fraction / math.pi)
        ry, rx = s * self.rows / 2, s * self.cols / 2
        inside = ((yy + 0.5 - self.rows / 2) / ry) ** 2 + ((xx + 0.5 - self.cols / 2) / rx) ** 2
        self.tissue = inside <= 1.0
        self.crop = rng.integers(0, len(self.offsets), size=(self.rows, self.cols))
        self.variant = rng.integers(0, 8, size=(self.rows, self.cols))

    def _tissue_offsets(self, source: np.ndarray, step: int) -> list[tuple[int, int]]:
        """(y, x) of block-sized crops (on a grid of ``step``) that are mostly tissue."""
        b = self.spec.block
        tissue = (source.min(axis=2) < 200).astype(np.float32)
        integral = cv2.integral(tissue)
        grid = max(step, b // 8)
        grid = grid // step * step
        scored = []
        for y in range(0, source.shape[0] - b + 1, grid):
            for x in range(0, source.shape[1] - b + 1, grid):
                s = (
                    integral[y + b, x + b]
                    - integral[y, x + b]
                    - integral[y + b, x]
                    + integral[y, x]
                )
                scored.append((s / (b * b), y, x))
        good = [(y, x) for f, y, x in scored if f >= MIN_BLOCK_TISSUE]
        if not good:  # a sparse source: take the densest crops
            good = [(y, x) for _f, y, x in sorted(scored, reverse=True)[:4]]
        return good

    def level_shape(self, level: int) -> tuple[int, int]:
        f = self.factors[level]
        return self.spec.height // f, self.spec.width // f

    def _block(self, level: int, r: int, c: int) -> np.ndarray | None:
        """A view of block (r, c) at ``level``, or None for background."""
        if not self.tissue[r, c]:
            return None
        f = self.factors[level]
        bk = self.spec.block // f
        oy, ox = self.offsets[self.crop[r, c]]
        view = self.sources[level][oy // f : oy // f + bk, ox // f : ox // f + bk]
        v = int(self.variant[r, c])
        view = np.rot90(view, v % 4)
        return view[:, ::-1] if v >= 4 else view

    def region(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Pixels [y0, y0 + h) x [x0, x0 + w) of ``level`` (outside the slide: background)."""
        out = np.empty((h, w, 3), dtype=np.uint8)
        out[:] = BACKGROUND
        bk = self.spec.block // self.factors[level]
        hh, ww = self.level_shape(level)
        for r in range(max(0, y0 // bk), min(self.rows, -(-min(y0 + h, hh) // bk))):
            for c in range(max(0, x0 // bk), min(self.cols, -(-min(x0 + w, ww) // bk))):
                block = self._block(level, r, c)
                if block is None:
                    continue
                by0, bx0 = r * bk, c * bk
                ya, yb = max(y0, by0), min(y0 + h, by0 + bk, hh)
                xa, xb = max(x0, bx0), min(x0 + w, bx0 + bk, ww)
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = block[
                    ya - by0 : yb - by0, xa - bx0 : xb - bx0
                ]
        return out

    def tiles(self, level: int) -> Iterator[np.ndarray]:
        """Tiles of ``level`` in TIFF order (row-major, edge tiles padded with background)."""
        t = self.spec.tile
        hh, ww = self.level_shape(level)
        for y in range(0, hh, t):
            for x in range(0, ww, t):
                yield self.region(level, y, x, t, t)


def write_large_slide(
    path: str | Path, source: np.ndarray, spec: LargeSlideSpec, compression: str = "jpeg"
) -> dict[str, object]:
    """Write the mosaic as a pyramidal tiled BigTIFF; returns its geometry and write time.

    ``compression`` is ``jpeg`` (RGB JPEG tiles at ``spec.quality``, as scanners write; needs
    imagecodecs) or ``zlib`` (lossless). The resolution tags carry the mpp (OpenSlide reports
    ``openslide.mpp-x``); the description names the objective and mpp for people.
    """
    path = Path(path)
    mosaic = Mosaic(source, spec)
    tic = time.perf_counter()
    args = {"compressionargs": {"level": spec.quality}} if compression == "jpeg" else {}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as writer:
        for k, f in enumerate(mosaic.factors):
            px_per_cm = 1e4 / (spec.mpp * f)
            h, w = mosaic.level_shape(k)
            writer.write(
                mosaic.tiles(k),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(spec.tile, spec.tile),
                photometric="rgb",
                compression=compression,
                resolution=(px_per_cm, px_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=1 if k else 0,
                description=(
                    f"zoommil large synthetic slide|AppMag = {spec.objective:g}|MPP = {spec.mpp}"
                    if k == 0
                    else None
                ),
                metadata=None,
                software="zoommil synth large",
                **args,
            )
    return {
        "path": str(path),
        "width": spec.width,
        "height": spec.height,
        "mpp": spec.mpp,
        "objective": spec.objective,
        "levels": [list(mosaic.level_shape(k))[::-1] for k in range(len(mosaic.factors))],
        "tile": spec.tile,
        "compression": compression,
        "tissue_block_fraction": float(mosaic.tissue.mean()),
        "bytes": path.stat().st_size,
        "seconds": time.perf_counter() - tic,
    }

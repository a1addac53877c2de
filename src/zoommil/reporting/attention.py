"""The one attention renderer: `zoommil predict --heatmap` and Figure 4 draw with it.

The lowest magnification's attention weights are painted over the patches they belong to, and
the regions ZoomMIL zoomed into are outlined, so a person can see where the model looked.
Slides are read only through `zoommil.wsi.slide`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib import colormaps

from zoommil.errors import ZoomMILError
from zoommil.io.atomic import atomic_path
from zoommil.wsi.slide import open_with_mpp, read_thumbnail_at_mpp

OUTLINE_COLOURS = ((0, 200, 0), (0, 90, 255), (255, 140, 0))


def slide_thumbnail(
    slide_path: str | Path, mpp: float | None = None, max_side: int = 1024
) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB thumbnail of at most ``max_side`` px and the slide's level-0 (width, height)."""
    slide, mpp0, _ = open_with_mpp(slide_path, mpp)
    try:
        width, height = slide.dimensions
        target = mpp0 * max(1.0, max(width, height) / max_side)
        thumb = read_thumbnail_at_mpp(slide, mpp0, target)
    finally:
        slide.close()
    return thumb, (int(width), int(height))


def thumbnail(
    slide_path: str | Path, mpp: float | None = None, max_side: int = 1024
) -> tuple[np.ndarray, float]:
    """RGB thumbnail of at most ``max_side`` px and its scale (thumbnail px per level-0 px)."""
    thumb, (width, _) = slide_thumbnail(slide_path, mpp, max_side)
    return thumb, thumb.shape[1] / width


def lowest_attention(prediction: Mapping[str, Any]) -> Mapping[str, Any]:
    """The attention entry of the lowest magnification of a prediction ({} when none)."""
    entries = prediction.get("attention") or []
    return min(entries, key=lambda e: float(e["mag"])) if entries else {}


def render(
    prediction: Mapping[str, Any],
    slide_path: str | Path,
    mpp: float | None = None,
    max_side: int = 1024,
    steps: int | None = None,
) -> np.ndarray:
    """RGB thumbnail of the slide with the prediction's lowest-magnification attention and the
    regions of its first ``steps`` zoom steps (all when None) outlined."""
    thumb, scale = thumbnail(slide_path, mpp, max_side)
    selected = sorted(prediction.get("selected") or [], key=lambda e: float(e["mag"]))
    return attention_overlay(thumb, scale, lowest_attention(prediction), selected[:steps])


def attention_overlay(
    thumb: np.ndarray,
    scale: float,
    attention: Mapping[str, Any],
    selected: Sequence[Mapping[str, Any]] = (),
    alpha: float = 0.5,
) -> np.ndarray:
    """Paint ``attention`` (one magnification: xy, side0, weights) over ``thumb``.

    Weights are min-max normalised per slide (the colour shows rank, not absolute mass);
    ``selected`` regions (per zoom step: xy, side0) are outlined.
    """
    out = thumb.astype(np.float32).copy()
    weights = np.asarray(attention.get("weights", []), dtype=np.float64)
    if len(weights):
        span = weights.max() - weights.min()
        norm = (weights - weights.min()) / span if span > 0 else np.ones_like(weights)
        colours = colormaps["inferno"](norm)[:, :3] * 255.0
        side = attention["side0"] * scale
        for (x, y), colour in zip(attention["xy"], colours, strict=True):
            x0, y0 = int(round(x * scale)), int(round(y * scale))
            x1, y1 = int(round(x * scale + side)), int(round(y * scale + side))
            patch = out[y0:y1, x0:x1]
            patch[:] = (1 - alpha) * patch + alpha * colour
    out = np.clip(out, 0, 255).astype(np.uint8)
    for k, step in enumerate(selected):
        colour = OUTLINE_COLOURS[k % len(OUTLINE_COLOURS)]
        side = step["side0"] * scale
        for x, y in step["xy"]:
            p0 = (int(round(x * scale)), int(round(y * scale)))
            p1 = (int(round(x * scale + side)) - 1, int(round(y * scale + side)) - 1)
            cv2.rectangle(out, p0, p1, colour, thickness=max(1, int(round(side / 24))))
    return out


def save_heatmap(
    path: str | Path,
    slide_path: str | Path,
    prediction: Mapping[str, Any],
    mpp: float | None = None,
) -> Path:
    """Write the lowest-magnification attention map of a `zoommil predict` result as PNG."""
    image = render(prediction, slide_path, mpp)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise ZoomMILError(f"{path}: cannot write the heatmap image")
    return Path(path)

"""H&E colour model: stain densities -> RGB by Beer-Lambert, so mixtures look like real stains."""

from __future__ import annotations

import numpy as np

# Optical-density direction of each stain (unit vectors over R, G, B).
HEMATOXYLIN = np.array([0.65, 0.70, 0.29], dtype=np.float32)
EOSIN = np.array([0.154, 0.876, 0.456], dtype=np.float32)
EOSIN /= np.linalg.norm(EOSIN)
GLASS_RGB = 243.0  # brightness of empty glass: white, slightly below saturation


def compose(hematoxylin: np.ndarray, eosin: np.ndarray) -> np.ndarray:
    """Stain density maps [H, W] -> float32 RGB [H, W, 3] in 0..255 (glass where both are 0)."""
    rgb = np.empty((*hematoxylin.shape, 3), np.float32)
    for c in range(3):
        od = hematoxylin * -HEMATOXYLIN[c]
        od -= eosin * EOSIN[c]
        np.exp(od, out=od)
        od *= GLASS_RGB
        rgb[..., c] = od
    return rgb


def hematoxylin_darkness() -> np.ndarray:
    """Per-channel darkening of a unit hematoxylin dab, max 1: the direction chromatin moves in."""
    dark = 1.0 - np.exp(-HEMATOXYLIN)
    return (dark / dark.max()).astype(np.float32)

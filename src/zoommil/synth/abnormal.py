"""The class signal: nuclear changes of the lesion's epithelium that only the highest
magnification resolves.

The trick that makes zooming necessary: every change *redistributes* darkness inside aligned
b x b pixel blocks of level 0 and keeps each block's per-channel sum. A b-times area reduction
(the pyramid, or the reader's INTER_AREA resize on the lattice anchored at (0, 0)) therefore
sees exactly the same image as for normal nuclei: same mean colour, same density, same shapes.

- atypia: coarse, clumped chromatin and a nucleolus (1-px structures, 2x2 blocks): visible at
  10x only, gone at 5x and 2.5x.
- carcinoma: irregular spiky nuclear outlines and mitosis-like condensed bars (4x4 blocks)
  with clumped chromatin (2x2 blocks): clear at 10x, faint at 5x, gone at 2.5x.
"""

from __future__ import annotations

import numpy as np

from zoommil.synth.painting import Nuclei, ellipse_sprite, paste_max

MAX_DARKNESS = 230.0  # keep the darkest chromatin at intensity >= 25, like real hematoxylin


def redistribute(
    rgb: np.ndarray,
    weight: np.ndarray,
    active: np.ndarray,
    block: int,
    keep: float,
    strength: float,
    direction: np.ndarray,
) -> int:
    """Move darkness inside each active aligned block towards pixels of high `weight`, in place.

    Per block and channel: D' = mean + keep * (D - mean) + s * strength * (w - mean(w)) * dir,
    where D = 255 - rgb. Both added terms sum to zero over the block, so block sums are kept;
    s <= 1 is the largest step that keeps D' in [0, MAX_DARKNESS]. Returns the number of blocks.
    """
    h, w = rgb.shape[0] // block, rgb.shape[1] // block
    act = active[: h * block, : w * block].reshape(h, block, w, block).any(axis=(1, 3))
    bi, bj = np.nonzero(act)
    if len(bi) == 0:
        return 0
    offsets = np.arange(block)
    rows = (bi[:, None] * block + offsets)[:, :, None]
    cols = (bj[:, None] * block + offsets)[:, None, :]
    dark = 255.0 - rgb[rows, cols]  # [n, b, b, 3]
    mean = dark.mean(axis=(1, 2), keepdims=True)
    base = mean + keep * (dark - mean)
    wb = weight[rows, cols]
    delta = strength * (wb - wb.mean(axis=(1, 2), keepdims=True))[..., None] * direction
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(
            delta > 0,
            (MAX_DARKNESS - base) / delta,
            np.where(delta < 0, base / -delta, np.inf),
        )
    step = np.clip(room.min(axis=(1, 2, 3)), 0.0, 1.0)[:, None, None, None]
    rgb[rows, cols] = 255.0 - (base + step * delta)
    return len(bi)


def atypia_weight(
    shape: tuple[int, int], nuclei: Nuclei, index: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Coarse chromatin granules plus one nucleolus per nucleus: (weight, active mask)."""
    cover = np.zeros(shape, np.float32)
    nucleoli = np.zeros(shape, np.float32)
    for i in index:
        x0, y0, c = ellipse_sprite(nuclei.cx[i], nuclei.cy[i], nuclei.a[i], nuclei.b[i],
                                   nuclei.theta[i])  # fmt: skip
        paste_max(cover, x0, y0, c)
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.4) * nuclei.b[i]
        nx = int(nuclei.cx[i] + rad * np.cos(ang))
        ny = int(nuclei.cy[i] + rad * np.sin(ang))
        if 0 <= ny < shape[0] and 0 <= nx < shape[1]:
            nucleoli[ny, nx] = 3.0
    granules = rng.standard_normal(shape).astype(np.float32)
    # Chromatin clumps along the nuclear membrane: darker rim pixels (vesicular nuclei).
    rim = (cover > 0.2) & (cover < 0.9)
    weight = cover * granules + 1.2 * rim + nucleoli
    return weight, cover > 0.2


def _star_sprite(
    x: float, y: float, radius: float, rng: np.random.Generator
) -> tuple[int, int, np.ndarray]:
    """An irregular, spiky nuclear outline (radius modulated by high angular harmonics)."""
    r = int(np.ceil(radius * 1.8)) + 2
    x0, y0 = int(np.floor(x)) - r, int(np.floor(y)) - r
    yy, xx = np.mgrid[y0 : y0 + 2 * r + 1, x0 : x0 + 2 * r + 1].astype(np.float32)
    dx, dy = xx + 0.5 - x, yy + 0.5 - y
    phi = np.arctan2(dy, dx)
    edge = np.full_like(phi, radius)
    for k in (3, 5, 7, 9):
        edge += radius * rng.uniform(0.05, 0.22) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return x0, y0, np.clip(edge - np.hypot(dx, dy) + 0.5, 0.0, 1.0)


def _mitosis_sprite(
    x: float, y: float, length: float, rng: np.random.Generator
) -> tuple[int, int, np.ndarray]:
    """A condensed metaphase-plate-like bar with ragged chromosome arms."""
    r = int(np.ceil(length)) + 3
    x0, y0 = int(np.floor(x)) - r, int(np.floor(y)) - r
    yy, xx = np.mgrid[y0 : y0 + 2 * r + 1, x0 : x0 + 2 * r + 1].astype(np.float32)
    dx, dy = xx + 0.5 - x, yy + 0.5 - y
    t = rng.uniform(0, np.pi)
    u, v = np.cos(t) * dx + np.sin(t) * dy, -np.sin(t) * dx + np.cos(t) * dy
    width = 1.0 + 0.9 * np.abs(np.sin(2.3 * u + rng.uniform(0, np.pi)))
    return x0, y0, np.clip(np.minimum(width - np.abs(v), length - np.abs(u)) + 0.5, 0.0, 1.0)


def carcinoma_weight(
    shape: tuple[int, int], nuclei: Nuclei, index: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pleomorphic spiky nuclei, 1 in 4 a mitosis-like bar: (weight, active mask)."""
    weight = np.zeros(shape, np.float32)
    cover = np.zeros(shape, np.float32)
    for i in index:
        x0, y0, c = ellipse_sprite(nuclei.cx[i], nuclei.cy[i], nuclei.a[i], nuclei.b[i],
                                   nuclei.theta[i])  # fmt: skip
        paste_max(cover, x0, y0, c)
        if rng.uniform() < 0.25:
            x0, y0, s = _mitosis_sprite(nuclei.cx[i], nuclei.cy[i], nuclei.a[i] * 1.1, rng)
        else:
            radius = 0.5 * (nuclei.a[i] + nuclei.b[i]) * rng.uniform(1.0, 1.25)
            x0, y0, s = _star_sprite(nuclei.cx[i], nuclei.cy[i], radius, rng)
        paste_max(weight, x0, y0, s)
        paste_max(cover, x0, y0, s)
    clumps = rng.standard_normal(shape).astype(np.float32)
    return weight * (1.0 + 0.35 * clumps), cover > 0.05


def apply_signal(
    rgb: np.ndarray,
    abnormality: str,
    nuclei: Nuclei,
    index: np.ndarray,
    rng: np.random.Generator,
    direction: np.ndarray,
) -> int:
    """Turn the nuclei `index` abnormal in place; returns the number of blocks changed."""
    if abnormality == "none" or len(index) == 0:
        return 0
    shape = rgb.shape[:2]
    if abnormality == "atypia":
        weight, active = atypia_weight(shape, nuclei, index, rng)
        return redistribute(rgb, weight, active, 2, keep=1.0, strength=70.0, direction=direction)
    if abnormality == "carcinoma":
        weight, active = carcinoma_weight(shape, nuclei, index, rng)
        n = redistribute(rgb, weight, active, 4, keep=0.5, strength=160.0, direction=direction)
        # Hyperchromatic, clumped chromatin on top of the new outlines (1-px granules).
        granules = active * rng.standard_normal(shape).astype(np.float32)
        return n + redistribute(rgb, granules, active, 2, 1.0, 45.0, direction)
    raise ValueError(f"unknown abnormality {abnormality!r}")

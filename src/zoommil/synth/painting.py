"""Paint H&E-like tissue: a tissue blob, fibrous stroma, nuclei and gland-like regions.

Everything here is the *low-magnification* appearance shared by all classes: where tissue is,
where the lesion (crowded, back-to-back glands: the cue that says where to look) and the
ordinary gland regions are, and normal nuclei. The class signal is added afterwards by
`zoommil.synth.abnormal`, which leaves block means intact.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass
class Region:
    """A gland region. The lesion's nuclei carry the slide's class (none for normal slides);
    distractor regions are ordinary glands with normal nuclei in every class."""

    region_id: int
    cx: float
    cy: float
    radius: float
    kind: str  # "lesion" or "distractor"
    abnormality: str  # "none", "atypia" or "carcinoma"


@dataclass
class Nuclei:
    """Nuclei as parallel arrays (level-0 px); `region` is -1 outside gland regions."""

    cx: list[float] = field(default_factory=list)
    cy: list[float] = field(default_factory=list)
    a: list[float] = field(default_factory=list)  # half-axes in px
    b: list[float] = field(default_factory=list)
    theta: list[float] = field(default_factory=list)
    density: list[float] = field(default_factory=list)  # hematoxylin density at the centre
    region: list[int] = field(default_factory=list)
    epithelial: list[bool] = field(default_factory=list)

    def add(
        self,
        cx: float,
        cy: float,
        a: float,
        b: float,
        theta: float,
        density: float,
        region: int = -1,
        epithelial: bool = False,
    ) -> None:
        for name, value in zip(
            ("cx", "cy", "a", "b", "theta", "density", "region", "epithelial"),
            (cx, cy, a, b, theta, density, region, epithelial),
            strict=True,
        ):
            getattr(self, name).append(value)

    def __len__(self) -> int:
        return len(self.cx)


def smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered noise; made at reduced size when sigma is large."""
    step = max(1, int(sigma // 4))
    small = (max(1, shape[0] // step + 1), max(1, shape[1] // step + 1))
    noise = rng.standard_normal(small).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma / step, borderType=cv2.BORDER_REFLECT)
    if step > 1:
        noise = cv2.resize(
            noise, (small[1] * step, small[0] * step), interpolation=cv2.INTER_LINEAR
        )
    noise = noise[: shape[0], : shape[1]]
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def tissue_alpha(shape: tuple[int, int], rng: np.random.Generator, extent: float) -> np.ndarray:
    """A lobed tissue blob (float32 alpha in [0, 1], about 3 px soft edge) on empty glass."""
    h, w = shape
    coarse = 8
    gh, gw = h // coarse + 1, w // coarse + 1
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32) * coarse
    cx = w * (0.5 + rng.uniform(-0.06, 0.06))
    cy = h * (0.5 + rng.uniform(-0.06, 0.06))
    rx, ry = 0.5 * w * extent * rng.uniform(0.85, 1.0), 0.5 * h * extent * rng.uniform(0.85, 1.0)
    phi = np.arctan2((yy - cy) / ry, (xx - cx) / rx)
    dist = np.hypot((xx - cx) / rx, (yy - cy) / ry)
    boundary = np.ones_like(phi)
    for k in range(2, 7):
        boundary += rng.uniform(0.0, 0.12 / k**0.7) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    # Signed distance to the boundary in px (approximately), upsampled to full size.
    signed = (boundary - dist) * min(rx, ry)
    signed += 25.0 * smooth_noise(signed.shape, 3.0, rng)  # ragged edge
    signed = cv2.resize(signed, (gw * coarse, gh * coarse), interpolation=cv2.INTER_LINEAR)
    return np.clip(signed[:h, :w] / 3.0 + 0.5, 0.0, 1.0)


def stroma_eosin(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Eosin density of fibrous stroma: slow variation plus wavy fibres of mixed direction."""
    slow = smooth_noise(shape, 60.0, rng)
    noise = rng.standard_normal(shape).astype(np.float32)
    fibres_x = cv2.GaussianBlur(noise, (0, 0), sigmaX=6.0, sigmaY=1.2)
    fibres_y = cv2.GaussianBlur(noise, (0, 0), sigmaX=1.2, sigmaY=6.0)
    mix = 1.0 / (1.0 + np.exp(-2.0 * smooth_noise(shape, 80.0, rng)))
    fibres = mix * fibres_x + (1.0 - mix) * fibres_y
    fibres /= fibres.std() + 1e-6
    return (0.55 + 0.06 * slow + 0.07 * fibres).astype(np.float32)


def place_regions(
    alpha: np.ndarray,
    rng: np.random.Generator,
    count: int,
    radius_range: tuple[float, float],
    avoid: list[tuple[float, float, float]] | None = None,
) -> list[tuple[float, float, float]]:
    """Centres and radii of `count` gland regions lying well inside the tissue, apart from each
    other and from the regions in `avoid`.

    If they do not fit (small tissue), the radii shrink until they do (down to about 30 px),
    so every slide gets the regions its label needs.
    """
    h, w = alpha.shape
    inside = cv2.erode((alpha > 0.5).astype(np.uint8), np.ones((3, 3), np.uint8))
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    taken: list[tuple[float, float, float]] = list(avoid or [])
    placed: list[tuple[float, float, float]] = []
    low, high = radius_range
    while len(placed) < count and high >= 40:
        for _ in range(400):
            r = rng.uniform(low, high)
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            if dist[int(y), int(x)] < r + 20:
                continue
            if all(np.hypot(x - px, y - py) > r + pr + 60 for px, py, pr in taken + placed):
                placed.append((x, y, r))
                if len(placed) == count:
                    break
        low, high = 0.8 * low, 0.8 * high
    return placed


def add_glands(
    nuclei: Nuclei,
    lumen: np.ndarray,
    cytoplasm: np.ndarray,
    region: tuple[float, float, float],
    region_id: int,
    rng: np.random.Generator,
    crowded: bool = False,
) -> list[tuple[float, float, float]]:
    """Pack gland rings (epithelial nuclei around a pale lumen) into a region; returns glands.

    `crowded` packs small back-to-back glands with narrow lumens (the lesion): at 2.5x it is a
    denser, darker patch of tissue than ordinary glands, whatever the slide's class.
    """
    cx, cy, radius = region
    sizes, gap, tries = ((11.0, 17.0), 1.5, 2500) if crowded else ((18.0, 32.0), 8.0, 600)
    glands: list[tuple[float, float, float]] = []
    placed = np.empty((tries, 3))  # the glands so far as an array: one vectorised test per try
    for _ in range(tries):
        rg = rng.uniform(*sizes)
        ang, rad = rng.uniform(0, 2 * np.pi), radius * np.sqrt(rng.uniform()) - rg
        if rad < 0:
            continue
        gx, gy = cx + rad * np.cos(ang), cy + rad * np.sin(ang)
        x, y, r = placed[: len(glands)].T
        if (np.hypot(gx - x, gy - y) > rg + r + gap).all():
            placed[len(glands)] = gx, gy, rg
            glands.append((gx, gy, rg))
    for gx, gy, rg in glands:
        lumen_r = rg - (15 if rg > 25 else 8 if rg > 14 else 6.5)
        cv2.ellipse(lumen, (int(gx * 4), int(gy * 4)), (int(lumen_r * 4),) * 2, 0, 0, 360, 1.0,
                    -1, cv2.LINE_AA, 2)  # fmt: skip
        cv2.ellipse(cytoplasm, (int(gx * 4), int(gy * 4)), (int((rg + 3) * 4),) * 2, 0, 0, 360,
                    1.0, -1, cv2.LINE_AA, 2)  # fmt: skip
        rings = [rg - 1.5] + ([rg - 8.0] if rg > 25 else [])  # big glands: two layers
        for ring in rings:
            _ring_nuclei(nuclei, gx, gy, ring, region_id, rng)
    return glands


def _ring_nuclei(
    nuclei: Nuclei, gx: float, gy: float, ring: float, region_id: int, rng: np.random.Generator
) -> None:
    """Epithelial nuclei evenly spaced on a circle of radius `ring`."""
    n = int(2 * np.pi * ring / 8.0)
    phase = rng.uniform(0, 2 * np.pi)
    for i in range(n):
        phi = phase + 2 * np.pi * i / n + rng.normal(0, 0.05)
        rr = ring + rng.normal(0, 0.7)
        nuclei.add(
            gx + rr * np.cos(phi),
            gy + rr * np.sin(phi),
            a=rng.uniform(3.6, 4.6),
            b=rng.uniform(2.8, 3.4),
            theta=phi + rng.normal(0, 0.2),
            density=rng.uniform(1.25, 1.5),
            region=region_id,
            epithelial=True,
        )


def _clear_of_glands(
    xs: np.ndarray, ys: np.ndarray, glands: list[tuple[float, float, float]], margin: float
) -> np.ndarray:
    """Points at least `margin` px outside every gland disk."""
    if not glands:
        return np.ones(len(xs), dtype=bool)
    g = np.asarray(glands, dtype=np.float32)
    d = np.hypot(xs[:, None] - g[None, :, 0], ys[:, None] - g[None, :, 1]) - g[None, :, 2]
    return d.min(axis=1) > margin


def _add_lymphocyte(nuclei: Nuclei, x: float, y: float, rng: np.random.Generator) -> None:
    """A small, round, dark nucleus."""
    r = rng.uniform(2.6, 3.2)
    nuclei.add(x, y, r, r * rng.uniform(0.9, 1.0), rng.uniform(0, np.pi), rng.uniform(1.5, 1.8))


def add_stromal_nuclei(
    nuclei: Nuclei,
    alpha: np.ndarray,
    glands: list[tuple[float, float, float]],
    rng: np.random.Generator,
    per_px: float = 1 / 700,
) -> None:
    """Scatter fibroblasts (thin, elongated) and lymphocytes (small, round, dark) in stroma."""
    h, w = alpha.shape
    n = rng.poisson(per_px * float(alpha.sum()))
    xs, ys = rng.uniform(0, w, n), rng.uniform(0, h, n)
    keep = (alpha[ys.astype(int), xs.astype(int)] > 0.5) & _clear_of_glands(xs, ys, glands, 5.0)
    for x, y in zip(xs[keep], ys[keep], strict=True):
        if rng.uniform() < 0.75:
            nuclei.add(x, y, rng.uniform(4.5, 7.0), rng.uniform(1.4, 2.0),
                       rng.uniform(0, np.pi), rng.uniform(1.1, 1.4))  # fmt: skip
        else:
            _add_lymphocyte(nuclei, x, y, rng)


def add_lesion_infiltrate(
    nuclei: Nuclei,
    region: tuple[float, float, float],
    glands: list[tuple[float, float, float]],
    rng: np.random.Generator,
    per_px: float = 1 / 110,
) -> None:
    """Pack lymphocytes into the stroma between the lesion's glands: with the crowded glands
    this makes the lesion a dark, cellular patch at 2.5x (a strong "look here" cue). They are
    not epithelial, so the class signal never touches them."""
    cx, cy, radius = region
    n = rng.poisson(per_px * np.pi * radius**2)
    ang, rad = rng.uniform(0, 2 * np.pi, n), radius * np.sqrt(rng.uniform(0, 1, n))
    xs, ys = cx + rad * np.cos(ang), cy + rad * np.sin(ang)
    keep = _clear_of_glands(xs, ys, glands, 3.0)
    for x, y in zip(xs[keep], ys[keep], strict=True):
        _add_lymphocyte(nuclei, x, y, rng)


def ellipse_sprite(
    x: float, y: float, a: float, b: float, theta: float, pad: int = 2
) -> tuple[int, int, np.ndarray]:
    """Anti-aliased coverage of an ellipse on the pixel grid: (x0, y0, coverage [h, w])."""
    r = int(np.ceil(max(a, b))) + pad
    x0, y0 = int(np.floor(x)) - r, int(np.floor(y)) - r
    grid = np.arange(2 * r + 1, dtype=np.float32)  # a row and a column, broadcast below
    dx, dy = (grid + x0)[None, :] + 0.5 - x, (grid + y0)[:, None] + 0.5 - y
    c, s = np.cos(theta), np.sin(theta)
    u, v = (c * dx + s * dy) / a, (-s * dx + c * dy) / b
    d = np.sqrt(u * u + v * v)
    return x0, y0, np.clip((1.0 - d) * min(a, b) + 0.5, 0.0, 1.0)


def paste_max(canvas: np.ndarray, x0: int, y0: int, sprite: np.ndarray) -> None:
    """canvas[y0:, x0:] = max(canvas, sprite), clipped at the canvas border."""
    h, w = canvas.shape
    sh, sw = sprite.shape
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + sw, w), min(y0 + sh, h)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    view = canvas[cy0:cy1, cx0:cx1]
    np.maximum(view, sprite[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0], out=view)


@functools.cache
def _unit_ramp(n: int) -> np.ndarray:
    """``np.linspace(-1, 1, n)``, made once per sprite size (there are tens of thousands of
    nuclei and a handful of sizes). Read-only, as it is shared."""
    ramp = np.linspace(-1, 1, n)
    ramp.flags.writeable = False
    return ramp


def stamp_nuclei(hematoxylin: np.ndarray, nuclei: Nuclei, rng: np.random.Generator) -> None:
    """Add every nucleus (smooth chromatin, slight density gradient) to the hematoxylin map."""
    for i in range(len(nuclei)):
        x0, y0, cover = ellipse_sprite(nuclei.cx[i], nuclei.cy[i], nuclei.a[i], nuclei.b[i],
                                       nuclei.theta[i])  # fmt: skip
        gy, gx = _unit_ramp(cover.shape[0]), _unit_ramp(cover.shape[1])
        tilt = 1.0 + 0.08 * (rng.uniform(-1, 1) * gx[None, :] + rng.uniform(-1, 1) * gy[:, None])
        paste_max(hematoxylin, x0, y0, (nuclei.density[i] * cover * tilt).astype(np.float32))

"""Render one demo slide: layout (shared by all classes) first, then the class signal."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from zoommil.errors import ZoomMILError
from zoommil.synth import abnormal, painting, stain
from zoommil.synth.painting import Nuclei, Region

# Demo geometry: level 0 is 10x (1 um/px); a 2.5x patch of 256 px covers 1024 level-0 px.
DEMO_MPP = 1.0
DEMO_SIZE = (4096, 3072)  # (width, height) at scale 1: 12 parents of 1024 px at 2.5x
LESION_RADIUS = (400.0, 460.0)  # level-0 px: about 10% of the tissue, one 2.5x parent across
GLAND_RADIUS = (170.0, 250.0)  # the ordinary gland regions (distractors)


@dataclass(frozen=True)
class SlideSpec:
    """Everything that decides a slide's pixels: same spec -> same pixels."""

    slide_id: str
    label: str  # "normal", "atypia" or "carcinoma"
    seed: int
    index: int
    width: int = DEMO_SIZE[0]
    height: int = DEMO_SIZE[1]
    tissue_extent: float = 0.78  # tissue blob diameter as a fraction of the slide


@dataclass
class RenderedSlide:
    """Level-0 RGB pixels and the ground truth that produced them."""

    rgb: np.ndarray  # uint8 [H, W, 3]
    regions: list[Region]
    nuclei: Nuclei
    tissue: np.ndarray  # float32 alpha [H, W]


def _streams(spec: SlideSpec) -> tuple[np.random.Generator, ...]:
    """Independent generators for layout, texture and signal: dropping the signal (for
    controls) leaves the layout and texture untouched."""
    seq = np.random.SeedSequence(entropy=spec.seed, spawn_key=(spec.index,))
    return tuple(np.random.default_rng(s) for s in seq.spawn(3))


def _layout(spec: SlideSpec, rng: np.random.Generator):
    shape = (spec.height, spec.width)
    alpha = painting.tissue_alpha(shape, rng, spec.tissue_extent)
    area = float(alpha.sum())
    count = int(np.clip(round(area / 1.6e6 + rng.uniform(-0.5, 0.5)), 2, 5))
    lesion = painting.place_regions(alpha, rng, 1, LESION_RADIUS)
    if not lesion:
        raise ZoomMILError(f"{spec.slide_id}: slide too small for a lesion")
    centres = lesion + painting.place_regions(alpha, rng, count - 1, GLAND_RADIUS, lesion)
    abnormality = "none" if spec.label == "normal" else spec.label
    regions = [Region(0, *lesion[0], "lesion", abnormality)] + [
        Region(i, x, y, r, "distractor", "none") for i, (x, y, r) in enumerate(centres[1:], 1)
    ]
    # Lumen and cytoplasm maps are drawn at 4x sub-pixel precision by cv2 (shift=2).
    lumen = np.zeros(shape, np.float32)
    cytoplasm = np.zeros(shape, np.float32)
    nuclei = Nuclei()
    glands: list[tuple[float, float, float]] = []
    for region in regions:
        added = painting.add_glands(
            nuclei,
            lumen,
            cytoplasm,
            (region.cx, region.cy, region.radius),
            region.region_id,
            rng,
            crowded=region.kind == "lesion",
        )
        if region.kind == "lesion":
            painting.add_lesion_infiltrate(
                nuclei, (region.cx, region.cy, region.radius), added, rng
            )
        glands += added
    painting.add_stromal_nuclei(nuclei, alpha, glands, rng)
    return alpha, regions, nuclei, lumen, cytoplasm


def render_slide(spec: SlideSpec, with_signal: bool = True) -> RenderedSlide:
    """Paint the slide; `with_signal=False` gives the same slide with all nuclei normal."""
    layout_rng, texture_rng, signal_rng = _streams(spec)
    alpha, regions, nuclei, lumen, cytoplasm = _layout(spec, layout_rng)
    eosin = painting.stroma_eosin(alpha.shape, texture_rng)
    epithelium = cytoplasm * (1.0 - lumen)
    eosin = alpha * (eosin * (1.0 - 0.7 * lumen) + 0.08 * epithelium)
    hematoxylin = 0.12 * epithelium * alpha
    painting.stamp_nuclei(hematoxylin, nuclei, texture_rng)
    hematoxylin *= alpha
    rgb = stain.compose(hematoxylin, eosin)
    if with_signal:
        direction = stain.hematoxylin_darkness()
        region_of = np.asarray(nuclei.region)
        epithelial = np.asarray(nuclei.epithelial, dtype=bool)
        for region in regions:
            index = np.nonzero(epithelial & (region_of == region.region_id))[0]
            abnormal.apply_signal(rgb, region.abnormality, nuclei, index, signal_rng, direction)
    rgb = np.rint(np.clip(rgb, 0.0, 255.0)).astype(np.uint8)
    return RenderedSlide(rgb=rgb, regions=regions, nuclei=nuclei, tissue=alpha)


def region_mask(shape: tuple[int, int], regions: list[Region], kind: str) -> np.ndarray:
    """Boolean mask of the regions of one kind ("lesion"/"distractor"), for tests and probes."""
    mask = np.zeros(shape, np.uint8)
    for r in regions:
        if r.kind == kind:
            cv2.circle(mask, (int(round(r.cx)), int(round(r.cy))), int(r.radius), 1, -1)
    return mask.astype(bool)

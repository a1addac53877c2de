"""The built-in demo dataset (`zoommil synth`): H&E-like pyramidal TIFFs where zooming matters.

Three classes (normal, atypia, carcinoma). Every slide has gland-rich regions, visible at low
magnification, that say *where* to look; in atypia and carcinoma slides some of them carry
abnormal nuclei, the others (and all regions of normal slides) are distractors. The abnormal
nuclei differ from normal ones only inside aligned 2x2 or 4x4 pixel blocks of level 0 (block
sums are kept), so at 2.5x a signal region is pixel-identical to a distractor region and only
the highest magnification (10x, level 0, 1.0 um/px) tells the classes apart.

Paths in `slides.tsv` are relative to the sheet's folder: use `load_slide_sheet`.
"""

from zoommil.synth.dataset import (
    CLASSES,
    DEMO_N_SLIDES,
    load_slide_sheet,
    make_demo_dataset,
    plan_slides,
    resolve_slide_path,
)
from zoommil.synth.render import DEMO_MPP, SlideSpec, region_mask, render_slide

__all__ = [
    "CLASSES",
    "DEMO_MPP",
    "DEMO_N_SLIDES",
    "SlideSpec",
    "load_slide_sheet",
    "make_demo_dataset",
    "plan_slides",
    "region_mask",
    "render_slide",
    "resolve_slide_path",
]

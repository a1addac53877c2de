"""The built-in demo dataset (`zoommil synth`): H&E-like pyramidal TIFFs where zooming matters.

Three classes (normal, atypia, carcinoma). Every slide, in every class, has one lesion (crowded
back-to-back glands with a lymphocyte infiltrate: a dark, cellular patch at low magnification)
and 1-4 ordinary gland regions (distractors). The lesion says *where* to look; its nuclei say
*what* the slide is: normal in normal slides, abnormal in atypia and carcinoma slides. The
abnormal nuclei differ from normal ones only inside aligned 2x2 or 4x4 pixel blocks of level 0
(block sums are kept), so at 2.5x an atypia or carcinoma lesion is pixel-identical to a normal
one and only the highest magnification (10x, level 0, 1.0 um/px) tells the classes apart.

Paths in `slides.tsv` are relative to the sheet's folder: read it with
`zoommil.io.sheet.read_sheet`, which resolves them.
"""

from zoommil.synth.dataset import (
    CLASSES,
    DEMO_N_SLIDES,
    make_demo_dataset,
    plan_slides,
)
from zoommil.synth.render import DEMO_MPP, SlideSpec, region_mask, render_slide

__all__ = [
    "CLASSES",
    "DEMO_MPP",
    "DEMO_N_SLIDES",
    "SlideSpec",
    "make_demo_dataset",
    "plan_slides",
    "region_mask",
    "render_slide",
]

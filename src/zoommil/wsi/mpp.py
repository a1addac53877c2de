"""The plausible level-0 resolution range, in one place (inspect, --mpp, the sheet schema).

0.05-5.0 um/px spans everything a slide scanner stores at level 0, from 0.08 um/px (100x oil
scans) to real low-magnification scans such as DICOM levels at ~2-4 um/px (2.5-5x). What it
still refuses are placeholders: a 72-dpi TIFF default reads as 352.8 um/px (inch) and a
resolution of 1 pixel per centimetre as 10000 um/px. DESIGN.md's original 0.1-2.0 refused a
real 2.004 um/px DICOM level.
"""

from __future__ import annotations

import math

MPP_MIN = 0.05
MPP_MAX = 5.0
MPP_RANGE_TEXT = f"{MPP_MIN}-{MPP_MAX} um/px"


def plausible_mpp(mpp: float) -> bool:
    """Whether ``mpp`` (um/px) is a level-0 resolution a real scan can have."""
    return math.isfinite(mpp) and MPP_MIN <= mpp <= MPP_MAX


#: A given mpp (--mpp, a sheet's mpp) further than this (relative) from a plausible metadata
#: value is said: predicting a cohort with --mpp for one slide without metadata silently
#: rescaled the others (review A), and a sheet mpp the metadata outranks was dropped unsaid.
DIFFERENT_MPP_RELATIVE = 0.05


def differs_from_metadata(given: float, metadata: float) -> bool:
    """Whether a given mpp differs from the metadata's by more than `DIFFERENT_MPP_RELATIVE`."""
    return abs(float(given) - float(metadata)) > DIFFERENT_MPP_RELATIVE * float(metadata)

"""A slide's level-0 resolution (microns per pixel, mpp) and where it came from.

mpp resolution (`resolve_mpp`), first plausible value wins:

1. an explicit override (``--mpp``): the user's word beats metadata, because metadata is the
   thing that is wrong when a user bothers to give one (e.g. a 72-dpi placeholder);
2. ``openslide.mpp-x`` (OpenSlide's own normalisation of the vendor metadata);
3. vendor keys OpenSlide does not normalise (``aperio.MPP``, MIRAX, Hamamatsu, and the
   ``PhysicalSizeX`` of an OME-TIFF's OME-XML, which bfconvert and QuPath exports carry
   without TIFF resolution tags);
4. the TIFF resolution tags (``tiff.XResolution`` with its unit, centimetre or inch);
5. the objective power (``openslide.objective-power`` / ``aperio.AppMag``): mpp = 10 / power;
6. a default (``--default-mpp``: in the workflow the sheet's mpp column, else the config's
   ``default_mpp``), used only when metadata gives nothing plausible, with a warning.

Values outside 0.05-5.0 um/px (`zoommil.wsi.mpp`) are never used: a metadata value out of
range is skipped (and reported), an explicit value out of range is an error. The source is
recorded as e.g. ``"openslide.mpp-x"``, ``"objective-power"``, ``"override"`` or ``"default"``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openslide

from zoommil.errors import SlideCheckError
from zoommil.wsi.mpp import MPP_RANGE_TEXT, differs_from_metadata, plausible_mpp

log = logging.getLogger(__name__)

#: Every command that opens a slide takes --mpp (inspect, tissue, tile, features, predict);
#: inspect, tissue, tile and predict take --default-mpp; profile reads the sheet's mpp column.
MPP_FLAG_COMMANDS = ("inspect", "tissue", "tile", "features", "predict")
DEFAULT_MPP_FLAG_COMMANDS = ("inspect", "tissue", "tile", "predict")
HOW_TO_SUPPLY_MPP = (
    "supply one, e.g. 0.5 for a 20x scan: in the workflow in the sheet's mpp column (profile "
    "reads it too), or the config's default_mpp for every slide without one; on the command line "
    "with --mpp X (it applies to every slide of the command), or --default-mpp X in inspect, "
    "tissue, tile and predict (used only where the metadata has none: a mixed cohort in one "
    "run)"
)


def metadata_float(value: Any) -> float | None:
    """A metadata value as a finite positive number, else None."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


#: OME-XML's first Pixels element (any namespace prefix) and a quoted attribute of it.
_OME_PIXELS = re.compile(r"<(?:\w+:)?Pixels\b[^>]*>", re.DOTALL)
#: OME's length units, in um (its default unit is um).
_OME_UNITS_UM = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def ome_mpp(description: Any) -> float | None:
    """um/px of an OME-XML image description (its first image's ``PhysicalSizeX`` in
    ``PhysicalSizeXUnit``), else None."""
    if not isinstance(description, str) or "<OME" not in description[:2000]:
        return None
    pixels = _OME_PIXELS.search(description)
    if pixels is None:
        return None
    attrs = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', pixels.group(0)))
    size = metadata_float(attrs.get("PhysicalSizeX"))
    scale = _OME_UNITS_UM.get(attrs.get("PhysicalSizeXUnit", "µm").strip())
    return size * scale if size is not None and scale is not None else None


def mpp_candidates(slide: openslide.OpenSlide) -> list[tuple[str, float]]:
    """Every mpp the metadata suggests, in order of trust (plausible or not)."""
    props = slide.properties
    out: list[tuple[str, float]] = []

    def add(source: str, value: float | None) -> None:
        if value is not None:
            out.append((source, value))

    add("openslide.mpp-x", metadata_float(props.get("openslide.mpp-x")))
    add("aperio.MPP", metadata_float(props.get("aperio.MPP")))
    add(
        "mirax.MICROMETER_PER_PIXEL_X",
        metadata_float(props.get("mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X")),
    )
    # Hamamatsu VMS/VMU: physical width in nm over the width in pixels.
    phys = metadata_float(props.get("hamamatsu.PhysicalWidth"))
    if phys is not None:
        add("hamamatsu.PhysicalWidth", phys / 1000.0 / slide.dimensions[0])
    add("ome.PhysicalSizeX", ome_mpp(props.get("tiff.ImageDescription")))
    xres = metadata_float(props.get("tiff.XResolution"))
    if xres is not None:
        unit = str(props.get("tiff.ResolutionUnit", "inch")).lower()
        per = {"centimeter": 1e4, "centimetre": 1e4, "inch": 25400.0}.get(unit)
        if per is not None:
            add(f"tiff.XResolution ({unit})", per / xres)
    for key in ("openslide.objective-power", "aperio.AppMag"):
        power = metadata_float(props.get(key))
        if power is not None:
            add(f"objective-power ({key})", 10.0 / power)
            break
    return out


def _warn_if_overriding(path: str | Path, mpp: float, candidates: list[tuple[str, float]]) -> None:
    """Say so when --mpp replaces a plausible metadata value it differs from (> 5%)."""
    for source, value in candidates:
        if plausible_mpp(value):
            if differs_from_metadata(mpp, value):
                log.warning(
                    "%s: --mpp %.4g overrides the metadata's %.4g um/px (%s)",
                    path,
                    mpp,
                    value,
                    source,
                )
            return


def resolve_mpp_details(
    slide: openslide.OpenSlide,
    path: str | Path,
    mpp_override: float | None = None,
    default_mpp: float | None = None,
) -> dict[str, Any]:
    """`resolve_mpp` plus the candidates it saw and rejected (for `inspect` and provenance)."""
    candidates = mpp_candidates(slide)
    rejected = [(s, v) for s, v in candidates if not plausible_mpp(v)]
    info: dict[str, Any] = {
        "candidates": [{"source": s, "mpp": v} for s, v in candidates],
        "rejected": [{"source": s, "mpp": v} for s, v in rejected],
    }
    if mpp_override is not None:
        if not plausible_mpp(float(mpp_override)):
            raise SlideCheckError(
                path,
                "implausible_mpp",
                f"--mpp {mpp_override} is outside the plausible range {MPP_RANGE_TEXT}",
            )
        _warn_if_overriding(path, float(mpp_override), candidates)
        return {**info, "mpp": float(mpp_override), "source": "override"}
    for source, value in candidates:
        if plausible_mpp(value):
            _warn_if_anisotropic(slide, path, value)
            note = _metadata_note(source, value)
            if note:
                log.warning("%s: %s", path, note)
            return {**info, "mpp": value, "source": source, "note": note}
    if default_mpp is not None:
        if not plausible_mpp(float(default_mpp)):
            raise SlideCheckError(
                path,
                "implausible_mpp",
                f"default mpp {default_mpp} is outside the plausible range {MPP_RANGE_TEXT}",
            )
        log.warning(
            "%s: no usable mpp in the metadata%s; using the default %.4g um/px",
            path,
            _rejected_text(rejected),
            default_mpp,
        )
        return {**info, "mpp": float(default_mpp), "source": "default"}
    if rejected:
        raise SlideCheckError(
            path,
            "implausible_mpp",
            f"implausible resolution in the metadata{_rejected_text(rejected)}, outside "
            f"{MPP_RANGE_TEXT}; {HOW_TO_SUPPLY_MPP}",
        )
    raise SlideCheckError(
        path,
        "no_mpp",
        f"no resolution (mpp) or objective power in the slide metadata; {HOW_TO_SUPPLY_MPP}",
    )


#: The level-0 um/px that scanners sold as "40x" have (Leica GT450 0.2627, Hamamatsu
#: 0.2265, Aperio AT2 0.2527): 10 / objective power is only an estimate within this range.
FORTY_X_RANGE_TEXT = "0.22-0.27 um/px"
SET_OVERRIDE = "give the slide's true pixel size as the sheet's mpp_override (or --mpp)"


def _metadata_note(source: str, mpp: float) -> str | None:
    """Why an mpp taken from the metadata may be wrong, for the QC table and the log: it was
    estimated from the objective power. None otherwise."""
    if source.startswith("objective-power"):
        return (
            f"mpp {mpp:.4g} is estimated from the objective power ({source}): scanners' pixel "
            f"sizes at one nominal power differ by up to ~16% (40x: {FORTY_X_RANGE_TEXT}); "
            f"where it is known, {SET_OVERRIDE}"
        )
    return None


#: Relative difference of openslide.mpp-y from the mpp used above which a slide is flagged.
ANISOTROPY_TOLERANCE = 0.02


def _warn_if_anisotropic(slide: openslide.OpenSlide, path: str | Path, mpp: float) -> None:
    """Warn when the pixels are not square: the lattice uses one mpp for both axes, so its
    patches would cover non-square tissue and the mask would be squashed."""
    mpp_y = metadata_float(slide.properties.get("openslide.mpp-y"))
    if mpp_y is not None and abs(mpp_y / mpp - 1.0) > ANISOTROPY_TOLERANCE:
        log.warning(
            "%s: pixels are not square (mpp-y %.4g vs %.4g um/px); patches cover %.3g times "
            "more tissue down than across",
            path,
            mpp_y,
            mpp,
            mpp_y / mpp,
        )


def _rejected_text(rejected: Sequence[tuple[str, float]]) -> str:
    if not rejected:
        return ""
    return " (" + ", ".join(f"{s} = {v:.4g} um/px" for s, v in rejected) + ")"


def resolve_mpp(
    slide: openslide.OpenSlide,
    path: str | Path,
    mpp_override: float | None = None,
    default_mpp: float | None = None,
) -> tuple[float, str]:
    """Level-0 microns per pixel and where it came from (see the module docstring)."""
    info = resolve_mpp_details(slide, path, mpp_override, default_mpp)
    return info["mpp"], info["source"]

"""Tissue masks at about 1.25x (8 um/px): the paper's Gaussian detector and a CLAM-like Otsu.

``gaussian`` re-implements (clean-room, from the published description) the tissue detector
that ZoomMIL's preprocessing uses: whiten low-saturation background (Otsu on HSV saturation),
then repeatedly blur the inverted gray image, Otsu-threshold it, take the largest connected
component, dilate it, and accept it as tissue while its mean gray value is darker than the
background value; each accepted component is painted white before the next round ("peeling").

``otsu`` is the usual CLAM-style alternative: median-blurred saturation, Otsu (with a floor so
a blank slide stays blank), morphological closing, removal of small objects.

Masks are boolean arrays covering the whole slide: mask pixel (i, j) covers level-0 pixels
``[j * W0 / w, (j + 1) * W0 / w) x [i * H0 / h, (i + 1) * H0 / h)``. PNG masks carry their
mpp, method and parameters in PNG text chunks (``zoommil.*``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openslide
from PIL import Image, PngImagePlugin

from zoommil.errors import SlideError, ZoomMILError, first_few
from zoommil.io.atomic import atomic_path
from zoommil.recipe import TISSUE_METHODS, TISSUE_PARAMS, default, tissue_params
from zoommil.wsi.pixels import read_thumbnail_at_mpp
from zoommil.wsi.slide import check_brightfield, open_with_mpp

log = logging.getLogger(__name__)

#: Physical resolution of tissue masks (um/px): 1.25x, as in the paper's presets.
MASK_MPP = 8.0

METHODS = TISSUE_METHODS
DEFAULT_METHOD: str = default("tissue_method")

#: Each detector's parameters and defaults (kept with the recipe, which checks them).
DEFAULT_PARAMS: dict[str, dict[str, Any]] = TISSUE_PARAMS

#: Each detector's output version, raised whenever a change makes its masks differ for the
#: same slide and settings (gaussian 2: scikit-image's float Otsu and the RGB stop test of the
#: published code). Masks, coords and feature files record it, and so do checkpoints:
#: `zoommil predict` warns when this version detects tissue otherwise than the detector the
#: training features were made with (an upgrade that changed the masks).
DETECTOR_VERSIONS: dict[str, int] = {"gaussian": 2, "otsu": 1}


def method_params(method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults of ``method`` updated by ``params``; an unknown name or a value the detector
    cannot take is a one-line `ZoomMILError` (`zoommil.recipe.tissue_params`)."""
    return tissue_params(method, params)


def parse_param_args(items: list[str] | None) -> dict[str, Any]:
    """``["sigma=10", "prewhiten=false"]`` -> ``{"sigma": 10.0, "prewhiten": False}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ZoomMILError(f"tissue parameter {item!r} is not of the form NAME=VALUE")
        name, value = item.split("=", 1)
        low = value.strip().lower()
        if low in ("true", "yes", "on"):
            out[name.strip()] = True
        elif low in ("false", "no", "off"):
            out[name.strip()] = False
        else:
            try:
                out[name.strip()] = float(value)
            except ValueError:
                raise ZoomMILError(f"tissue parameter {item!r}: value is not a number") from None
    return out


# --------------------------------------------------------------------------- detectors


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of uint8-ranged values (a plain histogram implementation)."""
    if np.size(values) == 0:
        return 0.0
    return _otsu_of_histogram(_histogram(values))


#: cv2.calcHist counts in float32: exact below 2^24 values per bin, so larger arrays (a
#: mask of more than 16 million pixels, far past any slide at 8 um/px) take NumPy's path.
_CALCHIST_MAX = 2**24


def _histogram(values: np.ndarray) -> np.ndarray:
    """256-bin histogram of the values' integer parts, clipped to 0..255 (what Otsu counts)."""
    values = np.asarray(values)
    if values.dtype == np.uint8 and values.size < _CALCHIST_MAX:
        return _calchist(values)
    clipped = np.clip(values.ravel(), 0, 255)
    return np.bincount(clipped.astype(np.uint8), minlength=256)


def _calchist(values: np.ndarray) -> np.ndarray:
    """OpenCV's histogram of uint8 values, or of float32 values in bins [k, k + 1) for
    k = 0..255 (values outside [0, 256) are not counted): 5-10x NumPy's clip and bincount,
    which was a fifth of the detector's time on a 40x slide."""
    if values.size == 0:
        return np.zeros(256, dtype=np.int64)
    hist = cv2.calcHist([_as_image(values)], [0], None, [256], [0, 256])
    return hist.ravel().astype(np.int64)


def _as_image(values: np.ndarray) -> np.ndarray:
    """A contiguous 2-D array of ``values`` (1-D or 2-D, not empty), as OpenCV takes it."""
    return np.ascontiguousarray(values).reshape(-1, values.shape[-1] if values.ndim > 1 else 1)


def _otsu_of_histogram(hist: np.ndarray) -> float:
    """Otsu threshold from the 256-bin histogram of the values' integer parts."""
    hist = np.asarray(hist).astype(np.float64)
    prob = hist / hist.sum()
    omega = np.cumsum(prob)
    mu = np.cumsum(prob * np.arange(256))
    mu_t = mu[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_t * omega - mu) ** 2 / (omega * (1.0 - omega))
    between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
    return float(np.argmax(between))


def _otsu_of_positive(values: np.ndarray) -> float | None:
    """Otsu threshold of the positive ``values`` as scikit-image's ``threshold_otsu`` computes
    it for floats, which is the published detector's call on its blurred image: 256 bins over
    the values' own range, the threshold the centre of the bin that best splits them (None
    when no value is positive).

    Why not the integer bins of `_otsu`: once the tissue is peeled, what is left of the blur
    is its faint tail, mostly below 1; integer bins put it all in bin 0, the threshold fell to
    0, and each later round took the blur's whole reach, hundreds of um of glass around a few
    specks, as one more region (7.5% of the kept 10x parents of a 40x mosaic were glass).
    """
    positive = values[values > 0]
    if positive.size == 0:
        return None
    lo, hi = float(positive.min()), float(positive.max())
    if lo == hi:
        return lo
    counts, edges = np.histogram(positive, bins=256, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    counts = counts.astype(np.float64)
    below, above = np.cumsum(counts), np.cumsum(counts[::-1])[::-1]
    mean_below = np.cumsum(counts * centres) / below
    mean_above = (np.cumsum((counts * centres)[::-1]) / above[::-1])[::-1]
    between = below[:-1] * above[1:] * (mean_below[:-1] - mean_above[1:]) ** 2
    return float(centres[int(np.argmax(between))])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (0-255) of an RGB uint8 image: what both detectors threshold, and what
    predict's glass check on a small slide compares with their ``min_saturation`` floor."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean mask: labels 1..n in raster order, 0 = background.

    The same labels as ``scipy.ndimage.label`` (tested), from OpenCV, which this module
    imports anyway: importing SciPy's ndimage cost ~0.45 s in every tissue, tile, predict
    and profile process.
    """
    n, labels = cv2.connectedComponents(
        np.ascontiguousarray(mask, dtype=np.uint8), connectivity=4, ltype=cv2.CV_32S
    )
    return labels, n - 1


def label_components_with_stats(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """`label_components` plus each label's bounding box and area: OpenCV's ``stats`` rows
    (x, y, width, height, area), row 0 the background."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(mask, dtype=np.uint8), connectivity=4, ltype=cv2.CV_32S
    )
    return labels, n - 1, stats


def gaussian_tissue_mask(
    rgb: np.ndarray,
    sigma: float = 20.0,
    kernel_size: int = 20,
    min_size: int = 10,
    background_gray: int = 228,
    prewhiten: bool = True,
    max_regions: int = 100,
    min_saturation: int = 8,
) -> np.ndarray:
    """The paper's detector: blur + Otsu + largest-component peeling (see module docstring)."""
    img = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8).copy()
    if prewhiten:
        sat = saturation(img)
        thr = max(_otsu(sat), float(min_saturation))
        _whiten(img, sat < thr)
    # The published detector blurs 255 - BGR2GRAY of the RGB image (R and B weights swapped),
    # but tests each region against RGB2GRAY of the image before peeling: both kept.
    gray_ref = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    mask = np.zeros(img.shape[:2], dtype=bool)
    kernel = np.ones((max(1, int(kernel_size)),) * 2, dtype=np.uint8)
    inv = 255.0 - cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    blurred = _blur(inv, sigma)
    height, width = mask.shape
    for _ in range(int(max_regions)):
        thr = _otsu_of_positive(blurred)
        if thr is None:
            break
        labels, n, stats = label_components_with_stats(blurred >= thr)
        if n == 0:
            break
        sizes = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
        sizes[0] = 0
        sizes[sizes < min_size] = 0
        if sizes.max() == 0:
            break
        best = int(np.argmax(sizes))
        # the component and its dilation lie in its bounding box grown by the kernel: work
        # there, not on the whole thumbnail (the same pixels, so the same result)
        x, y, w, h = (int(v) for v in stats[best, :4])
        grow = kernel.shape[0] + 1
        y0, y1 = max(0, y - grow), min(height, y + h + grow)
        x0, x1 = max(0, x - grow), min(width, x + w + grow)
        window = (slice(y0, y1), slice(x0, x1))
        region = (labels[window] == best).astype(np.uint8)
        region = cv2.dilate(region, kernel).astype(bool)
        grey = gray_ref[window][region]
        grey = grey[grey > 0]  # as published: black pixels do not count
        if grey.size == 0 or float(grey.mean()) >= background_gray:
            break
        mask[window] |= region
        _whiten(img[window], region)
        rows = np.flatnonzero(region.any(axis=1))
        cols = np.flatnonzero(region.any(axis=0))
        changed = (
            slice(y0 + int(rows[0]), y0 + int(rows[-1]) + 1),
            slice(x0 + int(cols[0]), x0 + int(cols[-1]) + 1),
        )
        _reblur_window(img, inv, blurred, changed, sigma)
    return mask


def _whiten(img: np.ndarray, where: np.ndarray) -> None:
    """``img[where] = 255`` in place (an RGB image or a view of one): OpenCV's masked OR is
    ~30x NumPy's boolean assignment, which was a tenth of the detector's time."""
    white = cv2.bitwise_or(img, (255, 255, 255, 0), dst=img, mask=where.view(np.uint8))
    img[...] = white  # a no-op copy where OpenCV wrote into ``img`` itself


def _blur(inv: np.ndarray, sigma: float) -> np.ndarray:
    """The detector's blur: Gaussian, float32, the border replicated (as published)."""
    return cv2.GaussianBlur(inv, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REPLICATE)


#: A partial re-blur's input starts and ends on a multiple of this many columns (or at the
#: image's edge). OpenCV's filters run vector loops along each row with a scalar tail, and the
#: two may round the last bit differently; aligned, every pixel falls in the same kind of
#: loop as in the whole-image blur (64 floats: four AVX-512 vectors). Tested bit for bit.
_BLUR_ALIGN = 64


def _reblur_window(
    img: np.ndarray,
    inv: np.ndarray,
    blurred: np.ndarray,
    changed: tuple[slice, slice],
    sigma: float,
) -> None:
    """Update ``inv`` and ``blurred`` in place after the pixels of ``img`` in the rectangle
    ``changed`` (rows, cols) changed.

    Why: blurring the whole thumbnail once per peeled region was most of the detector's time
    on a large slide. The blur reaches ``reach`` pixels, so only the rectangle grown by it
    moves, and the input grown by that margin again gives exactly the whole-image result
    there: the rows of a band are filtered the same way whatever the band, and the columns
    too where the band's columns are aligned (``_BLUR_ALIGN``).
    """
    height, width = inv.shape
    reach = int(4.0 * float(sigma)) + 2  # OpenCV's float kernel: 2 * round(4 sigma) + 1 taps
    rows, cols = changed
    inv[rows, cols] = 255.0 - cv2.cvtColor(img[rows, cols], cv2.COLOR_BGR2GRAY).astype(np.float32)
    lo, hi = max(0, rows.start - reach), min(height, rows.stop + reach)
    top, bottom = max(0, lo - reach), min(height, hi + reach)
    first, last = max(0, cols.start - reach), min(width, cols.stop + reach)
    left = max(0, first - reach) // _BLUR_ALIGN * _BLUR_ALIGN
    right = min(width, last + reach)
    if right < width:
        right = min(width, left + -(-(right - left) // _BLUR_ALIGN) * _BLUR_ALIGN)
    out = (slice(lo, hi), slice(first, last))
    band = _blur(inv[top:bottom, left:right], sigma)[
        lo - top : hi - top, first - left : last - left
    ]
    blurred[out] = band


def otsu_tissue_mask(
    rgb: np.ndarray,
    mask_mpp: float = MASK_MPP,
    median_kernel: int = 7,
    min_saturation: int = 8,
    close_kernel: int = 4,
    min_area_um2: float = 50000.0,
) -> np.ndarray:
    """CLAM-like: median-blurred HSV saturation, Otsu, closing, small-object removal."""
    sat = saturation(np.ascontiguousarray(rgb[..., :3], dtype=np.uint8))
    k = int(median_kernel) | 1
    if k > 1:
        sat = cv2.medianBlur(sat, k)
    thr = max(_otsu(sat), float(min_saturation))
    mask = (sat > thr).astype(np.uint8)
    if close_kernel > 0:
        kernel = np.ones((int(close_kernel),) * 2, dtype=np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    min_px = min_area_um2 / (mask_mpp * mask_mpp)
    labels, n = label_components(mask)
    if n:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_px
        keep[0] = False
        return keep[labels]
    return mask.astype(bool)


def detect_tissue(
    rgb: np.ndarray, method: str = DEFAULT_METHOD, mask_mpp: float = MASK_MPP, **params: Any
) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail taken at ``mask_mpp`` um/px."""
    merged = method_params(method, params)
    if method == "gaussian":
        return gaussian_tissue_mask(rgb, **merged)
    return otsu_tissue_mask(rgb, mask_mpp=mask_mpp, **merged)


# --------------------------------------------------------------------------- slides


# Said with an empty mask: the Gaussian detector tests each region's mean grey after a 160 um
# dilation, so a fragment alone on glass under ~0.5 mm across (a 300 um square) is mostly glass
# by then and is dropped; Otsu keeps any component above min_area_um2.
EMPTY_HINTS = {
    "gaussian": (
        " (it misses fragments alone on glass under ~0.5 mm across: `--method otsu`, "
        "tissue.method: otsu in the workflow, finds them)"
    ),
    "otsu": "",
}


def tissue_mask_from_slide(
    slide: openslide.OpenSlide,
    mpp0: float,
    method: str = DEFAULT_METHOD,
    params: Mapping[str, Any] | None = None,
    mask_mpp: float = MASK_MPP,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Mask of an open slide: ``(mask, mask_mpp, thumbnail)``.

    The thumbnail is read at ``mask_mpp`` from the coarsest sufficient level; a slide coarser
    than that is masked at its own mpp (never upsampled), which the returned mpp says. A
    dark-background (fluorescence) slide raises `SlideError` rather than being called tissue
    everywhere.
    """
    merged = method_params(method, params)
    eff_mpp = max(mask_mpp, mpp0)
    path = getattr(slide, "_filename", "slide")
    try:
        thumb = read_thumbnail_at_mpp(slide, mpp0, eff_mpp)
    except openslide.OpenSlideError as error:
        reason = f"cannot read the thumbnail for tissue detection ({error})"
        raise SlideError(path, reason) from None
    check_brightfield(thumb, path)
    return detect_tissue(thumb, method, mask_mpp=eff_mpp, **merged), eff_mpp, thumb


def tissue_mask_for_slide(
    path: str | Path,
    mpp: float | None = None,
    method: str = DEFAULT_METHOD,
    params: Mapping[str, Any] | None = None,
    default_mpp: float | None = None,
    mask_mpp: float = MASK_MPP,
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Mask of a whole slide file at ``mask_mpp``: ``(mask, mask_mpp, info)``.

    ``info`` holds the thumbnail (``"thumbnail"``), the slide's mpp and its source, the
    level-0 dimensions and the merged parameters, so callers can write provenance and overlays.
    An empty mask is a result, not an error (it is logged as a warning).
    """
    merged = method_params(method, params)
    for attempt in range(2):  # a read error is retried once on a fresh handle
        slide, mpp0, source = open_with_mpp(path, mpp, default_mpp)
        try:
            mask, eff_mpp, thumb = tissue_mask_from_slide(slide, mpp0, method, merged, mask_mpp)
            dims = (int(slide.dimensions[0]), int(slide.dimensions[1]))
            break
        except SlideError as error:
            if attempt or "cannot read" not in error.reason:
                raise
            log.warning("%s: %s; retrying once", path, error.reason)
        finally:
            slide.close()
    if not mask.any():
        hint = EMPTY_HINTS.get(method, "")
        log.warning("%s: no tissue found by the %s detector%s", path, method, hint)
    info = {
        "thumbnail": thumb,
        "slide_mpp": mpp0,
        "mpp_source": source,
        "dimensions": dims,
        "method": method,
        "params": merged,
    }
    return mask, eff_mpp, info


def mask_metadata(
    mask_mpp: float, method: str, params: Mapping[str, Any], info: Mapping[str, Any]
) -> dict[str, str]:
    """Text chunks stored in the mask PNG (everything needed to reuse the mask)."""
    return {
        "zoommil.mask_mpp": repr(float(mask_mpp)),
        "zoommil.method": method,
        "zoommil.version": str(DETECTOR_VERSIONS[method]),
        "zoommil.params": json.dumps(dict(params), sort_keys=True),
        "zoommil.slide_mpp": repr(float(info["slide_mpp"])),
        "zoommil.mpp_source": str(info["mpp_source"]),
        "zoommil.dimensions": json.dumps(list(info["dimensions"])),
    }


def _atomic_save(image: Image.Image, path: Path, **kwargs: Any) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, **kwargs)


def save_mask(path: str | Path, mask: np.ndarray, metadata: Mapping[str, str]) -> Path:
    """Write a mask as an 8-bit PNG (tissue = 255) with its metadata as text chunks."""
    path = Path(path)
    pnginfo = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        pnginfo.add_text(key, value)
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")
    _atomic_save(image, path, format="PNG", pnginfo=pnginfo)
    return path


#: Image modes of a mask brought without zoommil metadata: one channel (bilevel, 8 or 16 bit).
_MASK_MODES = ("1", "L", "I;16", "I")


def _binary_mask(path: Path, image: Image.Image) -> np.ndarray:
    """A mask made elsewhere: one channel holding only 0 and 255 (or 0 and 1); tissue is
    non-zero. Anything else (the RGB ``*.overlay.jpg``, a greyscale photo) is refused: read
    as grey > 127, the overlay's white background passed for tissue."""
    if image.mode not in _MASK_MODES:
        bands = len(image.getbands())
        raise ZoomMILError(
            f"{path}: not a tissue mask: a {bands}-channel {image.mode} image; a mask has one "
            "channel, tissue 255 (or 1) and background 0 (the mask PNG of 'zoommil tissue', "
            "not its overlay)"
        )
    arr = np.asarray(image.convert("L") if image.mode == "1" else image)
    values = np.unique(arr)
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        raise ZoomMILError(
            f"{path}: not a tissue mask: {len(values)} distinct values ({first_few(values)}); "
            "a mask holds only 0 (background) and 255 or 1 (tissue)"
        )
    return arr > 0


def load_mask(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a mask PNG: ``(bool mask, metadata)``; metadata values decoded where possible.

    A mask of `save_mask` (zoommil metadata) is tissue where grey > 127; any other image must
    be a binary single-channel mask (`_binary_mask`)."""
    path = Path(path)
    if not path.exists():
        raise ZoomMILError(f"{path}: tissue mask not found")
    try:
        with Image.open(path) as image:
            image.load()
            text = dict(getattr(image, "text", {}) or {})
            if any(key.startswith("zoommil.") for key in text):
                mask = np.asarray(image.convert("L")) > 127
            else:
                mask = _binary_mask(path, image)
    except OSError as error:
        raise ZoomMILError(f"{path}: cannot read tissue mask ({error})") from error
    meta: dict[str, Any] = {}
    for key, value in text.items():
        if not key.startswith("zoommil."):
            continue
        name = key[len("zoommil.") :]
        try:
            meta[name] = json.loads(value)
        except json.JSONDecodeError:
            meta[name] = value
    return mask, meta


def overlay_image(thumb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Thumbnail with tissue tinted green and its outline drawn, for a person to check."""
    if mask.shape != thumb.shape[:2]:
        mask = cv2.resize(
            mask.astype(np.uint8), thumb.shape[1::-1], interpolation=cv2.INTER_NEAREST
        ).astype(bool)
    out = thumb.astype(np.float32)
    green = np.array([0, 200, 0], dtype=np.float32)
    out[mask] = 0.7 * out[mask] + 0.3 * green
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(out, contours, -1, (0, 160, 0), 1)
    return out


#: The overlay's image formats by suffix (`save_overlay`; `zoommil tissue --overlay` refuses
#: any other, which was written as a PNG whatever its name).
OVERLAY_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def save_overlay(path: str | Path, thumb: np.ndarray, mask: np.ndarray) -> Path:
    """Write the QC overlay (PNG or JPEG by suffix, `OVERLAY_FORMATS`)."""
    path = Path(path)
    image = Image.fromarray(overlay_image(thumb, mask))
    fmt = OVERLAY_FORMATS.get(path.suffix.lower(), "PNG")
    _atomic_save(image, path, format=fmt)
    return path


def default_overlay_path(mask_path: str | Path) -> Path:
    """``MASK.png`` -> ``MASK.overlay.jpg`` (next to the mask)."""
    mask_path = Path(mask_path)
    return mask_path.with_name(f"{mask_path.stem}.overlay.jpg")

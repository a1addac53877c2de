"""Open whole-slide images, resolve their resolution (mpp), and read regions.

Everything downstream (tissue masks, the lattice, features, zoom inference) works in level-0
pixels and microns per pixel, so this module is the only place that knows about pyramid levels.

mpp resolution (`resolve_mpp`), first plausible value wins:

1. an explicit override (``--mpp``): the user's word beats metadata, because metadata is the
   thing that is wrong when a user bothers to give one (e.g. a 72-dpi placeholder);
2. ``openslide.mpp-x`` (OpenSlide's own normalisation of the vendor metadata);
3. vendor keys OpenSlide does not normalise (``aperio.MPP``, MIRAX, Hamamatsu);
4. the TIFF resolution tags (``tiff.XResolution`` with its unit, centimetre or inch);
5. the objective power (``openslide.objective-power`` / ``aperio.AppMag``): mpp = 10 / power;
6. a default (``--default-mpp``: in the workflow the sheet's mpp column, else the config's
   ``default_mpp``), used only when metadata gives nothing plausible, with a warning.

Values outside 0.05-5.0 um/px (`zoommil.wsi.mpp`) are never used: a metadata value out of
range is skipped (and reported), an explicit value out of range is an error. The source is
recorded as e.g. ``"openslide.mpp-x"``, ``"objective-power"``, ``"override"`` or ``"default"``.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import sys
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openslide
import openslide.lowlevel

from zoommil.errors import SlideError
from zoommil.wsi.mpp import MPP_RANGE_TEXT, plausible_mpp

log = logging.getLogger(__name__)

#: A slide is "dark-field" (fluorescence, not H&E) when the median luminance of its
#: thumbnail's border (where a brightfield scan shows bright glass) is below this (0-255).
DARK_BORDER_LUMINANCE = 60.0
#: Width of that border, as a fraction of the thumbnail's shorter side.
_BORDER_FRACTION = 0.05
#: A pyramid level counts as "at least as fine as needed" if its downsample exceeds the
#: needed one by at most this relative amount (stored downsamples like 2.0005 or 4.000112).
LEVEL_TOLERANCE = 0.01
#: Largest coarsest level (in pixels) that `open_slide` test-reads completely.
_FULL_TEST_READ_PX = 4096 * 4096
#: The coarsest level as the test read decoded it (RGB), per open handle, taken by the next
#: thumbnail read: inspection's and the tissue mask's (usually from the coarsest level) then
#: do not decode it again (~0.4 s on a 40x slide). Weak keys: it goes with its handle.
_TEST_READ_TOP: weakref.WeakKeyDictionary[openslide.OpenSlide, np.ndarray] = (
    weakref.WeakKeyDictionary()
)

#: A thumbnail's source level up to this many bytes of RGB is read whole and resized once;
#: a bigger one is resized strip by strip (same pixels). A single-level or sparse-pyramid scan
#: would otherwise hold its whole level: 0.45 GB for 12288^2 px, ~30 GB for 100k^2. 128 MiB
#: is past the levels ordinary pyramids give at 8 um/px (a 40x scan's 16x level: 94 MB at
#: 100k x 80k px, 37 MB for the benchmark's 40x slide), so their thumbnails take the path
#: they always took; and it is about what the test read may already hold (48 MB).
_THUMB_WHOLE_LEVEL_BYTES = 128 * 1024 * 1024
#: Most ARGB bytes one OpenSlide read of thumbnail rows returns.
_READ_STRIP_BYTES = 16 * 1024 * 1024

#: Every command that opens a slide takes --mpp (inspect, tissue, tile, features, predict);
#: only inspect, tissue and tile take --default-mpp; profile reads the sheet's mpp column.
MPP_FLAG_COMMANDS = ("inspect", "tissue", "tile", "features", "predict")
DEFAULT_MPP_FLAG_COMMANDS = ("inspect", "tissue", "tile")
HOW_TO_SUPPLY_MPP = (
    "supply one with --mpp X, e.g. --mpp 0.5 for a 20x scan (inspect, tissue and tile also "
    "take --default-mpp X, used only where the metadata has none; profile and the workflow: "
    "the sheet's mpp column, or the config's default_mpp)"
)


class SlideCheckError(SlideError):
    """A `SlideError` with a machine-readable status for `inspect` (e.g. ``no_mpp``)."""

    def __init__(self, slide: str | Path, status: str, reason: str) -> None:
        self.status = status
        super().__init__(slide, reason)


# --------------------------------------------------------------------------- opening


def open_slide(path: str | Path, test_read: bool = True) -> openslide.OpenSlide:
    """Open a whole-slide image with OpenSlide, or raise `SlideCheckError` saying why not.

    What counts as a slide: anything OpenSlide opens natively (Aperio, Hamamatsu, MIRAX, ...,
    and *tiled* generic TIFFs, pyramidal or not). A plain strip-based TIFF or an ordinary
    image is refused: OpenSlide only falls back to reading those whole into memory, which is
    not a whole-slide image. With ``test_read`` the coarsest level (or, when that is huge, a
    few tiles across it) and a few level-0 tiles are decoded, because a slide whose tiles are
    corrupt opens fine and only fails later (and OpenSlide errors latch on the handle).
    """
    path = Path(path)
    if not path.exists():
        raise SlideCheckError(path, "missing", "file not found")
    if not path.is_file():
        raise SlideCheckError(path, "missing", "not a file")
    try:
        with open(path, "rb") as fh:
            if not fh.read(1):
                raise SlideCheckError(path, "unreadable", "file is empty")
    except OSError as error:
        raise SlideCheckError(
            path, "unreadable", f"cannot read the file ({error.strerror})"
        ) from None
    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        status, reason = _diagnose_unopenable(path)
        raise SlideCheckError(path, status, reason) from None
    except openslide.OpenSlideError as error:
        raise SlideCheckError(
            path, "unreadable", f"corrupt or truncated slide file ({error})"
        ) from None
    if test_read:
        # OpenSlide errors latch on a handle: a failed read is retried once on a fresh one.
        for attempt in range(2):
            try:
                _test_read(slide)
                break
            except openslide.OpenSlideError as error:
                slide.close()
                if attempt:
                    raise SlideCheckError(
                        path,
                        "unreadable",
                        f"slide opens but its pixels cannot be decoded ({error})",
                    ) from None
                slide = openslide.OpenSlide(str(path))
    return slide


def quickhash(slide: openslide.OpenSlide) -> str | None:
    """OpenSlide's content hash (``openslide.quickhash-1``): equal for copies of one slide."""
    value = slide.properties.get("openslide.quickhash-1")
    return str(value) if value else None


def border_luminance(rgb: np.ndarray) -> float:
    """Median luminance (0-255) of the outer frame of a thumbnail.

    On a brightfield (H&E) scan the frame is mostly glass, which is bright; on a dark-field
    (fluorescence) scan it is near black.
    """
    h, w = rgb.shape[:2]
    b = max(1, round(_BORDER_FRACTION * min(h, w)))
    frame = np.concatenate(
        [
            rgb[:b].reshape(-1, 3),
            rgb[-b:].reshape(-1, 3),
            rgb[b:-b, :b].reshape(-1, 3),
            rgb[b:-b, -b:].reshape(-1, 3),
        ]
    ).astype(np.float32)
    luminance = frame @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return float(np.median(luminance))


def dark_background_reason(rgb: np.ndarray) -> str | None:
    """Why a thumbnail is not a brightfield (H&E) slide, or None when it looks like one."""
    value = border_luminance(rgb)
    if value >= DARK_BORDER_LUMINANCE:
        return None
    return (
        f"dark background (median border brightness {value:.0f} of 255, brightfield glass is "
        f"bright): looks like a fluorescence or dark-field slide, not H&E; the tissue detector "
        "would call the whole slide tissue"
    )


def check_brightfield(rgb: np.ndarray, path: str | Path) -> None:
    """Raise `SlideCheckError` (status ``not_brightfield``) for a dark-background slide."""
    reason = dark_background_reason(rgb)
    if reason is not None:
        raise SlideCheckError(path, "not_brightfield", reason)


def small_thumbnail(slide: openslide.OpenSlide) -> np.ndarray | None:
    """The coarsest level as RGB on white when it is small enough to read whole, else None."""
    top = slide.level_count - 1
    w, h = slide.level_dimensions[top]
    if w * h > _FULL_TEST_READ_PX:
        return None
    return _coarsest_level_rgb(slide)


def _coarsest_level_rgb(slide: openslide.OpenSlide) -> np.ndarray:
    """The whole coarsest level as RGB: the test read's copy if not yet taken, else read."""
    decoded = _TEST_READ_TOP.pop(slide, None)
    if decoded is not None:
        return decoded
    top = slide.level_count - 1
    return read_rgb(slide, (0, 0), top, slide.level_dimensions[top])


def _diagnose_unopenable(path: Path) -> tuple[str, str]:
    """Explain why OpenSlide refused a file: text, truncated TIFF, plain TIFF, other."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        kind = "text" if _looks_like_text(head) else "data of an unrecognised format"
        return (
            "not_a_slide",
            f"not a whole-slide image (the file contains {kind}, no format OpenSlide can read)",
        )
    size = path.stat().st_size
    broken = _tiff_directory_problem(path, size)
    if broken:
        return "unreadable", f"truncated or corrupt TIFF file: {broken}"
    import tifffile

    tiff_log = logging.getLogger("tifffile")
    level = tiff_log.level
    tiff_log.setLevel(logging.CRITICAL)  # its warnings would duplicate our one-line reason
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            end = max(
                (
                    int(o) + int(n)
                    for p in pages
                    for o, n in zip(p.dataoffsets, p.databytecounts, strict=False)
                ),
                default=0,
            )
            tiled = any(p.is_tiled for p in pages)
            shape = pages[0].shape if pages else ()
            ome = _ome_reason(tif) if tif.is_ome else None
    except Exception as error:  # tifffile raises many types on broken files
        return "unreadable", f"truncated or corrupt TIFF file ({type(error).__name__}: {error})"
    finally:
        tiff_log.setLevel(level)
    if not pages:
        return "unreadable", "truncated or corrupt TIFF file: no readable image directory"
    if end > size:
        return (
            "unreadable",
            f"truncated file: it is {size} bytes but its TIFF directories refer to data up to "
            f"byte {end}",
        )
    if ome is not None:
        return "not_a_slide", ome
    if not tiled:
        return (
            "not_a_slide",
            f"plain (untiled) TIFF of shape {tuple(shape)}, not a whole-slide image: OpenSlide "
            "needs a tiled (pyramidal) TIFF; convert it, e.g. with "
            "'vips tiffsave IN OUT --tile --pyramid --compression jpeg'",
        )
    return (
        "not_a_slide",
        "TIFF file that OpenSlide cannot read (unsupported layout or corrupt metadata)",
    )


def _ome_reason(tif: Any) -> str:
    """What makes an OME-TIFF unreadable for OpenSlide, named specifically."""
    page = tif.pages[0]
    problems = []
    dtype = np.dtype(page.dtype) if page.dtype is not None else None
    if dtype is not None and dtype != np.uint8:
        problems.append(f"{dtype.name} pixels (OpenSlide needs 8-bit)")
    samples = int(getattr(page, "samplesperpixel", 1))
    n_series_channels = 0
    try:
        axes = tif.series[0].axes
        if "C" in axes:
            n_series_channels = int(tif.series[0].shape[axes.index("C")])
    except (IndexError, ValueError, AttributeError):
        pass
    if samples not in (3, 4) or n_series_channels > 4:
        channels = n_series_channels or samples
        problems.append(f"{channels} separate channel(s) instead of interleaved RGB")
    if not page.is_tiled:
        problems.append("strips instead of tiles")
    if getattr(page, "subifds", None):
        problems.append("a SubIFD pyramid, which OpenSlide's generic TIFF reader does not follow")
    detail = "; ".join(problems) or "a layout OpenSlide's generic TIFF reader does not support"
    return (
        f"OME-TIFF that OpenSlide cannot read: {detail}; convert it to a tiled pyramidal RGB "
        "TIFF (e.g. 'vips tiffsave IN OUT --tile --pyramid --compression jpeg')"
    )


def _tiff_directory_problem(path: Path, size: int) -> str | None:
    """Walk the TIFF directory chain; say where it leaves the file (truncation), else None."""
    import struct

    with open(path, "rb") as fh:
        head = fh.read(16)
        if len(head) < 16:
            return f"the file has only {len(head)} bytes"
        order = "<" if head[:2] == b"II" else ">"
        big = struct.unpack(order + "H", head[2:4])[0] == 43
        if big:
            offset = struct.unpack(order + "Q", head[8:16])[0]
            count_fmt, count_size, entry_size, next_fmt = "Q", 8, 20, "Q"
        else:
            offset = struct.unpack(order + "I", head[4:8])[0]
            count_fmt, count_size, entry_size, next_fmt = "H", 2, 12, "I"
        seen: set[int] = set()
        index = 0
        while offset and offset not in seen and index < 10000:
            seen.add(offset)
            if offset + count_size > size:
                return (
                    f"directory {index} starts at byte {offset} but the file has only {size} bytes"
                )
            fh.seek(offset)
            count = struct.unpack(order + count_fmt, fh.read(count_size))[0]
            end = offset + count_size + count * entry_size + struct.calcsize(next_fmt)
            if end > size:
                return f"directory {index} ends at byte {end} but the file has only {size} bytes"
            fh.seek(offset + count_size + count * entry_size)
            offset = struct.unpack(order + next_fmt, fh.read(struct.calcsize(next_fmt)))[0]
            index += 1
    return None


def _looks_like_text(data: bytes) -> bool:
    if not data:
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in data)
    return printable / len(data) > 0.95


def _test_read(slide: openslide.OpenSlide) -> None:
    """Decode enough pixels to catch corrupt tiles now rather than mid-extraction."""
    top = slide.level_count - 1
    w, h = slide.level_dimensions[top]
    ds = slide.level_downsamples[top]
    if w * h <= _FULL_TEST_READ_PX:
        _TEST_READ_TOP[slide] = read_rgb(slide, (0, 0), top, (w, h))
    else:
        _read_samples(slide, top, (w, h), ds)
    if top > 0:
        _read_samples(slide, 0, slide.level_dimensions[0], 1.0)


def _read_samples(slide: openslide.OpenSlide, level: int, dims: tuple[int, int], ds: float) -> None:
    """Read 256 px at 9 points (corners, edges, centre) of one level."""
    w, h = dims
    for fy in (0.0, 0.5, 1.0):
        for fx in (0.0, 0.5, 1.0):
            x = int(max(0, fx * w - 256) * ds)
            y = int(max(0, fy * h - 256) * ds)
            slide.read_region((x, y), level, (min(256, w), min(256, h)))


# --------------------------------------------------------------------------- mpp


def _as_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def mpp_candidates(slide: openslide.OpenSlide) -> list[tuple[str, float]]:
    """Every mpp the metadata suggests, in order of trust (plausible or not)."""
    props = slide.properties
    out: list[tuple[str, float]] = []

    def add(source: str, value: float | None) -> None:
        if value is not None:
            out.append((source, value))

    add("openslide.mpp-x", _as_float(props.get("openslide.mpp-x")))
    add("aperio.MPP", _as_float(props.get("aperio.MPP")))
    add(
        "mirax.MICROMETER_PER_PIXEL_X",
        _as_float(props.get("mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X")),
    )
    # Hamamatsu VMS/VMU: physical width in nm over the width in pixels.
    phys = _as_float(props.get("hamamatsu.PhysicalWidth"))
    if phys is not None:
        add("hamamatsu.PhysicalWidth", phys / 1000.0 / slide.dimensions[0])
    xres = _as_float(props.get("tiff.XResolution"))
    if xres is not None:
        unit = str(props.get("tiff.ResolutionUnit", "inch")).lower()
        per = {"centimeter": 1e4, "centimetre": 1e4, "inch": 25400.0}.get(unit)
        if per is not None:
            add(f"tiff.XResolution ({unit})", per / xres)
    for key in ("openslide.objective-power", "aperio.AppMag"):
        power = _as_float(props.get(key))
        if power is not None:
            add(f"objective-power ({key})", 10.0 / power)
            break
    return out


def _plausible(mpp: float) -> bool:
    return plausible_mpp(mpp)


def resolve_mpp_details(
    slide: openslide.OpenSlide,
    path: str | Path,
    mpp_override: float | None = None,
    default_mpp: float | None = None,
) -> dict[str, Any]:
    """`resolve_mpp` plus the candidates it saw and rejected (for `inspect` and provenance)."""
    candidates = mpp_candidates(slide)
    rejected = [(s, v) for s, v in candidates if not _plausible(v)]
    info: dict[str, Any] = {
        "candidates": [{"source": s, "mpp": v} for s, v in candidates],
        "rejected": [{"source": s, "mpp": v} for s, v in rejected],
    }
    if mpp_override is not None:
        if not _plausible(float(mpp_override)):
            raise SlideCheckError(
                path,
                "implausible_mpp",
                f"--mpp {mpp_override} is outside the plausible range {MPP_RANGE_TEXT}",
            )
        return {**info, "mpp": float(mpp_override), "source": "override"}
    for source, value in candidates:
        if _plausible(value):
            _warn_if_anisotropic(slide, path, value)
            return {**info, "mpp": value, "source": source}
    if default_mpp is not None:
        if not _plausible(float(default_mpp)):
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


#: Relative difference of openslide.mpp-y from the mpp used above which a slide is flagged.
ANISOTROPY_TOLERANCE = 0.02


def _warn_if_anisotropic(slide: openslide.OpenSlide, path: str | Path, mpp: float) -> None:
    """Warn when the pixels are not square: the lattice uses one mpp for both axes, so its
    patches would cover non-square tissue and the mask would be squashed."""
    mpp_y = _as_float(slide.properties.get("openslide.mpp-y"))
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


# --------------------------------------------------------------------------- inspect


def inspect_slide(
    path: str | Path, mpp: float | None = None, default_mpp: float | None = None
) -> dict[str, Any]:
    """Describe a slide as a JSON-able dict; never raises for a bad slide.

    ``status`` is ``"ok"`` or an error status (``missing``, ``not_a_slide``, ``unreadable``,
    ``no_mpp``, ``implausible_mpp``, ``not_brightfield``) with a human-readable ``reason``.
    ``quickhash`` (OpenSlide's content hash) lets QC find one slide listed under two names.
    """
    path = Path(path)
    report: dict[str, Any] = {
        "path": str(path),
        "slide_id": path.stem,
        "status": "ok",
        "reason": None,
        "mpp": None,
        "mpp_source": None,
        "magnification": None,
        "objective": None,
        "vendor": None,
        "dimensions": None,
        "levels": [],
        "mpp_candidates": [],
        "mpp_rejected": [],
        "quickhash": None,
        "border_luminance": None,
    }
    try:
        slide = open_slide(path)
    except SlideCheckError as error:
        report.update(status=error.status, reason=error.reason)
        return report
    try:
        props = slide.properties
        report["quickhash"] = quickhash(slide)
        report["vendor"] = props.get("openslide.vendor")
        report["objective"] = _as_float(
            props.get("openslide.objective-power") or props.get("aperio.AppMag")
        )
        report["dimensions"] = list(slide.dimensions)
        report["levels"] = [
            {"dims": list(d), "downsample": float(ds)}
            for d, ds in zip(slide.level_dimensions, slide.level_downsamples, strict=True)
        ]
        try:
            info = resolve_mpp_details(slide, path, mpp, default_mpp)
        except SlideCheckError as error:
            report.update(status=error.status, reason=error.reason)
            cands = [{"source": s, "mpp": v} for s, v in mpp_candidates(slide)]
            report["mpp_candidates"] = cands
            report["mpp_rejected"] = [c for c in cands if not _plausible(c["mpp"])]
            return report
        report.update(
            mpp=info["mpp"],
            mpp_source=info["source"],
            magnification=10.0 / info["mpp"],
            mpp_candidates=info["candidates"],
            mpp_rejected=info["rejected"],
        )
        try:
            thumb = small_thumbnail(slide)
        except openslide.OpenSlideError as error:
            report.update(status="unreadable", reason=f"cannot read the thumbnail ({error})")
            return report
        if thumb is not None:
            report["border_luminance"] = border_luminance(thumb)
            reason = dark_background_reason(thumb)
            if reason is not None:
                report.update(status="not_brightfield", reason=reason)
    finally:
        slide.close()
    return report


# --------------------------------------------------------------------------- reading


def best_level(slide: openslide.OpenSlide, downsample: float) -> int:
    """Coarsest level whose downsample is at most ``downsample`` (within `LEVEL_TOLERANCE`)."""
    limit = downsample * (1.0 + LEVEL_TOLERANCE)
    best = 0
    for level, ds in enumerate(slide.level_downsamples):
        if ds <= limit and ds >= slide.level_downsamples[best]:
            best = level
    return best


def rgba_to_rgb_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite non-premultiplied RGBA on white: transparent (outside the slide) is white.

    What `read_rgb` gives where it must use OpenSlide's public call. Inside a slide all pixels
    are opaque, and then only alpha is dropped: tested on the pixels as 32-bit words (alpha is
    the high byte of a little-endian RGBA word) and dropped by OpenCV, ~50x faster than the
    uint16 composite on a 1024 x 1024 region (0.4 vs 24 ms here).
    """
    rgba = np.ascontiguousarray(rgba, dtype=np.uint8)
    if bool((rgba.view(np.dtype("<u4")) >= 0xFF000000).all()):
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


#: OpenSlide's C read into a caller's buffer, as openslide-python declares it (None: missing).
_RAW_READ_REGION = getattr(openslide.lowlevel, "_read_region", None)


@functools.cache
def _on_white_table() -> np.ndarray:
    """Straight colour on white of each premultiplied (alpha, colour) byte pair, [256, 256]:
    what openslide-python's un-premultiplying (truncating) and `rgba_to_rgb_on_white` give."""
    alpha = np.arange(256, dtype=np.int64)[:, None]
    colour = np.arange(256, dtype=np.int64)[None, :]
    straight = np.where(alpha == 255, colour, (255 * colour // np.maximum(alpha, 1)) & 0xFF)
    return ((straight * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def read_rgb(
    slide: openslide.OpenSlide, location: tuple[int, int], level: int, size: tuple[int, int]
) -> np.ndarray:
    """``slide.read_region(location, level, size)`` as RGB uint8 [h, w, 3] on white.

    Why not through `read_region`'s PIL image: turning it into NumPy copies the pixels twice
    more, which on the 12-Mpx coarsest level of a 40x slide cost 0.05 s and, in a fresh
    process (fresh pages), 0.2 s, as much as decoding it. Here OpenSlide's C call writes its
    premultiplied ARGB words into a NumPy buffer (``openslide.lowlevel._read_region``, in
    openslide-python since 1.0; the public call where it is missing), and the pixels are the
    same as `rgba_to_rgb_on_white` of the public call's (tested).
    """
    w, h = int(size[0]), int(size[1])
    raw = _RAW_READ_REGION
    handle = getattr(slide, "_osr", None)
    if raw is None or handle is None or w <= 0 or h <= 0 or sys.byteorder != "little":
        return rgba_to_rgb_on_white(np.asarray(slide.read_region(location, level, (w, h))))
    argb = np.empty((h, w), dtype=np.uint32)
    pointer = argb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))
    raw(handle, pointer, int(location[0]), int(location[1]), int(level), w, h)
    bgra = argb.view(np.uint8).reshape(h, w, 4)  # little-endian ARGB words: B, G, R, A bytes
    if bool((argb >= 0xFF000000).all()):
        return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)
    index = bgra[..., 3:4].astype(np.intp) * 256 + bgra[..., 2::-1]
    return _on_white_table().ravel()[index]


def read_rect_at(
    slide: openslide.OpenSlide,
    x0: int,
    y0: int,
    w0: int,
    h0: int,
    out_w: int,
    out_h: int,
) -> np.ndarray:
    """Rectangle at level-0 (x0, y0) of size (w0, h0) level-0 px, as RGB uint8 [out_h, out_w, 3].

    Read from the coarsest level at least as fine as needed, then INTER_AREA-resized (area
    averaging is the right filter for downsampling; it is bilinear-like when upsampling).
    Pixels outside the slide are white.
    """
    if w0 <= 0 or h0 <= 0 or out_w <= 0 or out_h <= 0:
        raise ValueError(f"empty region: {w0}x{h0} level-0 px -> {out_w}x{out_h} px")
    need = min(w0 / out_w, h0 / out_h)
    level = best_level(slide, need)
    ds = slide.level_downsamples[level]
    lw = max(1, round(w0 / ds))
    lh = max(1, round(h0 / ds))
    rgb = read_rgb(slide, (int(x0), int(y0)), level, (lw, lh))
    if (lw, lh) != (out_w, out_h):
        rgb = cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_AREA)
    return rgb


def read_region_at(
    slide: openslide.OpenSlide, x0: int, y0: int, side0: int, out_px: int
) -> np.ndarray:
    """Square region: top-left (x0, y0) and side ``side0`` in level-0 px -> [out_px, out_px, 3].

    This is how patches of the lattice are read: a patch at magnification m has side
    ``side0`` level-0 px and is read at ``out_px`` (the patch size, e.g. 256).
    """
    return read_rect_at(slide, x0, y0, side0, side0, out_px, out_px)


def read_thumbnail_at_mpp(slide: openslide.OpenSlide, mpp0: float, target_mpp: float) -> np.ndarray:
    """The whole slide at ``target_mpp`` um/px as RGB uint8 [H, W, 3] (white background).

    Output size is ``round(dims0 * mpp0 / target_mpp)``; so pixel (i, j) covers level-0
    pixels around ``(j, i) * dims0 / out_dims``. Reads the coarsest sufficient level in
    horizontal strips. A level of up to `_THUMB_WHOLE_LEVEL_BYTES` is assembled and resized
    once; a bigger one (a single-level scan, a sparse pyramid) is resized strip by strip into
    the output, with the same pixels (`_area_resize_level`), so memory stays near one strip.
    """
    w0, h0 = slide.dimensions
    scale = mpp0 / target_mpp
    out_w = max(1, round(w0 * scale))
    out_h = max(1, round(h0 * scale))
    level = best_level(slide, min(w0 / out_w, h0 / out_h))
    lw, lh = slide.level_dimensions[level]
    decoded = _TEST_READ_TOP.pop(slide, None)  # used or not, not kept past the thumbnail
    if decoded is not None and level == slide.level_count - 1:
        full = decoded
    elif lw * lh * 3 > _THUMB_WHOLE_LEVEL_BYTES and lw >= out_w and lh >= out_h:
        return _area_resize_level(slide, level, out_w, out_h)
    else:
        full = _read_level_rows(slide, level, 0, lh)
    if (lw, lh) == (out_w, out_h):
        return full
    return cv2.resize(full, (out_w, out_h), interpolation=cv2.INTER_AREA)


def _read_level_rows(slide: openslide.OpenSlide, level: int, y0: int, y1: int) -> np.ndarray:
    """Rows ``[y0, y1)`` of a level, full width, as RGB [y1 - y0, w, 3]; OpenSlide is asked
    for at most `_READ_STRIP_BYTES` of ARGB at a time (its buffer is a third more than RGB)."""
    lw = slide.level_dimensions[level][0]
    ds = slide.level_downsamples[level]
    out = np.empty((y1 - y0, lw, 3), dtype=np.uint8)
    step = max(1, _READ_STRIP_BYTES // max(1, lw * 4))
    for y in range(y0, y1, step):
        hh = min(step, y1 - y)
        # ceil: OpenSlide maps the level-0 row back to level row y, exactly for an integer
        # downsample; otherwise it places the strip within 1/ds of a level pixel (interpolated)
        out[y - y0 : y - y0 + hh] = read_rgb(slide, (0, math.ceil(y * ds)), level, (lw, hh))
    return out


def _area_resize_level(
    slide: openslide.OpenSlide, level: int, out_w: int, out_h: int
) -> np.ndarray:
    """``cv2.resize(whole level, (out_w, out_h), INTER_AREA)``, reading a strip at a time.

    Bit-identical to resizing the whole level (tested on integer downsamples; on a level with
    a non-integer one, e.g. Aperio's 4.0003, OpenSlide places each strip after the first within
    1/ds of a level pixel, so a mask can differ by a sub-pixel shift), so a mask does not
    depend on which path made its thumbnail. OpenCV takes one of two paths: block averaging
    when both ratios are integers (then strips of whole blocks give the same pixels through
    OpenCV itself), or else fractional area weights in float32, which `_area_rows` reproduces
    for the output rows one strip covers.
    """
    lw, lh = slide.level_dimensions[level]
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    rows_budget = max(1, _READ_STRIP_BYTES // max(1, lw * 4))
    if _cv2_area_is_blocks(lw, out_w) and _cv2_area_is_blocks(lh, out_h):
        block = lh // out_h
        step = max(1, rows_budget // block)
        for r0 in range(0, out_h, step):
            r1 = min(out_h, r0 + step)
            rows = _read_level_rows(slide, level, r0 * block, r1 * block)
            out[r0:r1] = cv2.resize(rows, (out_w, r1 - r0), interpolation=cv2.INTER_AREA)
        return out
    x_table = _area_table(lw, out_w)
    y_index, y_weight = _area_table(lh, out_h)
    step = max(1, int((rows_budget - 2) * out_h / lh))
    for r0 in range(0, out_h, step):
        r1 = min(out_h, r0 + step)
        y0, y1 = int(y_index[r0:r1].min()), int(y_index[r0:r1].max()) + 1
        rows = _read_level_rows(slide, level, y0, y1)
        out[r0:r1] = _area_rows(rows, x_table, y_index[r0:r1] - y0, y_weight[r0:r1])
    return out


def _cv2_area_is_blocks(src: int, dst: int) -> bool:
    """Whether OpenCV's INTER_AREA averages whole blocks along an axis: its test, verbatim
    (the ratio as ``1 / (dst / src)`` in doubles, an integer to within machine epsilon)."""
    scale = 1.0 / (dst / src)
    return abs(scale - round(scale)) < sys.float_info.epsilon


def _area_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's fractional INTER_AREA weights along one axis (``computeResizeAreaTab``):
    source index and float32 weight of each output pixel's contributions, in OpenCV's order,
    as [dst, m] arrays padded with weight 0 (and the last index, to keep ranges tight)."""
    scale = 1.0 / (dst / src)
    entries: list[list[tuple[int, float]]] = []
    for d in range(dst):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, src - f1)
        s2 = min(math.floor(f2), src - 1)
        s1 = min(math.ceil(f1), s2)
        row = [(s1 - 1, (s1 - f1) / cell)] if s1 - f1 > 1e-3 else []
        row += [(s, 1.0 / cell) for s in range(s1, s2)]
        if f2 - s2 > 1e-3:
            row.append((s2, min(f2 - s2, 1.0, cell) / cell))
        entries.append(row)
    width = max(len(row) for row in entries)
    index = np.empty((dst, width), dtype=np.intp)
    weight = np.zeros((dst, width), dtype=np.float32)
    for d, row in enumerate(entries):
        index[d] = row[-1][0]
        index[d, : len(row)] = [s for s, _ in row]
        weight[d, : len(row)] = [w for _, w in row]
    return index, weight


def _area_rows(
    rows: np.ndarray,
    x_table: tuple[np.ndarray, np.ndarray],
    y_index: np.ndarray,
    y_weight: np.ndarray,
) -> np.ndarray:
    """Output rows of OpenCV's fractional INTER_AREA from the source rows they cover, with
    its float32 arithmetic in its order: each source row summed across (``buf``), then the
    rows weighted into each output row, rounded half to even (as ``saturate_cast``)."""
    out_w = x_table[0].shape[0]
    n, w = rows.shape[:2]
    if _cv2_area_is_blocks(w, out_w):  # OpenCV would average blocks across: sum as it does
        x_index, x_weight = x_table
        buf = np.zeros((n, out_w, 3), dtype=np.float32)
        for j in range(x_index.shape[1]):
            buf += rows[:, x_index[:, j]].astype(np.float32) * x_weight[:, j, None]
    else:  # the height kept, OpenCV's fractional path gives its row sums unrounded
        buf = cv2.resize(rows.astype(np.float32), (out_w, n), interpolation=cv2.INTER_AREA)
    acc = np.zeros((y_index.shape[0], out_w, 3), dtype=np.float32)
    for j in range(y_index.shape[1]):
        acc += buf[y_index[:, j]] * y_weight[:, j, None, None]
    return np.clip(np.rint(acc), 0, 255).astype(np.uint8)


def open_with_mpp(
    path: str | Path, mpp: float | None = None, default_mpp: float | None = None
) -> tuple[openslide.OpenSlide, float, str]:
    """Open a slide and resolve its mpp in one step (the common case for commands)."""
    slide = open_slide(path)
    try:
        mpp0, source = resolve_mpp(slide, path, mpp, default_mpp)
    except SlideError:
        slide.close()
        raise
    return slide, mpp0, source

"""Open whole-slide images and check that they can be used, or say why not.

A file that is not a whole-slide image, a truncated or corrupt one, and a dark-field
(fluorescence) scan are refused with a reason that names the problem, as early as possible:
`open_slide` test-reads pixels because corrupt tiles open fine and fail only mid-extraction.
`inspect_slide` gives the same checks as a report for `zoommil inspect` and QC;
`open_with_mpp` adds the slide's resolution (`zoommil.wsi.resolution`). Pixels are read by
`zoommil.wsi.pixels`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import openslide

from zoommil.errors import SlideCheckError, SlideError
from zoommil.wsi.mpp import plausible_mpp
from zoommil.wsi.pixels import keep_coarsest_level, read_rgb, take_coarsest_level
from zoommil.wsi.resolution import metadata_float, mpp_candidates, resolve_mpp, resolve_mpp_details

#: A slide is "dark-field" (fluorescence, not H&E) when the median luminance of its
#: thumbnail's border (where a brightfield scan shows bright glass) is below this (0-255).
DARK_BORDER_LUMINANCE = 60.0
#: Width of that border, as a fraction of the thumbnail's shorter side.
_BORDER_FRACTION = 0.05
#: Largest coarsest level (in pixels) that `open_slide` test-reads completely.
_FULL_TEST_READ_PX = 4096 * 4096


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
        # the reason alone reaches the QC tables: it names the file that was looked for
        raise SlideCheckError(path, "missing", f"file not found: {path.resolve()}")
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
    decoded = take_coarsest_level(slide)
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
        keep_coarsest_level(slide, read_rgb(slide, (0, 0), top, (w, h)))
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


# --------------------------------------------------------------------------- inspect


def inspect_slide(
    path: str | Path,
    mpp: float | None = None,
    default_mpp: float | None = None,
    slide_id: str | None = None,
) -> dict[str, Any]:
    """Describe a slide as a JSON-able dict; never raises for a bad slide.

    ``slide_id``: the id the report names (default: the file stem); the workflow passes the
    sheet's, which may differ from the file name (``n1/x.tiff`` listed as ``n1x``).

    ``status`` is ``"ok"`` or an error status (``missing``, ``not_a_slide``, ``unreadable``,
    ``no_mpp``, ``implausible_mpp``, ``not_brightfield``) with a human-readable ``reason``.
    ``quickhash`` (OpenSlide's content hash) lets QC find one slide listed under two names.
    """
    path = Path(path)
    report: dict[str, Any] = {
        "path": str(path),
        "slide_id": path.stem if slide_id is None else slide_id,
        "status": "ok",
        "reason": None,
        "mpp": None,
        "mpp_source": None,
        "mpp_note": None,
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
        report["objective"] = metadata_float(
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
            report["mpp_rejected"] = [c for c in cands if not plausible_mpp(c["mpp"])]
            return report
        report.update(
            mpp=info["mpp"],
            mpp_source=info["source"],
            mpp_note=info.get("note"),
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

"""Read pixels from a slide's pyramid: regions, patches and thumbnails, as RGB on white.

Everything downstream (tissue masks, the lattice, features, zoom inference) works in level-0
pixels and microns per pixel, so this module is the only place that knows about pyramid levels.
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
import weakref

import cv2
import numpy as np
import openslide
import openslide.lowlevel

#: A pyramid level counts as "at least as fine as needed" if its downsample exceeds the
#: needed one by at most this relative amount (stored downsamples like 2.0005 or 4.000112).
LEVEL_TOLERANCE = 0.01
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


def keep_coarsest_level(slide: openslide.OpenSlide, rgb: np.ndarray) -> None:
    """Hand the coarsest level a test read decoded (`zoommil.wsi.slide.open_slide`) to the
    next thumbnail read of the same handle."""
    _TEST_READ_TOP[slide] = rgb


def take_coarsest_level(slide: openslide.OpenSlide) -> np.ndarray | None:
    """The coarsest level kept for this handle, handed out once; None when none is kept."""
    return _TEST_READ_TOP.pop(slide, None)


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
    decoded = take_coarsest_level(slide)  # used or not, not kept past the thumbnail
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

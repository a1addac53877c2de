"""Slide opening (zoommil.wsi.slide), the mpp chain (zoommil.wsi.resolution) and region
reading (zoommil.wsi.pixels)."""

from __future__ import annotations

import ctypes
import json
import logging
from types import SimpleNamespace

import cv2
import numpy as np
import openslide
import pytest
from slide_factory import write_pyramid_tiff

from zoommil.cli import main
from zoommil.errors import SlideError
from zoommil.wsi.pixels import (
    best_level,
    read_rect_at,
    read_region_at,
    read_thumbnail_at_mpp,
    rgba_to_rgb_on_white,
)
from zoommil.wsi.resolution import resolve_mpp
from zoommil.wsi.slide import inspect_slide, open_slide


def fake_slide(props: dict, dims=(1000, 800)) -> SimpleNamespace:
    return SimpleNamespace(properties=props, dimensions=dims)


# --------------------------------------------------------------------------- mpp chain


def test_cmu_mpp_from_metadata(slides_dir):
    path = slides_dir / "CMU-1-Small-Region.svs"
    with open_slide(path) as slide:
        mpp, source = resolve_mpp(slide, path)
    assert mpp == pytest.approx(0.499)
    assert source == "openslide.mpp-x"


def test_explicit_mpp_overrides_metadata(slides_dir, caplog):
    path = slides_dir / "CMU-1-Small-Region.svs"
    with open_slide(path) as slide:
        with caplog.at_level(logging.WARNING):
            assert resolve_mpp(slide, path, mpp_override=0.25) == (0.25, "override")
        # said, since --mpp applies to every slide of a command (review A: a cohort run
        # rescaled its slides with metadata without a word)
        assert f"{path}: --mpp 0.25 overrides the metadata's 0.499 um/px (openslide.mpp-x)" in (
            caplog.text
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING):  # the metadata's own value: nothing to say
            assert resolve_mpp(slide, path, mpp_override=0.5) == (0.5, "override")
        assert "overrides" not in caplog.text
        # A default is only a fallback: metadata wins over it.
        assert resolve_mpp(slide, path, default_mpp=1.0) == (
            pytest.approx(0.499),
            "openslide.mpp-x",
        )


def test_tcga_without_mpp_fails_with_how_to(slides_dir):
    path = slides_dir / "TCGA-CR-7395-01A-01-TS1.svs"
    with open_slide(path) as slide:
        with pytest.raises(SlideError) as info:
            resolve_mpp(slide, path)
        assert resolve_mpp(slide, path, mpp_override=0.5) == (0.5, "override")
        assert resolve_mpp(slide, path, default_mpp=0.5) == (0.5, "default")
    message = str(info.value)
    assert "TCGA-CR-7395-01A-01-TS1.svs" in message
    assert "no resolution" in message and "--mpp" in message and "mpp column" in message


def test_non_square_pixels_are_warned_about(tmp_path, caplog):
    square = write_pyramid_tiff(tmp_path / "square.tiff", width=256, height=256, levels=1)
    tall = write_pyramid_tiff(
        tmp_path / "tall.tiff", width=256, height=256, levels=1, mpp=0.25, mpp_y=0.5
    )
    with caplog.at_level(logging.WARNING, logger="zoommil"):
        assert inspect_slide(square)["status"] == "ok"
        assert "not square" not in caplog.text
        report = inspect_slide(tall)
    assert report["status"] == "ok" and report["mpp"] == pytest.approx(0.25)
    assert "tall.tiff: pixels are not square (mpp-y 0.5 vs 0.25 um/px)" in caplog.text


def test_prostate_implausible_mpp_rejected(slides_dir):
    path = slides_dir / "prostate-he-generic.tiff"
    with open_slide(path) as slide:
        with pytest.raises(SlideError) as info:
            resolve_mpp(slide, path)
        assert resolve_mpp(slide, path, mpp_override=0.5) == (0.5, "override")
    message = str(info.value)
    assert "implausible" in message and "896" in message and "--mpp" in message


def test_override_outside_range_is_an_error(slides_dir):
    path = slides_dir / "CMU-1-Small-Region.svs"
    with open_slide(path) as slide, pytest.raises(SlideError, match="plausible range"):
        resolve_mpp(slide, path, mpp_override=6.0)


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        ({"openslide.mpp-x": "0.25", "aperio.MPP": "0.5"}, (0.25, "openslide.mpp-x")),
        ({"aperio.MPP": "0.2527"}, (0.2527, "aperio.MPP")),
        (
            {"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"},
            (0.25, "tiff.XResolution (centimeter)"),
        ),
        (
            {"openslide.objective-power": "40"},
            (0.25, "objective-power (openslide.objective-power)"),
        ),
        ({"aperio.AppMag": "20"}, (0.5, "objective-power (aperio.AppMag)")),
        # An implausible first candidate is skipped, not used.
        (
            {"openslide.mpp-x": "896", "openslide.objective-power": "20"},
            (0.5, "objective-power (openslide.objective-power)"),
        ),
        ({"hamamatsu.PhysicalWidth": "250000"}, (0.25, "hamamatsu.PhysicalWidth")),
        # OME-XML's size wins over the placeholder resolution tags such files carry
        (
            {
                "tiff.ImageDescription": '<?xml version="1.0"?><OME xmlns="x"><Image ID="I:0">'
                '<ome:Pixels DimensionOrder="XYCZT" PhysicalSizeX="250.0" '
                'PhysicalSizeXUnit="nm" SizeX="4"/></Image></OME>',
                "tiff.XResolution": "1",
                "tiff.ResolutionUnit": "centimeter",
            },
            (0.25, "ome.PhysicalSizeX"),
        ),
    ],
)
def test_mpp_chain_order(props, expected):
    mpp, source = resolve_mpp(fake_slide(props), "fake.svs")
    assert mpp == pytest.approx(expected[0])
    assert source == expected[1]


def test_an_ome_tiff_without_resolution_tags_has_its_ome_xml_mpp(tmp_path):
    """tifffile's, bfconvert's and QuPath's OME-TIFFs store the pixel size in the OME-XML
    only: they were refused as "no resolution (mpp) ... in the slide metadata"."""
    import tifffile

    path = tmp_path / "export.ome.tiff"
    img = np.full((512, 512, 3), 230, np.uint8)
    size = {"PhysicalSizeX": 0.2431, "PhysicalSizeXUnit": "\u00b5m"}
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, tile=(256, 256), photometric="rgb", metadata=size)
    with open_slide(path) as slide:
        assert resolve_mpp(slide, path) == (pytest.approx(0.2431), "ome.PhysicalSizeX")


def test_an_objective_power_estimate_is_noted(caplog):
    """10 / AppMag is 0.25 for every "40x" scanner; a GT450 is 0.2627 um/px: the estimate is
    said (log and QC note), and a slide with its own mpp gets no note."""
    from zoommil.wsi.resolution import resolve_mpp_details

    with caplog.at_level(logging.WARNING):
        info = resolve_mpp_details(fake_slide({"aperio.AppMag": "40"}), "gt450.svs")
    assert info["mpp"] == 0.25
    assert info["note"] == (
        "mpp 0.25 is estimated from the objective power (objective-power (aperio.AppMag)): "
        "scanners' pixel sizes at one nominal power differ by up to ~16% (40x: 0.22-0.27 "
        "um/px); where it is known, give the slide's true pixel size as the sheet's "
        "mpp_override (or --mpp)"
    )
    assert "gt450.svs: mpp 0.25 is estimated" in caplog.text
    own = resolve_mpp_details(fake_slide({"aperio.MPP": "0.2627", "aperio.AppMag": "40"}), "x")
    assert (own["mpp"], own["note"]) == (0.2627, None)


def test_synthetic_centimetre_resolution(synthetic_slide):
    with open_slide(synthetic_slide) as slide:
        assert resolve_mpp(slide, synthetic_slide) == (pytest.approx(0.5), "openslide.mpp-x")


# --------------------------------------------------------------------------- inspect


def test_inspect_real_slides(slides_dir):
    cmu = inspect_slide(slides_dir / "CMU-1-Small-Region.svs")
    assert cmu["status"] == "ok" and cmu["mpp"] == pytest.approx(0.499)
    assert cmu["objective"] == 20.0
    assert cmu["levels"] == [{"dims": [2220, 2967], "downsample": 1.0}]
    tcga = inspect_slide(slides_dir / "TCGA-CR-7395-01A-01-TS1.svs")
    assert tcga["status"] == "no_mpp" and "--mpp" in tcga["reason"]
    assert tcga["levels"][1]["downsample"] == pytest.approx(2.0005, abs=1e-4)
    tcga = inspect_slide(slides_dir / "TCGA-CR-7395-01A-01-TS1.svs", mpp=0.5)
    assert tcga["status"] == "ok" and tcga["mpp_source"] == "override"
    prostate = inspect_slide(slides_dir / "prostate-he-generic.tiff")
    assert prostate["status"] == "implausible_mpp"
    assert prostate["mpp_rejected"][0]["mpp"] == pytest.approx(896.06, abs=0.1)
    json.dumps([cmu, tcga, prostate])  # JSON-able


def test_inspect_cli_prints_json(slides_dir, tmp_path, capsys):
    out = tmp_path / "qc" / "cmu.json"
    assert main(["inspect", str(slides_dir / "CMU-1-Small-Region.svs"), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["mpp_source"] == "openslide.mpp-x"
    assert printed["slide_id"] == "CMU-1-Small-Region"  # the file stem unless given


def test_inspect_names_the_given_slide_id(slides_dir, tmp_path, capsys):
    """The workflow passes the sheet's slide_id, which may differ from the file stem (n1/x.tiff
    listed as n1x): the QC JSON must say n1x, also for a slide that fails its checks."""
    out = tmp_path / "n1x.json"
    slide = slides_dir / "CMU-1-Small-Region.svs"
    assert main(["inspect", str(slide), "--slide-id", "n1x", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["slide_id"] == "n1x"
    bad = slides_dir / "prostate-he-generic.tiff"
    argv = ["inspect", str(bad), "--slide-id", "p.7", "--out", str(out), "--no-fail"]
    assert main(argv) == 0
    assert json.loads(out.read_text())["slide_id"] == "p.7"
    assert inspect_slide(tmp_path / "gone.svs", slide_id="g")["slide_id"] == "g"


def test_inspect_cli_no_fail(slides_dir, tmp_path, capsys):
    out = tmp_path / "p.json"
    slide = slides_dir / "prostate-he-generic.tiff"
    assert main(["inspect", str(slide), "--out", str(out), "--no-fail"]) == 0
    report = json.loads(out.read_text())
    assert report["status"] == "implausible_mpp" and "896" in report["reason"]
    capsys.readouterr()
    assert main(["inspect", str(slide), "--out", str(out.with_name("q.json"))]) == 2
    err = capsys.readouterr().err
    assert "prostate-he-generic.tiff" in err and "implausible" in err
    assert not out.with_name("q.json").exists()


# --------------------------------------------------------------------------- reading


def test_best_level_tolerates_inexact_downsamples(slides_dir):
    with open_slide(slides_dir / "TCGA-CR-7395-01A-01-TS1.svs") as slide:
        assert best_level(slide, 2.0) == 1  # stored downsample 2.0005
        assert best_level(slide, 1.9) == 0
    with open_slide(slides_dir / "prostate-he-generic.tiff") as slide:
        assert best_level(slide, 8.0) == 3  # stored 8.0128
        assert best_level(slide, 7.0) == 2
        assert best_level(slide, 100.0) == 5


def test_read_region_white_outside_slide(synthetic_slide):
    with open_slide(synthetic_slide) as slide:
        w, h = slide.dimensions
        outside = read_region_at(slide, w + 100, h + 100, 512, 64)
        assert outside.shape == (64, 64, 3) and outside.dtype == np.uint8
        assert (outside == 255).all()
        negative = read_region_at(slide, -4096, -4096, 1024, 32)
        assert (negative == 255).all()
        # Half in, half out: the outside half is white, not black.
        edge = read_region_at(slide, w - 128, 0, 256, 256)
        assert (edge[:, 128:] == 255).all()


def _composite_reference(rgba: np.ndarray) -> np.ndarray:
    """(rgb * a + 255 * (255 - a)) / 255 rounded to nearest, in plain integers."""
    rgb, a = rgba[..., :3].astype(np.int64), rgba[..., 3:].astype(np.int64)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def test_rgba_composites_on_white_exactly_whether_opaque_or_not():
    """The opaque fast path drops alpha; any pixel below 255 (even one, even 254) takes the
    composite, which matches the integer formula everywhere; transparent is white."""
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    assert np.array_equal(rgba_to_rgb_on_white(rgba), rgba[..., :3])
    strided = np.concatenate([rgba, rgba], axis=1)[:, ::2]  # not contiguous
    assert np.array_equal(rgba_to_rgb_on_white(strided), strided[..., :3])
    for alpha in (254, 0):
        one = rgba.copy()
        one[5, 7, 3] = alpha
        got = rgba_to_rgb_on_white(one)
        assert np.array_equal(got, _composite_reference(one))
        assert not np.array_equal(got[5, 7], rgba[5, 7, :3])  # the one pixel was composited
    assert (rgba_to_rgb_on_white(np.zeros((4, 4, 4), np.uint8)) == 255).all()
    mixed = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    got = rgba_to_rgb_on_white(mixed)
    assert got.dtype == np.uint8 and got.shape == (64, 64, 3)
    assert np.array_equal(got, _composite_reference(mixed))


def test_premultiplied_pixels_on_white_as_openslide_python_unpremultiplies_them():
    """`read_rgb`'s table for pixels that are not opaque: every (alpha, colour) pair gives
    what openslide-python's own conversion followed by `rgba_to_rgb_on_white` gives."""
    convert = pytest.importorskip("openslide._convert")
    from zoommil.wsi import pixels as pixels_module

    alpha = np.repeat(np.arange(256, dtype=np.uint32), 256)
    colour = np.tile(np.arange(256, dtype=np.uint32), 256)
    keep = colour <= alpha  # premultiplied: the colour never exceeds alpha
    alpha, colour = alpha[keep], colour[keep]
    words = (alpha << 24) | (colour << 16) | (colour << 8) | colour
    buffer = (ctypes.c_uint32 * len(words)).from_buffer_copy(words.tobytes())
    convert.argb2rgba(buffer)
    rgba = np.frombuffer(buffer, dtype=np.uint8).reshape(-1, 1, 4)
    expected = rgba_to_rgb_on_white(rgba)[:, 0, 0]
    np.testing.assert_array_equal(pixels_module._on_white_table()[alpha, colour], expected)


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "prostate-he-generic.tiff"])
def test_read_rgb_equals_the_public_read_region_on_white(slides_dir, name):
    """The NumPy-buffer read gives the pixels of OpenSlide's public call composited on white,
    on every level, for regions inside the slide and reaching past its edges (transparent)."""
    from zoommil.wsi.pixels import read_rgb

    with open_slide(slides_dir / name, test_read=False) as slide:
        w0, h0 = slide.dimensions
        for level in range(slide.level_count):
            for x, y, w, h in [
                (0, 0, 300, 200),
                (w0 // 3, h0 // 2, 257, 129),
                (w0 - 100, -50, 400, 90),
            ]:
                public = np.asarray(slide.read_region((x, y), level, (w, h)))
                got = read_rgb(slide, (x, y), level, (w, h))
                assert got.shape == (h, w, 3) and got.dtype == np.uint8
                np.testing.assert_array_equal(got, rgba_to_rgb_on_white(public))
        edge = read_rgb(slide, (w0 - 10, 0), 0, (40, 8))
        assert (edge[:, 10:] == 255).all()  # past the slide's right edge: white


def test_read_rgb_without_the_numpy_buffer_call_uses_the_public_one(slides_dir, monkeypatch):
    from zoommil.wsi import pixels as pixels_module

    with open_slide(slides_dir / "CMU-1-Small-Region.svs", test_read=False) as slide:
        region = ((100, 200), 0, (64, 48))
        expected = pixels_module.read_rgb(slide, *region)
        public = []
        read_region = slide.read_region
        slide.read_region = lambda *args: public.append(args) or read_region(*args)
        np.testing.assert_array_equal(pixels_module.read_rgb(slide, *region), expected)
        assert not public  # the buffer call
        monkeypatch.setattr(pixels_module, "_RAW_READ_REGION", None)
        np.testing.assert_array_equal(pixels_module.read_rgb(slide, *region), expected)
        assert len(public) == 1


@pytest.mark.parametrize(
    ("name", "target_mpp", "from_coarsest"),
    [
        ("CMU-1-Small-Region.svs", 8.0, True),  # one level: the coarsest is level 0
        ("prostate-he-generic.tiff", 16.0, True),  # 32x: the coarsest of 6 levels
        ("prostate-he-generic.tiff", 8.0, False),  # 16x: the next level down
    ],
)
def test_thumbnail_reuses_the_test_reads_coarsest_level_and_equals_a_fresh_read(
    slides_dir, monkeypatch, name, target_mpp, from_coarsest
):
    """The coarsest level decoded by open's test read is handed to the next thumbnail: one
    from that level reads nothing more (same pixels as reading it again); either way it is
    dropped then. A handle opened without a test read, or a later thumbnail, reads."""
    from zoommil.wsi import pixels as pixels_module

    with open_slide(slides_dir / name, test_read=False) as fresh:
        assert fresh not in pixels_module._TEST_READ_TOP
        expected = read_thumbnail_at_mpp(fresh, 0.5, target_mpp)
    with open_slide(slides_dir / name) as tested:
        assert tested in pixels_module._TEST_READ_TOP
        reads = []
        read_rgb = pixels_module.read_rgb
        monkeypatch.setattr(
            pixels_module, "read_rgb", lambda *args: reads.append(args) or read_rgb(*args)
        )
        got = read_thumbnail_at_mpp(tested, 0.5, target_mpp)
        assert (len(reads) == 0) == from_coarsest
        assert tested not in pixels_module._TEST_READ_TOP  # not kept past the thumbnail
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(read_thumbnail_at_mpp(tested, 0.5, target_mpp), expected)
        assert reads  # the second thumbnail read the slide


def test_read_region_matches_manual_level0_read(slides_dir):
    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as slide:
        x, y, side, out = 300, 500, 514, 256
        got = read_region_at(slide, x, y, side, out)
        raw = np.asarray(slide.read_region((x, y), 0, (side, side)).convert("RGB"))
        ref = cv2.resize(raw, (out, out), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(got, ref)


def test_read_uses_coarser_level_when_enough(synthetic_slide):
    """4x downsample reads level 2 directly: equals the stored level pixels exactly."""
    with open_slide(synthetic_slide) as slide:
        got = read_region_at(slide, 1024, 512, 1024, 256)
        raw = np.asarray(slide.read_region((1024, 512), 2, (256, 256)).convert("RGB"))
        np.testing.assert_array_equal(got, raw)


def test_child_equals_parent_quadrant_real_slide(slides_dir):
    """Child read at 20x vs the matching quadrant of its 10x parent read at 20x scale."""
    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as slide:
        s = 257  # round(256 * 0.5 / 0.499)
        px, py = 2 * s, 4 * s
        parent = read_region_at(slide, px, py, 2 * s, 512).astype(np.int16)
        for dr, dc in [(0, 0), (1, 0), (0, 1), (1, 1)]:
            child = read_region_at(slide, px + dc * s, py + dr * s, s, 256).astype(np.int16)
            quadrant = parent[dr * 256 : (dr + 1) * 256, dc * 256 : (dc + 1) * 256]
            diff = np.abs(child - quadrant)
            assert diff.mean() < 3.0  # resize rounding only
            assert np.percentile(diff, 99) < 40


def test_read_rect_and_thumbnail_shapes(slides_dir):
    with open_slide(slides_dir / "prostate-he-generic.tiff") as slide:
        rect = read_rect_at(slide, 0, 0, 800, 400, 100, 50)
        assert rect.shape == (50, 100, 3)
        thumb = read_thumbnail_at_mpp(slide, 0.5, 8.0)
        assert thumb.shape == (156, 156, 3)
        ref = np.asarray(slide.read_region((0, 0), 4, (156, 156)).convert("RGB"))
        np.testing.assert_array_equal(thumb, ref)


def test_open_slide_returns_openslide(synthetic_slide):
    with open_slide(synthetic_slide) as slide:
        assert isinstance(slide, openslide.OpenSlide)
        assert slide.level_count == 3


# --------------------------------------------------------------------------- big-level thumbnails


def _whole_level_thumbnail(slide: openslide.OpenSlide, level: int, out_w: int, out_h: int):
    """The reference: the whole level read at once, then one INTER_AREA resize."""
    from zoommil.wsi import pixels as pixels_module

    whole = pixels_module.read_rgb(slide, (0, 0), level, slide.level_dimensions[level])
    if whole.shape[:2] == (out_h, out_w):
        return whole
    return cv2.resize(whole, (out_w, out_h), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize(
    ("width", "height", "target_mpp"),
    [
        (1024, 768, 8.0),  # 16 x 16 blocks: OpenCV's block average
        (900, 600, 1.5),  # 3 x 3 blocks (1 / (1 / 3) is not 3.0 in doubles: still blocks)
        (1200, 1000, 8.0),  # 16 across, 1000 / 62 down: fractional weights
        (1000, 1024, 8.0),  # fractional across, 16 down
        (1000, 777, 3.3),  # fractional both ways
        (999, 998, 5.0),
    ],
)
def test_big_level_thumbnail_is_resized_in_strips_with_the_same_pixels(
    make_slide, monkeypatch, width, height, target_mpp
):
    """A level over the whole-level limit (a single-level scan here) is resized strip by strip:
    no read holds more than a strip of rows, and the thumbnail is bit-identical to resizing
    the whole level at once, for integer and fractional ratios alike."""
    from zoommil.wsi import pixels as pixels_module

    rng = np.random.default_rng(width + height)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 2)
    path = make_slide("one_level.tiff", rgb=rgb, levels=1, tile=64)
    monkeypatch.setattr(pixels_module, "_THUMB_WHOLE_LEVEL_BYTES", 0)
    monkeypatch.setattr(pixels_module, "_READ_STRIP_BYTES", width * 4 * 40)  # 40 rows a read
    spans = []
    read_rows = pixels_module._read_level_rows
    monkeypatch.setattr(
        pixels_module,
        "_read_level_rows",
        lambda slide, level, y0, y1: spans.append(y1 - y0) or read_rows(slide, level, y0, y1),
    )
    with open_slide(path, test_read=False) as slide:
        got = read_thumbnail_at_mpp(slide, 0.5, target_mpp)
        out_h, out_w = got.shape[:2]
        assert (out_w, out_h) == (round(width * 0.5 / target_mpp), round(height * 0.5 / target_mpp))
        assert len(spans) > 1 and max(spans) <= 42  # a strip (+ a shared edge row) at a time
        np.testing.assert_array_equal(got, _whole_level_thumbnail(slide, 0, out_w, out_h))


@pytest.mark.parametrize(
    ("name", "mpp"),
    [
        ("CMU-1-Small-Region.svs", 0.499),
        ("TCGA-CR-7395-01A-01-TS1.svs", 1.0),
        ("prostate-he-generic.tiff", 0.5),
        (None, 0.5),  # the synthetic pyramid
    ],
)
def test_pyramid_thumbnails_keep_the_whole_level_path(
    slides_dir, synthetic_slide, monkeypatch, name, mpp
):
    """Ordinary slides' levels at the mask's 8 um/px are far under the limit: their thumbnails
    (hence masks and lattices) are still the whole level resized once, pixel for pixel."""
    from zoommil.wsi import pixels as pixels_module

    path = synthetic_slide if name is None else slides_dir / name
    if not path.is_file():
        pytest.skip(f"{path} not found")

    def no_strips(*args):
        raise AssertionError("strip path taken")

    monkeypatch.setattr(pixels_module, "_area_resize_level", no_strips)
    with open_slide(path, test_read=False) as slide:
        got = read_thumbnail_at_mpp(slide, mpp, 8.0)
        w0, h0 = slide.dimensions
        need = min(w0 / got.shape[1], h0 / got.shape[0])
        level = best_level(slide, need)
        expected = _whole_level_thumbnail(slide, level, got.shape[1], got.shape[0])
        np.testing.assert_array_equal(got, expected)

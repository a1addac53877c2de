"""Tissue detection (zoommil.wsi.tissue) and `zoommil tissue`."""

from __future__ import annotations

import logging

import cv2
import h5py
import numpy as np
import pytest

from zoommil.cli import main
from zoommil.errors import ZoomMILError
from zoommil.recipe import PreprocessingRecipe
from zoommil.synth.pyramid import write_pyramidal_tiff
from zoommil.wsi import tissue as tissue_module
from zoommil.wsi.tissue import (
    detect_tissue,
    gaussian_tissue_mask,
    label_components,
    label_components_with_stats,
    load_mask,
    method_params,
    parse_param_args,
    save_mask,
    tissue_mask_for_slide,
)


def blobs_image(centres, size=(200, 300), radius=25, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """White image with H&E-coloured discs (and per-pixel noise); returns (rgb, truth)."""
    rng = np.random.default_rng(seed)
    h, w = size
    truth = np.zeros((h, w), dtype=np.uint8)
    for cy, cx in centres:
        cv2.circle(truth, (cx, cy), radius, 1, -1)
    truth = truth.astype(bool)
    rgb = np.full((h, w, 3), 245, dtype=np.float32) + rng.normal(0, 2, (h, w, 3))
    tissue = np.array([200, 110, 170], dtype=np.float32) + rng.normal(0, 10, (h, w, 3))
    rgb[truth] = tissue[truth]
    return np.clip(rgb, 0, 255).astype(np.uint8), truth


@pytest.mark.parametrize("seed", range(4))
def test_components_are_labelled_as_scipy_labels_them(seed):
    """The largest component wins ties by its label, so the numbering must stay SciPy's
    (raster order, 4-connectivity), not only the partition."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    for _ in range(25):
        h, w = rng.integers(1, 120, 2)
        mask = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        if seed % 2:  # blobs instead of salt and pepper
            mask = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2) > 0.5
        labels, n = label_components(mask)
        expected, expected_n = ndimage.label(mask)
        assert n == expected_n
        np.testing.assert_array_equal(labels, expected)
        labelled, n_stats, stats = label_components_with_stats(mask)
        np.testing.assert_array_equal(labelled, expected)
        assert n_stats == n and len(stats) == n + 1
        np.testing.assert_array_equal(stats[:, 4], np.bincount(expected.ravel(), minlength=n + 1))


def _peeling_reference(rgb, sigma, kernel_size, min_size, background_gray=228):
    """The Gaussian detector as published: every round blurs the whole image again (the
    library blurs only the rows a peeled region changed, and must give the same masks), the
    threshold is scikit-image's float Otsu of the positive blurred values, and each region
    is tested against the grey of the image before peeling."""
    img = rgb.copy()
    sat = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 1]
    hist = np.bincount(sat.ravel(), minlength=256)
    img[sat < max(_otsu_reference(hist), 8.0)] = 255
    gray_ref = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    mask = np.zeros(img.shape[:2], dtype=bool)
    kernel = np.ones((kernel_size, kernel_size), dtype=np.uint8)
    for _ in range(100):
        inv = 255.0 - cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
        blurred = cv2.GaussianBlur(inv, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)
        positive = blurred[blurred > 0]
        if positive.size == 0:
            break
        thr = _float_otsu_reference(positive)
        blurred[blurred < thr] = 0
        labels, n = label_components(blurred > 0)
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        sizes[sizes < min_size] = 0
        if n == 0 or sizes.max() == 0:
            break
        region = cv2.dilate((labels == np.argmax(sizes)).astype(np.uint8), kernel).astype(bool)
        grey = gray_ref * region
        if not grey[grey > 0].mean() < background_gray:  # NaN (no grey pixel) stops too
            break
        mask |= region
        img[region] = 255
    return mask


def _otsu_reference(hist):
    prob = hist / hist.sum()
    omega, mu = np.cumsum(prob), np.cumsum(prob * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1.0 - omega))
    return float(np.argmax(np.nan_to_num(between, nan=-1.0, posinf=-1.0)))


def _float_otsu_reference(values):
    """scikit-image's `threshold_otsu` of float values: 256 bins over their range, the
    between-class variance of each split, the centre of the best split's last bin."""
    if np.all(values == values[0]):
        return float(values[0])
    counts, edges = np.histogram(values, bins=256, range=(values.min(), values.max()))
    centres = (edges[:-1] + edges[1:]) / 2
    best, best_variance = 0, -1.0
    for k in range(255):
        w1, w2 = counts[: k + 1].sum(), counts[k + 1 :].sum()
        if w1 == 0 or w2 == 0:
            continue
        m1 = (counts[: k + 1] * centres[: k + 1]).sum() / w1
        m2 = (counts[k + 1 :] * centres[k + 1 :]).sum() / w2
        variance = float(w1) * float(w2) * (m1 - m2) ** 2
        if variance > best_variance:
            best, best_variance = k, variance
    return float(centres[best])


@pytest.mark.parametrize("seed", range(3))
def test_gaussian_detector_peels_exactly_like_whole_image_blurs(seed):
    """Bit-for-bit the published loop, on images with many separate pieces of tissue (the
    rows re-blurred per round then cover only part of the image)."""
    rng = np.random.default_rng(seed)
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(120, 700, 2))
        rgb = np.full((h, w, 3), 240, dtype=np.uint8)
        for _ in range(int(rng.integers(2, 14))):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(2, 120)), int(rng.integers(2, 120)))
            colour = tuple(int(c) for c in rng.integers(60, 230, 3))
            cv2.ellipse(rgb, centre, axes, float(rng.integers(0, 180)), 0, 360, colour, -1)
        noise = rng.integers(-25, 25, rgb.shape)
        rgb = np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        params = {
            "sigma": float(rng.choice([3.0, 10.0, 20.0])),
            "kernel_size": int(rng.choice([1, 7, 20])),
            "min_size": int(rng.choice([1, 10])),
        }
        expected = _peeling_reference(rgb, **params)
        np.testing.assert_array_equal(gaussian_tissue_mask(rgb, **params), expected)


def test_window_reblur_equals_the_whole_image_blur_bit_for_bit():
    """A peeled rectangle anywhere (at the edges, with widths that are no multiple of the
    vector width) re-blurred in its window gives the whole-image blur's exact values."""
    rng = np.random.default_rng(0)
    for h, w in [(1600, 1920), (331, 517), (90, 70)]:
        img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        inv = 255.0 - cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
        sigma = 20.0
        blurred = tissue_module._blur(inv, sigma)
        for _ in range(25):
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            rect = (
                slice(y0, int(rng.integers(y0 + 1, min(h, y0 + 300) + 1))),
                slice(x0, int(rng.integers(x0 + 1, min(w, x0 + 300) + 1))),
            )
            img[rect] = 255
            tissue_module._reblur_window(img, inv, blurred, rect, sigma)
            whole_inv = 255.0 - cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
            whole = tissue_module._blur(whole_inv, sigma)
            np.testing.assert_array_equal(inv, whole_inv)
            np.testing.assert_array_equal(blurred, whole)


def test_histograms_count_integer_parts_like_numpy():
    """OpenCV's histogram of uint8 values (the saturation's Otsu) against NumPy's bincount."""
    rng = np.random.default_rng(1)
    for h, w in [(0, 5), (1, 1), (37, 91), (400, 300)]:
        sat = rng.integers(0, 256, (h, w)).astype(np.uint8)
        expected = np.bincount(sat.ravel(), minlength=256)
        np.testing.assert_array_equal(tissue_module._histogram(sat), expected)


def test_the_blur_threshold_is_scikit_image_s_float_otsu():
    """Faint blur tails below 1 (what is left once tissue is peeled) get a threshold inside
    them, not 0: with integer bins every such pixel passed, and a round took the blur's
    whole reach of glass as tissue."""
    rng = np.random.default_rng(3)
    for values in (
        rng.random(5000).astype(np.float32) * 200,
        np.concatenate([rng.random(900) * 0.3, 0.6 + rng.random(100) * 0.3]).astype(np.float32),
        np.float32([0.0, 0.0, 0.5, 0.5]),
    ):
        positive = values[values > 0]
        assert tissue_module._otsu_of_positive(values) == _float_otsu_reference(positive)
    tail = np.concatenate([rng.random(900) * 0.3, 0.6 + rng.random(100) * 0.3]).astype(np.float32)
    assert 0.3 <= tissue_module._otsu_of_positive(tail) <= 0.6
    assert tissue_module._otsu_of_positive(np.zeros(10, np.float32)) is None


def test_whiten_paints_a_view_of_the_image():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (60, 80, 3)).astype(np.uint8)
    where = rng.random((20, 30)) < 0.5
    expected = img.copy()
    expected[10:30, 40:70][where] = 255
    tissue_module._whiten(img[10:30, 40:70], where)
    np.testing.assert_array_equal(img, expected)


@pytest.mark.parametrize("method", ["gaussian", "otsu"])
def test_detects_all_separate_blobs(method):
    centres = [(50, 60), (140, 230), (60, 220)]
    rgb, truth = blobs_image(centres)
    params = {"sigma": 3, "kernel_size": 3} if method == "gaussian" else {"min_area_um2": 6400}
    mask = detect_tissue(rgb, method, **params)
    assert mask.shape == truth.shape and mask.dtype == bool
    # every blob found (gaussian peels them one by one), background mostly clear
    for cy, cx in centres:
        assert mask[cy, cx]
    assert mask[truth].mean() > 0.95
    assert mask[~truth].mean() < 0.1


SPECKS = [(20, 180), (80, 200), (130, 160)]


def block_and_specks(speck: int) -> np.ndarray:
    """An 80 x 80 px tissue block and three ``speck`` x ``speck`` px specks of the same
    colour on white glass."""
    rgb = np.full((160, 240, 3), 245, dtype=np.uint8)
    rgb[40:120, 30:110] = (200, 110, 170)
    for y, x in SPECKS:
        rgb[y : y + speck, x : x + speck] = (200, 110, 170)
    return rgb


def _specks_found(mask: np.ndarray, speck: int) -> list[bool]:
    return [bool(mask[y + speck // 2, x + speck // 2]) for y, x in SPECKS]


def test_otsu_removes_objects_below_min_area():
    """10 x 10 px specks at 8 um/px (6,400 um^2) are under the default 50,000 um^2 and go;
    the block (409,600 um^2) stays. With no minimum area the same specks are tissue."""
    rgb = block_and_specks(10)
    mask = detect_tissue(rgb, "otsu")
    assert mask[45:115, 35:105].all()
    assert _specks_found(mask, 10) == [False] * 3 and not mask[:, 130:].any()
    assert _specks_found(detect_tissue(rgb, "otsu", min_area_um2=0), 10) == [True] * 3


def test_gaussian_min_size_stops_peeling_at_small_components():
    """After the block is peeled, each 6 x 6 px speck is a 60 px component of the blur's
    threshold (sigma 2): under ``min_size`` 100 peeling stops there. Without the size filter
    the speck is the largest remaining component, and its dilation is dark enough to pass
    the background test, so it is peeled as tissue (as with ``min_size`` 1). The paper's
    sigma 20 blurs the specks into one ~8,700 px component that the background test ends,
    so this needs a small sigma."""
    rgb = block_and_specks(6)
    params = {"sigma": 2.0, "kernel_size": 3, "min_size": 100}
    mask = gaussian_tissue_mask(rgb, **params)
    assert mask[40:120, 30:110].all()
    assert _specks_found(mask, 6) == [False] * 3 and not mask[:, 130:].any()
    kept = gaussian_tissue_mask(rgb, **(params | {"min_size": 1}))
    assert _specks_found(kept, 6) == [True] * 3


def test_otsu_threshold_value_itself_is_background():
    """Otsu splits the histogram into values <= t and values > t, and CLAM thresholds with
    OpenCV's THRESH_BINARY (src > thresh): a pixel whose saturation equals the threshold is
    background. Two saturation levels, 40 and 120: every t in [40, 120) separates them
    equally well, Otsu takes the first, 40, and only the 120 square is tissue."""
    rgb = np.full((60, 80, 3), (255, 215, 215), dtype=np.uint8)  # saturation 40
    rgb[20:40, 30:50] = (255, 135, 135)  # saturation 120
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    assert set(np.unique(sat).tolist()) == {40, 120}
    assert tissue_module._otsu(sat) == 40.0
    mask = detect_tissue(rgb, "otsu", median_kernel=1, close_kernel=0, min_area_um2=0)
    expected = np.zeros((60, 80), dtype=bool)
    expected[20:40, 30:50] = True
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("method", ["gaussian", "otsu"])
def test_blank_and_noise_images_give_empty_masks(method):
    white = np.full((120, 160, 3), 255, dtype=np.uint8)
    assert not detect_tissue(white, method).any()
    rng = np.random.default_rng(1)
    noise = np.clip(240 + rng.normal(0, 3, (120, 160, 3)), 0, 255).astype(np.uint8)
    assert not detect_tissue(noise, method).any()


def test_gaussian_paper_defaults_cover_the_tissue(synthetic_slide):
    mask, mask_mpp, info = tissue_mask_for_slide(synthetic_slide)
    assert mask_mpp == 8.0 and mask.shape == (96, 128)  # 2048x1536 at 0.5 -> 8 um/px
    assert info["mpp_source"] == "openslide.mpp-x"
    # the ellipse of the synthetic slide (centre 0.4 W, 0.45 H) lies inside the mask
    yy, xx = np.mgrid[:96, :128]
    ellipse = ((yy - 0.45 * 96) / (0.3 * 96)) ** 2 + ((xx - 0.4 * 128) / (0.28 * 128)) ** 2 < 0.8
    assert mask[ellipse].all()
    assert not mask[:, -5:].any()  # right edge is background


def test_otsu_on_real_slide(slides_dir):
    mask, _, info = tissue_mask_for_slide(slides_dir / "CMU-1-Small-Region.svs", method="otsu")
    assert mask.shape == (185, 138)
    assert 0.1 < mask.mean() < 0.7
    # tissue is darker than background on average
    gray = info["thumbnail"].mean(axis=2)
    assert gray[mask].mean() < gray[~mask].mean() - 30


def test_params_validation():
    assert method_params("gaussian", {"sigma": 10})["sigma"] == 10.0
    assert method_params("gaussian", {"kernel_size": 7.0})["kernel_size"] == 7
    with pytest.raises(ZoomMILError, match="unknown parameter 'sigmaa'"):
        method_params("gaussian", {"sigmaa": 1})
    with pytest.raises(ZoomMILError, match="unknown tissue method"):
        method_params("deep", {})
    assert parse_param_args(["sigma=10", "prewhiten=false"]) == {"sigma": 10.0, "prewhiten": False}
    with pytest.raises(ZoomMILError, match="NAME=VALUE"):
        parse_param_args(["sigma"])


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("gaussian", {"sigma": 0}, "sigma=0 (gaussian detector): must be a finite number > 0"),
        ("gaussian", {"sigma": -5.0}, "sigma=-5.0 (gaussian detector): must be"),
        ("gaussian", {"sigma": float("nan")}, "sigma=nan (gaussian detector): must be"),
        ("gaussian", {"sigma": "ten"}, "sigma='ten' (gaussian detector): must be a finite number"),
        ("gaussian", {"sigma": True}, "sigma=True (gaussian detector): must be a finite number"),
        (
            "gaussian",
            {"kernel_size": float("inf")},
            "kernel_size=inf (gaussian detector): must be an integer >= 1",
        ),  # fmt: skip
        ("gaussian", {"kernel_size": 7.5}, "kernel_size=7.5 (gaussian detector): must be an int"),
        ("gaussian", {"kernel_size": 0}, "kernel_size=0 (gaussian detector): must be an integer"),
        ("gaussian", {"max_regions": float("nan")}, "max_regions=nan (gaussian detector)"),
        ("gaussian", {"max_regions": 0}, "max_regions=0 (gaussian detector): must be an integer"),
        ("gaussian", {"min_size": -1}, "min_size=-1 (gaussian detector): must be an integer >= 0"),
        (
            "gaussian",
            {"background_gray": 256},
            "background_gray=256 (gaussian detector): must be an integer >= 0 and <= 255",
        ),  # fmt: skip
        (
            "gaussian",
            {"prewhiten": "maybe"},
            "prewhiten='maybe' (gaussian detector): must be true or false",
        ),  # fmt: skip
        ("gaussian", {"prewhiten": 2}, "prewhiten=2 (gaussian detector): must be true or false"),
        ("gaussian", {"prewhiten": None}, "prewhiten=None (gaussian detector): must be true"),
        ("otsu", {"median_kernel": 0}, "median_kernel=0 (otsu detector): must be an integer >= 1"),
        ("otsu", {"close_kernel": -2}, "close_kernel=-2 (otsu detector): must be an integer >= 0"),
        ("otsu", {"min_saturation": 1e9}, "min_saturation=1000000000.0 (otsu detector)"),
        (
            "otsu",
            {"min_area_um2": float("-inf")},
            "min_area_um2=-inf (otsu detector): must be a finite number >= 0",
        ),  # fmt: skip
    ],
)
def test_bad_param_values_are_one_line_errors(method, params, message):
    """A value a detector cannot take (sigma 0 was an OpenCV traceback mid-blur, inf an
    OverflowError, nan a ValueError) fails before any work, naming the parameter, the value
    and what is allowed; the recipe (config, `zoommil tile`) checks the same way."""
    with pytest.raises(ZoomMILError) as error:
        method_params(method, params)
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ZoomMILError, match="tissue parameter"):
        PreprocessingRecipe(mags=[5, 20], tissue_method=method, tissue_params=params)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("false", False), ("FALSE", False), (" no ", False), ("0", False), ("off", False),
        (False, False), (0, False), (np.bool_(False), False),
        ("true", True), ("Yes", True), ("1", True), ("on", True), (True, True), (1.0, True),
    ],
)  # fmt: skip
def test_boolean_params_take_words_not_truthiness(value, expected):
    """``bool("false")`` is True: a config's ``prewhiten: "false"`` silently kept whitening."""
    assert method_params("gaussian", {"prewhiten": value})["prewhiten"] is expected
    recipe = PreprocessingRecipe(mags=[5, 20], tissue_params={"prewhiten": value})
    assert recipe.tissue_params == {"prewhiten": expected}


def test_numeric_params_are_typed_like_their_defaults():
    got = method_params("gaussian", {"sigma": "10", "kernel_size": 7.0, "max_regions": np.int64(3)})
    assert (got["sigma"], got["kernel_size"], got["max_regions"]) == (10.0, 7, 3)
    assert type(got["kernel_size"]) is int and type(got["sigma"]) is float
    assert method_params("otsu", {"close_kernel": 0, "min_area_um2": 0})["close_kernel"] == 0


def test_mask_png_roundtrip(tmp_path):
    mask = np.zeros((10, 20), dtype=bool)
    mask[2:5, 3:9] = True
    path = save_mask(
        tmp_path / "m.png", mask, {"zoommil.mask_mpp": "8.0", "zoommil.method": "otsu"}
    )
    back, meta = load_mask(path)
    np.testing.assert_array_equal(back, mask)
    assert meta == {"mask_mpp": 8.0, "method": "otsu"}


def test_tissue_cli_writes_mask_and_overlay(synthetic_slide, tmp_path):
    out = tmp_path / "masks" / "s.png"
    assert main(["tissue", str(synthetic_slide), "--out", str(out), "--method", "otsu"]) == 0
    mask, meta = load_mask(out)
    assert mask.shape == (96, 128) and mask.any()
    assert meta["mask_mpp"] == 8.0 and meta["method"] == "otsu"
    assert meta["dimensions"] == [2048, 1536] and meta["mpp_source"] == "openslide.mpp-x"
    assert meta["params"]["median_kernel"] == 7
    overlay = tmp_path / "masks" / "s.overlay.jpg"
    assert overlay.exists()
    custom = tmp_path / "qc.png"
    args = ["tissue", str(synthetic_slide), "--out", str(out), "--overlay", str(custom)]
    assert main([*args, "--param", "sigma=5"]) == 0
    assert custom.exists()
    # another suffix was written as a PNG whatever its name; now refused, naming the three
    with pytest.raises(SystemExit) as usage:
        main([*args[:-1], str(tmp_path / "qc.tif")])
    assert usage.value.code == 2 and not (tmp_path / "qc.tif").exists()


def test_tissue_cli_empty_mask_is_a_result(make_slide, tmp_path, caplog):
    slide = make_slide("white.tiff", width=512, height=512, tissue=False)
    out = tmp_path / "white.png"
    with caplog.at_level(logging.WARNING):
        assert main(["tissue", str(slide), "--out", str(out)]) == 0
    mask, _ = load_mask(out)
    assert not mask.any()
    assert "no tissue found" in caplog.text


def test_a_lone_small_fragment_missed_by_the_gaussian_detector_is_said(tmp_path, caplog):
    """A 300 um fragment alone on glass: the paper's detector drops it (its region, dilated by
    160 um, is mostly glass by its grey test) and said only "no tissue found" (review P); the
    warning now names the limit and the detector that finds it."""
    image = np.full((3072, 4096, 3), 240, np.uint8)
    rng = np.random.default_rng(0)
    image[1386:1686, 1898:2198] = rng.integers(90, 180, size=(300, 300, 3), dtype=np.uint8)
    slide = tmp_path / "little.tiff"
    write_pyramidal_tiff(slide, image, mpp=1.0)
    masks = {}
    for method in ("gaussian", "otsu"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            masks[method], _, _ = tissue_module.tissue_mask_for_slide(slide, method=method)
    assert not masks["gaussian"].any() and masks["otsu"].any()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tissue_module.tissue_mask_for_slide(slide, method="gaussian")
    assert "it misses fragments alone on glass under ~0.5 mm across: `--method otsu`" in (
        caplog.text
    )


@pytest.mark.parametrize(("command", "flag"), [("tissue", "--param"), ("tile", "--tissue-param")])
def test_cli_bad_param_value_is_one_line_exit_2(synthetic_slide, tmp_path, capsys, command, flag):
    out = tmp_path / ("mask.png" if command == "tissue" else "coords.h5")
    extra = ["--mags", "5", "20"] if command == "tile" else []
    args = [command, str(synthetic_slide), "--out", str(out), *extra, flag, "sigma=0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"zoommil {command}: error: tissue parameter sigma=0.0 (gaussian detector): "
        "must be a finite number > 0"
    )
    assert not out.exists()


def test_tissue_cli_bad_param(synthetic_slide, tmp_path, capsys):
    out = tmp_path / "m.png"
    assert main(["tissue", str(synthetic_slide), "--out", str(out), "--param", "nope=1"]) == 2
    assert "unknown parameter 'nope'" in capsys.readouterr().err
    assert not out.exists()


def test_a_mask_of_another_tool_is_binary_and_single_channel(tmp_path):
    """A mask brought without zoommil metadata: 0/255, 0/1 or a bilevel image all work."""
    from PIL import Image

    mask = np.zeros((12, 16), bool)
    mask[3:9, 2:11] = True
    for name, image in (
        ("l255.png", Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))),
        ("l01.png", Image.fromarray(mask.astype(np.uint8))),
        ("bilevel.png", Image.fromarray(mask)),
        ("empty.png", Image.fromarray(np.zeros((12, 16), np.uint8))),
    ):
        image.save(tmp_path / name)
        back, meta = load_mask(tmp_path / name)
        np.testing.assert_array_equal(back, mask if name != "empty.png" else False)
        assert meta == {}


def test_an_overlay_or_photo_is_not_a_mask(synthetic_slide, tmp_path, capsys):
    """`tile --tissue-mask X.overlay.jpg` read the RGB overlay as grey > 127, so the white
    background became tissue; now one line naming the file and why."""
    mask = tmp_path / "m.png"
    assert main(["tissue", str(synthetic_slide), "--out", str(mask)]) == 0
    overlay = tmp_path / "m.overlay.jpg"
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.arange(96 * 128, dtype=np.uint16).reshape(96, 128).astype(np.uint8))
    capsys.readouterr()
    for path, why in (
        (overlay, "a 3-channel RGB image"),
        (grey, "256 distinct values (0, 1, 2, 3, 4 and 251 more)"),
    ):
        out = tmp_path / "c.h5"
        argv = ["tile", str(synthetic_slide), "--mags", "5", "--out", str(out)]
        assert main([*argv, "--tissue-mask", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{path}: not a tissue mask: {why}" in err, err
        assert not out.exists()
    # the mask written next to the overlay is one
    assert main(["tile", str(synthetic_slide), "--mags", "5", "--out", str(tmp_path / "c.h5"),
                 "--tissue-mask", str(mask)]) == 0  # fmt: skip


def test_a_tissue_method_given_with_a_mask_is_said_to_be_ignored(synthetic_slide, tmp_path, caplog):
    """`tile --tissue-mask M --tissue-method otsu` silently kept M's method; the coords file
    records the mask's, and a warning says the flag was not used."""
    mask = tmp_path / "m.png"
    assert main(["tissue", str(synthetic_slide), "--out", str(mask)]) == 0
    out = tmp_path / "c.h5"
    argv = ["tile", str(synthetic_slide), "--mags", "5", "--out", str(out)]
    argv += ["--tissue-mask", str(mask)]
    caplog.clear()
    assert main([*argv, "--tissue-method", "otsu"]) == 0
    assert "--tissue-method otsu is ignored with --tissue-mask" in caplog.text
    with h5py.File(out) as f:
        assert f.attrs["tissue_method"] == "gaussian"
    caplog.clear()
    assert main(argv) == 0
    assert "is ignored" not in caplog.text

"""`zoommil synth`: deterministic pyramidal TIFFs that OpenSlide reads at the right mpp, a
balanced stratified sheet, and a class signal that the 4x-reduced view cannot see."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest

from zoommil.cli import main
from zoommil.io.sheet import read_sheet
from zoommil.synth import (
    CLASSES,
    SlideSpec,
    make_demo_dataset,
    plan_slides,
    region_mask,
    render_slide,
)
from zoommil.synth.painting import ellipse_sprite
from zoommil.synth.pyramid import pyramid_levels


def digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def area_down(rgb: np.ndarray, factor: int) -> np.ndarray:
    return cv2.resize(rgb, None, fx=1 / factor, fy=1 / factor, interpolation=cv2.INTER_AREA)


def high_frequency(rgb: np.ndarray) -> np.ndarray:
    """|grey - 3x3 box mean|: large where there is pixel-scale texture."""
    grey = rgb.astype(np.float32).mean(axis=2)
    return np.abs(grey - cv2.blur(grey, (3, 3)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    make_demo_dataset(out, n_slides=3, seed=0, scale=0.5, progress=False)
    return out


@pytest.fixture(scope="module", params=["atypia", "carcinoma"])
def paired(request):
    """The same slide rendered with its class signal and with all nuclei normal."""
    spec = SlideSpec("pair", request.param, seed=5, index=1, width=2048, height=1536)
    return request.param, render_slide(spec), render_slide(spec, with_signal=False)


def test_plan_is_balanced_and_stratified():
    plan = plan_slides(36, seed=0)
    labels = [spec.label for spec, _ in plan]
    assert {c: labels.count(c) for c in CLASSES} == {c: 12 for c in CLASSES}
    for c in CLASSES:
        splits = [split for spec, split in plan if spec.label == c]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (7, 2, 3)
    small = plan_slides(9, seed=1)
    for c in CLASSES:  # 3 per class: one in each split
        assert sorted(split for spec, split in small if spec.label == c) == ["test", "train", "val"]


def test_sheet_columns_labels_and_paths(demo):
    with open(demo / "slides.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == ["slide_id", "path", "label", "split"]
    assert [r["label"] for r in rows] == list(CLASSES)
    for row in rows:
        assert not Path(row["path"]).is_absolute()  # relative to the sheet's folder
    resolved = read_sheet(demo / "slides.tsv").to_dict("records")
    for row in resolved:
        assert Path(row["path"]).is_absolute() and Path(row["path"]).is_file()


def test_regions_sheet_matches_labels(demo):
    with open(demo / "regions.tsv", newline="") as handle:
        regions = list(csv.DictReader(handle, delimiter="\t"))
    labels = {r["slide_id"]: r["label"] for r in read_sheet(demo / "slides.tsv").to_dict("records")}
    for slide_id, label in labels.items():
        kinds = [(r["kind"], r["abnormality"]) for r in regions if r["slide_id"] == slide_id]
        # Every class has one lesion (the low-mag cue) and ordinary glands; only the lesion's
        # nuclei carry the class.
        assert [a for k, a in kinds if k == "lesion"] == ["none" if label == "normal" else label]
        assert {a for k, a in kinds if k == "distractor"} == {"none"}


def test_openslide_reads_levels_mpp_and_exact_pixels(demo):
    row = read_sheet(demo / "slides.tsv").to_dict("records")[1]
    spec, _ = plan_slides(3, seed=0, scale=0.5)[1]
    expected = render_slide(spec).rgb
    slide = openslide.OpenSlide(row["path"])
    try:
        assert slide.level_count >= 3
        assert slide.dimensions == (2048, 1536)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(1.0)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(1.0)
        assert slide.level_downsamples[:3] == pytest.approx((1.0, 2.0, 4.0))
        level0 = np.asarray(slide.read_region((512, 256), 0, (300, 200)))
        np.testing.assert_array_equal(level0[..., :3], expected[256:456, 512:812])
        assert (level0[..., 3] == 255).all()
        # Level 2 is the 4x area reduction of level 0 (up to rounding).
        level2 = np.asarray(slide.read_region((0, 0), 2, slide.level_dimensions[2]))[..., :3]
        diff = np.abs(level2.astype(int) - area_down(expected, 4).astype(int))
        assert diff.max() <= 1
        # White glass around the tissue.
        assert (level2[:4, :4] > 235).all()
    finally:
        slide.close()


def test_pyramid_level_k_is_the_rounded_exact_mean_of_its_blocks():
    """Level k = round half to even of the exact mean of each 2^k x 2^k block of level 0
    (integer sums here), whatever way the levels are summed."""
    image = np.random.default_rng(0).integers(0, 256, (260, 390, 3), dtype=np.uint8)
    levels = pyramid_levels(image, min_levels=4, min_side=16)
    assert [lv.shape[:2] for lv in levels] == [(260, 390), (130, 195), (65, 97), (32, 48), (16, 24)]
    for k, level in enumerate(levels[1:], 1):
        f = 2**k
        h, w = level.shape[:2]
        sums = image[: h * f, : w * f].astype(np.int64).reshape(h, f, w, f, 3).sum(axis=(1, 3))
        np.testing.assert_array_equal(level, np.rint(sums / f**2).astype(np.uint8))


def test_ellipse_sprite_is_the_anti_aliased_coverage_of_its_ellipse():
    """Coverage 1 inside, 0 outside, about 1/2 on the outline, at the sprite's own offset."""
    x, y, a, b, theta = 40.3, 17.8, 4.5, 2.5, 0.6
    x0, y0, cover = ellipse_sprite(x, y, a, b, theta)
    assert (x0, y0) == (40 - 7, 17 - 7) and cover.shape == (15, 15)
    yy, xx = np.mgrid[y0 : y0 + 15, x0 : x0 + 15] + 0.5  # pixel centres
    u = (np.cos(theta) * (xx - x) + np.sin(theta) * (yy - y)) / a
    v = (-np.sin(theta) * (xx - x) + np.cos(theta) * (yy - y)) / b
    d = np.hypot(u, v)
    np.testing.assert_allclose(cover, np.clip((1 - d) * b + 0.5, 0, 1), atol=1e-6)
    assert (cover[d < 0.5] == 1).all() and (cover[d > 1.5] == 0).all()


def test_cli_same_seed_same_bytes_any_workers_other_seed_differs(tmp_path):
    args = ["synth", "--n-slides", "2", "--scale", "0.25"]
    assert main([*args, "--out", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--seed", "3", "--workers", "2"]) == 0
    assert main([*args, "--out", str(tmp_path / "c"), "--seed", "4"]) == 0
    a, b, c = (digest(tmp_path / n) for n in "abc")
    assert set(a) == {"slides.tsv", "regions.tsv", "slides/demo_000.tiff", "slides/demo_001.tiff"}
    assert a == b
    assert a["slides/demo_000.tiff"] != c["slides/demo_000.tiff"]


def test_numpy_floor_is_the_promotion_rules_the_bytes_depend_on():
    """Same seed, same bytes holds under NumPy 2's promotion rules (NEP 50) only: e.g.
    `ellipse_sprite` takes a nucleus centre as a float64 scalar to its float32 pixel grid,
    which NumPy 2 computes in float64 and NumPy 1 in float32. So numpy>=2 is the floor (the
    conda envs repeat it: tests/test_envs.py)."""
    import re

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    (floor,) = re.findall(r'^\s*"numpy\s*>=\s*(\d+)[^"]*",', pyproject, flags=re.M)
    assert int(floor) >= 2
    grid, centre = np.zeros(2, np.float32), np.float64(0.1)
    assert (grid - centre).dtype == np.float64  # the rule the synth bytes were made under


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-slides", "0"], "--n-slides must be at least 1"),
        (["--scale", "10"], "--scale must be between"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--seed", "-1"], "--seed must be at least 0, got -1"),
        (["--seed", "4294967296"], "--seed must be below 2**32 = 4294967296, got 4294967296"),
    ],
)
def test_cli_bad_input_is_one_line_error(tmp_path, capsys, argv, message):
    assert main(["synth", "--out", str(tmp_path / "x" / "y"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()  # nothing written, not even the output folder


def test_out_must_be_a_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["synth", "--out", str(tmp_path / "file"), "--n-slides", "1"]) == 2
    err = capsys.readouterr().err  # checked before any slide is drawn, naming the path
    assert f"{tmp_path / 'file'} is not a folder" in err and err.count("\n") == 1


def test_signal_invisible_after_4x_area_reduction(paired):
    _, with_signal, control = paired
    assert with_signal.rgb.shape == control.rgb.shape
    # 2.5x view (4x area reduction): pixel-identical up to uint8 rounding.
    low_a, low_b = area_down(with_signal.rgb, 4), area_down(control.rgb, 4)
    assert np.abs(low_a.astype(int) - low_b.astype(int)).max() <= 1
    mask = region_mask(with_signal.rgb.shape[:2], with_signal.regions, "lesion")[::4, ::4]
    assert mask.sum() > 1000
    mean_a, mean_b = low_a[mask].mean(axis=0), low_b[mask].mean(axis=0)
    np.testing.assert_allclose(mean_a, mean_b, atol=0.2)


def test_signal_visible_at_full_resolution(paired):
    label, with_signal, control = paired
    shape = with_signal.rgb.shape[:2]
    lesion = region_mask(shape, with_signal.regions, "lesion")
    hf_signal, hf_control = high_frequency(with_signal.rgb), high_frequency(control.rgb)
    # 10x: the lesion has far more pixel-scale texture than the same lesion without the
    # signal; elsewhere the slide is untouched.
    assert hf_signal[lesion].mean() > 1.4 * hf_control[lesion].mean()
    near = cv2.dilate(lesion.astype(np.uint8), np.ones((33, 33), np.uint8)).astype(bool)
    np.testing.assert_array_equal(with_signal.rgb[~near], control.rgb[~near])
    # 2.5x: the same statistic no longer tells the abnormal lesion from the normal one.
    low = lesion[::4, ::4]
    ratio = (
        high_frequency(area_down(with_signal.rgb, 4))[low].mean()
        / high_frequency(area_down(control.rgb, 4))[low].mean()
    )
    assert 0.97 < ratio < 1.03, label


def test_lesion_is_visible_at_low_magnification():
    """Where to look is a 2.5x cue in every class: the lesion's crowded glands hold more dark
    (nuclear) pixels than the ordinary gland regions (the distractors), the same in every class."""
    darkness = {}
    for label in CLASSES:
        spec = SlideSpec("cue", label, seed=5, index=1, width=2048, height=1536)
        slide = render_slide(spec)
        grey = area_down(slide.rgb, 4).astype(np.float32).mean(axis=2)
        shape = slide.rgb.shape[:2]
        lesion = region_mask(shape, slide.regions, "lesion")[::4, ::4]
        glands = region_mask(shape, slide.regions, "distractor")[::4, ::4]
        assert lesion.sum() > 1000 and glands.sum() > 1000
        darkness[label] = (grey[lesion] < 150).mean()
        assert darkness[label] > 1.3 * (grey[glands] < 150).mean(), label
    assert max(darkness.values()) - min(darkness.values()) < 0.01


def test_normal_slide_has_no_signal():
    spec = SlideSpec("n", "normal", seed=0, index=0, width=1024, height=768)
    slide = render_slide(spec)
    assert all(r.abnormality == "none" for r in slide.regions)
    assert [r.kind for r in slide.regions].count("lesion") == 1
    np.testing.assert_array_equal(slide.rgb, render_slide(spec, with_signal=False).rgb)


def test_demo_config_leaves_zoommil_a_choice(tmp_path):
    """The demo config only makes sense if ZoomMIL's lowest magnification holds many more
    tissue patches than K (else top-K keeps most of the bag) and the lesion is a minority of
    them (else zooming anywhere finds it). Checked on a full-size demo slide with the config's
    own magnifications, tissue settings and K."""
    import yaml

    from zoommil.recipe import PreprocessingRecipe
    from zoommil.wsi.tiling import tile_slide

    config = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())
    k = config["methods"]["zoommil"]["k"]
    sheet = make_demo_dataset(tmp_path, n_slides=1, seed=config["synth"]["seed"], progress=False)
    with open(tmp_path / "regions.tsv", newline="") as handle:
        lesion = next(r for r in csv.DictReader(handle, delimiter="\t") if r["kind"] == "lesion")
    lattice = tile_slide(read_sheet(sheet)["path"][0], PreprocessingRecipe.from_config(config))
    n_low, side = lattice.num_patches()[0], lattice.sides[0]
    assert n_low >= 6 * k, f"{n_low} patches at {lattice.mags[0]}x for K={k}"
    centres = lattice.xy[0] + side / 2
    cx, cy, radius = (float(lesion[c]) for c in ("cx", "cy", "radius"))
    on_lesion = np.hypot(centres[:, 0] - cx, centres[:, 1] - cy) < radius + side / 2
    assert 1 <= on_lesion.sum() <= n_low / 3


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    """synth drew its bar whatever stderr was (a log file too)."""
    assert main(["synth", "--out", str(tmp_path / "d"), "--n-slides", "1", "--scale", "0.25"]) == 0
    assert "\r" not in capsys.readouterr().err

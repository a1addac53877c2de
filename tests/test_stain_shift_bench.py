"""benchmarks/stain_shift.py: its perturbations are the identity at strength 0 and move the
stain they name, its measures are 1 for an unchanged slide, its JSON has the documented
shape, and a slide it cannot read stops it naming the file."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import stain_shift as ss
from slide_factory import synthetic_tissue_rgb, write_pyramid_tiff

H, E, D = 0, 1, 2


@pytest.fixture(scope="module")
def he_image() -> np.ndarray:
    """An H&E-like image (pink stroma, purple nuclei) on white glass."""
    return synthetic_tissue_rgb(256, 192, seed=3)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-level synthetic slide, 2 x 1.5 mm at 1 um/px: at 0.5 um/px (1 mm wide) the
    CAMELYON16 recipe's detector (kernel 100) finds no tissue in it."""
    return write_pyramid_tiff(tmp_path_factory.mktemp("stain") / "synthetic.tiff", mpp=1.0)


@pytest.mark.parametrize("name", list(ss.STRENGTHS))
def test_identity_strength_returns_the_image_and_others_change_it(name, he_image) -> None:
    rng = np.random.default_rng(0)
    same = ss.perturb(he_image, name, ss.IDENTITY.get(name, 0.0), rng)
    assert np.array_equal(same, he_image) and same is not he_image
    strongest = max(ss.STRENGTHS[name], key=lambda s: ss._severity(name, s))
    assert not np.array_equal(ss.perturb(he_image, name, strongest, rng), he_image)


def test_colour_deconvolution_round_trip(he_image) -> None:
    """RGB -> H, E, D -> RGB is within one grey level (the uint8 rounding)."""
    back = ss.hed_to_rgb(ss.rgb_to_hed(he_image))
    assert np.abs(back.astype(int) - he_image.astype(int)).max() <= 1


def test_pure_stains_deconvolve_to_their_own_channel() -> None:
    """A pixel made of eosin only reads back as eosin only (the matrix and its inverse)."""
    pixel = ss.hed_to_rgb(np.array([[[0.0, 0.8, 0.0]]]))
    hed = ss.rgb_to_hed(pixel)[0, 0]
    assert hed[E] == pytest.approx(0.8, abs=0.02)
    assert abs(hed[H]) < 0.02 and abs(hed[D]) < 0.02


def test_weaker_eosin_lowers_the_eosin_channel_only(he_image) -> None:
    tissue = ss.rgb_to_hed(he_image)[..., E] > 0.1
    before = ss.rgb_to_hed(he_image)[tissue]
    after = ss.rgb_to_hed(ss.perturb(he_image, "eosin", 0.6, np.random.default_rng(0)))[tissue]
    assert np.median(after[:, E] / before[:, E]) == pytest.approx(0.4, abs=0.03)
    assert np.median(np.abs(after[:, H] - before[:, H])) < 0.02
    weaker_h = ss.perturb(he_image, "hematoxylin", 0.6, np.random.default_rng(0))
    assert np.median(ss.rgb_to_hed(weaker_h)[tissue][:, E] / before[:, E]) == pytest.approx(
        1.0, abs=0.03
    )


def test_seeded_perturbations_repeat_per_seed(he_image) -> None:
    def draw(seed: int) -> np.ndarray:
        return ss.perturb(he_image, "tint", 0.2, np.random.default_rng(seed))

    assert np.array_equal(draw(1), draw(1))
    assert not np.array_equal(draw(1), draw(2))


def test_measures() -> None:
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert ss.dice(a, a) == 1.0 and ss.dice(a, b) == 0.5
    assert ss.dice(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
    change = ss.patch_change(np.array([[0, 0], [0, 512]]), np.array([[0, 512], [512, 0]]))
    assert change == {"n_ref": 2, "n": 2, "jaccard": 1 / 3, "gained": 1, "lost": 1}
    assert ss.spread([1.0] * 3)["ci95"] is None
    assert ss.spread(list(range(ss.MIN_BOOTSTRAP)))["ci95"] is not None


def test_identity_run_gives_dice_and_jaccard_one(slide) -> None:
    """Strength 0 through the whole path (the level read, resized, detected, tiled) is the
    unperturbed slide, under the demo and CAMELYON16 recipes."""
    recipes = ss.load_recipes(["demo", "camelyon16"])
    src = ss.open_source(slide, None, "level", recipes)
    assert src.at == "level" and src.level == 2
    rows = ss.measure(src, recipes, {"eosin": (0.0,), "jpeg": (100.0,)}, seeds=[0])
    assert len(rows) == 6
    for row in rows:
        assert row["ref_tissue_px"] > 0 and not row["excluded"]
        assert row["dice"] == 1.0 and row["area_ratio"] == 1.0
        for mag in row["mags"].values():
            assert mag["jaccard"] == 1.0 and mag["gained"] == mag["lost"] == 0 and mag["n"] > 0


def test_a_lighter_scan_changes_the_measures(slide) -> None:
    """The measures are not 1 by construction: a scan bright enough to wash the tissue out
    loses all of it, and the no-tissue policy (exclude) keeps no patch."""
    recipes = ss.load_recipes(["demo-otsu"])
    src = ss.open_source(slide, None, "thumbnail", recipes)
    none, washed = ss.measure(src, recipes, {"brightness": (3.0,)}, seeds=[0])
    assert none["dice"] == 1.0
    assert washed["dice"] == 0.0 and washed["area_ratio"] == 0.0 and washed["excluded"]
    low = next(iter(washed["mags"].values()))
    assert low["jaccard"] == 0.0 and low["n"] == 0 and low["lost"] == low["n_ref"] > 0


def _number(nullable: bool = False) -> dict:
    return {"type": ["number", "null"] if nullable else "number"}


SPREAD = {
    "type": "object",
    "required": ["n", "median", "min", "max", "ci95"],
    "properties": {
        "n": {"type": "integer", "minimum": 1},
        "ci95": {"type": ["array", "null"], "items": _number(), "minItems": 2, "maxItems": 2},
    },
}
PATCHES = {
    "type": "object",
    "required": ["n_ref", "n", "jaccard", "gained", "lost"],
    "properties": {"jaccard": {"type": "number", "minimum": 0, "maximum": 1}},
}
SCHEMA = {
    "type": "object",
    "required": ["meta", "summary", "breaks", "worst", "runs"],
    "properties": {
        "meta": {
            "type": "object",
            "required": "command quick seconds machine seeds at recipes slides strengths "
            "dice_break".split(),
            "properties": {
                "slides": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": "name path mpp mpp_source dimensions thumbnail at "
                        "level".split(),
                    },
                }
            },
        },
        "summary": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": "dice area_ratio jaccard lost_fraction gained_fraction refused "
                        "excluded".split(),
                        "properties": {"dice": SPREAD, "jaccard": SPREAD},
                    },
                },
            },
        },
        "runs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": "slide recipe perturbation strength seed refused excluded dice "
                "area_ratio mags".split(),
                "properties": {
                    "dice": {"type": "number", "minimum": 0, "maximum": 1},
                    "area_ratio": _number(nullable=True),
                    "mags": {"type": "object", "additionalProperties": PATCHES},
                },
            },
        },
    },
}


def test_quick_run_writes_json_and_markdown(slide, tmp_path) -> None:
    out = tmp_path / "out"
    argv = ["--quick", "--no-default-slides", "--source", str(slide), "--out", str(out)]
    assert ss.main(argv, progress=lambda _: None) == 0
    result = json.loads((out / "stain_shift.json").read_text())
    jsonschema.validate(result, SCHEMA)
    assert result["meta"]["quick"] and result["meta"]["seeds"] == [0, 1]
    assert set(result["summary"]) == {"demo"}
    assert set(result["summary"]["demo"]) == {"none", *ss.QUICK_STRENGTHS}
    assert result["summary"]["demo"]["none"]["0"]["dice"]["min"] == 1.0
    seeded = [r for r in result["runs"] if r["perturbation"] == "tint"]
    assert [r["seed"] for r in seeded] == [0, 1]
    assert (out / "stain_shift.md").read_text().startswith("# Stain and scanner")


def test_unreadable_source_stops_naming_it(tmp_path, capsys) -> None:
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"not a slide at all")
    argv = ["--quick", "--no-default-slides", "--source", str(bad), "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as stop:
        ss.main(argv, progress=lambda _: None)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: cannot be read as a slide (not a whole-slide image")
    assert len(err.strip().splitlines()) == 1 and err.count(str(bad)) == 1
    assert not (tmp_path / "stain_shift.json").exists()


def test_missing_source_stops_naming_it(tmp_path, capsys) -> None:
    gone = tmp_path / "gone.svs"
    with pytest.raises(SystemExit) as stop:
        ss.main(["--no-default-slides", "--source", str(gone), "--out", str(tmp_path)])
    assert stop.value.code == 2 and f"{gone}: --source slide not found" in capsys.readouterr().err


def test_each_seed_draws_its_own_perturbation(slide, monkeypatch) -> None:
    """A seeded perturbation gets a generator per seed, the same one at every strength (so
    a seed's direction is only scaled), and an unseeded one runs once."""
    drawn: list[tuple[str, float, float]] = []
    real = ss.perturb

    def spy(rgb, name, strength, rng):
        drawn.append((name, strength, float(copy.deepcopy(rng).random())))
        return real(rgb, name, strength, rng)

    monkeypatch.setattr(ss, "perturb", spy)
    recipes = ss.load_recipes(["demo-otsu"])
    src = ss.open_source(slide, None, "thumbnail", recipes)
    ss.measure(src, recipes, {"tint": (0.1, 0.2), "eosin": (0.2,)}, seeds=[0, 1])
    tint = [d for d in drawn if d[0] == "tint"]
    assert len(tint) == 4 and sum(d[0] == "eosin" for d in drawn) == 1
    assert tint[0][2] == tint[1][2] and tint[2][2] == tint[3][2]  # a seed's strengths
    assert tint[0][2] != tint[2][2]  # two seeds


def test_the_changes_line_names_the_criterion_it_applies() -> None:
    """One excluded sample of 20 marks a strength as changing the tissue (`breaking_points`)
    while its median Dice is 1.000: the line must not say it was the median Dice."""
    one = {"n": 1, "median": 1.0, "min": 1.0, "max": 1.0, "ci95": None}
    row = {"dice": one, "area_ratio": one, "jaccard": one, "lost_fraction": one}
    row |= {"gained_fraction": one, "refused": 0, "excluded": 1}
    summary = {"camelyon16": {"tint": {"0.2": row}}}
    info = {"tissue_method": "gaussian", "tissue_params": {}, "tissue_threshold": 0.1, "mags": [10]}
    meta = {"command": "x", "seconds": 1.0, "machine": "m", "slides": [], "seeds": [0]}
    result = {"meta": meta | {"recipes": {"camelyon16": info}}, "summary": summary}
    result |= {"breaks": ss.breaking_points(summary), "worst": []}
    line = next(x for x in ss.markdown(result).splitlines() if x.startswith("Changes the tissue"))
    assert "tint at 0.2" in line and "excluded" in line

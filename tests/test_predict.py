"""`zoommil predict`: zoom inference reads only the selected regions, and agrees with the
full feature file's eval forward."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from slide_factory import KEEP_EVERY_PATCH, write_pyramid_tiff

from zoommil.cli import main
from zoommil.errors import SlideCheckError, ZoomMILError
from zoommil.features.encoder import build_encoder
from zoommil.features.encoders.weights import sha256_file
from zoommil.features.extraction import extract_features
from zoommil.inference.cohort import tasks_in_dir
from zoommil.inference.predict import Predictor, make_encoder, predict_slide, zoom_chain
from zoommil.inference.tiling_ahead import SMALL_SLIDE_MM2
from zoommil.io.coords import write_coords
from zoommil.models import build_model
from zoommil.recipe import RANDOM_WEIGHTS_NOTE, RANDOM_WEIGHTS_TAG, PreprocessingRecipe
from zoommil.training.checkpoint import save_checkpoint
from zoommil.wsi.tiling import tile_slide

MAGS = [5.0, 10.0, 20.0]  # 4 children per step on a 0.5 um/px slide
PATCH = 64  # small patches keep the random-weight ResNet-50 fast on CPU
K = 3
CLASSES = ["normal", "tumour"]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("zoommil", in_dim=1024, n_classes=2, mags=MAGS, k=K).eval()


def _predictor(model: torch.nn.Module) -> Predictor:
    return Predictor(
        model=model, arch="zoommil", classes=CLASSES, recipe=_recipe(MAGS), method="zoommil"
    )


def _recipe(mags, every_patch: bool = True) -> PreprocessingRecipe:
    """The tests' recipe: every patch of the tiny slides, else the default tissue threshold."""
    recipe = PreprocessingRecipe(mags=mags, patch_size=PATCH, weights="random")
    return recipe.replace(tissue_threshold=KEEP_EVERY_PATCH) if every_patch else recipe


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """768x512 px at 0.5 um/px: 6 parents at 5x, so the all-patch reference stays cheap."""
    return write_pyramid_tiff(
        tmp_path_factory.mktemp("predict") / "small.tiff", width=768, height=512
    )


@pytest.fixture(scope="module")
def zoom_result(small_slide: Path) -> dict:
    predictor = _predictor(_model())
    encoder, _ = make_encoder(predictor)
    return predict_slide(predictor, small_slide, encoder)


def test_patch_count_is_n_low_plus_k_times_descendants(zoom_result, small_slide):
    lattice = tile_slide(small_slide, _recipe(MAGS))
    n_low = len(lattice.xy[0])
    assert n_low > K
    expected = n_low + K * 4 + K * 4
    assert zoom_result["patches_encoded"] == expected
    assert zoom_result["patches_per_mag"] == {"5.0x": n_low, "10.0x": K * 4, "20.0x": K * 4}
    assert [len(s["xy"]) for s in zoom_result["selected"]] == [K, K]


def test_selected_regions_nest_inside_their_parents(zoom_result):
    low, mid = zoom_result["selected"]
    for x, y in mid["xy"]:
        assert any(
            px <= x
            and x + mid["side0"] <= px + low["side0"]
            and py <= y
            and y + mid["side0"] <= py + low["side0"]
            for px, py in low["xy"]
        )


def test_a_predictions_regions_open_in_qupath_on_its_boxes(zoom_result, small_slide, tmp_path):
    """README "Reviewing a prediction in QuPath": the GeoJSON of a real prediction has one
    annotation per selected box, at the JSON's level-0 coordinates (the slide, found at the
    prediction's path and of its quickhash, has no bounds to shift by)."""
    from zoommil.interop.regions_geojson import convert

    (tmp_path / "p.json").write_text(json.dumps(zoom_result))
    _, collection, note = convert(tmp_path / "p.json", tmp_path / "r.geojson")
    assert note == "level-0 pixels"
    boxes = [
        (k, x, y, step["side0"])
        for k, step in enumerate(zoom_result["selected"], start=1)
        for x, y in step["xy"]
    ]
    got = [
        (f["properties"]["measurements"]["Zoom step"], *f["geometry"]["coordinates"][0][0])
        for f in collection["features"]
    ]
    assert got == [(k, x, y) for k, x, y, _ in boxes]
    for feature, (_, x, y, side) in zip(collection["features"], boxes, strict=True):
        assert feature["geometry"]["coordinates"][0][2] == [x + side, y + side]


@pytest.fixture(scope="module")
def feature_file(small_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The slide's feature file as `zoommil features` writes it: every patch at every
    magnification, in ``features/<slide_id>.h5``."""
    root = tmp_path_factory.mktemp("full")
    coords = write_coords(root / "coords.h5", tile_slide(small_slide, _recipe(MAGS)))
    out = root / "features" / f"{small_slide.stem}.h5"
    extract_features(small_slide, coords, out, weights="random", workers=0)
    return out


def _log_odds(probabilities: dict[str, float]) -> float:
    """log p(tumour) - log p(normal), i.e. the logit difference: unlike the probabilities it
    is not saturated (the random model gives p = 0.9998 here, so atol 1e-2 on them hid
    wrong features)."""
    return float(np.log(probabilities[CLASSES[1]]) - np.log(probabilities[CLASSES[0]]))


def test_zoom_inference_matches_the_full_feature_file(zoom_result, feature_file):
    """Zoom inference is the eval forward on the full feature file: the same regions selected
    at every step, attention over the same patches with the same weights, the same logits."""
    from zoommil.io.featurefile import read_feature_file

    bag = read_feature_file(feature_file, MAGS)
    with torch.no_grad():
        details = _model().forward_with_details([torch.from_numpy(f)[None] for f in bag.feats])
    # the trap: at 10x the selected rows are not the first K of the rows kept there
    kept, chosen = details["rows"][1].tolist(), details["selected"][1].tolist()
    assert chosen != kept[:K]
    assert len(zoom_result["selected"]) == len(MAGS) - 1
    for m, step in enumerate(zoom_result["selected"]):
        assert step["mag"] == MAGS[m]
        assert step["xy"] == bag.xy[m][details["selected"][m].numpy()].tolist(), m
    assert len(zoom_result["attention"]) == len(MAGS)
    for m, step in enumerate(zoom_result["attention"]):
        assert step["xy"] == bag.xy[m][details["rows"][m].numpy()].tolist(), m
        np.testing.assert_allclose(step["weights"], details["attention"][m].numpy(), atol=1e-5)
    logits = details["logits"][0].double().numpy()
    assert _log_odds(zoom_result["probabilities"]) == pytest.approx(logits[1] - logits[0], abs=1e-3)


def test_zoom_inference_of_a_standardising_checkpoint_equals_evaluate(
    small_slide, feature_file, zoom_result, tmp_path
):
    """A checkpoint trained with ``feature_norm: standardize``: `zoommil predict` (zoom
    inference from the slide) must standardise the features it encodes exactly as `zoommil
    evaluate` does the feature file's, else it classifies other inputs than the model saw."""
    from zoommil.io.featurefile import read_feature_file
    from zoommil.training.normalize import fit_feature_norm

    bag = read_feature_file(feature_file, MAGS)
    norm = fit_feature_norm(torch.from_numpy(f) for f in bag.feats)
    ckpt = _zoommil_checkpoint(tmp_path / "ckpt.pt", feature_norm=norm.to_config())
    sheet = tmp_path / "slides.tsv"
    sheet.write_text(f"slide_id\tpath\tlabel\tsplit\n{small_slide.stem}\tx.tiff\ttumour\ttest\n")
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--checkpoint", str(ckpt), "--features-dir", str(feature_file.parent)]
    assert main([*argv, "--sheet", str(sheet), "--device", "cpu", "--out", str(out)]) == 0
    (evaluated,) = json.loads(out.read_text())["predictions"]
    predictor = Predictor.from_checkpoint(ckpt)
    assert predictor.norm is not None
    predicted = predict_slide(predictor, small_slide, make_encoder(predictor)[0])
    expected = _log_odds(evaluated["probs"])
    assert _log_odds(predicted["probabilities"]) == pytest.approx(expected, abs=1e-3)
    assert abs(expected - _log_odds(zoom_result["probabilities"])) > 1.0  # the norm matters


@pytest.mark.parametrize("recorded", ["config_mags", "preprocessing"])
def test_single_scale_model_reads_the_rows_it_was_trained_on(tmp_path, recorded):
    """ABMIL trained on the 20x rows of 5/10/20x feature files: predict tiles at 5/10/20x and
    filters tissue at 5x, as `zoommil features` did, so its bag is the feature file's 20x rows
    (tiling and filtering at 20x alone keeps other patches) and its probabilities match. The
    feature files' magnifications come from the checkpoint's preprocessing record, also when
    the method set its own `mags` (then config_mags is that override)."""
    slide = write_pyramid_tiff(tmp_path / "tissue.tiff", width=1024, height=768)
    full = tile_slide(slide, _recipe(MAGS, every_patch=False))
    own = tile_slide(slide, _recipe([20.0], every_patch=False))
    assert {tuple(x) for x in own.xy[0]} != {tuple(x) for x in full.xy[-1]}  # the trap
    coords = write_coords(tmp_path / "coords.h5", full)
    extract_features(slide, coords, tmp_path / "f.h5", weights="random", workers=0)
    from zoommil.io.featurefile import read_feature_file

    bag = read_feature_file(tmp_path / "f.h5", [20.0])
    torch.manual_seed(0)
    abmil = build_model("abmil", in_dim=1024, n_classes=2, mags=[20.0]).eval()
    config = {
        "method": "abmil",
        "arch": "abmil",
        "kwargs": {},
        "classes": CLASSES,
        "mags": [20.0],
        "config_mags": MAGS,
        "in_dim": 1024,
        "preprocessing": {"patch_size": PATCH, "weights": "random", "weights_seed": 0},
    }
    if recorded == "preprocessing":  # a method with `mags: [20]` of its own
        config["config_mags"] = [20.0]
        config["preprocessing"]["mags"] = MAGS
    ckpt = save_checkpoint(tmp_path / "abmil.pt", abmil.state_dict(), config)
    predictor = Predictor.from_checkpoint(ckpt)
    assert predictor.mags == [20.0] and list(predictor.recipe.mags) == MAGS
    result = predict_slide(predictor, slide, make_encoder(predictor)[0])
    assert result["patches_per_mag"] == {"20.0x": len(full.xy[-1])}
    with torch.no_grad():
        logits = abmil([torch.from_numpy(bag.feats[0])[None]], [torch.from_numpy(bag.coords[0])])
    probs = torch.softmax(logits, -1)[0].numpy()
    got = np.array([result["probabilities"][c] for c in CLASSES])
    np.testing.assert_allclose(got, probs, atol=1e-4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ZoomMIL checkpoint as `zoommil train` writes it (random-weight encoder recipe)."""
    return _zoommil_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt")


def _zoommil_checkpoint(
    path: Path, weights: str = "random", feature_norm: dict | None = None, **preprocessing: str
) -> Path:
    """A ZoomMIL checkpoint of `_model()` whose features' recipe records ``weights`` (seed 0)
    and ``preprocessing`` (by default a tissue threshold that keeps every patch of the tiny
    test slides), as `zoommil train` copies it from the feature files, and that
    standardises features with ``feature_norm`` (`FeatureNorm.to_config`) if given."""
    recipe = {"patch_size": PATCH, "weights": weights, "weights_seed": 0}
    recipe |= {"tissue_threshold": KEEP_EVERY_PATCH, **preprocessing}
    config = {
        "method": "zoommil",
        "arch": "zoommil",
        "kwargs": {"k": K},
        "classes": CLASSES,
        "mags": MAGS,
        "config_mags": MAGS,
        "in_dim": 1024,
        "preprocessing": recipe,
    }
    if feature_norm is not None:
        config["feature_norm"] = feature_norm
    return save_checkpoint(path, _model().state_dict(), config)


@pytest.fixture(scope="module")
def one_slide_json(small_slide: Path, checkpoint: Path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("one") / "pred.json"
    assert (
        main(["predict", str(small_slide), "--checkpoint", str(checkpoint), "--json", str(out)])
        == 0
    )
    return json.loads(out.read_text())


def test_predict_cli_writes_json_and_heatmap_the_same_with_2_threads(
    small_slide, checkpoint, one_slide_json, tmp_path, capsys
):
    out, png = tmp_path / "pred.json", tmp_path / "heat.png"
    argv = ["predict", str(small_slide), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--json", str(out), "--heatmap", str(png)]) == 0
    result = json.loads(out.read_text())
    assert set(result["probabilities"]) == set(CLASSES)
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-5
    assert png.stat().st_size > 0
    assert "patches encoded" in capsys.readouterr().out
    # --threads 2: this process and one encoder process share the batches; same answer
    two = tmp_path / "pred2.json"
    assert main([*argv, "--threads", "2", "--json", str(two)]) == 0
    result2 = json.loads(two.read_text())
    for key in ("probabilities", "selected", "attention", "patches_per_mag"):
        assert result2[key] == result[key] == one_slide_json[key], key
    # a checkpoint that records no weights sha256 (older ones) is not checked, and the JSON
    # names the weights used: here the seeded random ones
    assert result["weights_sha256"] == build_encoder("random", seed=0)[1]["weights_sha256"]
    # the id is the file's name unless given (the workflow passes the sheet's slide_id)
    assert result["slide_id"] == small_slide.stem
    named = tmp_path / "named.json"
    assert main([*argv, "--slide-id", "case.003", "--json", str(named)]) == 0
    assert json.loads(named.read_text())["slide_id"] == "case.003"


def _copy_and_broken(small_slide: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A second readable slide (a byte copy named ``name``) and a file that is no slide."""
    copy = tmp_path / name
    copy.write_bytes(small_slide.read_bytes())
    bad = tmp_path / "broken.tiff"
    bad.write_bytes(b"not a slide at all")
    return copy, bad


def _same_prediction(path: Path, reference: dict) -> None:
    result = json.loads(path.read_text())
    for key in ("probabilities", "selected", "attention", "patches_per_mag"):
        assert result[key] == reference[key], (path, key)


def test_predict_many_slides_over_processes_a_bad_one_fails_alone(
    small_slide, checkpoint, one_slide_json, tmp_path, capsys
):
    """Two processes classify whole slides; an unreadable slide is a failure row naming the
    reason and exit 1, and the other slides' outputs are those of one-slide runs."""
    copy, bad = _copy_and_broken(small_slide, tmp_path, "second.tiff")
    out = tmp_path / "out"
    argv = ["predict", str(small_slide), str(bad), str(copy), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--out-dir", str(out), "--threads", "2"]) == 1
    captured = capsys.readouterr()
    assert "by 2 process(es) x 1 thread(s)" in captured.out
    assert "2 of 3 slides classified" in captured.out
    assert captured.out.count(RANDOM_WEIGHTS_TAG) == 2  # each printed prediction says so
    assert f"{bad}:" in captured.err and "1 of 3 slides failed" in captured.err
    for name in (small_slide.stem, copy.stem):
        _same_prediction(out / f"{name}.json", one_slide_json)
        assert (out / f"{name}.png").stat().st_size > 0
    assert not (out / "broken.json").exists()
    with (out / "predictions.tsv").open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [r["slide_id"] for r in rows] == [small_slide.stem, "broken", copy.stem]  # input order
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert rows[1]["reason"] and rows[1]["p_tumour"] == ""
    best = max(CLASSES, key=one_slide_json["probabilities"].get)
    assert rows[0]["predicted"] == rows[2]["predicted"] == best
    assert float(rows[0]["p_tumour"]) == pytest.approx(one_slide_json["probabilities"]["tumour"])


def test_resume_keeps_finished_slides_and_classifies_the_rest(
    small_slide, checkpoint, one_slide_json, tmp_path, capsys
):
    """--resume after an interrupted run: a slide whose JSON and heatmap this checkpoint wrote
    is kept as it is; one without its JSON, or with another checkpoint's, is classified; the
    table lists all of them in input order."""
    copy, _ = _copy_and_broken(small_slide, tmp_path, "second.tiff")
    third, _ = _copy_and_broken(small_slide, tmp_path, "third.tiff")
    out = tmp_path / "out"
    argv = ["predict", str(small_slide), str(copy), str(third), "--checkpoint", str(checkpoint)]
    assert main([*argv[:2], *argv[4:], "--out-dir", str(out)]) == 0  # the first slide only
    kept = out / f"{small_slide.stem}.json"
    before = kept.stat().st_mtime_ns
    assert json.loads(kept.read_text())["checkpoint_sha256"] == sha256_file(checkpoint)
    other = dict(one_slide_json, checkpoint_sha256="another checkpoint")
    (out / "third.json").write_text(json.dumps(other))
    (out / "third.png").write_bytes(b"png")
    capsys.readouterr()
    assert main([*argv, "--out-dir", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "--resume: 1 of 3 slides already classified, kept" in printed
    # the rate is of this run's 2 slides (the kept one counted made it too high, review H2)
    assert re.search(r"^2 of 2 slides classified in .*; 1 kept from an earlier run$", printed, re.M)
    assert kept.stat().st_mtime_ns == before
    for name in ("second", "third"):
        _same_prediction(out / f"{name}.json", one_slide_json)
        assert json.loads((out / f"{name}.json").read_text())["checkpoint_sha256"] != "another"
    with (out / "predictions.tsv").open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [r["slide_id"] for r in rows] == [small_slide.stem, "second", "third"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    assert "--resume" in rows[0]["reason"] and rows[1]["reason"] == ""
    assert rows[0]["p_tumour"] == rows[1]["p_tumour"]
    _seconds_are_the_jsons(out, rows)  # the kept slide's too: its earlier run's
    capsys.readouterr()
    # all done: said so (it printed "3 of 3 slides classified in 0.0 s by 0 process(es)")
    assert main([*argv, "--out-dir", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "--resume: all 3 slides were already classified; nothing to do" in printed
    assert "by 0 process" not in printed
    assert main([*argv[:2], *argv[4:], "--resume"]) != 0
    assert "give --out-dir" in capsys.readouterr().err


def test_resume_redoes_a_prediction_of_another_tissue_detector_version(
    small_slide, checkpoint, tmp_path, capsys
):
    """--resume after an upgrade: a JSON this checkpoint wrote for the same slide with another
    version of the tissue detector (none recorded: a zoommil from before the record) was kept,
    so predictions.tsv mixed two preprocessings (a Dec 5 zoommil's 28 patches beside this
    one's 27 for one demo slide, review V). Each prediction records its detector version and
    only one of this zoommil's is kept."""
    from zoommil.wsi.tissue import DETECTOR_VERSIONS

    copy, _ = _copy_and_broken(small_slide, tmp_path, "second.tiff")
    out = tmp_path / "out"
    argv = ["predict", str(small_slide), str(copy), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--out-dir", str(out)]) == 0
    first, second = out / f"{small_slide.stem}.json", out / "second.json"
    current = DETECTOR_VERSIONS[Predictor.from_checkpoint(checkpoint).recipe.tissue_method]
    assert json.loads(first.read_text())["tissue_version"] == current
    older = {k: v for k, v in json.loads(first.read_text()).items() if k != "tissue_version"}
    first.write_text(json.dumps(older))
    second.write_text(json.dumps(dict(older, tissue_version=current - 1)))
    capsys.readouterr()
    assert main([*argv, "--out-dir", str(out), "--resume"]) == 0
    assert "already classified" not in capsys.readouterr().out
    for path in (first, second):
        assert json.loads(path.read_text())["tissue_version"] == current
    with (out / "predictions.tsv").open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [r["reason"] for r in rows] == ["", ""]


def test_an_interrupted_predict_says_how_to_go_on(small_slide, checkpoint, tmp_path, capsys,
                                                   monkeypatch):  # fmt: skip
    import zoommil.commands.predict as command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "_run_many", interrupted)
    argv = ["predict", str(small_slide), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--out-dir", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.strip() == (
        "zoommil predict: interrupted; the same command with --resume keeps the slides "
        "already classified"
    )


def test_sigterm_ends_predict_as_ctrl_c_does_and_resume_goes_on(small_slide, checkpoint, tmp_path):
    """`scancel` or a time limit sends SIGTERM: predict stopped at once with a bare
    "Terminated" (exit 143, reader semaphores leaked). Now it stops as on Ctrl-C: one line
    with the --resume hint, exit 143, no temporary file, the finished slides kept (review C)."""
    import signal
    import time

    slides = []
    for i in range(4):
        slides.append(tmp_path / f"s{i}.tiff")
        slides[-1].symlink_to(small_slide)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "zoommil", "predict", *map(str, slides)]
    argv += ["--checkpoint", str(checkpoint), "--out-dir", str(out), "--workers", "1"]
    run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "s0.json").exists() and run.poll() is None:
        assert time.monotonic() < deadline, "no slide classified in 300 s"
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    if run.returncode == 0:
        pytest.skip("every slide was classified before the signal arrived")
    assert run.returncode == 143, err
    assert (
        "zoommil predict: terminated (SIGTERM); the same command with --resume keeps the "
        "slides already classified"
    ) in err
    assert "Traceback" not in err and "leaked semaphore" not in err
    assert not list(out.glob(".*tmp-*"))
    done = sorted(p.name for p in out.glob("*.json"))
    assert "s0.json" in done
    resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"--resume: {len(done)} of 4 slides already classified, kept" in resumed.stdout


def test_the_json_is_written_after_the_heatmap(small_slide, checkpoint, tmp_path, monkeypatch):
    """--resume takes a slide whose JSON this checkpoint wrote as done: with the JSON written
    first, a run killed before the heatmap left a new JSON beside another run's heatmap,
    and --resume kept the pair."""
    from zoommil.reporting import attention

    save_heatmap = attention.save_heatmap
    json_path = tmp_path / "out" / f"{small_slide.stem}.json"

    def heatmap_before_json(path, *args, **kwargs):
        assert not json_path.exists(), "JSON written before the heatmap"
        return save_heatmap(path, *args, **kwargs)

    monkeypatch.setattr(attention, "save_heatmap", heatmap_before_json)
    argv = ["predict", str(small_slide), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--out-dir", str(tmp_path / "out"), "--threads", "1"]) == 0
    assert json_path.is_file() and json_path.with_suffix(".png").is_file()


def _rows(out: Path) -> list[dict]:
    with (out / "predictions.tsv").open() as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_resume_keeps_a_json_only_for_the_slide_it_describes(checkpoint, tmp_path, capsys):
    """OUT/<stem>.json is named by the file stem: --resume with cohB/slide_001.tiff must not
    keep the prediction of cohA/slide_001.tiff (another slide), nor replace it: a second run
    into the same folder silently overwrote it (review A), so it is refused, naming both. A
    byte copy of a classified slide under another folder is the same slide (same quickhash)
    and is kept; a JSON of an older version, which does not say which slide it is of, is
    redone."""
    a, b, c = (tmp_path / name / "slide_001.tiff" for name in ("cohA", "cohB", "cohC"))
    for path, seed in ((a, 1), (b, 2)):
        path.parent.mkdir()
        write_pyramid_tiff(path, width=768, height=512, seed=seed)
    c.parent.mkdir()
    out = tmp_path / "out"
    record = out / "slide_001.json"
    argv = ["--checkpoint", str(checkpoint), "--out-dir", str(out)]
    assert main(["predict", str(a), *argv]) == 0
    first = json.loads(record.read_text())
    assert first["slide_path"] == str(a.resolve()) and first["slide_quickhash"]
    capsys.readouterr()
    for resume in ([], ["--resume"]):
        assert main(["predict", str(b), *argv, *resume]) == 2
        err = capsys.readouterr().err
        assert f"{record} holds the prediction of {a.resolve()}, not {b}" in err
        assert "use another --out-dir" in err and len(err.strip().splitlines()) == 1
        assert json.loads(record.read_text()) == first
    # a copy of A elsewhere: same quickhash, kept as it is
    c.write_bytes(a.read_bytes())
    before = record.stat().st_mtime_ns
    assert main(["predict", str(c), *argv, "--resume"]) == 0
    assert "1 of 1 slides already classified, kept" in capsys.readouterr().out
    assert record.stat().st_mtime_ns == before
    # an older JSON without the slide's path and quickhash: redone, for B too
    old = {k: v for k, v in first.items() if k not in ("slide_path", "slide_quickhash")}
    record.write_text(json.dumps(old))
    assert main(["predict", str(b), *argv, "--resume"]) == 0
    assert "already classified" not in capsys.readouterr().out
    second = json.loads(record.read_text())
    assert second["slide_path"] == str(b.resolve())
    assert second["slide_quickhash"] not in ("", first["slide_quickhash"])
    (row,) = _rows(out)
    assert row["slide"] == str(b) and row["reason"] == ""
    assert float(row["p_tumour"]) == pytest.approx(second["probabilities"]["tumour"], abs=1e-6)


def test_slides_from_a_list_and_folders_refused(small_slide, checkpoint, tmp_path, capsys):
    """A cohort too long for the command line went through xargs, whose batches each
    rewrote predictions.tsv with their own rows (review A): --slides-from LIST takes it in
    one run. A folder given as a slide was a failed row ("not a file"), not a usage error."""
    twin = tmp_path / "lists" / "data" / "twin.tiff"
    twin.parent.mkdir(parents=True)
    twin.write_bytes(small_slide.read_bytes())
    listing = tmp_path / "lists" / "cohort.txt"
    listing.write_text(f"# the cohort\n\ndata/twin.tiff\n{small_slide}\n")
    out = tmp_path / "out"
    argv = ["predict", "--checkpoint", str(checkpoint), "--out-dir", str(out), "--threads", "1"]
    assert main([*argv, "--slides-from", str(listing)]) == 0
    assert [r["slide_id"] for r in _rows(out)] == ["twin", small_slide.stem]
    assert _rows(out)[0]["slide"] == str(twin)  # relative to the list's folder
    capsys.readouterr()
    assert main([*argv, str(twin.parent)]) == 2
    err = capsys.readouterr().err
    assert f"{twin.parent}: a folder, not a slide file" in err and "--slides-from" in err
    dicom = tmp_path / "dicom_slide"  # a DICOM WSI: one slide, a .dcm file per level
    dicom.mkdir()
    for name in ("2.dcm", "1.dcm"):
        (dicom / name).write_bytes(b"")
    assert main([*argv, str(dicom)]) == 2
    err = capsys.readouterr().err
    assert f"{dicom}: a folder, not a slide file; it holds 2 DICOM file(s)" in err, err
    assert f"name one, e.g. {dicom / '1.dcm'}" in err and "*.svs" not in err
    with pytest.raises(SystemExit) as usage:  # argparse's usage error, before any work
        main([*argv, "--slides-from", str(tmp_path / "missing.txt")])
    assert usage.value.code == 2
    assert "--slides-from" in capsys.readouterr().err


def test_slides_given_as_urls_are_refused_before_the_checkpoint_loads(tmp_path, capsys):
    """`zoommil predict s3://bucket/x.svs` loaded the checkpoint, then said "slide file not
    found: <cwd>/s3:/bucket/x.svs" (a `Path` keeps one slash of '//'); a --slides-from
    list's URL became <list folder>/s3:/... . Now a usage error naming the URL as written,
    with what to do, before any work (the checkpoint here does not even exist)."""
    argv = ["predict", "--checkpoint", str(tmp_path / "none.pt")]
    assert main([*argv, "s3://bucket/tcga/x.svs"]) == 2
    err = capsys.readouterr().err
    assert "error: s3://bucket/tcga/x.svs is a URL, and zoommil reads slides from a file " in err
    assert "`aws s3 sync s3://BUCKET/PREFIX /data/slides`" in err and "not found" not in err
    assert main([*argv, "https://example.org/x.svs"]) == 2
    assert "download them to a local or network file system" in capsys.readouterr().err
    assert main([*argv, "file:///data/x.svs"]) == 2
    assert "a file URL: write the path itself, /data/x.svs" in capsys.readouterr().err
    listing = tmp_path / "cohort.txt"
    listing.write_text("gs://idc-open-data/a/1.dcm\ngs://idc-open-data/b/1.dcm\n")
    assert main([*argv, "--out-dir", str(tmp_path / "out"), "--slides-from", str(listing)]) == 2
    err = capsys.readouterr().err
    assert "gs://idc-open-data/a/1.dcm (also gs://idc-open-data/b/1.dcm) is a URL" in err, err
    assert "gcloud storage rsync -r" in err


def test_a_url_is_told_from_a_path():
    """Two or more scheme letters and a slash: a Windows drive and an existing file whose
    name starts like a scheme are paths; `as_written` puts back the '//' a `Path` merged."""
    from zoommil.workflow.slide_urls import as_written, url_scheme

    assert url_scheme(Path("s3://b/x.svs")) == "s3" and url_scheme("HTTPS://h/x") == "https"
    assert url_scheme("C:/slides/x.svs") is None and url_scheme("slides/x.svs") is None
    assert url_scheme("s3:bucket/x.svs") is None  # no slash: a (strange) file name
    assert as_written(Path("s3://b/x.svs")) == "s3://b/x.svs"
    assert as_written(Path("file:///data/x.svs")) == "file:///data/x.svs"


def test_a_path_that_exists_is_no_url(tmp_path):
    from zoommil.workflow.slide_urls import url_scheme

    (tmp_path / "s3:" / "b").mkdir(parents=True)
    (tmp_path / "s3:" / "b" / "x.svs").write_bytes(b"")
    assert url_scheme("s3://b/x.svs", tmp_path) is None
    assert url_scheme("s3://b/y.svs", tmp_path) == "s3"


def test_describes_slide_falls_back_to_the_resolved_path(small_slide, tmp_path):
    """A record of a format without quickhash names its slide by resolved path; a slide
    that is gone is not described by any record."""
    from zoommil.inference.cohort import describes_slide

    resolved = str(small_slide.resolve())
    assert describes_slide({"slide_path": resolved, "slide_quickhash": ""}, small_slide)
    twin = tmp_path / small_slide.name
    twin.write_bytes(small_slide.read_bytes())
    assert not describes_slide({"slide_path": resolved, "slide_quickhash": ""}, twin)
    # the same path, another file there since: its quickhash says so
    other = {"slide_path": str(twin.resolve()), "slide_quickhash": "0" * 64}
    assert not describes_slide(other, twin)
    assert not describes_slide({"slide": str(small_slide)}, small_slide)  # older version
    gone = {"slide_path": str(tmp_path / "gone.tiff"), "slide_quickhash": ""}
    assert not describes_slide(gone, tmp_path / "gone.tiff")


def test_predict_many_in_one_process_no_fail_and_no_stale_outputs(
    small_slide, checkpoint, one_slide_json, tmp_path
):
    """--threads 1: this process classifies the slides in turn; --no-fail exits 0, and a
    failed slide's output from an earlier run is removed, not left to be mistaken for its
    result."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "gone.json").write_text("{}")
    argv = ["predict", str(small_slide), str(tmp_path / "gone.svs"), "--checkpoint"]
    assert main([*argv, str(checkpoint), "--out-dir", str(out), "--no-fail"]) == 0
    _same_prediction(out / f"{small_slide.stem}.json", one_slide_json)
    assert not (out / "gone.json").exists()
    table = (out / "predictions.tsv").read_text()
    assert (
        "failed" in table and f"slide file not found: {(tmp_path / 'gone.svs').resolve()}" in table
    )


def _blank_slide(tmp_path: Path, width: int = 2048, height: int = 2048) -> Path:
    """An all-white slide (no tissue) at `small_slide`'s resolution; the default 1.05 mm^2 is
    at least `SMALL_SLIDE_MM2`, where "no tissue found" is trusted."""
    path = tmp_path / f"blank_{width}x{height}.tiff"
    return write_pyramid_tiff(path, width=width, height=height, tissue=False)


@pytest.fixture(scope="module")
def detecting_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`checkpoint` with the default tissue threshold (0.1)."""
    path = tmp_path_factory.mktemp("ckpt_tissue") / "checkpoint.pt"
    return _zoommil_checkpoint(path, tissue_threshold=0.1)


def test_predict_a_slide_without_tissue_is_no_tissue_not_a_prediction(
    detecting_checkpoint, tmp_path, capsys
):
    """An all-background slide was classified from its background patches and reported like
    any prediction; it is an error naming the slide, and with --no-fail a `no_tissue` marker."""
    blank = _blank_slide(tmp_path)
    out = tmp_path / "pred.json"
    argv = ["predict", str(blank), "--checkpoint", str(detecting_checkpoint), "--json", str(out)]
    assert main(argv) == 1  # not classified: 1, as --help says (was 2, a usage error's code)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{blank}: no tissue found" in err, err
    assert "not classified" in err and not out.exists()
    assert main([*argv, "--no-fail"]) == 0
    marker = json.loads(out.read_text())
    assert marker["status"] == "no_tissue" and "no tissue found" in marker["reason"]
    assert "probabilities" not in marker


def test_predict_a_crop_too_small_for_the_detector_is_classified_with_a_note(
    detecting_checkpoint, tmp_path, caplog, capsys
):
    """Under `SMALL_SLIDE_MM2` the 8 um/px detector can miss tissue that is there (it drops
    pieces under 0.05 mm^2): such a slide is classified from every patch, and the JSON, the
    printed line and the cohort table say that no tissue was found, instead of refusing it as
    `no_tissue`."""
    assert SMALL_SLIDE_MM2 > 768 * 512 * 0.5**2 / 1e6
    crop = write_pyramid_tiff(tmp_path / "crop.tiff", width=768, height=512)
    out = tmp_path / "pred.json"
    argv = ["predict", str(crop), "--checkpoint", str(detecting_checkpoint), "--json", str(out)]
    assert main(argv) == 0
    prediction = json.loads(out.read_text())
    assert prediction["predicted"] in prediction["classes"]
    assert prediction["tissue_note"].startswith("no tissue found, but the slide is only 0.098")
    assert "every patch classified" in caplog.text
    (line,) = capsys.readouterr().out.splitlines()
    assert f"; {prediction['tissue_note']} " in line, line
    table_dir = tmp_path / "cohort"
    argv = ["predict", str(crop), "--checkpoint", str(detecting_checkpoint)]
    assert main([*argv, "--out-dir", str(table_dir)]) == 0
    assert f"; {prediction['tissue_note']} " in capsys.readouterr().out
    (row,) = _rows(table_dir)
    assert row["status"] == "ok" and row["reason"] == prediction["tissue_note"]


def test_predict_a_crop_of_bare_glass_is_no_tissue(detecting_checkpoint, tmp_path, capsys):
    """A crop under `SMALL_SLIDE_MM2` with no pixel the detector could call tissue (uniform
    glass: no saturation) was classified from every patch with a confident class; it is
    `no_tissue`, as a large blank slide is."""
    glass = np.full((1600, 1600, 3), 240, dtype=np.uint8)  # 0.64 mm^2 at 0.5 um/px
    crop = write_pyramid_tiff(tmp_path / "glass.tiff", rgb=glass)
    out = tmp_path / "pred.json"
    argv = ["predict", str(crop), "--checkpoint", str(detecting_checkpoint), "--json", str(out)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    assert f"{crop}: no tissue found" in captured.err and "not classified" in captured.err
    table_dir = tmp_path / "cohort"
    argv = ["predict", str(crop), "--checkpoint", str(detecting_checkpoint)]
    assert main([*argv, "--out-dir", str(table_dir)]) == 1
    (row,) = _rows(table_dir)
    assert row["status"] == "no_tissue" and row["reason"].startswith("no tissue found")


def test_predict_many_a_slide_without_tissue_is_its_own_status(
    detecting_checkpoint, tmp_path, capfd, caplog, monkeypatch
):
    """In a cohort run (one process, the blank slide tiled ahead) the slide without tissue is
    a `no_tissue` row with the reason and no outputs; the slides around it are classified.
    Its tissue is detected once, in the tiling process: the command tiled it again, and its
    warning came twice."""
    import zoommil.inference.predict as predict_module

    tiled_here = []
    real_tile = predict_module.tile_for_inference

    def counting_tile(recipe, slide_path, *args):
        tiled_here.append(Path(slide_path).name)
        return real_tile(recipe, slide_path, *args)

    monkeypatch.setattr(predict_module, "tile_for_inference", counting_tile)
    tissue = write_pyramid_tiff(tmp_path / "tissue.tiff", width=1024, height=768)
    blank = _blank_slide(tmp_path)
    copy, _ = _copy_and_broken(tissue, tmp_path, "second.tiff")
    out = tmp_path / "out"
    argv = ["predict", str(tissue), str(blank), str(copy)]
    argv += ["--checkpoint", str(detecting_checkpoint), "--out-dir", str(out), "--threads", "1"]
    assert main(argv) == 1
    captured = capfd.readouterr()  # the tiling process's log lines; this process's: caplog
    assert tiled_here == [tissue.name]  # the others were tiled ahead
    logged = captured.err + caplog.text
    assert logged.count(f"{blank}: the gaussian detector found no tissue") == 1
    assert captured.err.count(f"zoommil predict: {blank}: no tissue found") == 1
    assert "1 of 3 slides not classified (1 no_tissue)" in captured.err
    assert "2 of 3 slides classified" in captured.out
    first, second = (json.loads((out / f"{s.stem}.json").read_text()) for s in (tissue, copy))
    assert first["probabilities"] == second["probabilities"]
    assert not (out / f"{blank.stem}.json").exists() and not (out / f"{blank.stem}.png").exists()
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok", "no_tissue", "ok"]
    assert rows[1]["predicted"] == "" and rows[1]["p_tumour"] == ""
    assert rows[1]["reason"].startswith("no tissue found") and rows[1]["slide"] == str(blank)
    assert main([*argv, "--no-fail"]) == 0


def test_predict_many_slides_usage_errors(small_slide, checkpoint, tmp_path, capsys):
    twin = tmp_path / "other" / small_slide.name
    twin.parent.mkdir()
    twin.write_bytes(small_slide.read_bytes())
    argv = ["predict", str(small_slide), str(twin), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--json", str(tmp_path / "p.json")]) != 0
    assert "use --out-dir" in capsys.readouterr().err
    assert main([*argv, "--out-dir", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "share the slide_id" in err
    assert main([*argv, "--slide-id", "x", "--out-dir", str(tmp_path / "out")]) != 0
    assert "--slide-id names one slide" in capsys.readouterr().err


def test_predict_cli_missing_slide_is_one_line_error(tmp_path, capsys):
    code = main(["predict", str(tmp_path / "nope.svs"), "--checkpoint", str(tmp_path / "c.pt")])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and "not found" in err


@pytest.mark.parametrize("arch", ["zoommil", "abmil"])
def test_predict_opens_the_slide_file_once(small_slide, monkeypatch, arch):
    """Tiling and reading share one OpenSlide handle: opening (and test-reading) the file
    twice was inside the timed path of every throughput measurement."""
    import zoommil.inference.predict
    import zoommil.wsi.slide

    opened = []
    real_open = zoommil.wsi.slide.open_slide

    def counting_open(path, *args, **kwargs):
        opened.append(Path(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(zoommil.wsi.slide, "open_slide", counting_open)
    if arch == "zoommil":
        predictor = _predictor(_model())
    else:
        torch.manual_seed(0)
        model = build_model("abmil", in_dim=1024, n_classes=2).eval()
        predictor = Predictor(model=model, arch="abmil", classes=CLASSES, recipe=_recipe(MAGS[-1:]))
    encoder, _ = make_encoder(predictor)
    result = predict_slide(predictor, small_slide, encoder)
    assert result["patches_encoded"] > 0
    assert opened == [small_slide]


def test_tiling_ahead_gives_the_lattice_made_in_place(small_slide, tmp_path):
    """The lattice made in the tiling process is the one `predict_slide` would make; a slide
    that is not one raises the error tiling it in place raises (status and reason), without
    being tiled again; the first slide and a missing one are left to the caller (None), which
    then raises that slide's own error."""
    from zoommil.inference.tiling_ahead import TilingAhead, tile_for_inference

    copy, bad = _copy_and_broken(small_slide, tmp_path, "copy.tiff")
    recipe = _recipe(MAGS)
    slides = [small_slide, copy, bad, tmp_path / "missing.tiff", small_slide]
    got = []
    with TilingAhead(recipe, slides, ahead=2) as ahead:
        for i in range(len(slides)):
            try:
                got.append(ahead.get(i))
            except SlideCheckError as error:
                got.append(error)
    assert got[0] is None and got[3] is None
    with pytest.raises(SlideCheckError) as in_place:
        tile_for_inference(recipe, bad)
    assert isinstance(got[2], SlideCheckError)
    assert (got[2].slide, got[2].status, got[2].reason) == (
        in_place.value.slide,
        in_place.value.status,
        in_place.value.reason,
    )
    here = tile_for_inference(recipe, copy)
    for tiled in (got[1], got[4]):
        assert tiled is not None
        assert tiled.attrs["mpp"] == here.attrs["mpp"]
        assert tiled.attrs["mpp_source"] == here.attrs["mpp_source"]
        assert tiled.mags == here.mags
        for a, b in zip(tiled.xy, here.xy, strict=True):
            assert np.array_equal(a, b)
        for a, b in zip(tiled.coords, here.coords, strict=True):
            assert np.array_equal(a, b)


def test_the_tiling_process_leaves_ctrl_c_to_the_command(small_slide, tmp_path):
    """Ctrl-C during a cohort run printed the tiling process's own KeyboardInterrupt
    traceback (20 lines) before the command's one-line `interrupted` (review A)."""
    import signal

    from zoommil.inference.tiling_ahead import TilingAhead

    with TilingAhead(_recipe(MAGS), [small_slide, small_slide]) as ahead:
        assert ahead._pool is not None
        handler = ahead._pool.submit(signal.getsignal, signal.SIGINT).result(timeout=120)
    assert handler == signal.SIG_IGN


def test_predict_many_in_one_process_tiles_ahead(
    small_slide, checkpoint, one_slide_json, tmp_path, monkeypatch
):
    """--threads 1 over several slides: the slides after the first come with their lattice
    made ahead, the predictions are those of one-slide runs, and a broken slide between
    them is still its own failure row (from its tiling ahead: not classified again)."""
    import zoommil.inference.cohort as cohort

    seen = []
    real_classify = cohort.classify

    def spying_classify(settings, task, encoder, reader, tiled=None):
        seen.append((Path(task.slide).name, tiled is not None))
        return real_classify(settings, task, encoder, reader, tiled)

    monkeypatch.setattr(cohort, "classify", spying_classify)
    copy, bad = _copy_and_broken(small_slide, tmp_path, "second.tiff")
    out = tmp_path / "out"
    argv = ["predict", str(small_slide), str(bad), str(copy), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--out-dir", str(out), "--threads", "1"]) == 1
    assert seen == [(small_slide.name, False), ("second.tiff", True)]
    for name in (small_slide.stem, copy.stem):
        _same_prediction(out / f"{name}.json", one_slide_json)
    with (out / "predictions.tsv").open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "broken.tiff" in rows[1]["slide"] and rows[1]["reason"]
    _seconds_are_the_jsons(out, rows)


def _seconds_are_the_jsons(out: Path, rows: list[dict]) -> None:
    """The table's ``seconds`` of a classified slide is its JSON's ``seconds.total`` (it also
    timed drawing the heatmap and writing the JSON, another quantity under the same name)."""
    for row in rows:
        if row["status"] == "ok":
            record = json.loads((out / f"{row['slide_id']}.json").read_text())
            assert row["seconds"] == f"{record['seconds']['total']:.2f}", row["slide_id"]


@pytest.mark.parametrize(("argv", "expected"), [([], 1), (["--workers", "0"], 0)])
def test_predict_many_passes_workers_to_the_reader_pool(
    small_slide, checkpoint, tmp_path, monkeypatch, argv, expected
):
    """--workers reached one slide's reader pool only; with several slides (or --out-dir)
    the pool had the default whatever was asked. Nothing is classified here."""
    import zoommil.inference.cohort as cohort

    pools: list[int] = []

    class Pool:
        def __init__(self, workers: int) -> None:
            pools.append(workers)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def start(self):
            return self

    def classified(settings, task, encoder, reader, tiled=None):
        return {**cohort._failure(task, "not classified"), "status": "ok", "predicted": "a"}

    monkeypatch.setattr(cohort, "ReaderPool", Pool)
    monkeypatch.setattr(cohort, "classify", classified)
    slides = [str(small_slide), str(small_slide)]
    command = ["predict", *slides, "--checkpoint", str(checkpoint), "--device", "cpu"]
    monkeypatch.setattr("zoommil.commands.predict.summary_line", lambda row: row["slide_id"])
    assert main([*command, "--threads", "1", *argv]) == 0
    assert pools == [expected]  # the default on CPU is one reader process

    # each of several slide processes: inline by default, else the readers asked for, started
    # once per process and kept for its next slides
    pools.clear()
    monkeypatch.setitem(cohort._WORKER, "encoder", None)
    for workers in (None, 2):
        predictor = Predictor.from_checkpoint(checkpoint)
        monkeypatch.setitem(cohort._WORKER, "settings", cohort.Settings(predictor, workers=workers))
        monkeypatch.delitem(cohort._WORKER, "reader", raising=False)  # a fresh process
        for _ in range(2):
            cohort._task_in_worker(cohort.SlideTask(str(small_slide)))
    monkeypatch.delitem(cohort._WORKER, "reader", raising=False)
    assert pools == [0, 2]


def test_predict_heatmap_of_a_model_without_attention_fails_before_reading(
    small_slide, tmp_path, monkeypatch, capsys
):
    """It failed after classifying the slide, with the --json already written."""
    import zoommil.inference.predict as predict

    def no_read(*args, **kwargs):
        raise AssertionError("the slide was read")

    monkeypatch.setattr(predict, "predict_slide", no_read)
    config = {"arch": "meanmil", "kwargs": {}, "classes": CLASSES, "mags": [20.0], "in_dim": 1024}
    config["preprocessing"] = {"patch_size": PATCH, "weights": "random", "tissue_threshold": 0}
    model = build_model("meanmil", in_dim=1024, n_classes=2)
    ckpt = save_checkpoint(tmp_path / "meanmil.pt", model.state_dict(), config)
    out, png = tmp_path / "out" / "p.json", tmp_path / "out" / "p.png"
    argv = ["predict", str(small_slide), "--checkpoint", str(ckpt), "--workers", "0"]
    assert main([*argv, "--json", str(out), "--heatmap", str(png)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--heatmap draws a model's attention" in err
    assert f"{ckpt} (arch meanmil) has none" in err
    assert not (tmp_path / "out").exists()


def _weights_file(path: Path, seed: int) -> Path:
    """A ResNet-50 (to layer3) state dict file, as a user's weights (seeded parameters)."""
    model, _ = build_encoder("random", seed=seed)
    torch.save(model.state_dict(), path)
    return path


def _checkpoint_on(path: Path, weights: str, sha256: str) -> Path:
    """A ZoomMIL checkpoint trained on features whose recipe records ``weights`` and the
    sha256 of those weights."""
    return _zoommil_checkpoint(path, weights, weights_sha256=sha256)


def _error_line(err: str, needle: str) -> str:
    lines = [line for line in err.splitlines() if needle in line]
    assert len(lines) == 1, err
    return lines[0]


def test_predict_refuses_weights_other_than_those_of_the_training_features(
    small_slide, tmp_path, capsys
):
    """Features made with weights file A, a checkpoint trained on them: predict with
    --weights B, --weights random, or A overwritten by B gave other probabilities, exit 0 and
    no warning. Now each is one line naming the checkpoint, the weights and both hashes; the
    recorded file (and, in the demo, the recorded seeded random weights) still classify, and
    the JSON records the sha256 of the weights used."""
    a = _weights_file(tmp_path / "a.pt", seed=1)
    b = _weights_file(tmp_path / "b.pt", seed=2)
    sha_a, sha_b = sha256_file(a), sha256_file(b)
    random_sha = build_encoder("random", seed=0)[1]["weights_sha256"]
    ckpt = _checkpoint_on(tmp_path / "ckpt.pt", str(a), sha_a)
    argv = ["predict", str(small_slide), "--checkpoint", str(ckpt), "--workers", "0"]
    out = tmp_path / "a.json"
    assert main([*argv, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["weights_sha256"] == sha_a
    capsys.readouterr()
    refused = tmp_path / "refused.json"
    for weights, sha in ((str(b), sha_b), ("random", random_sha)):
        assert main([*argv, "--weights", weights, "--json", str(refused)]) == 2
        line = _error_line(capsys.readouterr().err, sha_a[:12])
        assert str(ckpt) in line and weights in line and sha[:12] in line
        assert "pass --weights with the file the training features were made with" in line
    assert not refused.exists()
    a.write_bytes(b.read_bytes())  # the recorded file overwritten since training
    assert main([*argv, "--json", str(refused)]) == 2
    line = _error_line(capsys.readouterr().err, sha_a[:12])
    assert str(a) in line and sha_b[:12] in line
    assert not refused.exists()
    # the demo: features and predict from the same seeded random weights
    demo = _checkpoint_on(tmp_path / "demo.pt", "random", random_sha)
    out = tmp_path / "demo.json"
    assert main(["predict", str(small_slide), "--checkpoint", str(demo), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["weights_sha256"] == random_sha


def test_predict_says_random_weights_of_another_version_need_retraining(
    small_slide, tmp_path, capsys
):
    """A demo checkpoint of an older zoommil, whose seeded random weights were initialised
    otherwise (another sha256 for the same seed): the refusal said to pass --weights with the
    file the features were made with, which random weights do not have (review V). It says
    to retrain on features made with this zoommil."""
    old = _checkpoint_on(tmp_path / "old.pt", "random", "f4" * 32)
    argv = ["predict", str(small_slide), "--checkpoint", str(old), "--workers", "0"]
    assert main([*argv, "--json", str(tmp_path / "old.json")]) == 2
    line = _error_line(capsys.readouterr().err, "f4" * 6)
    assert "initialised them otherwise: retrain on features made with this one" in line
    assert "pass --weights" not in line


def test_cohort_worker_with_other_weights_fails_each_slide_naming_the_hashes(
    small_slide, tmp_path, monkeypatch
):
    """A slide process builds its encoder at its first slide: other weights than the
    checkpoint's are that slide's failure row naming both hashes, not a prediction."""
    import zoommil.inference.cohort as cohort

    a = _weights_file(tmp_path / "a.pt", seed=1)
    ckpt = _checkpoint_on(tmp_path / "ckpt.pt", str(a), sha256_file(a))
    predictor = Predictor.from_checkpoint(ckpt, weights="random")
    monkeypatch.setitem(cohort._WORKER, "settings", cohort.Settings(predictor, workers=0))
    monkeypatch.delitem(cohort._WORKER, "encoder", raising=False)
    row = cohort._task_in_worker(cohort.SlideTask(str(small_slide)))
    monkeypatch.delitem(cohort._WORKER, "reader", raising=False)
    assert row["status"] == "failed" and "cannot build the encoder" in row["reason"]
    assert sha256_file(a)[:12] in row["reason"] and "random (seed 0)" in row["reason"]


def test_profile_times_a_checkpoint_with_other_weights(small_slide, tmp_path):
    """Timing does not depend on the weights' values: `zoommil profile --weights random` times
    a checkpoint of other (e.g. gated) weights, which predict refuses."""
    a = _weights_file(tmp_path / "a.pt", seed=1)
    ckpt = _checkpoint_on(tmp_path / "ckpt.pt", str(a), sha256_file(a))
    sheet = tmp_path / "slides.tsv"
    sheet.write_text(f"slide_id\tpath\tlabel\tsplit\ns\t{small_slide}\tnormal\ttest\n")
    out = tmp_path / "t.json"
    argv = ["profile", "--checkpoint", str(ckpt), "--device", "cpu", "--sheet", str(sheet)]
    assert main([*argv, "--weights", "random", "--max-slides", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["encoder_weights"] == "random" and len(record["per_slide"]) == 1


@pytest.mark.parametrize("random_weights", [True, False])
def test_a_prediction_of_random_weights_says_so_in_its_heatmap_and_line(
    small_slide, checkpoint, tmp_path, capsys, random_weights
):
    """DESIGN.md "Encoder": every output made with random weights says so. The heatmap (no
    text, no PNG info) and the printed line did not. Now the map is drawn as before with a
    caption band below it (any format) and, as a PNG, a text chunk; weights from a file add
    neither: the heatmap is the map alone."""
    from PIL import Image

    from zoommil.reporting.attention import render, save_heatmap

    if not random_weights:
        a = _weights_file(tmp_path / "a.pt", seed=1)
        checkpoint = _checkpoint_on(tmp_path / "ckpt.pt", str(a), sha256_file(a))
    out, png = tmp_path / "p.json", tmp_path / "heat.png"
    argv = ["predict", str(small_slide), "--checkpoint", str(checkpoint), "--workers", "0"]
    assert main([*argv, "--json", str(out), "--heatmap", str(png)]) == 0
    line = capsys.readouterr().out
    result = json.loads(out.read_text())
    drawn = render(result, small_slide)
    with Image.open(png) as opened:
        image, text = np.asarray(opened.convert("RGB")), dict(opened.text)
    with Image.open(save_heatmap(tmp_path / "heat.jpg", small_slide, result)) as opened:
        jpg = np.asarray(opened)
    if random_weights:
        assert line.rstrip().endswith(RANDOM_WEIGHTS_TAG)
        assert text == {"zoommil.weights_note": RANDOM_WEIGHTS_NOTE}
        height = drawn.shape[0]
        assert image.shape[1] == drawn.shape[1] and image.shape[0] > height
        assert (image[:height] == drawn).all()  # the map itself is unchanged
        assert (image[height:] < 128).any()  # the caption's text
        assert jpg.shape == image.shape  # a JPEG has no text chunk: the caption says it
    else:
        assert "random" not in line and "weights_note" not in result
        assert not text.get("zoommil.weights_note") and (image == drawn).all()
        assert jpg.shape == drawn.shape


def test_a_caption_wraps_to_the_image_and_leaves_its_pixels() -> None:
    from zoommil.reporting.attention import captioned

    image = np.full((40, 120, 3), 7, np.uint8)
    out = captioned(image, RANDOM_WEIGHTS_NOTE)
    assert out.shape[1] == 120 and (out[:40] == 7).all()
    band = out[40:]
    inked_rows = np.flatnonzero((band < 128).any(axis=(1, 2)))
    assert inked_rows.size and band.shape[0] > 3 * 12  # several lines at this width
    assert (band[:, -2:] == 255).all()  # nothing drawn past the right margin


@pytest.mark.parametrize("name", ["p.pdf", "p.svg", "p"])
def test_a_heatmap_name_opencv_cannot_write_fails_before_reading(
    small_slide, checkpoint, tmp_path, monkeypatch, capsys, name
):
    """`--heatmap p.pdf` raised a cv2.error after encoding the slide, leaving --json behind."""
    import zoommil.inference.predict as predict

    def no_read(*args, **kwargs):
        raise AssertionError("the slide was read")

    monkeypatch.setattr(predict, "predict_slide", no_read)
    out = tmp_path / "out"
    argv = ["predict", str(small_slide), "--checkpoint", str(checkpoint), "--workers", "0"]
    assert main([*argv, "--json", str(out / "p.json"), "--heatmap", str(out / name)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--heatmap {out / name}: not an image file name" in err
    assert not out.exists()


def test_every_heatmap_format_is_written_and_has_an_image_marker(tmp_path):
    import cv2
    from PIL import Image

    from zoommil.reporting.attention import HEATMAP_SUFFIXES, check_heatmap_path
    from zoommil.workflow.failure import Failure, write_marker

    image = np.zeros((8, 8, 3), np.uint8)
    for suffix in HEATMAP_SUFFIXES:
        check_heatmap_path(tmp_path / f"h{suffix.upper()}")
        assert cv2.imwrite(str(tmp_path / f"h{suffix}"), image), suffix
        marker = write_marker(tmp_path / f"m{suffix}", Failure("failed", "predict", "x"))
        with Image.open(marker) as opened:  # an image, not JSON text under an image's name
            assert opened.size == (480, 60), suffix


def test_out_dir_refuses_stems_that_differ_only_in_case(tmp_path):
    slides = [tmp_path / "a" / "Slide_1.svs", tmp_path / "b" / "slide_1.tiff"]
    with pytest.raises(ZoomMILError, match=r"share the slide_id 'slide_1' \(ignoring case\)"):
        tasks_in_dir(slides, tmp_path / "out", heatmaps=True)
    # every clash at once, not one per try
    more = [*slides, tmp_path / "a" / "case.svs", tmp_path / "b" / "case.svs"]
    with pytest.raises(
        ZoomMILError, match=r"'slide_1' \(ignoring case\); .* share the slide_id 'case'"
    ):
        tasks_in_dir(more, tmp_path / "out", heatmaps=True)
    tasks = tasks_in_dir(slides[:1] + [tmp_path / "slide_2.svs"], tmp_path / "out", heatmaps=False)
    assert [Path(t.json).name for t in tasks] == ["Slide_1.json", "slide_2.json"]


#: 1.25x is read from the prostate slide's level of downsample 8.0128 (at a given 1 um/px)
LOSSY_MAGS = [0.3125, 0.625, 1.25]
LOSSY_PATCH = 32  # 4 parents, 84 patches


def _lossy_predictor(model: torch.nn.Module, arch: str, mags: list[float]) -> Predictor:
    """``model`` reading ``mags`` of the prostate pyramid as `lossy_features` tiled it."""
    recipe = _lossy_recipe()
    return Predictor(model, arch, CLASSES, recipe, method=arch, model_mags=mags)


def _lossy_recipe() -> PreprocessingRecipe:
    """0.3125/0.625/1.25x, 32 px patches, every patch kept, random encoder weights."""
    recipe = PreprocessingRecipe(mags=LOSSY_MAGS, patch_size=LOSSY_PATCH, weights="random")
    return recipe.replace(tissue_threshold=KEEP_EVERY_PATCH)


@pytest.fixture(scope="module")
def lossy_features(slides_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real prostate pyramid's feature file at 0.3125/0.625/1.25x, every patch."""
    root = tmp_path_factory.mktemp("lossy")
    slide = slides_dir / "prostate-he-generic.tiff"
    coords = write_coords(root / "coords.h5", tile_slide(slide, _lossy_recipe(), mpp=1.0))
    out = root / "features" / "prostate.h5"
    extract_features(slide, coords, out, weights="random", mpp=1.0, workers=0, progress=False)
    return out


@pytest.mark.parametrize(
    "arch, mags",
    [
        ("abmil", [1.25]),  # one magnification, not the file's lowest
        ("dsmil", [0.3125, 1.25]),  # skips the file's 0.625x
        ("zoommil", [0.3125, 1.25]),  # zooms past 0.625x
        ("zoommil", [0.625, 1.25]),  # starts above the file's lowest
    ],
)
def test_a_model_on_some_of_the_files_magnifications_sees_the_files_pixels(
    slides_dir, lossy_features, arch, mags
):
    """A model trained on some magnifications of a feature file is given, by predict, the
    features of the file's rows on a scanner pyramid with non-integer downsamples: predict
    reads each patch as the file's chain of reads did (1.25x one read per 0.625x patch), not
    one read per patch or per zoomed 0.3125x patch, whose sub-pixel shift changed 41 of 72
    rows of a TCGA slide and ABMIL's probabilities (review P)."""
    from zoommil.io.featurefile import read_feature_file

    torch.manual_seed(0)
    kwargs = {"k": 2} if arch == "zoommil" else {}
    model = build_model(arch, in_dim=1024, n_classes=2, mags=mags, **kwargs).eval()
    predictor = _lossy_predictor(model, arch, mags)
    slide = slides_dir / "prostate-he-generic.tiff"
    result = predict_slide(predictor, slide, make_encoder(predictor)[0], mpp=1.0)
    bag = read_feature_file(lossy_features, mags)
    with torch.no_grad():
        logits = model(
            [torch.from_numpy(f)[None] for f in bag.feats],
            [torch.from_numpy(c) for c in bag.coords],
        )[0].double()
    assert _log_odds(result["probabilities"]) == pytest.approx(
        float(logits[1] - logits[0]), abs=1e-4
    )


def test_a_zoom_reads_through_the_files_magnification_before_its_target() -> None:
    """The depths below a selected patch that a zoom reads through: the file's magnification
    before the target sets the reads' size; the selected patch itself when there is none."""
    assert zoom_chain([5.0, 10.0], 5.0, 10.0) == [1]
    assert zoom_chain([1.25, 2.5, 10.0], 1.25, 10.0) == [1, 3]
    assert zoom_chain([1.25, 2.5, 10.0], 2.5, 10.0) == [2]
    assert zoom_chain([0.3125, 0.625, 1.25, 2.5], 0.3125, 2.5) == [2, 3]


def test_an_out_dir_run_of_another_model_removes_the_older_heatmap(
    small_slide, checkpoint, tmp_path
):
    """A ZoomMIL run left OUT/<slide>.json and .png; a MeanMIL checkpoint makes no heatmap (it
    has no attention), so its JSON must not lie beside that attention map of another model:
    the PNG goes with the JSON it belonged to (also on a failure). A PNG beside a prediction
    without attention (a user's picture next to the slides) is left alone (review X)."""
    config = {"arch": "meanmil", "kwargs": {}, "classes": CLASSES, "mags": [20.0], "in_dim": 1024}
    config["config_mags"] = MAGS
    config["preprocessing"] = {"patch_size": PATCH, "weights": "random", "tissue_threshold": 0}
    torch.manual_seed(0)
    model = build_model("meanmil", in_dim=1024, n_classes=2, mags=[20.0])
    meanmil = save_checkpoint(tmp_path / "meanmil.pt", model.state_dict(), config)
    out = tmp_path / "out"
    common = ["--out-dir", str(out), "--workers", "0", "--no-fail"]
    zoom = ["predict", str(small_slide), "--checkpoint", str(checkpoint), *common]
    assert main(zoom) == 0
    png, json_path = out / f"{small_slide.stem}.png", out / f"{small_slide.stem}.json"
    assert png.is_file() and json.loads(json_path.read_text())["arch"] == "zoommil"
    argv = ["predict", str(small_slide), str(tmp_path / "gone.svs"), "--checkpoint", str(meanmil)]
    assert main([*argv, *common]) == 0
    assert json.loads(json_path.read_text())["arch"] == "meanmil"
    assert not png.exists()
    png.write_bytes(b"\x89PNG a user's picture")  # beside a MeanMIL JSON: not a heatmap of ours
    assert main([*argv, *common]) == 0
    assert png.read_bytes() == b"\x89PNG a user's picture"
    json_path.unlink()
    assert main([*argv, *common]) == 0  # no earlier JSON at all
    assert png.is_file()


def test_predict_on_a_scan_coarser_than_the_checkpoint_says_what_a_predict_user_can_do(
    small_slide, checkpoint, capsys
):
    """The tiling advice (other magnifications, --allow-upsampling) is not predict's to take:
    the checkpoint fixes the magnifications; the message names the slide and what to do."""
    argv = ["predict", str(small_slide), "--checkpoint", str(checkpoint), "--mpp", "1.0"]
    assert main([*argv, "--workers", "0"]) == 1  # the slide is not classified
    err = capsys.readouterr().err
    line = _error_line(err, "finer than")
    assert str(small_slide) in line and "20x is finer than the slide's native" in line
    assert "the checkpoint reads these magnifications" in line and "--mpp" in line
    assert "--allow-upsampling" not in err


def test_a_relative_weights_path_is_found_from_another_folder(
    small_slide, tmp_path, monkeypatch, capsys
):
    """Features made with ``--weights r50.pt`` in a project folder record that relative path
    (a moved project still finds it) and the absolute ``weights_file``: predict from another
    folder falls back to the latter (it failed with "r50.pt: weights file not found", review
    W); a fallback file of other weights is still refused by its sha256."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    weights = _weights_file(project / "r50.pt", seed=1)
    ckpt = _zoommil_checkpoint(
        tmp_path / "ckpt.pt", "r50.pt", weights_sha256=sha256_file(weights),
        weights_file=str(weights),
    )  # fmt: skip
    monkeypatch.chdir(elsewhere)
    argv = ["predict", str(small_slide), "--checkpoint", str(ckpt), "--workers", "0"]
    assert main([*argv, "--json", "p.json"]) == 0
    assert json.loads((elsewhere / "p.json").read_text())["weights_sha256"] == sha256_file(weights)
    _weights_file(weights, seed=2)  # replaced since training
    assert main([*argv, "--json", "q.json"]) == 2
    assert str(weights) in _error_line(capsys.readouterr().err, "sha256")


def test_a_missing_weights_file_the_checkpoint_records_is_named_as_the_checkpoints(
    small_slide, tmp_path, capsys
):
    """A checkpoint whose weights file is not on this machine said "weights file not found
    (use --weights random, hf or a path...)", as if the user had typed the path, and random
    weights are then refused (review V); a --weights the user gives keeps the plain error."""
    gone = tmp_path / "models" / "uni.bin"
    ckpt = _zoommil_checkpoint(tmp_path / "ckpt.pt", str(gone), weights_sha256="ab" * 32)
    argv = ["predict", str(small_slide), "--checkpoint", str(ckpt), "--workers", "0"]
    assert main([*argv, "--json", "p.json"]) == 2
    line = _error_line(capsys.readouterr().err, str(gone))
    assert line.startswith(f"zoommil predict: error: {ckpt}: its training features were"), line
    assert "(sha256 abababababab), not found here: pass --weights with that file" in line
    assert "--weights random" not in line
    # a checkpoint of ImageNet weights not in this machine's cache: named as its own, without
    # the random weights its sha256 check would refuse (review N)
    imagenet = _zoommil_checkpoint(tmp_path / "inet.pt", "imagenet", weights_sha256="cd" * 32)
    torch_home = tmp_path / "torch"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(torch_home))
        argv_inet = ["predict", str(small_slide), "--checkpoint", str(imagenet)]
        assert main([*argv_inet, "--workers", "0", "--json", "i.json"]) == 2
    line = _error_line(capsys.readouterr().err, "ImageNet weights not found")
    assert f"{imagenet}: its training features were made with the encoder weights imagenet" in line
    assert "--weights random" not in line and str(torch_home) in line
    # profile times with any weights: it offers random ones (review G)
    sheet = tmp_path / "s.tsv"
    sheet.write_text(f"slide_id\tpath\tlabel\tsplit\ns\t{small_slide}\ta\ttest\n")
    timing = ["profile", "--checkpoint", str(ckpt), "--sheet", str(sheet), "--device", "cpu"]
    assert main([*timing, "--out", str(tmp_path / "t.json")]) == 2
    line = _error_line(capsys.readouterr().err, str(gone))
    assert line.endswith("(a copy of it anywhere), or, for timing only, --weights random"), line
    typed = tmp_path / "typo.bin"
    assert main([*argv, "--weights", str(typed), "--json", "q.json"]) == 2
    line = _error_line(capsys.readouterr().err, str(typed))
    assert f"{typed}: weights file not found" in line and str(ckpt) not in line


def test_zoom_speedup_benchmark_runs_on_demo_slides(tmp_path):
    """benchmarks/zoom_speedup.py crashed right after writing its demo slides (it indexed
    each path string by "path"); at toy size it writes one row per slide and the table."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "zoom_speedup.py"
    argv = ["--demo-slides", "1", "--demo-scale", "0.5", "--threads", "1", "--no-cmu"]
    done = subprocess.run(
        [sys.executable, str(script), *argv, "--out", str(tmp_path)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (case,) = json.loads((tmp_path / "zoom_speedup.json").read_text())["cases"]
    (row,) = case["slides"]
    assert row["abmil_patches"] > row["zoommil_patches"] > 0 and row["zoommil_seconds"] > 0
    assert "| demo (K=4, mags [5.0, 10.0]) | 1 |" in (tmp_path / "zoom_speedup.md").read_text()


def test_default_mpp_reaches_only_the_slides_without_metadata_in_one_cohort_run(
    small_slide, checkpoint, tmp_path, capsys
):
    """A mixed cohort in one run: --default-mpp classifies the slide without resolution
    metadata (source "default", its heatmap drawn at that mpp) and leaves the other its own
    metadata, where --mpp would override both; without it, the bare slide is a failure row
    that names the flag."""
    bare = write_pyramid_tiff(tmp_path / "bare.tiff", width=768, height=512, mpp=None)
    out = tmp_path / "out"
    argv = ["predict", str(small_slide), str(bare), "--checkpoint", str(checkpoint)]
    argv += ["--out-dir", str(out), "--workers", "0"]
    assert main(argv) == 1
    assert "--default-mpp" in _error_line(capsys.readouterr().err, str(bare))
    before = (out / f"{small_slide.stem}.json").stat().st_mtime_ns
    assert main([*argv, "--default-mpp", "50"]) == 2  # a usage error, before any slide
    assert "--default-mpp 50 is outside the plausible range" in capsys.readouterr().err
    assert (out / f"{small_slide.stem}.json").stat().st_mtime_ns == before
    assert main([*argv, "--default-mpp", "0.25"]) == 0
    meta = json.loads((out / f"{small_slide.stem}.json").read_text())
    given = json.loads((out / "bare.json").read_text())
    assert (meta["mpp"], given["mpp"]) == (0.5, 0.25)
    assert meta["mpp_source"] not in ("default", "override") and given["mpp_source"] == "default"
    assert (out / "bare.png").is_file()
    with open(out / "predictions.tsv", newline="") as handle:
        assert [row["status"] for row in csv.DictReader(handle, delimiter="\t")] == ["ok", "ok"]


@pytest.mark.parametrize("arch", ["abmil", "clam_sb", "maxmil", "transmil", "msmil", "dsmil"])
def test_a_baselines_prediction_carries_its_attention_on_the_patches_it_scored(
    slides_dir, lossy_features, tmp_path, arch
):
    """Every model with `attention_scores` gets a heatmap like ZoomMIL's: the prediction's
    attention is the model's scores of the feature file's rows, at those rows' level-0
    coordinates (MS-MIL: every magnification's share of one softmax; DSMIL: the highest
    magnification's), and `save_heatmap` draws it."""
    from zoommil.io.featurefile import read_feature_file
    from zoommil.models import default_mags
    from zoommil.reporting.attention import save_heatmap

    torch.manual_seed(0)
    mags = default_mags(arch, LOSSY_MAGS)
    model = build_model(arch, in_dim=1024, n_classes=2, mags=LOSSY_MAGS).eval()
    predictor = _lossy_predictor(model, arch, mags)
    assert predictor.has_attention
    slide = slides_dir / "prostate-he-generic.tiff"
    result = predict_slide(predictor, slide, make_encoder(predictor)[0], mpp=1.0)
    bag = read_feature_file(lossy_features, mags)
    feats = [torch.from_numpy(f)[None] for f in bag.feats]
    with torch.no_grad():
        scores = model.attention_scores(feats, [torch.from_numpy(c) for c in bag.coords])
    entries = result["attention"]
    scored = list(range(len(mags))) if arch != "dsmil" else [len(mags) - 1]
    assert [e["mag"] for e in entries] == [mags[m] for m in scored]
    for entry, m in zip(entries, scored, strict=True):
        np.testing.assert_array_equal(np.asarray(entry["xy"]), bag.xy[m])
    got = np.concatenate([e["weights"] for e in entries])
    np.testing.assert_allclose(got, scores.numpy(), atol=1e-4)
    assert result["selected"] == []
    png = save_heatmap(tmp_path / "map.png", slide, result)
    assert png.stat().st_size > 0
    if arch == "abmil":  # timing runs leave the second pass of the head out
        bare = predict_slide(predictor, slide, make_encoder(predictor)[0], mpp=1.0, attention=False)
        assert bare["attention"] == [] and bare["probabilities"] == result["probabilities"]


def test_the_models_without_attention_are_those_without_attention_scores():
    """`WITHOUT_ATTENTION` (what the config check and predict go by, without building a
    model) names exactly the baselines that pool without weights per patch."""
    from zoommil.models import MODEL_NAMES
    from zoommil.recipe import WITHOUT_ATTENTION

    for arch in MODEL_NAMES:
        if arch == "zoommil":
            continue
        model = build_model(arch, in_dim=1024, n_classes=2)
        predictor = Predictor(model=model, arch=arch, classes=CLASSES, recipe=_recipe(MAGS[-1:]))
        assert predictor.has_attention == hasattr(model, "attention_scores"), arch
        assert (arch in WITHOUT_ATTENTION) != hasattr(model, "attention_scores"), arch


def test_save_heatmap_of_a_prediction_without_attention_is_refused(small_slide, tmp_path):
    """A MeanMIL result from the Python API has no attention: `save_heatmap` wrote the bare
    thumbnail, which reads as "the model attended to nothing" (review P)."""
    from zoommil.reporting.attention import save_heatmap

    prediction = {"arch": "meanmil", "attention": [], "selected": [], "mpp": 0.5}
    with pytest.raises(ZoomMILError, match=r"no attention to draw \(arch meanmil"):
        save_heatmap(tmp_path / "map.png", small_slide, prediction)
    assert not (tmp_path / "map.png").exists()


_HEATMAP_UNDER_A_LIMIT = """
import json, resource, sys
from zoommil.errors import ZoomMILError
from zoommil.reporting.attention import save_heatmap
out, slide, prediction, limit = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: EFBIG
try:
    save_heatmap(out, slide, prediction)
except ZoomMILError as error:
    print(error)
    sys.exit(2)
"""


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_heatmap_cut_short_by_the_disk_is_an_error_not_a_file(small_slide, tmp_path, suffix):
    """`cv2.imwrite` lost the last buffered block of a heatmap silently when the disk filled
    (or a file-size limit was hit) there: a cut PNG, exit 0. Now the image is encoded in memory
    and written by Python: the one-line error of every other output, and no file."""
    from zoommil.reporting.attention import save_heatmap

    weights = np.linspace(0.0, 1.0, 64).tolist()
    xy = [[256 * (i % 8), 256 * (i // 8)] for i in range(64)]
    prediction = {
        "slide_id": "s", "arch": "abmil", "weights": "weights.pth", "mpp": 0.5, "selected": [],
        "probabilities": {"a": 0.4, "b": 0.6}, "predicted": "b",
        "attention": [{"mag": 10.0, "side0": 256, "xy": xy, "weights": weights}],
    }  # fmt: skip
    size = save_heatmap(tmp_path / f"whole{suffix}", small_slide, prediction).stat().st_size
    out = tmp_path / "out" / f"map{suffix}"
    out.parent.mkdir()
    argv = [str(out), str(small_slide), json.dumps(prediction), str(size - 100)]
    result = subprocess.run(
        [sys.executable, "-c", _HEATMAP_UNDER_A_LIMIT, *argv], capture_output=True, text=True
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"cannot write {out}: file too large" in result.stdout
    assert list(out.parent.iterdir()) == []


def test_the_detector_version_goes_from_masks_to_features_and_predict_warns_on_another(
    small_slide, tmp_path, caplog
):
    """An upgrade that changed the Gaussian detector's masks left old checkpoints predicting
    on new masks without a sign (review A). Each mask, coords and feature file records its
    detector's version, a checkpoint keeps it from its features, and predict warns when the
    version it detects with is another; a mask of another tool records none."""
    import logging

    from zoommil.io.coords import load_coords
    from zoommil.io.featurefile import read_attrs
    from zoommil.wsi.tissue import DETECTOR_VERSIONS

    current = DETECTOR_VERSIONS["gaussian"]
    mask, coords = tmp_path / "mask.png", tmp_path / "coords.h5"
    assert main(["tissue", str(small_slide), "--out", str(mask)]) == 0
    argv = ["tile", str(small_slide), "--mags", *map(str, MAGS), "--patch-size", str(PATCH)]
    assert main([*argv, "--tissue-mask", str(mask), "--out", str(coords)]) == 0
    assert load_coords(coords).attrs["tissue_version"] == current
    features = tmp_path / "f.h5"
    extract_features(small_slide, coords, features, weights="random", workers=0)
    assert read_attrs(features)["tissue_version"] == current
    foreign = tmp_path / "foreign.png"
    cv2.imwrite(str(foreign), (cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) > 127).astype("uint8"))
    assert main([*argv, "--tissue-mask", str(foreign), "--out", str(tmp_path / "c2.h5")]) == 0
    assert "tissue_version" not in load_coords(tmp_path / "c2.h5").attrs
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zoommil"):
        Predictor.from_checkpoint(_zoommil_checkpoint(tmp_path / "same.pt", tissue_version=current))
        Predictor.from_checkpoint(_zoommil_checkpoint(tmp_path / "none.pt"))
        assert not caplog.records
        old = _zoommil_checkpoint(tmp_path / "old.pt", tissue_version=current - 1)
        Predictor.from_checkpoint(old)
    (record,) = caplog.records
    assert f"{old}: trained on features whose tissue masks came from the gaussian detector" in (
        record.getMessage()
    )
    assert f"version {current - 1}; this zoommil's is version {current}" in record.getMessage()


def test_predict_warns_on_a_checkpoint_whose_features_record_no_detector_version(tmp_path, caplog):
    """A checkpoint trained on features of a zoommil from before the detector's version was
    recorded (or of several versions) records the Gaussian detector but no version: predict
    kept other patches than training did without a sign (an upgrade's detector kept 6 of 9
    parents of CMU-1-Small-Region at 5x), as the recorded-version check skipped it (review V).
    Otsu is still its first version, so an unversioned Otsu checkpoint matches."""
    import logging

    from zoommil.wsi.tissue import DETECTOR_VERSIONS

    assert DETECTOR_VERSIONS["gaussian"] > 1 and DETECTOR_VERSIONS["otsu"] == 1
    old = _zoommil_checkpoint(tmp_path / "old.pt", tissue_method="gaussian")
    otsu = _zoommil_checkpoint(tmp_path / "otsu.pt", tissue_method="otsu")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zoommil"):
        Predictor.from_checkpoint(otsu)
        assert not caplog.records
        Predictor.from_checkpoint(old)
    (record,) = caplog.records
    assert f"{old}: trained on features that record no gaussian detector version" in (
        record.getMessage()
    )
    assert "retrain on features made with this version" in record.getMessage()


@pytest.mark.parametrize(
    ("options", "selected_by"),
    [
        ({}, "selection attention"),
        ({"attention": "single"}, "pooling attention"),
        ({"selection": "random"}, "random"),
    ],
)
def test_a_zoommil_prediction_says_what_chose_its_regions(small_slide, options, selected_by):
    """The heatmap's legend said "chosen by the selection score" for every ZoomMIL, also where
    the regions were the top K of the colour (single attention) or random (review H2). The
    record says which, its `selection_scores` are those the regions are the top K of (left
    out where they chose nothing), and the legend words the boxes from it."""
    from zoommil.reporting.attention import SELECTED_BY, legend_text

    torch.manual_seed(0)
    model = build_model("zoommil", in_dim=1024, n_classes=2, mags=MAGS, k=K, **options).eval()
    result = predict_slide(_predictor(model), small_slide, make_encoder(_predictor(model))[0])
    assert result["selected_by"] == selected_by
    for entry, step in zip(result["attention"], result["selected"], strict=False):
        index = {tuple(xy): i for i, xy in enumerate(entry["xy"])}
        chosen = sorted(index[tuple(xy)] for xy in step["xy"])
        if selected_by == "selection attention":
            assert _top_k(entry["selection_scores"], chosen)
        else:
            assert "selection_scores" not in entry
        if selected_by == "pooling attention":
            assert _top_k(entry["weights"], chosen)
    text = legend_text(result, len(result["selected"]))
    assert f"(white step 1, sky blue step 2){SELECTED_BY[selected_by]}." in text
    assert ". Colour: ZoomMIL's " in text  # the tables' name, not the config key "zoommil"
    assert ". Colour: CLAM-SB's " in legend_text({**result, "method": "clam_sb"}, 0)


def _top_k(scores: list[float], chosen: list[int]) -> bool:
    """Whether rows ``chosen`` are a top K of ``scores`` (ties: any of the equal rows)."""
    scores = np.asarray(scores)
    others = np.delete(scores, chosen)
    return len(chosen) == K and (others.size == 0 or scores[chosen].min() >= others.max())


def test_a_multiclass_maxmil_prediction_names_the_class_its_map_is_of(small_slide):
    """MaxMIL's map is each patch's probability of the predicted class (not of each patch's
    own top class, review H2), and the record and the legend name that class."""
    from zoommil.reporting.attention import score_name

    torch.manual_seed(0)
    model = build_model("maxmil", in_dim=1024, n_classes=3).eval()
    classes = ["normal", "atypia", "carcinoma"]
    predictor = Predictor(model=model, arch="maxmil", classes=classes, recipe=_recipe([20.0]))
    result = predict_slide(predictor, small_slide, make_encoder(predictor)[0])
    (entry,) = result["attention"]
    assert entry["class"] == result["predicted"]
    assert score_name(result) == f"per-patch probability of a class (class {result['predicted']})"


@pytest.mark.parametrize("width", [1, 30, 60, 400])
def test_the_heatmap_legend_fits_any_width(width):
    """A strip of a slide (256 x 8192 px) gave a one-panel map ~30 px wide, and the legend's
    16 px colour bar raised a broadcast error after the slide was classified (review G)."""
    from zoommil.reporting.attention import legend

    prediction = {"arch": "abmil", "predicted": "a", "probabilities": {"a": 0.6}, "attention": []}
    band = legend(prediction, width, 0)
    assert band.shape[1] == width and band.dtype == np.uint8
    assert (band[6:20] != 255).any()  # the colour bar is drawn, as wide as there is room


def _undocumented(cls: type) -> list[str]:
    """The public methods and properties of ``cls`` without a docstring."""
    bare = []
    for name, member in vars(cls).items():
        function = getattr(member, "fget", None) or getattr(member, "__func__", member)
        if not name.startswith("_") and callable(function) and not function.__doc__:
            bare.append(name)
    return bare


def test_the_python_apis_classes_document_every_public_member() -> None:
    """`Predictor.from_checkpoint`, `.patch_size`, `Classifier.classes` and `.arch` had no
    docstring: `help()` in a notebook said nothing of what they are for."""
    from zoommil.inference.classifier import Classifier

    assert _undocumented(Predictor) == [] and _undocumented(Classifier) == []


@pytest.mark.parametrize("method", ["unknown", "none"])
def test_a_checkpoint_of_features_tiled_with_another_tools_mask_is_refused_by_predict(
    small_slide, tmp_path, capsys, method
):
    """Features tiled with a `--tissue-mask` of another tool (a QuPath or TRIDENT GeoJSON made
    into a mask) record the method ``unknown`` (coords without a detector: ``none``); predict
    stopped on such a checkpoint with "unknown tissue method 'unknown' (choose from gaussian,
    otsu)", which said neither why nor what to do. It names the masks and the way that works."""
    recorded = {"tissue_method": method, "tissue_params": {"geojson": "s.geojson"}}
    ckpt = _zoommil_checkpoint(tmp_path / "c.pt", tissue_mask="m.png", **recorded)
    capsys.readouterr()
    assert main(["predict", str(small_slide), "--checkpoint", str(ckpt), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt}: trained on features tiled with tissue masks from outside zoommil " in err
    assert f"(tissue method {method!r}, e.g. m.png)" in err
    assert "zoommil tile --tissue-mask" in err and "Classifier" in err

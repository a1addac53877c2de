"""`zoommil predict --checkpoint A --checkpoint B ...`: a seed ensemble is the mean of its
checkpoints' probabilities, read from one pass over the slide; one checkpoint is unchanged."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from slide_factory import KEEP_EVERY_PATCH, write_pyramid_tiff

from zoommil.cli import main
from zoommil.features.encoders.weights import sha256_file
from zoommil.inference.cohort import SlideTask, ok_row, predict_slides, tasks_in_dir, write_table
from zoommil.inference.ensemble import ensemble_id, predict_members
from zoommil.inference.ensemble_run import EnsembleSettings
from zoommil.inference.predict import Predictor, _Timer, make_encoder, predict_slide
from zoommil.io.jsonio import write_json
from zoommil.models import build_model
from zoommil.processes import ProcessDied
from zoommil.training.checkpoint import save_checkpoint

MAGS = [5.0, 10.0, 20.0]
PATCH = 64
K = 3
CLASSES = ["normal", "tumour"]
SEEDS = [0, 1, 2]


def _checkpoint(path: Path, seed: int, arch: str = "zoommil", **config: object) -> Path:
    """A checkpoint as `zoommil train` writes it, of a model initialised with ``seed`` (the
    seeds' models select other regions), over `test_predict`'s random-weight recipe."""
    torch.manual_seed(seed)
    kwargs = {"k": K} if arch == "zoommil" else {}
    model = build_model(arch, in_dim=1024, n_classes=2, mags=MAGS, **kwargs).eval()
    recipe = {"patch_size": PATCH, "weights": "random", "weights_seed": 0}
    recipe["tissue_threshold"] = KEEP_EVERY_PATCH
    full = {
        "method": arch,
        "arch": arch,
        "kwargs": kwargs,
        "classes": CLASSES,
        "mags": MAGS,
        "config_mags": MAGS,
        "in_dim": 1024,
        "seed": seed,
        "preprocessing": recipe,
    }
    full.update(config)
    return save_checkpoint(path, model.state_dict(), full)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pyramid_tiff(tmp_path_factory.mktemp("ens") / "small.tiff", width=768, height=512)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("seeds")
    return [_checkpoint(root / f"seed{s}.pt", s) for s in SEEDS]


@pytest.fixture(scope="module")
def singles(slide: Path, seeds: list[Path], tmp_path_factory) -> list[dict]:
    """Each checkpoint's prediction of the slide, one run each."""
    root = tmp_path_factory.mktemp("singles")
    records = []
    for ckpt in seeds:
        out = root / f"{ckpt.stem}.json"
        assert main(["predict", str(slide), "--checkpoint", str(ckpt), "--json", str(out)]) == 0
        records.append(json.loads(out.read_text()))
    return records


@pytest.fixture(scope="module")
def ensemble(slide: Path, seeds: list[Path], tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ensemble") / "pred.json"
    argv = ["predict", str(slide), "--json", str(out)]
    for ckpt in seeds:
        argv += ["--checkpoint", str(ckpt)]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_the_ensemble_is_the_mean_of_separate_single_runs(ensemble, singles, seeds):
    probs = np.array([[r["probabilities"][c] for c in CLASSES] for r in singles])
    mean = probs.mean(axis=0)
    assert [ensemble["probabilities"][c] for c in CLASSES] == pytest.approx(mean, abs=1e-6)
    assert ensemble["predicted"] == CLASSES[int(np.argmax(mean))]
    # each checkpoint's own record, by sha256 and seed: what it says alone
    members = ensemble["checkpoints"]
    assert [m["checkpoint_sha256"] for m in members] == [sha256_file(c) for c in seeds]
    assert [m["seed"] for m in members] == SEEDS
    for member, single in zip(members, singles, strict=True):
        for c in CLASSES:
            assert member["probabilities"][c] == pytest.approx(single["probabilities"][c], 1e-6)
        assert member["selected"] == single["selected"]
        assert member["patches_per_mag"] == single["patches_per_mag"]
        assert member["predicted"] == single["predicted"]
        # the same patches' features at every magnification: the same attention over them
        assert len(member["attention"]) == len(single["attention"]) == len(MAGS)
        for mine, alone in zip(member["attention"], single["attention"], strict=True):
            assert mine["xy"] == alone["xy"] and mine["mag"] == alone["mag"]
            assert mine["weights"] == pytest.approx(alone["weights"], abs=1e-6)
    # the spread of the predicted class's probability across the checkpoints
    top = probs[:, int(np.argmax(mean))]
    spread = ensemble["ensemble"]
    assert spread["p_predicted_sd"] == pytest.approx(top.std(ddof=1), abs=1e-6)
    assert spread["p_predicted_min"] == pytest.approx(top.min(), abs=1e-6)
    assert spread["p_predicted_max"] == pytest.approx(top.max(), abs=1e-6)
    votes = [r["predicted"] for r in singles]
    assert spread["argmax_agree"] == (len(set(votes)) == 1)
    assert spread["votes"] == {c: votes.count(c) for c in CLASSES}
    assert ensemble["checkpoint_sha256"].startswith("ensemble-")


def test_the_ensemble_reads_the_union_of_the_regions_once(ensemble, singles):
    """The lowest magnification is encoded once for all; at each zoom the regions any
    checkpoint selected are encoded once: fewer patches than three runs, at least one's."""
    counts = list(ensemble["patches_per_mag"].values())  # lowest magnification first
    assert counts[0] == list(singles[0]["patches_per_mag"].values())[0]
    for step, mag in enumerate(MAGS[:-1]):
        union = {
            tuple(xy) for r in singles for s in r["selected"] if s["mag"] == mag for xy in s["xy"]
        }
        assert counts[step + 1] == len(union) * 4
    assert ensemble["patches_encoded"] == sum(counts)
    assert ensemble["patches_encoded"] < sum(r["patches_encoded"] for r in singles)
    assert ensemble["selected"] == [] and ensemble["attention"] == []


def test_an_ensemble_of_one_is_the_single_prediction(slide, seeds):
    predictor = Predictor.from_checkpoint(seeds[1])
    encoder, _ = make_encoder(predictor)
    single = predict_slide(predictor, slide, encoder)
    (member,), encoded = predict_members([predictor], slide, encoder)
    for key in ("probabilities", "predicted", "selected", "attention", "patches_per_mag"):
        assert member[key] == single[key], key
    assert encoded == single["patches_per_mag"]


def _frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every phase of the prediction takes 0 s: the records' ``seconds`` are then the same on
    every run, so whole files can be compared byte for byte."""
    zero = dict.fromkeys(("total", "tissue_and_tiling", "read", "encode", "head"), 0.0)
    monkeypatch.setattr(_Timer, "summary", lambda self: dict(zero))


def test_one_checkpoint_writes_what_it_wrote_before(slide, seeds, tmp_path, monkeypatch):
    """One --checkpoint: the JSON and predictions.tsv byte for byte as the code path of the
    command before ensembles (predict_slide, write_json; ok_row, write_table) writes them."""
    _frozen_clock(monkeypatch)
    ckpt = seeds[2]
    out = tmp_path / "cli.json"
    assert main(["predict", str(slide), "--checkpoint", str(ckpt), "--json", str(out)]) == 0
    predictor = Predictor.from_checkpoint(ckpt)
    encoder, _ = make_encoder(predictor)
    # with the command's torch threads (--threads 1): the sums of other thread counts differ
    # in the last float32 bits
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = predict_slide(predictor, slide, encoder)
    finally:
        torch.set_num_threads(saved)
    write_json(tmp_path / "ref.json", reference)
    assert out.read_bytes() == (tmp_path / "ref.json").read_bytes()
    folder = tmp_path / "out"
    argv = ["predict", str(slide), "--checkpoint", str(ckpt), "--out-dir", str(folder)]
    assert main(argv) == 0
    assert (folder / "small.json").read_bytes() == out.read_bytes()
    task = SlideTask(str(slide), str(folder / "small.json"), str(folder / "small.png"))
    write_table(tmp_path / "ref.tsv", [ok_row(task, reference)], CLASSES)
    assert (folder / "predictions.tsv").read_bytes() == (tmp_path / "ref.tsv").read_bytes()
    assert "checkpoints" not in json.loads(out.read_text())


def _refused(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "change, says",
    [
        ({"classes": ["tumour", "normal"]}, "classes ['normal', 'tumour'] vs ['tumour', 'normal']"),
        (
            {"preprocessing": {"patch_size": 128, "weights": "random", "weights_seed": 0}},
            "preprocessing patch size 64 vs 128",
        ),
        (
            {
                "preprocessing": {
                    "patch_size": PATCH,
                    "weights": "random",
                    "weights_seed": 0,
                    "tissue_threshold": KEEP_EVERY_PATCH,
                    "encoder": "resnet50_trunc",
                    "mags": [2.5, 5.0, 10.0, 20.0],
                }
            },
            "preprocessing magnifications",
        ),
    ],
)
def test_checkpoints_that_cannot_be_combined_are_refused(
    slide, seeds, tmp_path, capsys, change, says
):
    other = _checkpoint(tmp_path / "other.pt", 5, **change)
    argv = ["predict", str(slide), "--checkpoint", str(seeds[0]), "--checkpoint", str(other)]
    err = _refused(argv, capsys)
    assert str(seeds[0]) in err and str(other) in err and says in err, err


def test_another_method_and_a_repeated_checkpoint_are_refused(slide, seeds, tmp_path, capsys):
    abmil = _checkpoint(tmp_path / "abmil.pt", 0, arch="abmil")
    argv = ["predict", str(slide), "--checkpoint", str(seeds[0]), "--checkpoint", str(abmil)]
    err = _refused(argv, capsys)
    assert str(abmil) in err and "method zoommil vs abmil" in err
    twice = ["predict", str(slide), "--checkpoint", str(seeds[0]), "--checkpoint"]
    err = _refused([*twice, str(seeds[0])], capsys)
    assert "same checkpoint" in err
    heat = [*twice, str(seeds[1]), "--heatmap", str(tmp_path / "h.png")]
    err = _refused(heat, capsys)
    assert "--heatmap draws one model's attention" in err
    assert not (tmp_path / "h.png").exists()
    point = tmp_path / "val_spec90.json"
    point.write_text("{}")
    err = _refused([*twice, str(seeds[1]), "--operating-point", str(point)], capsys)
    assert f"--operating-point {point} is a threshold fixed" in err, err


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_out_dir_records_spread_and_resume_keeps_only_the_same_set(
    slide, seeds, ensemble, tmp_path, capsys
):
    copy = tmp_path / "copy.tiff"
    copy.write_bytes(slide.read_bytes())
    out = tmp_path / "out"
    three = [a for c in seeds for a in ("--checkpoint", str(c))]
    argv = ["predict", str(slide), str(copy), "--out-dir", str(out)]
    assert main([*argv, *three]) == 0
    printed = capsys.readouterr().out
    assert "3 checkpoints: p(" in printed
    (row, _) = _rows(out / "predictions.tsv")
    for c in CLASSES:
        assert float(row[f"p_{c}"]) == pytest.approx(ensemble["probabilities"][c], abs=1e-6)
        for member in ensemble["checkpoints"]:
            sha = member["checkpoint_sha256"][:12]
            assert float(row[f"p_{c}_{sha}"]) == pytest.approx(member["probabilities"][c], abs=1e-6)
    spread = ensemble["ensemble"]
    assert float(row["p_predicted_sd"]) == pytest.approx(spread["p_predicted_sd"], abs=1e-6)
    assert float(row["p_predicted_min"]) == pytest.approx(spread["p_predicted_min"], abs=1e-6)
    assert float(row["p_predicted_max"]) == pytest.approx(spread["p_predicted_max"], abs=1e-6)
    assert row["argmax_agree"] == ("yes" if spread["argmax_agree"] else "no")
    record = json.loads((out / "small.json").read_text())
    assert record["checkpoint_sha256"] == ensemble_id(
        [Predictor.from_checkpoint(c) for c in reversed(seeds)]
    )  # the set, in any order
    assert not (out / "small.png").exists()
    # --resume with the same set keeps both; with another set or one checkpoint, redoes them
    assert main([*argv, *three, "--resume"]) == 0
    assert "all 2 slides were already classified" in capsys.readouterr().out
    (kept, _) = _rows(out / "predictions.tsv")
    assert kept == row | {"reason": "kept from an earlier run (--resume)"}
    assert main([*argv, *three[:4], "--resume"]) == 0
    assert "already classified" not in capsys.readouterr().out
    assert "p_predicted_sd" in _rows(out / "predictions.tsv")[0]
    assert main([*argv, *three[:2], "--resume"]) == 0
    assert "already classified" not in capsys.readouterr().out
    assert json.loads((out / "small.json").read_text())["checkpoint_sha256"] == sha256_file(
        seeds[0]
    )
    # that single checkpoint drew attention maps; an ensemble replacing its JSONs removes them
    assert (out / "small.png").is_file()
    assert main([*argv, *three]) == 0
    assert not (out / "small.png").exists() and not (out / "copy.png").exists()


def test_an_all_patch_ensemble_is_the_mean_of_its_single_runs(slide, tmp_path, capsys):
    """Models other than ZoomMIL share one all-patch pass; each head's probabilities are
    its single run's."""
    ckpts = [_checkpoint(tmp_path / f"abmil{s}.pt", s, arch="abmil") for s in SEEDS[:2]]
    singles = []
    for ckpt in ckpts:
        out = tmp_path / f"{ckpt.stem}.json"
        assert main(["predict", str(slide), "--checkpoint", str(ckpt), "--json", str(out)]) == 0
        singles.append(json.loads(out.read_text()))
    out = tmp_path / "ens.json"
    argv = ["predict", str(slide), "--json", str(out)]
    assert main([*argv, *(a for c in ckpts for a in ("--checkpoint", str(c)))]) == 0
    record = json.loads(out.read_text())
    for c in CLASSES:
        mean = np.mean([s["probabilities"][c] for s in singles])
        assert record["probabilities"][c] == pytest.approx(mean, abs=1e-6)
    assert record["patches_per_mag"] == singles[0]["patches_per_mag"]  # one pass, not two
    assert [m["attention"] for m in record["checkpoints"]] == [s["attention"] for s in singles]
    assert "2 checkpoints: p(" in capsys.readouterr().out


def test_the_ensembles_time_counts_every_head_once():
    """All-patch records are each the shared pass plus their own head; ZoomMIL's share one
    timer, whose last record has it all."""
    from zoommil.inference.ensemble import _seconds

    def record(total: float, head: float) -> dict:
        return {"seconds": {"total": total, "tissue_and_tiling": 1.0, "head": head}}

    results = [record(3.0, 1.0), record(3.5, 1.5)]
    assert _seconds("abmil", results) == {"total": 4.5, "tissue_and_tiling": 1.0, "head": 2.5}
    assert _seconds("zoommil", results) == results[1]["seconds"]


def test_one_failing_slide_is_a_row_and_the_others_are_classified(
    slide, seeds, ensemble, tmp_path, capsys
):
    """An unreadable slide among several: its row says failed (no JSON left), the others are
    classified as alone; exit 1, or 0 with --no-fail."""
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(b"not a slide")
    out = tmp_path / "out"
    out.mkdir()
    (out / "broken.json").write_text("{}")  # an earlier run's, removed with the failure
    three = [a for c in seeds for a in ("--checkpoint", str(c))]
    argv = ["predict", str(broken), str(slide), "--out-dir", str(out), *three]
    for extra, code in (([], 1), (["--no-fail"], 0)):
        assert main([*argv, *extra]) == code
        err = capsys.readouterr().err
        assert f"zoommil predict: {broken}: " in err and "Traceback" not in err
        assert "1 of 2 slides failed" in err
        rows = {r["slide_id"]: r for r in _rows(out / "predictions.tsv")}
        assert rows["broken"]["status"] == "failed" and rows["broken"]["p_predicted_sd"] == ""
        assert rows["small"]["status"] == "ok"
        p = float(rows["small"]["p_tumour"])
        assert p == pytest.approx(ensemble["probabilities"]["tumour"], abs=1e-6)
        assert not (out / "broken.json").exists() and (out / "small.json").is_file()


def test_json_with_several_slides_is_refused_before_any_checkpoint_is_loaded(
    slide, seeds, tmp_path, capsys, monkeypatch
):
    """A usage error, as for one checkpoint: one line, exit 2, without loading N checkpoints
    (nor resolving --device) first."""

    def load(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded before the usage error")

    monkeypatch.setattr("zoommil.commands.predict.load_predictor", load)
    three = [a for c in seeds for a in ("--checkpoint", str(c))]
    argv = ["predict", str(slide), str(slide), "--json", str(tmp_path / "p.json"), *three]
    err = _refused(argv, capsys)
    assert err.endswith(
        "--json names one slide's file; with several slides or --out-dir, use --out-dir alone"
    )


def _without_seconds(path: Path) -> list[dict]:
    """The table's rows less ``seconds`` (each run's own time)."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in _rows(path)]


def test_several_slides_over_processes_are_the_serial_run(slide, seeds, tmp_path, capsys):
    """--threads 2 classifies whole slides in 2 processes, as with one checkpoint: the same
    rows in input order (the unreadable slide a failure row naming it, exit 1) and the same
    records to the float as --threads 1 in this process."""
    copies = []
    for name in ("second.tiff", "third.tiff"):
        copies.append(tmp_path / name)
        copies[-1].write_bytes(slide.read_bytes())
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(b"not a slide")
    three = [a for c in seeds for a in ("--checkpoint", str(c))]
    slides = [str(copies[0]), str(broken), str(slide), str(copies[1])]
    printed = {}
    for threads in ("1", "2"):
        out = tmp_path / f"threads{threads}"
        argv = ["predict", *slides, "--out-dir", str(out), "--threads", threads, *three]
        assert main(argv) == 1
        printed[threads] = capsys.readouterr()
        assert f"zoommil predict: {broken}: " in printed[threads].err
        assert "1 of 4 slides failed" in printed[threads].err
    assert "3 of 4 slides classified in " in printed["1"].out
    assert "by 3 checkpoints, 1 process(es) x 1 thread(s)" in printed["1"].out
    assert "by 3 checkpoints, 2 process(es) x 1 thread(s)" in printed["2"].out
    serial, spread = tmp_path / "threads1", tmp_path / "threads2"
    rows = _without_seconds(spread / "predictions.tsv")
    assert rows == _without_seconds(serial / "predictions.tsv")
    assert [r["slide_id"] for r in rows] == ["second", "broken", "small", "third"]
    assert [r["status"] for r in rows] == ["ok", "failed", "ok", "ok"]
    assert not (spread / "broken.json").exists()
    for name in ("second", "small", "third"):
        a, b = (json.loads((d / f"{name}.json").read_text()) for d in (serial, spread))
        for key in ("probabilities", "predicted", "ensemble", "patches_per_mag", "slide_path"):
            assert a[key] == b[key], (name, key)
        for one, other in zip(a["checkpoints"], b["checkpoints"], strict=True):
            for key in ("probabilities", "selected", "attention", "patches_per_mag"):
                assert one[key] == other[key], (name, key)


@dataclasses.dataclass(frozen=True)
class _DiesOnSlide(EnsembleSettings):
    """Kills its process on the slide named ``dies`` (as the OOM killer would)."""

    def classify_task(self, task, encoder, reader, tiled=None):  # noqa: ANN001, ANN201
        if task.slide_id == "dies":
            os._exit(9)
        return super().classify_task(task, encoder, reader, tiled)


def test_a_slide_process_that_dies_takes_only_its_slide(slide, seeds, ensemble, tmp_path):
    """The ensemble's slides go through `cohort.predict_slides`: a process that dies under a
    slide is that slide's failure row (its outputs of an earlier run removed); the other
    slide is classified as alone."""
    dies = tmp_path / "dies.tiff"
    dies.write_bytes(slide.read_bytes())
    (tmp_path / "dies.json").write_text("{}")
    members = tuple(Predictor.from_checkpoint(c) for c in seeds)
    settings = _DiesOnSlide(members[0], workers=0, members=members, seeds=tuple(SEEDS))
    tasks = tasks_in_dir([dies, slide], tmp_path, heatmaps=False)
    summary = predict_slides(settings, tasks, threads=2)
    died, ok = summary["rows"]
    assert summary["processes"] == 2 and summary["failed"] == 1
    assert died["status"] == "failed" and died["reason"] == ProcessDied().reason
    assert not (tmp_path / "dies.json").exists()
    assert ok["status"] == "ok" and ok["probabilities"] == ensemble["probabilities"]
    assert ok["ensemble"]["p_predicted_sd"] == ensemble["ensemble"]["p_predicted_sd"]


def test_resume_says_how_many_slides_it_kept(slide, seeds, tmp_path, capsys):
    """As with one checkpoint: the kept slides are counted at the start and in the last line,
    whose count and rate are this run's slides only."""
    copy = tmp_path / "copy.tiff"
    copy.write_bytes(slide.read_bytes())
    out = tmp_path / "out"
    three = [a for c in seeds for a in ("--checkpoint", str(c))]
    assert main(["predict", str(slide), "--out-dir", str(out), *three]) == 0
    capsys.readouterr()
    argv = ["predict", str(slide), str(copy), "--out-dir", str(out), "--resume", *three]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "--resume: 1 of 2 slides already classified, kept" in printed
    last = r"^1 of 1 slides classified in .* by 3 checkpoints, .*; 1 kept from an earlier run$"
    assert re.search(last, printed, re.M), printed

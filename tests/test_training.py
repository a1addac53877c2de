"""`zoommil train` / `zoommil evaluate` on small synthetic feature files written per test."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from torch import nn

import zoommil
from zoommil.cli import main
from zoommil.errors import ZoomMILError
from zoommil.io.featurefile import write_feature_file
from zoommil.models import MODEL_NAMES
from zoommil.training import modeling
from zoommil.training.trainer import LOG_COLUMNS, balanced_sampler, replay_early_stopping

MAGS = (2.5, 5.0, 10.0)
DIM = 16
CLASSES = ("normal", "tumor")
THREADS_AT_IMPORT = torch.get_num_threads()


def _children(coords: np.ndarray) -> np.ndarray:
    """Depth-first children of every (row, col): (2r,2c), (2r+1,2c), (2r,2c+1), (2r+1,2c+1)."""
    steps = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
    return (2 * coords[:, None, :] + steps[None]).reshape(-1, 2)


def write_bag(path: Path, label: int, rng: np.random.Generator, n_parents: int = 2) -> None:
    """A slide: n parents at 2.5x, 4x rows at 5x, 16x at 10x; tumor shifts a few 10x rows."""
    coords = [np.stack([np.zeros(n_parents, int), np.arange(n_parents)], axis=1)]
    for _ in MAGS[1:]:
        coords.append(_children(coords[-1]))
    feats = [rng.normal(size=(len(c), DIM)).astype(np.float32) for c in coords]
    if label == 1:
        rows = rng.choice(len(feats[-1]), size=3, replace=False)
        feats[-1][rows, :4] += 3.0
    xy = [c[:, ::-1] * int(1024 / (m / MAGS[0])) for c, m in zip(coords, MAGS, strict=True)]
    attrs = {
        "patch_size": 256,
        "encoder": "resnet50_layer3",
        "weights": "random",
        "tissue_method": "gaussian",
        "mpp": float(rng.uniform(0.4, 0.6)),
        "created": str(rng.integers(1e9)),
    }
    write_feature_file(path, MAGS, feats, coords, xy, attrs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """16 slides (8 train, 4 val, 4 test, balanced), a sheet and a config."""
    root = tmp_path_factory.mktemp("train_data")
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        for i in range(n):
            slide_id = f"{split}_{i:02d}"
            label = i % 2
            write_bag(root / "features" / f"{slide_id}.h5", label, rng)
            rows.append((slide_id, f"/nowhere/{slide_id}.svs", CLASSES[label], split))
    sheet = root / "slides.tsv"
    sheet.write_text("slide_id\tpath\tlabel\tsplit\n" + "".join("\t".join(r) + "\n" for r in rows))
    config = {
        "features_dir": str(root / "features"),
        "sheet": str(sheet),
        "mags": list(MAGS),
        "epochs": 3,
        "lr": 1e-3,
        "selection": "val_loss",
        "methods": {"abmil_small": {"arch": "abmil", "dropout": 0.0}},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return {"root": root, "config": root / "config.yaml", "sheet": sheet}


def write_config(dataset: dict[str, Path], tmp_path: Path, **changes) -> Path:
    config = yaml.safe_load(dataset["config"].read_text())
    config.update(changes)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_cli(config: Path, out: Path, model: str = "abmil_small", seed: int = 0, *extra) -> int:
    args = ["train", "--config", str(config), "--model", model, "--seed", str(seed)]
    return main([*args, "--out", str(out), "--device", "cpu", "--no-progress", *extra])


def read_log(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def strip_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "train_seconds"}


@pytest.fixture(scope="module")
def trained(dataset: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "abmil"
    assert train_cli(dataset["config"], out) == 0
    return out


def test_a_stopped_run_leaves_no_earlier_run_s_outputs(
    dataset, tmp_path, monkeypatch, capsys
) -> None:
    """A run stopped mid-way (here: Ctrl-C in the first epoch) rewrote log.csv but kept
    the folder's older checkpoint.pt, metrics.json and --eval-out JSON, so the folder looked
    like one finished run."""
    from zoommil.training import trainer

    out = tmp_path / "run"
    out.mkdir()
    stale = [out / "checkpoint.pt", out / "metrics.json", out / "log.csv", tmp_path / "e.json"]
    for path in stale:
        path.write_text("an earlier run's")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_fit", stopped)
    eval_out = str(tmp_path / "e.json")
    assert train_cli(dataset["config"], out, "abmil_small", 0, "--eval-out", eval_out) == 130
    assert [path.name for path in stale if path.exists()] == []
    # said, not found out later: nothing resumes, and the earlier run is gone (review R)
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "zoommil train: interrupted; training does not resume: the same command starts "
            "again from epoch 1 (the folder's earlier checkpoint and metrics were removed when "
            "this run began)"
        )
    )


def test_a_run_refused_for_its_inputs_keeps_the_earlier_run_s_outputs(dataset, tmp_path) -> None:
    """The earlier run's files were removed before the sheet and features were read: a typo
    in --sheet (or --features-dir) wiped a finished model and then failed."""
    out = tmp_path / "run"
    out.mkdir()
    kept = [out / "checkpoint.pt", out / "metrics.json", out / "log.csv", tmp_path / "e.json"]
    for path in kept:
        path.write_text("a finished run's")
    eval_out = str(tmp_path / "e.json")
    for typo in (["--sheet", str(tmp_path / "nowhere.tsv")], ["--features-dir", "nowhere"]):
        argv = ["--eval-out", eval_out, *typo]
        assert train_cli(dataset["config"], out, "abmil_small", 0, *argv) == 2
        assert [path.read_text() for path in kept] == ["a finished run's"] * 4


def test_train_writes_checkpoint_log_and_metrics(trained: Path) -> None:
    rows = read_log(trained / "log.csv")
    assert tuple(rows[0]) == LOG_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["lr"]) == pytest.approx(1e-3) for r in rows)

    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["n_slides"] == {"train": 8, "val": 4, "test": 4}
    assert metrics["arch"] == "abmil" and metrics["method"] == "abmil_small"
    assert metrics["classes"] == list(CLASSES) and metrics["untrained_classes"] == []
    assert metrics["mags"] == [10.0]  # single-scale models read the highest magnification
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert metrics["best_epoch"] == int(best["epoch"])
    # val metrics of the kept epoch are those logged for that epoch
    assert metrics["val"]["loss"] == pytest.approx(float(best["val_loss"]))
    assert metrics["val"]["weighted_f1"] == pytest.approx(float(best["val_weighted_f1"]))
    test = metrics["test"]
    assert {
        "accuracy",
        "weighted_f1",
        "macro_f1",
        "auc",
        "per_class_f1",
        "confusion_matrix",
    } <= set(test)
    assert [p["slide_id"] for p in test["predictions"]] == [f"test_{i:02d}" for i in range(4)]
    for p in test["predictions"]:
        assert set(p["probs"]) == set(CLASSES)
        assert sum(p["probs"].values()) == pytest.approx(1.0)
        assert p["pred"] == max(p["probs"], key=p["probs"].get)
    assert np.sum(test["confusion_matrix"]) == 4

    checkpoint = torch.load(trained / "checkpoint.pt", map_location="cpu", weights_only=True)
    config = checkpoint["config"]
    assert config["arch"] == "abmil" and config["classes"] == list(CLASSES)
    assert config["in_dim"] == DIM and config["epoch"] == metrics["best_epoch"]
    assert config["kwargs"] == {"dropout": 0.0} and config["seed"] == 0
    assert config["config_mags"] == list(MAGS)
    # the shared preprocessing recipe is kept, per-slide values (mpp, creation time) are not
    assert config["preprocessing"]["patch_size"] == 256
    assert config["preprocessing"]["weights"] == "random"
    assert "mpp" not in config["preprocessing"] and "created" not in config["preprocessing"]
    assert all(isinstance(v, torch.Tensor) for v in checkpoint["state_dict"].values())


def _documented_keys(bullet: str) -> set[str]:
    """The words of docs/ARCHITECTURE.md's bullet on one output file (from ``- `NAME`:`` to
    the next blank line): the keys it says the file has, among its prose."""
    text = (Path(__file__).parents[1] / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text[text.index(f"- `{bullet}`:") :].split("\n\n")[0]
    return set(re.findall(r"[a-z_0-9]+", section))


def test_the_documented_metrics_and_checkpoint_keys_are_the_files(trained: Path) -> None:
    """ARCHITECTURE.md listed every key of metrics.json but `environment` (the job's
    environment, which the README says each metrics.json records): each key of metrics.json
    and of the checkpoint's config is named where the page describes the file."""
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics) - _documented_keys("metrics.json") == set()
    config = torch.load(trained / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert set(config["config"]) - _documented_keys("checkpoint.pt") == set()


def test_evaluate_reproduces_the_training_metrics(
    dataset: dict[str, Path], trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate gives the training run's metrics, reading each bag from disk at its turn: it
    reads every bag once, and a cache in memory (training's default under 8 GB) tripled its
    peak RSS at cohort size."""
    from zoommil.training import evaluation

    caches = []
    real = evaluation.load_splits

    def recording(config, *args):  # noqa: ANN001, ANN202
        caches.append(config.cache)
        return real(config, *args)

    monkeypatch.setattr(evaluation, "load_splits", recording)
    out = tmp_path / "eval.json"
    args = ["--checkpoint", str(trained / "checkpoint.pt"), "--features-dir"]
    code = main(["evaluate", *args, str(dataset["root"] / "features"), "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    expected = json.loads((trained / "metrics.json").read_text())["test"]
    for key, value in expected.items():
        assert result[key] == value, key
    assert result["split"] == "test" and result["arch"] == "abmil"
    assert caches == ["disk"]

    code = main(
        ["evaluate", *args, str(dataset["root"] / "features"), "--split", "val", "--out", str(out)]
    )
    assert code == 0
    val = json.loads(out.read_text())
    assert (
        val["predictions"]
        == json.loads((trained / "metrics.json").read_text())["val"]["predictions"]
    )


def test_standardize_is_fitted_on_training_rows_and_evaluate_applies_it(
    dataset: dict[str, Path], tmp_path: Path
) -> None:
    """`feature_norm: standardize`: the statistics stored in the checkpoint are those of the
    training split's rows alone (val and test rows in them would leak the held-out slides
    into the inputs), and `zoommil evaluate` applies them: its predictions are those train
    wrote (without the checkpoint's norm the model would see other inputs)."""
    from zoommil.io.featurefile import read_feature_file

    config = write_config(dataset, tmp_path, feature_norm="standardize")
    run = tmp_path / "run"
    assert train_cli(config, run, "abmil_small", 0, "--epochs", "2") == 0
    norm = torch.load(run / "checkpoint.pt", weights_only=True)["config"]["feature_norm"]
    features = dataset["root"] / "features"
    train_files = sorted(features.glob("train_*.h5"))
    assert len(train_files) == 8
    rows = np.concatenate([read_feature_file(p, [10.0]).feats[0] for p in train_files])
    np.testing.assert_allclose(norm["mean"], rows.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(norm["std"], rows.std(0), rtol=1e-4)

    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--features-dir"]
    assert main([*args, str(features), "--out", str(out)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads(out.read_text())["predictions"] == metrics["test"]["predictions"]


def test_evaluate_refuses_features_of_another_encoder(
    dataset: dict[str, Path], trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Same dimension, another encoder: the features load, so only the recipe can tell."""
    import shutil

    import h5py

    features = tmp_path / "features"
    shutil.copytree(dataset["root"] / "features", features)
    for path in features.glob("*.h5"):
        with h5py.File(path, "r+") as h5:
            h5.attrs["encoder"] = "uni"
    ckpt = trained / "checkpoint.pt"
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(ckpt), "--features-dir", str(features)]
    assert main([*args, "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert "features made with encoder uni, but" in line and str(ckpt) in line
    assert "trained on features made with resnet50_layer3" in line and not out.exists()


def test_evaluate_refuses_features_on_another_lattice_in_any_file(
    dataset: dict[str, Path], trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An external cohort's features tiled with another patch size (another field of view per
    row) or other magnifications (tissue filtered at another one) load without complaint and
    gave meaningless metrics; only the first file was compared with the checkpoint, so one
    such file among others went unnoticed too. Now any such file is refused, naming it."""
    ckpt = trained / "checkpoint.pt"
    args = ["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "eval.json")]
    for case, shown in (("patch_size", "patch size 512 px"), ("mags", "magnifications 5x, 10x")):
        features = tmp_path / case
        shutil.copytree(dataset["root"] / "features", features)
        other = features / "test_02.h5"  # not the split's first file
        if case == "patch_size":
            with h5py.File(other, "r+") as h5:
                h5.attrs["patch_size"] = 512
        else:  # tiled at 5x and 10x: tissue filtered at 5x, where training filtered at 2.5x
            bag = zoommil.read_feature_file(other)
            write_feature_file(other, MAGS[1:], bag.feats[1:], bag.coords[1:], bag.xy[1:], {
                k: v for k, v in bag.attrs.items() if k != "mags"
            })  # fmt: skip
        assert main([*args, "--features-dir", str(features)]) == 2
        line = _error_line(capsys)
        assert line.startswith(f"zoommil evaluate: error: {other}: features on another lattice")
        assert shown in line and str(ckpt) in line
        if case == "patch_size":  # the Python API reads a file the same way
            with pytest.raises(ZoomMILError, match="features on another lattice"):
                zoommil.load_classifier(ckpt).inputs(other)


@pytest.mark.parametrize("weights", ["random", "/models/resnet50_layer3.pt"])
def test_every_output_names_the_encoder_weights_and_random_ones_say_so(
    dataset: dict[str, Path], tmp_path: Path, weights: str
) -> None:
    """DESIGN.md "Encoder": every output made with random weights says so. metrics.json,
    `train --eval-out` and `zoommil evaluate` named neither the encoder nor the weights of the
    features; a weights file's run names its path and claims nothing random."""
    from zoommil.recipe import RANDOM_WEIGHTS_NOTE

    features = tmp_path / "features"
    shutil.copytree(dataset["root"] / "features", features)
    for path in features.glob("*.h5"):
        with h5py.File(path, "r+") as h5:
            h5.attrs["weights"] = weights
            h5.attrs["weights_seed"] = 0
    config = write_config(dataset, tmp_path, features_dir=str(features))
    in_training = tmp_path / "in_training.json"
    extra = ("--epochs", "1", "--eval-out", str(in_training))
    assert train_cli(config, tmp_path / "run", "abmil_small", 0, *extra) == 0
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt")]
    assert main([*args, "--features-dir", str(features), "--out", str(out)]) == 0
    for path in (tmp_path / "run" / "metrics.json", in_training, out):
        record = json.loads(path.read_text())
        assert record["encoder"] == "resnet50_layer3" and record["weights"] == weights, path
        if weights == "random":
            assert record["weights_note"] == RANDOM_WEIGHTS_NOTE and record["weights_seed"] == 0
        else:
            assert "weights_note" not in record and "weights_seed" not in record, path
    assert json.loads(in_training.read_text()) == json.loads(out.read_text())


def test_same_seed_is_identical_and_other_seed_differs(
    dataset: dict[str, Path], trained: Path, tmp_path: Path
) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    assert train_cli(dataset["config"], again) == 0
    assert train_cli(dataset["config"], other, "abmil_small", 1) == 0
    first = json.loads((trained / "metrics.json").read_text())
    assert strip_timing(json.loads((again / "metrics.json").read_text())) == strip_timing(first)

    def losses(run: Path) -> list[tuple[str, str]]:
        return [(r["train_loss"], r["val_loss"]) for r in read_log(run / "log.csv")]

    assert losses(again) == losses(trained)
    assert losses(other) != losses(trained)
    a = torch.load(trained / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(again / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_sheets_row_order_does_not_change_the_model(
    dataset: dict[str, Path], trained: Path, tmp_path: Path
) -> None:
    """A sheet regenerated from a glob or re-sorted lists the same slides in another order; the
    seeded sampler must draw the same bags, so the model and metrics stay the same."""
    header, *rows = dataset["sheet"].read_text().splitlines()
    reversed_sheet = tmp_path / "reversed.tsv"
    reversed_sheet.write_text("\n".join([header, *reversed(rows)]) + "\n")
    out = tmp_path / "reversed"
    assert train_cli(write_config(dataset, tmp_path, sheet=str(reversed_sheet)), out) == 0
    a = torch.load(trained / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"] == json.loads((trained / "metrics.json").read_text())["test"]


def test_classes_are_the_sorted_labels_of_the_whole_sheet(
    dataset: dict[str, Path], tmp_path: Path
) -> None:
    """With `classes: null` the class list (the model's output order) is the sorted labels
    of every row of the sheet, excluded slides included, whatever the rows' order: a sheet
    re-sorted, or QC excluding a slide, must not renumber the classes."""
    from zoommil.training.config import load_config
    from zoommil.training.trainer import load_splits

    header, *rows = dataset["sheet"].read_text().splitlines()
    assert rows[0].split("\t")[2] == "normal"
    sheet = tmp_path / "slides.tsv"  # tumor first, then normal, then an excluded atypia
    sheet.write_text("\n".join([header, *reversed(rows), "odd\t/o.svs\tatypia\ttrain"]) + "\n")
    qc = tmp_path / "qc.tsv"
    qc.write_text("slide_id\tstatus\treason\nodd\tfailed\tout of focus\n")
    config = load_config(write_config(dataset, tmp_path, sheet=str(sheet), exclude=str(qc)))
    assert config.classes is None
    classes, _, stores, skipped, _ = load_splits(config, "abmil", ("train",))
    assert classes == ["atypia", "normal", "tumor"]
    assert [s["slide_id"] for s in skipped] == ["odd"] and len(stores["train"]) == 8


@pytest.mark.parametrize(
    ("method", "methods"), [("abmil_small", None), ("zoom", {"zoom": {"arch": "zoommil", "k": 1}})]
)
def test_bags_read_from_disk_train_exactly_as_bags_in_memory(
    dataset: dict[str, Path], tmp_path: Path, method: str, methods: dict | None
) -> None:
    """`cache: disk` reads the next bag in a thread while the step runs (`BagStore.iterate`);
    the bags, their order and so every loss and weight must be those of `cache: memory`."""
    runs = {}
    for cache in ("memory", "disk"):
        extra = {"methods": methods} if methods else {}
        (tmp_path / cache).mkdir()
        config = write_config(dataset, tmp_path / cache, cache=cache, **extra)
        assert train_cli(config, tmp_path / cache / "out", method, 0, "--epochs", "2") == 0
        runs[cache] = json.loads((tmp_path / cache / "out" / "metrics.json").read_text())
    assert (runs["memory"]["cache"], runs["disk"]["cache"]) == ("memory", "disk")
    same = lambda m: {k: v for k, v in strip_timing(m).items() if k != "cache"}  # noqa: E731
    assert same(runs["disk"]) == same(runs["memory"])
    logs = [read_log(tmp_path / c / "out" / "log.csv") for c in ("memory", "disk")]
    assert [r["train_loss"] for r in logs[0]] == [r["train_loss"] for r in logs[1]]


def test_a_disk_store_yields_bags_in_order_and_fails_at_the_bad_one(
    dataset: dict[str, Path], tmp_path: Path
) -> None:
    """Prefetching keeps the sampler's order (with repeats) and raises a bag's read error
    when the loop reaches that bag, after every bag before it."""
    from zoommil.training.data import BagStore, SlideRecord

    paths = sorted((dataset["root"] / "features").glob("train_*.h5"))[:4]
    records = [SlideRecord(p.stem, i % 2, p) for i, p in enumerate(paths)]
    store = BagStore(records, MAGS, in_memory=False)
    order = [3, 1, 1, 0, 2]
    got = list(store.iterate(order))
    assert [i for i, _ in got] == order
    for i, bag in got:
        assert bag.slide_id == records[i].slide_id
        assert all(torch.equal(a, b) for a, b in zip(bag.feats, store[i].feats, strict=True))
    bad = tmp_path / "bad.h5"
    shutil.copyfile(paths[0], bad)
    with h5py.File(bad, "r+") as h5:
        _nan_rows(h5)
    store = BagStore([*records[1:], SlideRecord("bad", 0, bad)], MAGS, in_memory=False)
    seen = []
    with pytest.raises(ZoomMILError, match="NaN"):
        for i, _ in store.iterate([0, 1, 3, 2]):
            seen.append(i)
    assert seen == [0, 1]


def test_seeds_in_one_process_match_separate_runs(
    dataset: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--seed 1 0` trains each seed exactly as a process of its own would (ZoomMIL: its top-K
    noise draws from the global generator, so a leak of seed 1's state into seed 0 shows)."""
    config = write_config(dataset, tmp_path, methods={"zoom": {"arch": "zoommil", "k": 1}})
    for seed in (0, 1):
        assert train_cli(config, tmp_path / f"alone{seed}", "zoom", seed, "--epochs", "2") == 0
    outs = [str(tmp_path / "together1"), str(tmp_path / "together0")]
    evals = [str(tmp_path / "eval1.json"), str(tmp_path / "eval0.json")]
    args = ["train", "--config", str(config), "--model", "zoom", "--seed", "1", "0", "--epochs"]
    assert main([*args, "2", "--out", *outs, "--eval-out", *evals, "--no-progress"]) == 0
    for seed in (0, 1):
        alone, together = tmp_path / f"alone{seed}", tmp_path / f"together{seed}"
        a = torch.load(alone / "checkpoint.pt", weights_only=True)["state_dict"]
        b = torch.load(together / "checkpoint.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert (
            read_log(alone / "log.csv")[-1]["val_loss"]
            == read_log(together / "log.csv")[-1]["val_loss"]
        )
        record = json.loads((tmp_path / f"eval{seed}.json").read_text())
        assert record["checkpoint"].endswith(f"together{seed}/checkpoint.pt")

    capsys.readouterr()
    assert main([*args, "2", "--out", outs[0], "--no-progress"]) == 2
    assert "2 seed(s) but 1 --out value(s): give one per seed" in _error_line(capsys)
    assert main([*args, "2", "--out", *outs, "--eval-out", evals[0], "--no-progress"]) == 2
    assert "2 seed(s) but 1 --eval-out value(s)" in _error_line(capsys)
    twice = ["train", "--config", str(config), "--model", "zoom", "--seed", "1", "1"]
    assert main([*twice, "--out", *outs, "--no-progress"]) == 2
    assert "--seed 1 1: a seed is given twice" in _error_line(capsys)


def test_excluded_and_empty_slides_are_skipped(dataset: dict[str, Path], tmp_path: Path) -> None:
    sheet_text = dataset["sheet"].read_text()
    sheet_text += "lost\t/x.svs\ttumor\ttrain\nblank\t/y.svs\tnormal\ttrain\n"
    sheet = tmp_path / "slides.tsv"
    sheet.write_text(sheet_text)
    features = tmp_path / "features"
    features.mkdir()
    for path in (dataset["root"] / "features").glob("*.h5"):
        (features / path.name).symlink_to(path)
    empty = [np.zeros((0, DIM), np.float32)] * 3
    write_feature_file(
        features / "blank.h5", MAGS, empty, [np.zeros((0, 2))] * 3, [np.zeros((0, 2))] * 3
    )
    qc = tmp_path / "qc.tsv"
    qc.write_text("slide_id\tstatus\treason\nlost\tfailed\tmpp out of range\ntrain_00\tok\t\n")
    config = write_config(
        dataset, tmp_path, sheet=str(sheet), exclude=str(qc), features_dir=str(features), epochs=1
    )
    assert train_cli(config, tmp_path / "out") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n_slides"]["train"] == 8
    assert metrics["n_excluded"] == 2
    reasons = {e["slide_id"]: e["reason"] for e in metrics["excluded"]}
    assert reasons["lost"] == "failed: mpp out of range"
    assert "no patches" in reasons["blank"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "No columns to parse from file"), ('slide_id\tstatus\n"a\tok\n', "cannot be parsed")],
)
def test_an_empty_or_broken_exclusion_table_is_one_line(
    dataset: dict[str, Path],
    trained: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    message: str,
) -> None:
    qc = tmp_path / "qc.tsv"
    qc.write_text(text)
    config = write_config(dataset, tmp_path, exclude=str(qc), epochs=1)
    assert train_cli(config, tmp_path / "out") == 2
    line = _error_line(capsys)
    assert f"exclusion (QC) table {qc}: cannot be parsed" in line and message in line
    assert not (tmp_path / "out").exists()

    out = tmp_path / "eval.json"
    args = ["--checkpoint", str(trained / "checkpoint.pt"), "--exclude", str(qc)]
    features = ["--features-dir", str(dataset["root"] / "features")]
    assert main(["evaluate", *args, *features, "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert f"exclusion (QC) table {qc}: cannot be parsed" in line and not out.exists()


def test_a_missing_sheet_given_to_evaluate_is_said_as_train_says_it(
    dataset: dict[str, Path], trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`zoommil evaluate --sheet nope.tsv` said "nope.tsv: slide sheet not found (pass
    --sheet)": the --sheet it had been given. train, flops and profile name the file and
    where it was looked for."""
    missing = tmp_path / "nope.tsv"
    args = ["--checkpoint", str(trained / "checkpoint.pt"), "--sheet", str(missing)]
    features = ["--features-dir", str(dataset["root"] / "features")]
    assert main(["evaluate", *args, *features, "--out", str(tmp_path / "e.json")]) == 2
    assert _error_line(capsys) == f"zoommil evaluate: error: slide sheet not found: {missing}"
    assert not (tmp_path / "e.json").exists()


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def atypia_sheet(dataset: dict[str, Path], tmp_path: Path, slide_ids: tuple[str, ...]) -> Path:
    """The dataset's sheet with the tumor slides ``slide_ids`` relabelled `atypia`."""
    rows = dataset["sheet"].read_text().splitlines()
    rows = [r.replace("\ttumor\t", "\tatypia\t") if r.startswith(slide_ids) else r
            for r in rows]  # fmt: skip
    sheet = tmp_path / "slides.tsv"
    sheet.write_text("\n".join(rows) + "\n")
    return sheet


def test_classes_without_a_training_slide_are_recorded_and_warned_of(
    dataset: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A class of the sheet with no training slide (here: only in val and test) was trained
    without a word: the model cannot learn it, and nothing said why its metrics were low.
    The run warns, and metrics.json, the checkpoint and both evaluation JSONs list it."""
    sheet = atypia_sheet(dataset, tmp_path, ("val_03", "test_03"))
    config = write_config(dataset, tmp_path, sheet=str(sheet))
    in_training = tmp_path / "in_training.json"
    with caplog.at_level("WARNING", logger="zoommil.training.trainer"):
        assert train_cli(config, tmp_path / "run", "abmil_small", 0, "--epochs", "1",
                         "--eval-out", str(in_training)) == 0  # fmt: skip
    assert "no usable training slide of class(es) atypia" in caplog.text
    assert "no usable val slide" not in caplog.text  # val_03 is an atypia slide
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["classes"] == ["atypia", "normal", "tumor"]
    assert metrics["untrained_classes"] == ["atypia"]
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["config"]["untrained_classes"] == ["atypia"]
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt")]
    features = str(dataset["root"] / "features")
    assert main([*args, "--features-dir", features, "--sheet", str(sheet), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["untrained_classes"] == ["atypia"]
    assert json.loads(in_training.read_text()) == json.loads(out.read_text())


def test_classes_without_a_val_slide_are_warned_of(
    dataset: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With a class only in train and test, model selection never saw it, and the run
    said nothing (an always-`normal` model scores val weighted F1 1.0 on a normal-only val)."""
    config = write_config(
        dataset, tmp_path, sheet=str(atypia_sheet(dataset, tmp_path, ("train_03", "test_03")))
    )
    with caplog.at_level("WARNING", logger="zoommil.training.trainer"):
        assert train_cli(config, tmp_path / "run", "abmil_small", 0, "--epochs", "1") == 0
    assert "no usable val slide of class(es) atypia: model selection (val_loss)" in caplog.text
    assert "no usable training slide" not in caplog.text


def test_a_first_k_keeping_every_lowest_patch_is_warned_of(
    dataset: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """BRIGHT's K = 12 at 1.25x on slides with fewer 1.25x patches kept them all: the first
    step did not zoom, and nothing said so. Every bag here has 2 patches at 2.5x; the
    random_4k ablation keeps 4k, and the warning names both numbers."""
    cases = (
        ({"k": 2}, "at most 2 patches at 2.5x, as many as ZoomMIL's first step keeps (k = 2)"),
        ({"k": 1, "selection": "random_4k"}, "at most 4 patches at 2.5x, as many as ZoomMIL's "
         "first step keeps (4k = 4 with k = 1)"),
        ({"k": 1}, None),
    )  # fmt: skip
    for index, (options, expected) in enumerate(cases):
        config = write_config(dataset, tmp_path, methods={"zoom": {"arch": "zoommil", **options}})
        caplog.clear()
        with caplog.at_level("WARNING", logger="zoommil.training.trainer"):
            assert train_cli(config, tmp_path / f"run{index}", "zoom", 0, "--epochs", "1") == 0
        if expected is None:
            assert "first step keeps" not in caplog.text, caplog.text
        else:
            assert f"16 of 16 slides have {expected}, so it keeps them all" in caplog.text


def test_user_errors_are_one_line(
    dataset: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = dataset["config"]
    assert train_cli(config, tmp_path / "a", "no_such_model") == 2
    line = _error_line(capsys)
    assert "unknown model 'no_such_model'" in line and "abmil_small" in line

    sheet = tmp_path / "slides.tsv"
    sheet.write_text(dataset["sheet"].read_text() + "ghost\t/g.svs\ttumor\ttest\n")
    assert train_cli(write_config(dataset, tmp_path, sheet=str(sheet)), tmp_path / "b") == 2
    line = _error_line(capsys)
    assert "ghost" in line and "feature file" in line

    config = write_config(dataset, tmp_path, classes=["normal", "carcinoma"])
    assert train_cli(config, tmp_path / "c") == 2
    line = _error_line(capsys)
    assert "unknown label 'tumor'" in line

    sheet.write_text(dataset["sheet"].read_text().replace("\tval\n", "\ttest\n"))
    assert train_cli(write_config(dataset, tmp_path, sheet=str(sheet)), tmp_path / "d") == 2
    assert "no usable slides in the 'val' split" in _error_line(capsys)

    assert train_cli(write_config(dataset, tmp_path, selection="auc"), tmp_path / "e") == 2
    assert "'selection' must be one of val_loss, val_weighted_f1" in _error_line(capsys)

    bad_kwargs = {"methods": {"bad": {"arch": "abmil", "no_such_option": 1}}}
    assert train_cli(write_config(dataset, tmp_path, **bad_kwargs), tmp_path / "f", "bad") == 2
    assert "no_such_option" in _error_line(capsys)

    code = main(
        ["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--features-dir", "x", "--out", "y"]
    )
    assert code == 2
    assert "checkpoint not found" in _error_line(capsys)


@pytest.mark.parametrize(
    ("option", "shown"),
    [("--sheet", "slide sheet not found"), ("--exclude", "exclusion (QC) table not found")],
)
def test_evaluate_checks_the_sheet_and_qc_table_first(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str,
    shown: str,
) -> None:
    """`zoommil evaluate` loaded the checkpoint before it looked at --sheet (and --exclude):
    a wrong path cost a checkpoint load first, and with a bad checkpoint as well the user
    heard of the checkpoint, then, once it was fixed, of the sheet. The cheap paths come
    first: the error names the missing file and no checkpoint is loaded."""
    from zoommil.training import checkpoint

    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    loads: list[str] = []
    real = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda p: loads.append(p) or real(p))
    missing = tmp_path / "nowhere.tsv"
    argv = ["evaluate", "--checkpoint", str(bad), "--features-dir", str(tmp_path),
            option, str(missing), "--out", str(tmp_path / "e.json")]  # fmt: skip
    assert main(argv) == 2
    line = _error_line(capsys)
    assert shown in line and str(missing) in line, line
    assert "not a zoommil checkpoint" not in line and loads == []


def test_evaluate_from_another_folder_uses_the_training_sheet_and_qc_table(
    dataset: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The checkpoint records the sheet and QC table absolute: `zoommil evaluate` run from a
    folder with its own slides.tsv and qc.tsv used those instead, silently. A recorded file
    that is gone is an error naming it and the option to pass."""
    trained_in, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    for folder, excluded in ((trained_in, "test_00"), (elsewhere, "test_01")):
        folder.mkdir()
        shutil.copy2(dataset["sheet"], folder / "slides.tsv")
        (folder / "qc.tsv").write_text(f"slide_id\tstatus\treason\n{excluded}\tfailed\tblur\n")
    features = dataset["root"] / "features"
    monkeypatch.chdir(trained_in)  # the config's relative paths, as the workflow writes them
    config = write_config(
        dataset, trained_in, sheet="slides.tsv", exclude="qc.tsv", features_dir=str(features)
    )
    assert train_cli(config, trained_in / "run", "abmil_small", 0, "--epochs", "1") == 0
    recorded = torch.load(trained_in / "run" / "checkpoint.pt", weights_only=True)["config"]
    assert recorded["sheet"] == str((trained_in / "slides.tsv").resolve())
    assert recorded["exclude"] == str((trained_in / "qc.tsv").resolve())
    assert recorded["features_dir"] == str(features.resolve())

    monkeypatch.chdir(elsewhere)
    out = elsewhere / "eval.json"
    args = ["evaluate", "--checkpoint", str(trained_in / "run" / "checkpoint.pt")]
    args += ["--features-dir", str(features), "--out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert [e["slide_id"] for e in result["excluded"]] == ["test_00"]
    assert result["exclude"] == recorded["exclude"] and result["sheet"] == recorded["sheet"]

    (trained_in / "qc.tsv").unlink()
    assert main(args) == 2
    line = _error_line(capsys)
    assert f"exclusion (QC) table recorded at training, {recorded['exclude']}, does not" in line
    assert line.endswith("pass --exclude")
    assert main([*args, "--exclude", "qc.tsv"]) == 0  # the option given: this folder's table
    assert json.loads(out.read_text())["exclude"] == str((elsewhere / "qc.tsv").resolve())
    (trained_in / "slides.tsv").unlink()
    assert main(args) == 2
    assert _error_line(capsys).endswith(f"{recorded['sheet']}, does not exist here; pass --sheet")


def test_evaluate_on_another_sheet_leaves_the_training_qc_table_out(
    dataset: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An external cohort (`--sheet` of another file) was filtered by the training cohort's QC
    table: its slide whose id a training slide excluded by QC shares was dropped, and with a
    shared checkpoint, whose recorded table is not here, evaluate stopped asking for
    --exclude. The training table now applies to the training sheet only."""
    (tmp_path / "qc.tsv").write_text("slide_id\tstatus\treason\ntest_00\tfailed\tblur\n")
    config = write_config(dataset, tmp_path, exclude=str(tmp_path / "qc.tsv"))
    assert train_cli(config, tmp_path / "run", "abmil_small", 0, "--epochs", "1") == 0
    rows = dataset["sheet"].read_text().splitlines()
    external = tmp_path / "external.tsv"  # another hospital's slides, named like the test ones
    external.write_text("\n".join([rows[0], *(r for r in rows if "\ttest" in r)]) + "\n")
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--out", str(out)]
    args += ["--features-dir", str(dataset["root"] / "features")]

    def evaluated(*extra: str) -> list[str]:
        assert main([*args, *extra]) == 0
        return [p["slide_id"] for p in json.loads(out.read_text())["predictions"]]

    with caplog.at_level("WARNING", logger="zoommil.training.evaluation_inputs"):
        assert evaluated("--sheet", str(dataset["sheet"])) == ["test_01", "test_02", "test_03"]
        assert "QC table" not in caplog.text
        assert evaluated("--sheet", str(external)) == ["test_00", "test_01", "test_02", "test_03"]
        assert "the training QC table" in caplog.text and "pass --exclude" in caplog.text
    assert json.loads(out.read_text())["exclude"] is None
    qc = str(tmp_path / "qc.tsv")
    assert evaluated("--sheet", str(external), "--exclude", qc)[0] == "test_01"
    (tmp_path / "qc.tsv").unlink()  # a checkpoint from elsewhere: its QC table is not here
    assert evaluated("--sheet", str(external))[0] == "test_00"


def test_evaluate_in_a_moved_project_asks_which_qc_table_applies(
    dataset: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """In a moved project the recorded sheet is gone, so `--sheet` of the moved one cannot be
    told from another cohort's: leaving the training QC table out gave other metrics than the
    workflow's, applying it could drop another cohort's slides. Evaluate asks instead (review G
    found the first version took it for another cohort's)."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy2(dataset["sheet"], project / "slides.tsv")
    (project / "qc.tsv").write_text("slide_id\tstatus\treason\ntest_00\tfailed\tblur\n")
    config = write_config(
        dataset, project, sheet=str(project / "slides.tsv"), exclude=str(project / "qc.tsv")
    )
    assert train_cli(config, project / "run", "abmil_small", 0, "--epochs", "1") == 0
    moved = project.rename(tmp_path / "moved")
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(moved / "run" / "checkpoint.pt"), "--out", str(out)]
    args += ["--features-dir", str(dataset["root"] / "features"), "--sheet"]
    args += [str(moved / "slides.tsv")]
    capsys.readouterr()
    assert main(args) == 2
    line = _error_line(capsys)
    assert f"the sheet {project / 'slides.tsv'} and the QC table {project / 'qc.tsv'}" in line
    assert "pass --exclude with its QC table (the moved one), or --exclude '' for none" in line
    assert not out.exists()
    for exclude, first in ((str(moved / "qc.tsv"), "test_01"), ("", "test_00")):
        assert main([*args, "--exclude", exclude]) == 0
        assert json.loads(out.read_text())["predictions"][0]["slide_id"] == first


def test_balanced_sampler_is_seeded_and_balanced() -> None:
    labels = [0] * 90 + [1] * 10
    draws = list(balanced_sampler(labels, seed=3))
    assert len(draws) == 100
    assert draws == list(balanced_sampler(labels, seed=3))
    assert draws != list(balanced_sampler(labels, seed=4))
    many = [i for _ in range(20) for i in balanced_sampler(labels, seed=3)]  # 20 epochs
    minority = np.mean([labels[i] for i in many])
    assert 0.4 < minority < 0.6


def test_f1_selection_keeps_the_highest_f1_and_breaks_ties_by_the_loss() -> None:
    """`selection: val_weighted_f1` (config/bright.yaml): the epoch of the highest validation
    F1; of equal F1s the lower validation loss; `val_loss`: the lowest loss."""
    logged = [(0.7, 0.5), (0.5, 0.8), (0.4, 0.6), (0.6, 0.8)]
    rows = [{"val_loss": loss, "val_weighted_f1": f1} for loss, f1 in logged]
    assert replay_early_stopping(rows, None, "val_weighted_f1") == (4, 2)
    assert replay_early_stopping(rows, None, "val_loss") == (4, 3)
    tie = [*rows[:3], {"val_loss": 0.45, "val_weighted_f1": 0.8}]
    assert replay_early_stopping(tie, None, "val_weighted_f1") == (4, 4)


def test_lr_follows_reduce_on_plateau_and_f1_selection_keeps_the_best_f1(
    dataset: dict[str, Path], tmp_path: Path
) -> None:
    """The logged learning rate is ReduceLROnPlateau's on the validation loss: times
    lr_factor (0.8) once more than lr_patience epochs passed without a 1e-4 relative
    improvement, else unchanged; the kept epoch is the one of the highest validation F1."""
    lr = 0.03  # a large step: the validation loss soon stalls and the schedule acts
    config = write_config(
        dataset, tmp_path, epochs=8, lr=lr, lr_patience=1, selection="val_weighted_f1"
    )
    assert train_cli(config, tmp_path / "run") == 0
    rows = read_log(tmp_path / "run" / "log.csv")
    best, bad, reductions = float("inf"), 0, 0
    for row in rows:
        assert float(row["lr"]) == pytest.approx(lr, rel=1e-9), row
        loss = float(row["val_loss"])
        best, bad = (loss, 0) if loss < best * (1 - 1e-4) else (best, bad + 1)
        if bad > 1:
            lr, bad, reductions = lr * 0.8, 0, reductions + 1
    assert reductions, "the fixture's validation loss must stall for the test to mean much"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    kept = max(rows, key=lambda r: (float(r["val_weighted_f1"]), -float(r["val_loss"])))
    assert metrics["best_epoch"] == int(kept["epoch"])
    assert float(kept["val_weighted_f1"]) > float(rows[0]["val_weighted_f1"])  # F1 varied


class MeanPool(nn.Module):
    """Stand-in model: mean over the highest-magnification rows, then a linear layer."""

    def __init__(self, in_dim: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, n_classes)

    def forward(self, feats, coords=None):
        return self.fc(feats[-1].mean(dim=1))


def test_loop_works_with_a_stand_in_model(
    dataset: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop depends on the model interface only, not on zoommil.models."""
    monkeypatch.setattr(modeling, "known_archs", lambda: ["meanpool"])
    monkeypatch.setattr(modeling, "model_mags", lambda arch, mags: list(mags))
    monkeypatch.setattr(
        modeling, "make_model", lambda arch, n, d, mags, kwargs, **_: MeanPool(d, n)
    )
    config = write_config(dataset, tmp_path, epochs=2, selection="val_weighted_f1")
    assert train_cli(config, tmp_path / "out", "meanpool") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["mags"] == list(MAGS) and metrics["selection"] == "val_weighted_f1"
    assert metrics["n_parameters"] == DIM * 2 + 2


def test_abmil_learns_the_high_magnification_signal(
    dataset: dict[str, Path], tmp_path: Path
) -> None:
    config = write_config(dataset, tmp_path, epochs=15, selection="val_loss")
    assert train_cli(config, tmp_path / "out") == 0
    rows = read_log(tmp_path / "out" / "log.csv")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["val"]["accuracy"] >= 0.75


def test_clam_uses_its_own_training_loss(dataset: dict[str, Path], tmp_path: Path) -> None:
    assert train_cli(dataset["config"], tmp_path / "clam", "clam_sb", 0, "--epochs", "1") == 0
    metrics = json.loads((tmp_path / "clam" / "metrics.json").read_text())
    assert metrics["arch"] == "clam_sb" and metrics["epochs"] == 1


def test_zoommil_trains_and_evaluates_deterministically(
    dataset: dict[str, Path], tmp_path: Path
) -> None:
    config = write_config(dataset, tmp_path, methods={"zoom": {"arch": "zoommil", "k": 1}})
    for run in ("a", "b"):
        assert train_cli(config, tmp_path / run, "zoom", 0, "--epochs", "2") == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert strip_timing(a) == strip_timing(b)
    assert a["mags"] == list(MAGS)
    out = tmp_path / "eval.json"
    features = str(dataset["root"] / "features")
    ckpt = str(tmp_path / "a" / "checkpoint.pt")
    assert (
        main(["evaluate", "--checkpoint", ckpt, "--features-dir", features, "--out", str(out)]) == 0
    )
    assert json.loads(out.read_text())["predictions"] == a["test"]["predictions"]


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_every_architecture_trains_and_evaluate_agrees(
    arch: str, dataset: dict[str, Path], tmp_path: Path
) -> None:
    """One epoch per architecture (standardised features, the demo's setting); `zoommil
    evaluate` must give the metrics train wrote, `train --eval-out` must write exactly the
    JSON `zoommil evaluate` writes, and the Python API's `Classifier` the same probabilities
    (its model alone, on the file's raw rows, does not: the normalisation is part of it)."""
    in_training = tmp_path / "in_training.json"
    config = write_config(dataset, tmp_path, feature_norm="standardize")
    assert (
        train_cli(
            config,
            tmp_path / arch,
            arch,
            0,
            "--epochs",
            "1",
            "--eval-out",
            str(in_training),
        )
        == 0
    )
    metrics = json.loads((tmp_path / arch / "metrics.json").read_text())
    out = tmp_path / "eval.json"
    features = yaml.safe_load(dataset["config"].read_text())["features_dir"]
    ckpt = str(tmp_path / arch / "checkpoint.pt")
    assert (
        main(["evaluate", "--checkpoint", ckpt, "--features-dir", features, "--out", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    assert result["predictions"] == metrics["test"]["predictions"]
    assert result["weighted_f1"] == metrics["test"]["weighted_f1"]
    assert json.loads(in_training.read_text()) == result
    assert result["exclude"] is None  # the record names the QC table used (none here)
    classifier = zoommil.load_classifier(ckpt)
    assert classifier.arch == arch and classifier.norm is not None
    for prediction in result["predictions"]:
        path = Path(features) / f"{prediction['slide_id']}.h5"
        probs = classifier.probabilities(path)
        assert list(probs) == list(CLASSES)
        np.testing.assert_allclose(
            list(probs.values()), list(prediction["probs"].values()), atol=1e-6
        )
        assert classifier.predict(path) == prediction["pred"]
    feats, coords = classifier.inputs(path)
    raw = [
        torch.from_numpy(f)[None] for f in zoommil.read_feature_file(path, classifier.mags).feats
    ]
    assert not torch.allclose(feats[-1], raw[-1])  # standardised


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_the_python_api_checks_its_device_as_the_commands_do(trained: Path) -> None:
    """`load_classifier` and `Predictor.from_checkpoint` take the commands' device names:
    "auto" is the CPU here, and "cuda" without a GPU is one line (it was torch's "Found no
    NVIDIA driver", and "auto" an invalid device string)."""

    ckpt = trained / "checkpoint.pt"
    for load in (zoommil.load_classifier, zoommil.Predictor.from_checkpoint):
        with pytest.raises(ZoomMILError, match="'cuda' requested but no CUDA device"):
            load(ckpt, device="cuda")
    classifier = zoommil.load_classifier(ckpt, device="auto")
    assert next(classifier.model.parameters()).device.type == "cpu"
    predictor = zoommil.Predictor.from_checkpoint(ckpt, device="auto")
    assert next(predictor.model.parameters()).device.type == "cpu"


def test_load_classifier_leaves_the_callers_random_state(trained: Path) -> None:
    """Building the model drew its initial weights from the global generator, which the
    checkpoint's then replaced: a notebook's seeded draws after a `load_classifier` differed
    from those without one."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    zoommil.load_classifier(trained / "checkpoint.pt")
    assert torch.equal(torch.rand(3), expected)


def test_cli_process_matches_in_process_run_and_restores_torch_state(
    dataset: dict[str, Path], trained: Path, tmp_path: Path
) -> None:
    """A fresh `zoommil train` process gives the same run; the caller's torch settings survive."""
    import subprocess
    import sys

    assert torch.get_num_threads() == THREADS_AT_IMPORT
    assert not torch.are_deterministic_algorithms_enabled()
    out = tmp_path / "cli"
    args = ["--config", str(dataset["config"]), "--model", "abmil_small", "--seed", "0"]
    result = subprocess.run(
        [sys.executable, "-m", "zoommil", "train", *args, "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    first = json.loads((trained / "metrics.json").read_text())
    assert strip_timing(json.loads((out / "metrics.json").read_text())) == strip_timing(first)


def test_help_explains_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    for command, words in (("train", "metrics.json"), ("evaluate", "probabilities")):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert words in capsys.readouterr().out


def test_method_overrides_training_settings_and_mags(
    dataset: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    methods = {
        "zoom_hi": {
            "arch": "zoommil",
            "k": 1,
            "mags": [5.0, 10.0],
            "train": {"epochs": 1, "selection": "val_weighted_f1"},
        },
        "typo": {"arch": "abmil", "train": {"epoch": 3}},
    }
    config = write_config(dataset, tmp_path, methods=methods)
    assert train_cli(config, tmp_path / "out", "zoom_hi") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["mags"] == [5.0, 10.0]
    assert metrics["epochs"] == 1 and metrics["selection"] == "val_weighted_f1"
    assert metrics["model_kwargs"] == {"k": 1}
    assert train_cli(config, tmp_path / "typo", "typo") == 2
    assert "unknown training setting(s) epoch" in _error_line(capsys)


def _nan_rows(h5: h5py.File) -> None:
    h5["10.0x_patches"][:2] = np.nan


def _huge_rows(h5: h5py.File) -> None:
    h5["10.0x_patches"][3:5] = 3e38  # finite, near float32's largest


def _narrow_10x(h5: h5py.File) -> None:
    data = h5["10.0x_patches"][()]
    del h5["10.0x_patches"]
    h5.create_dataset("10.0x_patches", data=data[:, :8])


def _drop_10x(h5: h5py.File) -> None:
    for key in [k for k in h5.keys() if k.startswith("10.0x_")]:
        del h5[key]


def _drop_10x_coords(h5: h5py.File) -> None:
    del h5["10.0x_coords"]


def _string_mags(h5: h5py.File) -> None:
    h5.attrs["mags"] = "2.5,5,10"


def _swap_10x(h5: h5py.File) -> None:
    """Rows 1 and 2 of 10x swapped in every dataset: right counts, wrong order."""
    for part in ("patches", "coords", "xy"):
        data = h5[f"10.0x_{part}"][()]
        h5[f"10.0x_{part}"][1:3] = data[[2, 1]]


def _cut_10x(h5: h5py.File) -> None:
    for key in [k for k in h5.keys() if k.startswith("10.0x_")]:
        data = h5[key][()]
        del h5[key]
        h5.create_dataset(key, data=data[:-4])


@pytest.mark.parametrize(
    ("slide", "change", "method", "cache", "needles"),
    [
        ("val_01", _nan_rows, "abmil_small", "memory", ["2 of 32 feature rows at 10.0x", "NaN"]),
        ("train_02", _nan_rows, "abmil_small", "disk", ["2 of 32 feature rows at 10.0x", "NaN"]),
        ("val_01", _huge_rows, "abmil_small", "memory", ["too large to be features at 10.0x"]),
        ("train_02", _huge_rows, "zoom", "disk", ["(max |x| = 3e+38, row 3; above 1.8e+19"]),
        (
            "val_01",
            _drop_10x,
            "abmil_small",
            "memory",
            ["magnification(s) 10.0x (it has 2.5x, 5.0x)"],
        ),
        # the first file read: compared with itself, it was named twice in one message
        (
            "train_00",
            _narrow_10x,
            "zoom",
            "memory",
            ["features of dimension 16 at 2.5x, 16 at 5.0x, 8 at 10.0x: every"],
        ),
        ("train_02", _cut_10x, "zoom", "memory", ["28 rows at 10.0x but 8 at 5.0x need 32"]),
        ("train_02", _drop_10x_coords, "abmil_small", "disk", ["lacks dataset(s) 10.0x_coords"]),
        ("val_01", _string_mags, "zoom", "memory", ["'mags' attribute is '2.5,5,10'"]),
        ("train_02", _swap_10x, "abmil_small", "disk", ["row 1 at 10.0x", "depth-first"]),
        ("val_01", _swap_10x, "zoom", "memory", ["row 1 at 10.0x", "depth-first"]),
    ],
)
def test_a_malformed_feature_file_is_one_line_naming_it(
    dataset: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    slide: str,
    change: Callable[[h5py.File], None],
    method: str,
    cache: str,
    needles: list[str],
) -> None:
    """NaN rows ended in a traceback from the metrics or in 'training diverged' (finite rows
    of 3e38 too, blaming the optimiser for the file); a removed
    magnification was reported with the file's attributes; rows cut at 10x stopped only ZoomMIL
    (its layout error named no slide); a missing coords dataset or a string `mags` attribute
    was a traceback; rows out of depth-first order trained. Each is now one line naming the
    feature file (NaN: before training, when cached; layout: before training, any method)."""
    features = tmp_path / "features"
    features.mkdir()
    for path in (dataset["root"] / "features").glob("*.h5"):
        if path.stem == slide:
            shutil.copyfile(path, features / path.name)
        else:
            (features / path.name).symlink_to(path)
    bad = features / f"{slide}.h5"
    with h5py.File(bad, "r+") as h5:
        change(h5)
    methods = {"abmil_small": {"arch": "abmil"}, "zoom": {"arch": "zoommil", "k": 1}}
    config = write_config(
        dataset, tmp_path, features_dir=str(features), cache=cache, methods=methods, epochs=1
    )
    assert train_cli(config, tmp_path / "out", method) == 2
    line = _error_line(capsys)
    assert str(bad) in line, line
    for needle in needles:
        assert needle in line, line
    assert "diverged" not in line and line.count(str(bad)) == 1
    if change in (_nan_rows, _huge_rows) and cache == "memory":  # found while the bags load
        assert not (tmp_path / "out").exists()
    if change in (_drop_10x_coords, _string_mags, _swap_10x, _cut_10x):  # the header pass
        assert not (tmp_path / "out").exists()


def _stop_epoch(val_losses: list[float], patience: int) -> int:
    """The epoch early stopping ends a run at, from a full run's validation losses."""
    best, best_epoch = float("inf"), 0
    for epoch, loss in enumerate(val_losses, 1):
        if loss < best:
            best, best_epoch = loss, epoch
        if epoch - best_epoch >= patience:
            return epoch
    return len(val_losses)


def test_early_stopping_runs_a_prefix_of_the_full_run(
    dataset: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopping early replays the full run's first epochs exactly and keeps the best of them;
    where the full run's best epoch comes before the stop, the checkpoint is the same."""
    epochs, patience, lr = 10, 2, 0.03  # a large step: the validation loss soon stalls
    full_cfg = write_config(dataset, tmp_path, epochs=epochs, lr=lr)
    assert train_cli(full_cfg, tmp_path / "full") == 0
    full = read_log(tmp_path / "full" / "log.csv")
    stop = _stop_epoch([float(r["val_loss"]) for r in full], patience)
    assert stop < epochs, "the fixture's validation loss must stall for the test to mean much"
    # the replay `benchmarks/early_stopping.py` runs on full-length logs agrees
    best_before_stop = min(full[:stop], key=lambda r: float(r["val_loss"]))
    assert replay_early_stopping(full, patience) == (stop, int(best_before_stop["epoch"]))
    full_metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert replay_early_stopping(full, None) == (epochs, full_metrics["best_epoch"])

    early_cfg = write_config(dataset, tmp_path, epochs=epochs, lr=lr, early_stopping=patience)
    assert train_cli(early_cfg, tmp_path / "early") == 0
    early = read_log(tmp_path / "early" / "log.csv")
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in early] == [
        {k: v for k, v in r.items() if k not in drop} for r in full[:stop]
    ]
    metrics = json.loads((tmp_path / "early" / "metrics.json").read_text())
    assert metrics["epochs"] == epochs and metrics["epochs_run"] == stop
    assert metrics["early_stopping"] == patience
    best = min(early, key=lambda r: float(r["val_loss"]))
    assert metrics["best_epoch"] == int(best["epoch"])
    config = torch.load(tmp_path / "early" / "checkpoint.pt", weights_only=True)["config"]
    assert config["epochs_run"] == stop and config["early_stopping"] == patience
    assert full_metrics["epochs_run"] == epochs and full_metrics["early_stopping"] is None
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "early" / "checkpoint.pt", weights_only=True)["state_dict"]
    same = all(torch.equal(a[k], b[k]) for k in a)
    assert same == (full_metrics["best_epoch"] <= stop)

    capsys.readouterr()
    bad = write_config(dataset, tmp_path, early_stopping=0)
    assert train_cli(bad, tmp_path / "bad") == 2
    assert "'early_stopping' must be a positive integer, got 0" in _error_line(capsys)
    methods = {"patient": {"arch": "abmil", "train": {"early_stopping": 1.5}}}
    bad = write_config(dataset, tmp_path, methods=methods)
    assert train_cli(bad, tmp_path / "bad2", "patient") == 2
    assert "'early_stopping' must be a positive integer, got 1.5" in _error_line(capsys)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bags_are_pinned_and_arrive_standardised_on_the_device(
    dataset: dict[str, Path],
) -> None:
    from zoommil.training.config import load_config
    from zoommil.training.normalize import fit_feature_norm
    from zoommil.training.trainer import load_splits

    cfg = load_config(dataset["config"])
    _, _, stores, _, _ = load_splits(cfg, "abmil", ("train",))
    store = stores["train"]
    cpu_bag = store[0]
    norm = fit_feature_norm(f for bag in (store[i] for i in range(len(store))) for f in bag.feats)
    store.set_norm(norm)
    store.to_device(torch.device("cuda"))
    assert all(f.is_pinned() for f in store._cache[0].feats)
    bag = store[0]
    assert bag.feats[0].device.type == "cuda"
    torch.testing.assert_close(bag.feats[0].cpu(), norm(cpu_bag.feats[0]))


def test_train_scale_benchmark_runs_and_reads_each_runs_usage(tmp_path: Path) -> None:
    """benchmarks/train_scale.py at toy size: one row per (size, method, cache) with the
    epoch times of log.csv and the peak RSS parsed from `zoommil train`'s usage line."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_scale.py"
    spec = importlib.util.spec_from_file_location("train_scale", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--slides", "2", "--methods", "abmil", "--all-methods-at", "0", "--patches", "16",
            "--dim", "8", "--epochs", "2", "--features-dir", str(tmp_path / "f"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    bench.main(args)
    rows = json.loads((tmp_path / "out" / "train_scale.json").read_text())["rows"]
    assert [(r["train_slides"], r["method"], r["cache"]) for r in rows] == [
        (2, "abmil", "disk"),
        (2, "abmil", "memory"),
    ]
    assert all(len(r["epoch_s"]) == 2 and r["peak_rss_mb"] > 100 for r in rows)
    table = (tmp_path / "out" / "train_scale.md").read_text()
    assert table.count("| 2 | abmil |") == 2


def test_an_unwritable_eval_out_fails_before_training(
    dataset: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--eval-out was checked only when written, after the whole training run."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    out = tmp_path / "run"
    assert (
        train_cli(dataset["config"], out, "abmil_small", 0, "--eval-out", str(blocker / "e.json"))
        == 2
    )
    line = _error_line(capsys)
    assert f"cannot write {blocker / 'e.json'}: {blocker} is not a folder" in line
    assert not out.exists()


def test_eval_out_without_test_slides_fails_before_training(
    dataset: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--eval-out on a sheet without usable test slides trained every epoch, wrote the
    checkpoint and only then failed ("no 'test' slides to evaluate"): it fails once the data
    has loaded, before the first epoch; without --eval-out the run trains, test null."""
    rows = dataset["sheet"].read_text().splitlines()
    sheet = tmp_path / "no_test.tsv"
    sheet.write_text("\n".join(r for r in rows if not r.endswith("\ttest")) + "\n")
    config = write_config(dataset, tmp_path, sheet=str(sheet))
    out = tmp_path / "run"
    assert train_cli(config, out, "abmil_small", 0, "--eval-out", str(tmp_path / "e.json")) == 2
    assert f"{sheet}: no usable slides in the 'test' split" in _error_line(capsys)
    assert not out.exists() and not (tmp_path / "e.json").exists()
    assert train_cli(config, out, "abmil_small", 0, "--epochs", "1") == 0
    assert json.loads((out / "metrics.json").read_text())["test"] is None


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        ("-1", "--seed must be at least 0, got -1"),
        ("99999999999999999999", "--seed must be below 2**32 = 4294967296"),
        ("4294967296", "--seed must be below 2**32"),
    ],
)
def test_seeds_outside_0_to_2_32_are_one_line_errors(
    dataset: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    seed: str,
    message: str,
) -> None:
    """A seed above 2**64 was a ValueError traceback from torch.manual_seed; -1 was taken
    (synth and features refuse it)."""
    assert train_cli(dataset["config"], tmp_path / "run", "abmil_small", seed) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_no_progress_bar_when_stderr_is_not_a_terminal(
    dataset: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --no-progress the bar's carriage returns went into every job's log."""
    args = ["train", "--config", str(dataset["config"]), "--model", "abmil_small"]
    assert main([*args, "--out", str(tmp_path / "run"), "--epochs", "1", "--device", "cpu"]) == 0
    assert "\r" not in capsys.readouterr().err


def test_a_relative_path_from_an_older_checkpoint_is_read_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Checkpoints written before paths were recorded absolute hold ``slides.tsv``: read from
    the current folder, which may not be the training's, so the user is told which it was."""
    from zoommil.training.checkpoint import recorded_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "slides.tsv").write_text("slide_id\n")
    old = {"sheet": "slides.tsv", "exclude": str(tmp_path / "slides.tsv")}
    with caplog.at_level("WARNING", logger="zoommil.training.checkpoint"):
        absolute = recorded_path(old, "exclude", "QC table", "--exclude", "c.pt")
        assert absolute == Path(old["exclude"])
        assert not caplog.records  # an absolute path: nothing to say
        assert recorded_path(old, "sheet", "slide sheet", "--sheet", "c.pt") == Path("slides.tsv")
    (record,) = caplog.records
    assert record.getMessage().startswith(
        "c.pt: the slide sheet recorded at training, slides.tsv, is relative"
    )
    assert f"read from the current folder {tmp_path}; pass --sheet" in record.getMessage()

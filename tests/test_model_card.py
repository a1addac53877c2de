"""Model cards (`zoommil.reporting.model_card`): every number in its place, read from the
results files as the tables print them; a missing input is a line, not an error; a demo
model says it is one; a card made for sharing names no folder of the lab."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from zoommil.interop.share_checkpoint import main as share_main
from zoommil.models import build_model
from zoommil.recipe import PreprocessingRecipe
from zoommil.reporting import model_card
from zoommil.reporting.model_card import CardInputs, write_card
from zoommil.training.checkpoint import load_checkpoint, save_checkpoint

LAB = "/home/alice/project-hospital-x"
README = Path(__file__).resolve().parents[1] / "README.md"


def _checkpoint(path: Path, seed: int, weights: str, method: str = "gaussian") -> Path:
    """A tiny ABMIL checkpoint as `zoommil train` records it on the lab's machine."""
    recipe = PreprocessingRecipe(mags=[5.0, 10.0], weights=weights, tissue_method=method)
    attrs = recipe.to_attrs()
    attrs.update(weights_sha256="ab" * 32, tissue_version=2)
    if weights != "random":
        attrs.update(weights_file=weights, weights_note=f"state dict {weights}")
    config = {
        "method": "abmil",
        "arch": "abmil",
        "kwargs": {},
        "classes": ["normal", "tumor"],
        "mags": [10.0],
        "in_dim": 4,
        "seed": seed,
        "epoch": 7 + seed,
        "epochs_run": 20,
        "selection": "val_loss",
        "lr": 1e-4,
        "early_stopping": 20,
        "features_dir": f"{LAB}/results/features",
        "sheet": f"{LAB}/slides.tsv",
        "exclude": f"{LAB}/results/qc/slides.tsv",
        "preprocessing": attrs,
        "zoommil_version": "0.9.1",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, build_model("abmil", in_dim=4, n_classes=2).state_dict(), config)


def _metrics(path: Path, seed: int) -> Path:
    record = {
        "seed": seed,
        "n_slides": {"train": 5, "val": 2, "test": 3},
        "n_excluded": 1,
        "excluded": [{"slide_id": "blank"}],
        "environment": {"zoommil_commit": f"c0ffee{seed}"},
    }
    path.write_text(json.dumps(record))
    return path


MAIN_ROW = {
    "method": "abmil",
    "name": "ABMIL",
    "arch": "abmil",
    "mags": "10x",
    "n_seeds": 2,
    "weighted_f1_mean": 0.886,
    "weighted_f1_std": 0.104,
    "weighted_f1_ci_low": 0.738,
    "weighted_f1_ci_high": 1.0,
    "weighted_f1_ci_method": "bootstrap",
    "accuracy_mean": 1.0,
    "accuracy_std": 0.0,
    "accuracy_ci_low": 0.782,
    "accuracy_ci_high": 1.0,
    "accuracy_ci_method": "clopper_pearson",
    "auc_mean": 0.993,
    "auc_std": 0.012,
    "n_test": 15,
    "n_test_units": 12,
    "tflops": 0.462,
    "tflops_sd": 0.04,
    "patches_per_slide": 119,
    "cpu1_s_per_slide": 10.18,
    "cpu1_s_per_slide_sd": 0.26,
    "cpu1_n_slides": 2,
    "cpu1_slides_per_hour": 353.6,
    "cpu_s_per_slide": float("nan"),
    "cpu_s_per_slide_sd": float("nan"),
    "cpu_n_slides": float("nan"),
    "cpu_slides_per_hour": float("nan"),
    "notes": "fractions | timed on a test CPU",
}


@pytest.fixture
def results(tmp_path: Path) -> CardInputs:
    """A finished run's files for ABMIL (2 seeds, binary task, gaussian detector)."""
    root = tmp_path / "results"
    ckpts, metrics = [], []
    for seed in (0, 1):
        run = root / "models" / "abmil" / f"seed~{seed}"
        ckpts.append(_checkpoint(run / "checkpoint.pt", seed, f"{LAB}/w/r50.pth"))
        metrics.append(_metrics(run / "metrics.json", seed))
    tables = root / "tables"
    tables.mkdir()
    other = {**MAIN_ROW, "method": "zoommil", "name": "ZoomMIL", "weighted_f1_mean": 0.5}
    pd.DataFrame([other, MAIN_ROW]).to_csv(tables / "main.csv", index=False)
    points = root / "operating_points"
    points.mkdir()
    pd.DataFrame(
        [
            ["abmil", 0, 0.9, 0.412, 0.75, 0.9, "abmil/seed~0/val_spec90.json", ""],
            [
                "abmil",
                0,
                0.95,
                None,
                None,
                None,
                "abmil/seed~0/val_spec95.json",
                "fewer than 20 negative validation slides",
            ],
        ],
        columns=[
            "method",
            "seed",
            "target_specificity",
            "threshold",
            "val_sensitivity",
            "val_specificity",
            "file",
            "reason",
        ],
    ).to_csv(points / "index.tsv", sep="\t", index=False)
    qc = root / "qc" / "slides.tsv"
    qc.parent.mkdir()
    rows = [
        ("n1", "normal", "train", "ok"),
        ("n2", "normal", "train", "ok"),
        ("t1", "tumor", "train", "ok"),
        ("n3", "normal", "val", "ok"),
        ("t2", "tumor", "test", "ok"),
        ("t3", "tumor", "test", "ok"),
        ("blank", "tumor", "train", "no_tissue"),
        ("bad", "normal", "test", "implausible_mpp"),
    ]
    pd.DataFrame(rows, columns=["slide_id", "label", "split", "status"]).assign(
        stage="", reason=""
    ).to_csv(qc, sep="\t", index=False)
    sheet = tmp_path / "cohort.tsv"
    body = "".join(
        f"{s}\t{s}.svs\t{lab}\t{sp}\tP{i // 2}\n" for i, (s, lab, sp, _) in enumerate(rows)
    )
    sheet.write_text("slide_id\tpath\tlabel\tsplit\tpatient\n" + body)
    return CardInputs(
        method="abmil",
        checkpoints=ckpts,
        metrics=metrics,
        main_table=tables / "main.csv",
        ablation_table=tables / "ablations.csv",
        operating_points=points,
        qc_table=qc,
        sheet=sheet,
        dataset="camelyon16",
        spec={"arch": "abmil"},
    )


def _section(card: str, title: str) -> str:
    """The text of the card's section ``## title``, up to the next section."""
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _row(text: str, first: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is ``first``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first:
            return cells[1:]
    raise AssertionError(f"no row {first!r} in:\n{text}")


def test_the_tables_numbers_are_in_their_places(results: CardInputs) -> None:
    card = model_card.model_card(results)
    test = _section(card, "Test performance")
    assert _row(test, "Weighted F1 (%)") == ["88.6 ± 10.4 [73.8, 100.0]"]
    assert _row(test, "Accuracy (%)") == ["100.0 ± 0.0 [78.2, 100.0]†"]  # exact CI, as printed
    assert _row(test, "AUC (%)") == ["99.3 ± 1.2"]
    assert "2 seed(s)" in test and "15 test slides (12 resampling units)" in test
    assert "- timed on a test CPU" in test  # the table's notes come with it
    efficiency = _section(card, "Efficiency")
    assert "TFLOPs per slide (mean ± std over the test slides): 0.462 ± 0.040" in efficiency
    assert (
        "CPU, 1 thread (s/slide, end to end from the slide file): 10.18 ± 0.26 (354 slides/h)"
        in efficiency
    )
    assert "the table's notes) (s/slide, end to end from the slide file): not available (not" in (
        efficiency
    )
    points = _section(card, "Validation operating points")
    assert "| 0 | 0.9 | 0.412 | 75.0% | 90.0% |" in points
    assert "| 0 | 0.95 | n/a: fewer than 20 negative validation slides | n/a | n/a |" in points
    data = _section(card, "Training data")
    assert _row(data, "split") == ["normal", "tumor", "total"]
    assert _row(data, "train") == ["2", "1", "3"] and _row(data, "test") == ["0", "2", "2"]
    assert "2 of 8 slides excluded (1 implausible_mpp, 1 no_tissue)" in data
    assert "Patients per split (slides kept by QC): train 2, val 1, test 1" in data
    assert "Patients with slides in more than one split: 1" in data  # P1: t1 train, n3 val
    assert "Slide sheet: cohort.tsv" in data and "Dataset: camelyon16" in data
    assert "Seed 1: trained on 5 slides, validated on 2, tested on 3 (1 left out" in data
    ckpts = _section(card, "Checkpoints")
    for seed, path in enumerate(results.checkpoints):
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        assert _row(ckpts, str(seed)) == [
            "checkpoint.pt",
            digest,
            f"{7 + seed} / 20",
            "0.9.1",
            f"c0ffee{seed}",
        ]
    model = _section(card, "Model")
    assert "Ilse et al., ICML 2018 (BibTeX `ilse2018attention`" in model
    assert "Classes (in output order): normal, tumor" in model
    assert "(early stopping after 20 epochs without a better val_loss)" in model
    recipe = _section(card, "Encoder and preprocessing")
    assert "sha256 " + "ab" * 32 in recipe and "5x -> 10x, patch size 256 px" in recipe
    assert "Tissue detector: `gaussian` version 2" in recipe
    limits = _section(card, "Known limitations")
    assert "stop test (`background_gray`) tips" in limits
    # the one part not read from this run's files says where it comes from
    detector = [line for line in limits.splitlines() if "background_gray" in line]
    assert detector and "benchmarks on other slides, not on this cohort" in detector[0]
    assert "Demo model" not in card


def test_a_missing_input_is_a_line_saying_why(results: CardInputs, tmp_path: Path) -> None:
    bare = CardInputs(
        method="abmil",
        checkpoints=results.checkpoints[:1],
        main_table=tmp_path / "gone.csv",
        operating_points=tmp_path / "gone",
    )
    card = model_card.model_card(bare)
    assert "not available (no results/tables/main.csv)" in _section(card, "Test performance")
    assert "not available (no table row)" in _section(card, "Efficiency")
    assert "not available (no QC table)" in card and "not available (no slide sheet)" in card
    points = _section(card, "Validation operating points")
    assert "not available (no results/operating_points/index.tsv)" in points
    assert "not available (no metrics.json)" in _section(card, "Checkpoints")
    nothing = model_card.model_card(CardInputs(method="dsmil", checkpoints=[tmp_path / "x.pt"]))
    assert "not available (no checkpoint of dsmil)" in nothing
    other = CardInputs(**{**vars(results), "method": "msmil"})
    assert "not available (msmil has no row in main.csv)" in model_card.model_card(other)


def test_random_weights_say_the_model_is_a_demo(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "checkpoint.pt", 0, "random", method="otsu")
    card = model_card.model_card(CardInputs(method="abmil", checkpoints=[ckpt]))
    assert card.splitlines()[2].startswith("> **Demo model, not for use.**")
    assert "weights `random` (seed 0)" in card
    limits = _section(card, "Known limitations")
    assert "random weights: a demo, not for use" in limits
    assert "background_gray" not in limits and "`otsu` changed no patch" in limits


ABSOLUTE = re.compile(r"(?<![\w.])(?:~?/|[A-Za-z]:\\)\w")


def test_a_card_for_sharing_names_no_folder(results: CardInputs, tmp_path: Path) -> None:
    """The checkpoint's paths go by `share_checkpoint`'s rules (a Windows share too), and a
    path in any other input (here the table's notes) is cut to its file name as well."""
    table = pd.read_csv(results.main_table)
    table["notes"] = f"weights {LAB}/w/r50.pth | fractions"
    table.to_csv(results.main_table, index=False)
    unc = r"\\lab-server\alice\r50.pth"
    results.checkpoints[0] = _checkpoint(tmp_path / "unc" / "checkpoint.pt", 0, unc)
    assert LAB in model_card.model_card(results)  # the lab's own card keeps the paths
    shared = model_card.model_card(results, for_sharing=True)
    assert "alice" not in shared and not ABSOLUTE.search(shared), shared
    assert "weights `r50.pth`" in shared and "- weights r50.pth" in shared


def test_share_checkpoint_writes_the_card_beside_the_copy(
    results: CardInputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = Path(results.checkpoints[1])
    out, card = tmp_path / "send" / "abmil.pt", tmp_path / "send" / "abmil.md"
    root = Path(results.qc_table).parents[1]
    argv = [str(ckpt), "--out", str(out), "--card", str(card), "--results", str(root)]
    assert share_main(argv) == 0
    text = card.read_text()
    assert "alice" not in text and str(tmp_path) not in text and not ABSOLUTE.search(text)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert _row(_section(text, "Checkpoints"), "1")[:2] == ["abmil.pt", digest]  # the copy's
    assert "88.6 ± 10.4 [73.8, 100.0]" in text and "c0ffee1" in text
    assert str(card) in capsys.readouterr().out


def test_the_references_are_the_readmes(tmp_path: Path) -> None:
    """The card's references say what the README's Models table says."""
    rows = {}
    for line in (
        README.read_text(encoding="utf-8").split("| model (`model:` name) |")[1].splitlines()[2:]
    ):
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[re.search(r"\(`(\w+)`\)", cells[0]).group(1)] = (cells[1], cells[2].strip("`"))
    assert set(rows) == set(model_card.REFERENCES)
    for arch, (reference, key) in model_card.REFERENCES.items():
        assert rows[arch] == (reference, key or "none"), arch


def test_write_card_writes_the_file(results: CardInputs, tmp_path: Path) -> None:
    path = write_card(tmp_path / "cards" / "abmil.md", results)
    assert path.read_text(encoding="utf-8") == model_card.model_card(results)


def test_a_shared_card_cuts_a_folder_with_a_space_a_share_and_a_user_home(
    results: CardInputs, tmp_path: Path
) -> None:
    """A QC reason in the tables' notes names a slide's file; a lab share's folder often has
    a space ('/mnt/Lab Share/...'), which cut the pattern at the space and left the folders
    after it in the card; a UNC share and '~alice/' were not taken for paths at all."""
    slide = "/mnt/Hospital X Share/alice/camelyon/bad.svs"
    sheet = Path(results.sheet)
    sheet.write_text(sheet.read_text().replace("\nbad\tbad.svs\t", f"\nbad\t{slide}\t"))
    table = pd.read_csv(results.main_table)
    table["notes"] = (
        f"excluded: bad (qc: cannot open {slide}) | weights \\\\nas-hospital-x\\alice\\r50.pth"
        " | features in ~alice/hospital-x/features"
    )
    table.to_csv(results.main_table, index=False)
    shared = model_card.model_card(results, for_sharing=True)
    assert "alice" not in shared and "Hospital" not in shared and "hospital-x" not in shared
    assert "(qc: cannot open bad.svs)" in shared and "- weights r50.pth" in shared


def test_a_csv_sheet_gives_the_patients_as_a_tsv_does(results: CardInputs) -> None:
    """The workflow takes a .csv sheet comma-separated; the card read every sheet as a TSV,
    so a .csv one was a single column and the card said it had no patient column."""
    tsv = model_card.model_card(results)
    sheet = Path(results.sheet)
    csv = sheet.with_suffix(".csv")
    csv.write_text(sheet.read_text().replace("\t", ","))
    results.sheet = csv
    text = model_card.model_card(results)
    line = next(x for x in tsv.splitlines() if x.startswith("- Patients per split"))
    assert line in text and "no patient column" not in text


def test_a_timing_without_its_rate_prints_no_nan(results: CardInputs) -> None:
    """A table row timed but without slides/h (an older table) gives the time alone."""
    table = pd.read_csv(results.main_table)
    table["cpu1_slides_per_hour"] = float("nan")
    table.to_csv(results.main_table, index=False)
    efficiency = _section(model_card.model_card(results), "Efficiency")
    assert "10.18" in efficiency and "nan" not in efficiency


def test_a_checkpoint_without_a_seed_looks_for_no_seed_folder(
    results: CardInputs, tmp_path: Path
) -> None:
    """`share_checkpoint --card` of a checkpoint that records no seed: no `seed~None` path."""
    from zoommil.interop.share_checkpoint import card_inputs

    ckpt = _checkpoint(tmp_path / "noseed.pt", 0, "random")
    state, config = load_checkpoint(ckpt)
    config.pop("seed")
    save_checkpoint(ckpt, state, config)
    root = Path(results.qc_table).parents[1]
    inputs = card_inputs(ckpt, ckpt, root)
    assert list(inputs.metrics) == []

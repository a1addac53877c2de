"""Unit tests of the workflow-side library: sheets, QC tables, train configs, tables, figures."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from zoommil.errors import ZoomMILError
from zoommil.io import sheet
from zoommil.recipe import PreprocessingRecipe
from zoommil.reporting import (
    figure_throughput,
    per_class,
    results,
    table_format,
    table_frames,
    table_notes,
    tables,
)
from zoommil.workflow import params as workflow
from zoommil.workflow import qc, trainconfig
from zoommil.wsi.lattice import descendants, steps_between

HEADER = "slide_id\tpath\tlabel\tsplit\tmpp\n"


def write_sheet(tmp_path: Path, body: str, name: str = "slides.tsv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + body)
    return path


# --- sheets ---------------------------------------------------------------------------------


def test_load_sheet_resolves_paths_and_mpp(tmp_path: Path) -> None:
    path = write_sheet(tmp_path, "a\tsub/a.svs\tx\ttrain\t0.5\nb\t/abs/b.svs\ty\ttest\t\n")
    frame = sheet.load_sheet(path, ["x", "y"])
    assert list(frame.index) == ["a", "b"]
    assert frame.loc["a", "path"] == str(tmp_path.resolve() / "sub" / "a.svs")
    assert frame.loc["b", "path"] == "/abs/b.svs"
    assert frame.loc["a", "mpp"] == 0.5 and math.isnan(frame.loc["b", "mpp"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("a\ta.svs\tx\ttrain\t\nb\tb.svs\tz\ttrain\t\n", "row 2 (slide_id 'b'): unknown label 'z'"),
        ("a\ta.svs\tx\ttrain\t\na\tb.svs\tx\tval\t\n", "row 2 (slide_id 'a'): duplicate slide_id"),
        (
            "S1\ta.svs\tx\ttrain\t\ns1\tb.svs\tx\tval\t\n",
            "row 2 (slide_id 's1'): slide_id 's1' differs from row 1's 'S1' only in case",
        ),
        ("a\ta.svs\tx\tdev\t\n", "row 1 (slide_id 'a'): unknown split 'dev'"),
        ("a\ta.svs\tx\ttrain\t6\n", "row 1 (slide_id 'a'): mpp 6.0 is outside 0.05-5.0"),
        ("a\t\tx\ttrain\t\n", "row 1 (slide_id 'a'): empty 'path'"),
    ],
)
def test_load_sheet_errors_name_the_row(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ZoomMILError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sheet.load_sheet(write_sheet(tmp_path, body), ["x", "y"])


def test_load_sheet_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "s.tsv"
    path.write_text("slide_id\tpath\tsplit\na\ta.svs\ttrain\n")
    with pytest.raises(ZoomMILError, match="missing column"):
        sheet.load_sheet(path)


def test_load_sheet_schema_checks_slide_id(tmp_path: Path) -> None:
    schema = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "workflow/schemas/slides.schema.yaml").read_text()
    )
    path = write_sheet(tmp_path, "bad/id\ta.svs\tx\ttrain\t\n")
    with pytest.raises(ZoomMILError, match="row 1 .*slide_id"):
        sheet.load_sheet(path, None, schema)


def test_load_sheet_csv(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("slide_id,path,label,split\na,a.svs,x,train\n")
    assert list(sheet.load_sheet(path).index) == ["a"]


def test_read_sheet_is_the_one_reader_of_commands(tmp_path: Path) -> None:
    path = write_sheet(tmp_path, "a\tslides/a.svs\tx\ttrain\t\nb\t/abs/b.svs\ty\ttest\t0.5\n")
    frame = sheet.read_sheet(path)
    assert list(frame["path"]) == [str(tmp_path.resolve() / "slides" / "a.svs"), "/abs/b.svs"]
    assert list(frame["mpp"]) == ["", "0.5"]  # strings: commands parse what they need
    no_path = tmp_path / "labels.tsv"
    no_path.write_text("slide_id\tlabel\tsplit\na\tx\ttrain\n")
    assert "path" not in sheet.read_sheet(no_path).columns  # features-only commands
    bad = write_sheet(tmp_path, "a\ta.svs\tx\ttraining\t\n", "bad.tsv")
    with pytest.raises(ZoomMILError, match="slide 'a' has split 'training'"):
        sheet.read_sheet(bad)


# --- workflow helpers -----------------------------------------------------------------------


def test_cli_flags_and_param_flags() -> None:
    assert workflow.cli_flags({"batch_size": 16, "fast": True, "off": False, "mags": [1, 2]}) == (
        "--batch-size 16 --fast --mags 1 2"
    )
    assert workflow.cli_flags({"name": "a b"}) == "--name 'a b'"
    assert workflow.param_flags("--param", {"sigma": 20, "prewhiten": False}) == (
        "--param prewhiten=false --param sigma=20"
    )
    # the text is a rerun trigger: the same settings in another order are the same text
    assert workflow.cli_flags({"b": 1, "a": 2}) == workflow.cli_flags({"a": 2, "b": 1})
    assert workflow.param_flags("--param", {"kernel_size": 16, "sigma": 12}) == (
        workflow.param_flags("--param", {"sigma": 12, "kernel_size": 16})
    )


def test_run_paths_are_relative_inside_the_run_and_absolute_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How the rules name a slide or the sheet: one spelling per file, and none that changes
    when the project folder is copied or moved (they are rerun triggers)."""
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    assert workflow.run_path("./slides.tsv") == "slides.tsv" == workflow.run_path("slides.tsv")
    assert workflow.run_path(run / "slides.tsv") == "slides.tsv"
    assert workflow.run_path(run / "data" / "a.svs", run) == "data/a.svs"
    assert workflow.run_path(run / "data" / ".." / "s.tsv", run) == "s.tsv"
    assert workflow.run_path(tmp_path / "other" / "a.svs", run) == f"{tmp_path}/other/a.svs"
    assert workflow.run_path(tmp_path / "run2" / "a.svs", run) == f"{tmp_path}/run2/a.svs"


def test_mpp_flags_follow_the_design_order() -> None:
    """The sheet's mpp and default_mpp are fallbacks for inspection; later commands get the
    resolved mpp only where a fallback gave it (metadata slides: no flag, no param change)."""
    nan = float("nan")
    assert workflow.inspect_mpp_flag(nan, 0.3, 0.5) == "--default-mpp 0.3"
    assert workflow.inspect_mpp_flag(nan, nan, 0.5) == "--default-mpp 0.5"
    assert workflow.inspect_mpp_flag(nan, nan, None) == ""
    # mpp_override replaces the metadata: --mpp, whatever the fallbacks
    assert workflow.inspect_mpp_flag(0.2627, 0.3, 0.5) == "--mpp 0.2627"
    assert workflow.resolved_mpp_flag("0.499", "openslide.mpp-x") == ""
    assert workflow.resolved_mpp_flag("", "") == ""  # not inspected ok
    assert workflow.resolved_mpp_flag("0.5", "default") == "--default-mpp 0.5"
    assert workflow.resolved_mpp_flag("0.5", "sheet") == "--default-mpp 0.5"
    assert workflow.resolved_mpp_flag("0.25", "override") == "--mpp 0.25"


def test_torch_device_follows_the_gpu_resource() -> None:
    assert workflow.torch_device(0) == workflow.torch_device(None) == "cpu"
    assert workflow.torch_device(1) == "auto"


def test_torch_device_follows_a_gres_or_gpu_model_request() -> None:
    """A --gres-only site's `gpu: 0, gres: "gpu:1"` (docs/cluster.md) gets a GPU job from the
    SLURM plugin, so the command must not be told `--device cpu` (it ran on CPU before)."""
    assert workflow.torch_device(0, "gpu:1") == "auto"
    assert workflow.torch_device(None, "gpu:a100:2") == "auto"
    assert workflow.torch_device(0, "tmpdisk:100,gpu") == "auto"
    assert workflow.torch_device(None, None, "a100") == "auto"
    assert workflow.torch_device(0, "tmpdisk:100") == "cpu"
    assert workflow.torch_device(0, "gpu:0") == "cpu"
    assert workflow.torch_device(0, None, "a100") == "cpu"  # gpu: 0 says none
    assert workflow.gres_gpus("gpu:a100:2") == 2 and workflow.gres_gpus("") == 0


def test_recipe_flags_for_tile_and_features() -> None:
    recipe = PreprocessingRecipe(mags=[10, 2.5, 5], tissue_threshold=0.2, weights="random")
    assert workflow.tiling_flags(recipe) == (
        "--mags 2.5 5.0 10.0 --patch-size 256 --tissue-threshold 0.2"
    )
    assert workflow.encoder_flags(recipe) == (
        "--encoder resnet50_layer3 --precision fp32 --seed 0 --weights random"
    )


# --- train configs --------------------------------------------------------------------------


def test_train_config_is_per_method_and_plain(tmp_path: Path) -> None:
    config = trainconfig.build_train_config(
        method="zoommil_random",
        spec={"arch": "zoommil", "k": 4, "selection": "random"},
        train={"seeds": [0, 1], "epochs": 3, "lr": 1e-4, "extra": {"patience": 5}},
        mags=[10, 2.5, 5],
        classes=["a", "b"],
        sheet="results/demo/slides.tsv",
        features_dir="results/features",
        exclude="results/qc/slides.tsv",
    )
    assert config["mags"] == [2.5, 5.0, 10.0]
    assert config["methods"] == {
        "zoommil_random": {"arch": "zoommil", "k": 4, "selection": "random"}
    }
    assert "seeds" not in config and config["patience"] == 5 and config["epochs"] == 3
    assert "early_stopping" not in config  # null: zoommil train's default (every epoch)
    stopping = trainconfig.build_train_config(
        method="abmil", spec={"arch": "abmil"}, train={"seeds": [0], "early_stopping": 20},
        mags=[10], classes=None, sheet="s.tsv", features_dir="f", exclude="e.tsv",
    )  # fmt: skip
    assert stopping["early_stopping"] == 20
    assert yaml.safe_load(trainconfig.dump_train_config(config)) == config
    # a method's options in another order: the same text (the train job's rerun trigger)
    reordered = {**config, "methods": {"zoommil_random": {"selection": "random", "k": 4,
                                                          "arch": "zoommil"}}}  # fmt: skip
    assert trainconfig.dump_train_config(reordered) == trainconfig.dump_train_config(config)


def test_method_options_are_checked_without_building_models() -> None:
    """The workflow reads the models' options from their sources (no torch at load): the
    same sets `build_model` checks, and a typo names the method and the option."""
    import zoommil.models as models
    from zoommil.workflow import trainconfig

    root = Path(models.__file__).parent
    options = trainconfig.model_options(root)
    for arch, cls in models._CLASSES.items():
        names, var_kwargs = models._accepted_options(cls)
        assert options[arch] == (frozenset(names), var_kwargs), arch
    good = {"zoommil": {"arch": "zoommil", "k": 4, "sigma": 0.005}, "abmil": {}, "mm": None}
    trainconfig.check_method_options({**good, "mm": {"arch": "meanmil", "mags": [5]}}, root)
    with pytest.raises(ZoomMILError, match="method 'zoommil': model 'zoommil' does not take "
                       "option.s. sigm; it takes: "):  # fmt: skip
        trainconfig.check_method_options({"zoommil": {"arch": "zoommil", "sigm": 0.005}}, root)
    # the papers' spellings are the registry's names (`known_arch`); an unknown one is named
    # as written, not as a lower-cased, re-hyphenated 'ms_mil'
    trainconfig.check_method_options({"m": {"arch": "MS-MIL"}, "c": {"arch": "CLAM-SB"}}, root)
    with pytest.raises(ZoomMILError, match="method 'm': unknown architecture 'MS-MIL-2'"):
        trainconfig.check_method_options({"m": {"arch": "MS-MIL-2"}}, root)


def test_model_options_follow_relative_imports_and_name_an_unfollowable_one(
    tmp_path: Path,
) -> None:
    """A model registered with ``from .module import Class`` (ruff allows it, `build_model`
    works), or under an alias, is read like the plain form (an alias read as no options at
    all, so a config typo passed); one whose class the reader cannot place stops the
    workflow's load naming the file, the model and the form it reads, not a bare KeyError."""
    import zoommil.models as models
    from zoommil.workflow import trainconfig

    root = tmp_path / "models"
    shutil.copytree(Path(models.__file__).parent, root)
    init = root / "__init__.py"
    text = init.read_text()
    assert "from zoommil.models.abmil import ABMIL\n" in text and '"abmil": ABMIL,' in text
    expected = trainconfig.model_options(Path(models.__file__).parent)
    assert expected["abmil"][0] >= {"dropout", "in_dim"} and not expected["abmil"][1]
    relative = text.replace("from zoommil.models.abmil import", "from .abmil import")
    aliased = text.replace("import ABMIL\n", "import ABMIL as AttnMIL\n").replace(
        '"abmil": ABMIL,', '"abmil": AttnMIL,'
    )
    for variant in (relative, aliased):
        init.write_text(variant)
        assert trainconfig.model_options(root) == expected
    message = "model 'abmil': cannot find its class in the package's sources; register it as"
    unfollowable = (
        text.replace("from zoommil.models.abmil import ABMIL\n", ""),  # not imported
        text.replace('"abmil": ABMIL,', '"abmil": models_abmil.ABMIL,'),  # an attribute
    )
    for variant in unfollowable:
        init.write_text(variant)
        with pytest.raises(ZoomMILError, match=re.escape(message)):
            trainconfig.model_options(root)


def test_train_priority_starts_the_longest_trainings_first() -> None:
    from zoommil.models import MODEL_NAMES

    assert set(trainconfig.TRAIN_COST) == set(MODEL_NAMES)  # a new model gets a cost too
    transmil = trainconfig.train_priority("transmil", {"arch": "transmil"})
    others = [trainconfig.train_priority(m, {"arch": m}) for m in MODEL_NAMES if m != "transmil"]
    assert transmil > max(others) and min(others) >= 1
    # an ablation is priced by its architecture; a method without `arch` is that architecture
    assert trainconfig.train_priority("zoommil_random", {"arch": "zoommil", "k": 4}) == (
        trainconfig.train_priority("zoommil", {})
    )
    assert trainconfig.train_priority("my_model", {"arch": "unknown"}) == 1


# --- QC tables ------------------------------------------------------------------------------


def write_features(path: Path, counts: dict[str, int], no_tissue: bool = False) -> Path:
    """Rows of one parent row at the first magnification, their descendants depth-first."""
    first = float(next(iter(counts))[:-1])
    with h5py.File(path, "w") as handle:
        for mag, n in counts.items():
            depth = steps_between(first, float(mag[:-1]))
            parents = np.stack([np.zeros(n // 4**depth, int), np.arange(n // 4**depth)], axis=1)
            coords = descendants(parents, depth)
            handle.create_dataset(f"{mag}_patches", data=np.zeros((n, 4), np.float32))
            handle.create_dataset(f"{mag}_coords", data=coords)
            handle.create_dataset(f"{mag}_xy", data=coords[:, ::-1] * 2 ** (4 - depth))
        handle.attrs["no_tissue_applied"] = no_tissue
    return path


def test_qc_tables(tmp_path: Path) -> None:
    frame = sheet.load_sheet(
        write_sheet(
            tmp_path,
            "a\ta.svs\tx\ttrain\t\nb\tb.svs\ty\ttest\t\nc\tc.svs\tx\tval\t0.5\nd\td.svs\ty\ttest\t\n",
        )
    )
    status = tmp_path / "qc"
    status.mkdir()
    for name, record in {
        "a": {"status": "ok", "mpp": 1.0, "mpp_source": "openslide.mpp-x"},
        "b": {"status": "implausible_mpp", "reason": "mpp 896 outside 0.1-2.0"},
        "c": {"status": "ok", "mpp": 0.5, "mpp_source": "default"},
        "d": {"status": "ok", "mpp": 0.5, "mpp_source": "default"},
    }.items():
        (status / f"{name}.json").write_text(json.dumps(record))
    inspection = qc.inspection_table(frame, sorted(status.glob("*.json")))
    assert list(inspection["status"]) == ["ok", "implausible_mpp", "ok", "ok"]
    # `--default-mpp` from the sheet's mpp column (c) or from the config's default_mpp (d)
    assert list(inspection["mpp_source"]) == ["openslide.mpp-x", "", "sheet", "default"]
    assert inspection.loc[1, "reason"] == "mpp 896 outside 0.1-2.0"
    feats = {
        "a": write_features(tmp_path / "a.h5", {"2.5x": 2, "5.0x": 8}),
        "c": write_features(tmp_path / "c.h5", {"2.5x": 3, "5.0x": 12}, no_tissue=True),
        "d": write_features(tmp_path / "d.h5", {"2.5x": 0, "5.0x": 0}),
    }
    table = qc.slides_table(inspection, feats, "exclude")
    assert list(table["status"]) == ["ok", "implausible_mpp", "no_tissue", "no_tissue"]
    assert list(table["n_5.0x"]) == [8, 0, 12, 0]
    assert qc.exclusion_summary(table) == "3 of 4 slides excluded (1 implausible_mpp, 2 no_tissue)"
    kept = qc.slides_table(inspection, feats, "all")
    assert list(kept["status"]) == ["ok", "implausible_mpp", "ok", "no_tissue"]
    usable = qc.usable_sheet(frame, kept)
    assert list(usable["slide_id"]) == ["a", "c"] and list(usable["mpp"]) == [1.0, 0.5]


def test_the_usable_sheet_names_the_runs_own_slides_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """usable.tsv is the timing and Figure 4 jobs' sheet: slides inside the run's folder are
    named relative to the table's folder, so a copied or moved project reads its own slides
    (absolute paths read the old place); slides elsewhere stay absolute."""
    from zoommil.io.sheet import read_sheet

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    monkeypatch.chdir(run)
    frame = pd.DataFrame(
        {
            "slide_id": ["a", "b"],
            "path": [str(run / "data" / "a.tiff"), "/elsewhere/b.svs"],
            "label": ["x", "y"],
            "split": ["train", "test"],
        }
    )
    table = pd.DataFrame({"slide_id": ["a", "b"], "status": ["ok", "ok"], "mpp": [0.5, 0.25]})
    usable = qc.usable_sheet(frame, table, "results/qc")
    assert list(usable["path"]) == ["../../data/a.tiff", "/elsewhere/b.svs"]
    (run / "results" / "qc").mkdir(parents=True)
    qc.write_tsv(usable, run / "results" / "qc" / "usable.tsv")
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    back = read_sheet(moved / "results" / "qc" / "usable.tsv")
    assert [os.path.normpath(p) for p in back["path"]] == [
        str(moved / "data" / "a.tiff"),
        "/elsewhere/b.svs",
    ]


# --- tables ---------------------------------------------------------------------------------


def fabricate_results(tmp_path: Path, gpu: bool = False) -> dict:
    metrics = {
        ("zoommil", 0): (0.80, 0.81, 0.90),
        ("zoommil", 1): (0.70, 0.71, 0.88),
        ("abmil", 0): (0.60, 0.62, 0.70),
        ("abmil", 1): (0.64, 0.66, 0.72),
        ("zoommil_random", 0): (0.50, 0.52, 0.60),
    }
    evals = []
    for (method, seed), (f1, acc, auc) in metrics.items():
        path = tmp_path / "eval" / method / f"seed~{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"test": {"weighted_f1": f1, "accuracy": acc, "auc": auc}}))
        evals.append(path)
    flops, timings = [], {"cpu1": [], "cpu": [], "gpu": []}
    for method, tflops, seconds in (("zoommil", 0.05, 2.0), ("abmil", 0.5, 20.0)):
        folder = tmp_path / "efficiency" / method
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "flops.json").write_text(json.dumps({"mean_tflops": tflops}))
        flops.append(folder / "flops.json")
        for device, factor in (("cpu1", 1.0), ("cpu", 0.5), ("gpu", 0.1)):
            record = {"seconds_per_slide": seconds * factor,
                      "slides_per_hour": 3600 / (seconds * factor), "skipped": None}  # fmt: skip
            if device == "gpu" and not gpu:
                record = {"skipped": "no CUDA device"}
            (folder / f"throughput_{device}.json").write_text(json.dumps(record))
            timings[device].append(folder / f"throughput_{device}.json")
    folder = tmp_path / "efficiency" / "zoommil_random"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flops.json").write_text(json.dumps({"mean_tflops": 0.05}))
    flops.append(folder / "flops.json")
    qc_table = tmp_path / "qc.tsv"
    qc_table.write_text(
        "slide_id\tlabel\tsplit\tstatus\treason\na\tx\ttrain\tok\t\n"
        "b\tx\ttest\timplausible_mpp\tmpp 896\n"
    )
    return {"evals": evals, "flops": flops, "timings": timings, "qc": qc_table}


def _make_demo_tables(
    tmp_path: Path,
    data: dict,
    comparisons: bool = False,
    outputs_extra: tuple[str, ...] = (),
    **extra,
) -> tuple[dict, dict]:
    """`tables.make_tables` on `fabricate_results`' files (ZoomMIL and ABMIL at 2.5/5/10x):
    what it returns and the output paths (with ``comparisons``, the comparison table's too;
    ``outputs_extra``: other tables' kinds, e.g. per_class)."""
    kinds = ("main", "ablation", "comparison") if comparisons else ("main", "ablation")
    kinds += outputs_extra
    outputs = {
        f"{kind}_{ext}": tmp_path / "tables" / f"{kind}.{ext}"
        for kind in kinds
        for ext in ("csv", "md", "tex")
    }
    made = tables.make_tables(
        qc_table=data["qc"],
        evals=data["evals"],
        flops=data["flops"],
        timings=data["timings"],
        outputs=outputs,
        dataset="demo",
        weights="random",
        mags=[2.5, 5, 10],
        methods={"zoommil": {"arch": "zoommil", "k": 4}, "abmil": {"arch": "abmil"}},
        **extra,
    )
    return made, outputs


def test_qc_slides_table_when_no_slide_failed_inspection(tmp_path: Path) -> None:
    """The inspection table as qc_slides reads it back: with every slide ok, its stage and
    reason columns are empty (float NaN) and must still take a later stage's exclusion."""
    frame = sheet.load_sheet(write_sheet(tmp_path, "a\ta.svs\tx\ttrain\t\nb\tb.svs\ty\ttest\t\n"))
    status = tmp_path / "qc"
    status.mkdir()
    for name in ("a", "b"):
        record = {"status": "ok", "mpp": 1.0, "mpp_source": "openslide.mpp-x"}
        (status / f"{name}.json").write_text(json.dumps(record))
    qc.write_tsv(qc.inspection_table(frame, sorted(status.glob("*.json"))), tmp_path / "i.tsv")
    inspection = qc.read_tsv(tmp_path / "i.tsv")
    feats = {
        "a": write_features(tmp_path / "a.h5", {"2.5x": 2, "5.0x": 8}),
        "b": write_features(tmp_path / "b.h5", {"2.5x": 3, "5.0x": 12}, no_tissue=True),
    }
    table = qc.slides_table(inspection, feats, "exclude").set_index("slide_id")
    assert table.loc["b", ["status", "stage"]].tolist() == ["no_tissue", "tile"]
    assert table.loc["a", "status"] == "ok"


def test_main_table_names_a_methods_own_magnifications() -> None:
    """BRIGHT's ZoomMIL-Eff (`mags: [1.25, 2.5]`) read two magnifications, while its row
    said the preprocessing's three; a method's `train: {mags}` is the one training uses."""
    methods = {
        "zoommil": {"arch": "zoommil"},
        "zoommil_eff": {"arch": "zoommil", "k": 2, "mags": [2.5, 1.25]},
        "abmil_low": {"arch": "abmil", "mags": [10], "train": {"mags": [2.5]}},
    }
    summary = pd.DataFrame({"method": pd.Series([], dtype=str)})
    table = table_frames.main_table(summary, methods, [1.25, 2.5, 10], {}, {})
    assert list(table["mags"]) == ["1.25x -> 2.5x -> 10x", "1.25x -> 2.5x", "2.5x"]


def test_make_tables(tmp_path: Path) -> None:
    data = fabricate_results(tmp_path)
    made, outputs = _make_demo_tables(
        tmp_path,
        data,
        ablations={"zoommil_random": {"arch": "zoommil", "k": 4, "selection": "random"}},
        reference="zoommil",
    )
    main = pd.read_csv(outputs["main_csv"])
    assert list(main["method"]) == ["zoommil", "abmil"]
    zoom = main.iloc[0]
    assert zoom["weighted_f1_mean"] == pytest.approx(0.75)
    assert zoom["weighted_f1_std"] == pytest.approx(np.std([0.8, 0.7], ddof=1))
    assert zoom["n_seeds"] == 2 and zoom["tflops"] == pytest.approx(0.05)
    assert zoom["cpu1_s_per_slide"] == pytest.approx(2.0)
    assert zoom["mags"] == "2.5x -> 5x -> 10x" and main.iloc[1]["mags"] == "10x"
    assert "RANDOM" in zoom["notes"] and "1 of 2 slides excluded" in zoom["notes"]
    markdown = outputs["main_md"].read_text()
    assert "| **ZoomMIL** | 2.5x -> 5x -> 10x | 75.0 ± 7.1 |" in markdown
    assert "1 of 2 slides excluded (1 implausible_mpp)" in markdown
    assert "GPU timing skipped: no CUDA device" in markdown
    assert "GPU (s/slide)" not in markdown  # no GPU column without a GPU
    assert "timed together" not in markdown  # every method was timed on its own here
    latex = outputs["main_tex"].read_text()
    assert r"\textbf{ZoomMIL}" in latex and r"75.0 $\pm$ 7.1" in latex and "RANDOM" in latex
    # the caption's notes are sentences (they ran together with spaces); the units are named
    caption = next(line for line in latex.splitlines() if line.startswith(r"\caption["))
    assert "do not measure the methods. dataset demo:" in caption
    assert "by QC. " in caption and caption.endswith(".}")
    # a short caption for the list of tables, the packages named, what bold means (review W)
    assert caption.startswith(r"\caption[ZoomMIL benchmark on demo") and "]{" in caption
    assert latex.startswith(r"% needs \usepackage{booktabs,graphicx}")
    assert "bold: the best mean weighted F1" in caption and "*Note:* bold: the best" in markdown
    assert "one multiply-add counted as one flop" in markdown
    # which std: the sample one over seeds (n - 1), as stats computes it (review B)
    assert "std: the sample standard deviation, n - 1" in markdown
    assert "AUC: ROC AUC (more than two classes: one-vs-rest" in markdown
    ablation = made["ablations"]
    assert list(ablation["method"]) == ["zoommil", "zoommil_random"]
    assert list(ablation["component"]) == ["reference", "selection"]
    assert ablation.iloc[1]["variant"] == "selection=random"
    assert "selection=random" in outputs["ablation_md"].read_text()


def test_per_class_table_gives_each_class_f1_and_macro_f1_over_seeds(tmp_path: Path) -> None:
    """DESIGN.md's macro and per-class F1 were only in the evaluation JSONs; on a 3-class
    cohort they show which grade a method misses (review L). A class F1 undefined for a seed
    (no test slide, never predicted) is left out of its mean, and the cell says from how
    many seeds it comes."""
    data = fabricate_results(tmp_path)
    per_class = {
        ("zoommil", 0): (0.9, {"a": 1.0, "b": 0.8, "c": None}),
        ("zoommil", 1): (0.7, {"a": 0.6, "b": 0.8, "c": 0.7}),
        ("abmil", 0): (0.5, {"a": 0.5, "b": 0.5, "c": 0.5}),
        ("abmil", 1): (0.3, {"a": 0.3, "b": 0.3, "c": 0.3}),
        ("zoommil_random", 0): (0.2, {"a": 0.2, "b": 0.2, "c": 0.2}),
    }
    for path in data["evals"]:
        key = (path.parent.name, int(path.stem.split("~")[1]))
        record = json.loads(path.read_text())
        macro, f1 = per_class[key]
        record["classes"] = ["a", "b", "c"]
        record["test"] |= {"macro_f1": macro, "per_class_f1": f1, "support": {"a": 2, "b": 3}}
        path.write_text(json.dumps(record))
    made, outputs = _make_demo_tables(
        tmp_path,
        data,
        ablations={"zoommil_random": {"arch": "zoommil", "k": 4, "selection": "random"}},
        reference="zoommil",
        outputs_extra=("per_class",),
    )
    table = made["per_class"].set_index("method")
    assert list(table.index) == ["zoommil", "abmil", "zoommil_random"]
    assert table.loc["zoommil", "macro_f1_mean"] == pytest.approx(0.8)
    assert table.loc["zoommil", "f1[a]_std"] == pytest.approx(np.std([1.0, 0.6], ddof=1))
    assert table.loc["zoommil", "f1[c]_mean"] == pytest.approx(0.7)
    assert table.loc["zoommil", "f1[c]_n"] == 1
    markdown = outputs["per_class_md"].read_text()
    header = "| Method | Macro F1 (%) | F1 a (%, 2 slides) | F1 b (%, 3 slides) | F1 c (%) |"
    assert header in markdown
    assert "| ZoomMIL | 80.0 ± 14.1 | 80.0 ± 28.3 | 80.0 ± 0.0 | 70.0 (n=1) |" in markdown
    # an ablation by what it changes, as Table 4's variant column: its config id said nothing
    assert "| ZoomMIL, selection=random (1 seed) | 20.0 | 20.0 | 20.0 | 20.0 |" in markdown
    assert "n/a or (n=k): F1 defined for k of the method's seeds only" in markdown
    assert "RANDOM" in markdown and "TFLOPs" not in markdown  # its own notes, no costs
    latex = outputs["per_class_tex"].read_text()
    assert r"\label{tab:demo-per-class}" in latex and "ZoomMIL, selection=random" in latex
    moved = json.loads(data["evals"][0].read_text()) | {"classes": ["b", "a", "c"]}
    data["evals"][0].write_text(json.dumps(moved))
    with pytest.raises(ZoomMILError, match="evaluations list their classes differently"):
        _make_demo_tables(tmp_path, data, outputs_extra=("per_class",))


def test_tables_name_an_ablation_by_what_it_changes() -> None:
    """The per-class and comparison tables named an ablation by its config id
    (zoommil_single_attention); Table 4 says what it changes. One source of names for all."""
    methods = {"zoommil": {"arch": "zoommil", "k": 4}, "clam_sb": {"arch": "clam_sb"}}
    ablations = {
        "zoommil_single_attention": {"arch": "zoommil", "k": 4, "attention": "single"},
        "zoommil_k8": {"arch": "zoommil", "k": 8, "aggregation": "concat"},
        "zoommil_again": {"arch": "zoommil", "k": 4},  # changes nothing: keeps its id
    }
    names = table_frames.method_names(methods, ablations, "zoommil")
    assert names == {
        "zoommil": "ZoomMIL",
        "clam_sb": "CLAM-SB",
        "zoommil_single_attention": "ZoomMIL, attention=single",
        "zoommil_k8": "ZoomMIL, aggregation=concat, k=8",
        "zoommil_again": "zoommil_again",
    }
    variants = table_frames.ablation_table(
        pd.DataFrame({"method": pd.Series([], dtype=str)}), ablations, "zoommil", methods, {}
    ).set_index("method")["variant"]
    assert names["zoommil_k8"] == f"ZoomMIL, {variants['zoommil_k8']}"
    table = pd.DataFrame(
        {
            "method": ["zoommil", "zoommil_single_attention"],
            "n_seeds": [3, 1],
            "macro_f1_mean": [0.5, 0.4],
            "macro_f1_std": [0.1, math.nan],
            "macro_f1_n": [3, 1],
        }
    )
    shown = per_class.per_class_display(table, [], names)["Method"]
    assert list(shown) == ["ZoomMIL", "ZoomMIL, attention=single (1 seed)"]


def test_per_class_notes_explain_n_a_only_when_a_cell_has_it() -> None:
    """The note on 'n/a or (n=k)' cells belongs under a table that has one: with every
    class F1 defined for every seed of its method (a 1-seed ablation included, which says
    its seeds by its name) there is only the reading note."""

    def record(method: str, seed: int, c: float | None) -> dict:
        f1 = {"a": 0.5, "b": 0.7, "c": c}
        return {"method": method, "seed": seed, "classes": ["a", "b", "c"], "macro_f1": 0.6,
                "per_class_f1": f1, "support": {"a": 2, "b": 3, "c": 1}}  # fmt: skip

    complete = [record("zoommil", 0, 0.6), record("zoommil", 1, 0.6), record("abl", 0, 0.1)]
    table = per_class.per_class_table(complete, ["zoommil", "abl"])
    notes = per_class.per_class_notes(table)
    assert len(notes) == 1 and notes[0].startswith("mean ± std over 2 seeds")
    assert not any("n/a" in note or "(n=k)" in note for note in notes)
    missing = per_class.per_class_table([*complete[:1], record("zoommil", 1, None)], ["zoommil"])
    assert per_class.per_class_notes(missing)[1].startswith("n/a or (n=k): F1 defined for k")


def test_tables_without_any_evaluation_say_n_a(tmp_path: Path) -> None:
    """No evaluation file yet (only FLOPs and timings): an empty summary, every metric cell
    n/a and no best row; `best_row` raised AttributeError on the missing column."""
    data = fabricate_results(tmp_path)
    made, outputs = _make_demo_tables(tmp_path, {**data, "evals": []})
    assert list(made["main"]["method"]) == ["zoommil", "abmil"]
    markdown = outputs["main_md"].read_text()
    assert "| ZoomMIL | 2.5x -> 5x -> 10x | n/a | n/a | n/a | 0.05 |" in markdown
    assert "**ZoomMIL**" not in markdown and r"\textbf" not in outputs["main_tex"].read_text()


def test_every_row_tied_for_the_best_weighted_f1_is_bold(tmp_path: Path) -> None:
    """Rows whose weighted F1 reads the same (at the printed precision, one decimal of a
    percent) are all bold; only the first of them was."""
    frame = pd.DataFrame({"weighted_f1_mean": [0.8, 0.9, math.nan, 0.89996, 0.9, 0.8994]})
    assert table_format.best_rows(frame) == [1, 3, 4]  # 90.0 three times; 89.9 is not tied
    assert table_format.best_rows(pd.DataFrame({"weighted_f1_mean": [math.nan]})) == []
    data = fabricate_results(tmp_path)
    for seed, f1 in ((0, 0.80), (1, 0.70)):  # ABMIL ties ZoomMIL's 75.0
        path = tmp_path / "eval" / "abmil" / f"seed~{seed}.json"
        path.write_text(json.dumps({"test": {"weighted_f1": f1, "accuracy": 0.5, "auc": 0.5}}))
    _, outputs = _make_demo_tables(tmp_path, data)
    markdown = outputs["main_md"].read_text()
    assert "| **ZoomMIL** | 2.5x -> 5x -> 10x | 75.0 ± 7.1 |" in markdown
    assert "| **ABMIL** | 10x | 75.0 ± 7.1 |" in markdown
    latex = outputs["main_tex"].read_text()
    assert r"\textbf{ZoomMIL}" in latex and r"\textbf{ABMIL}" in latex


def test_cells_from_fewer_seeds_say_how_many(tmp_path: Path) -> None:
    """ABMIL's AUC is undefined for one seed and a third run has no metric at all; the
    ablation ran one seed of two: their cells carry (n=k), a full one does not."""
    data = fabricate_results(tmp_path)
    one = tmp_path / "eval" / "abmil" / "seed~1.json"
    reason = "undefined: no slide of class(es) tumor in this split"
    one.write_text(
        json.dumps(
            {"test": {"weighted_f1": 0.64, "accuracy": 0.66, "auc": None, "auc_note": reason}}
        )
    )
    empty = tmp_path / "eval" / "abmil" / "seed~2.json"
    empty.write_text(json.dumps({"test": {"weighted_f1": None, "accuracy": None, "auc": None}}))
    made, outputs = _make_demo_tables(
        tmp_path,
        {**data, "evals": [*data["evals"], empty]},
        ablations={"zoommil_random": {"arch": "zoommil", "k": 4, "selection": "random"}},
        reference="zoommil",
    )
    abmil = made["main"].set_index("method").loc["abmil"]
    assert abmil["n_seeds"] == 2 and abmil["weighted_f1_n"] == 2 and abmil["auc_n"] == 1
    markdown = outputs["main_md"].read_text()
    assert "| ABMIL | 10x | 62.0 ± 2.8 | 64.0 ± 2.8 | 70.0 (n=1) |" in markdown
    assert "| **ZoomMIL** | 2.5x -> 5x -> 10x | 75.0 ± 7.1 | 76.0 ± 7.1 | 89.0 ± 1.4 |" in markdown
    assert "(n=k): over k seeds, fewer than the 2 of the full benchmark" in markdown
    assert r"70.0 (n=1)" in outputs["main_tex"].read_text()
    # the evaluation's reason for the undefined AUC reaches the tables
    assert f"AUC n/a (or from fewer seeds) for 1 run(s): {reason}" in markdown
    ablation = outputs["ablation_md"].read_text()
    assert "| zoommil_random | selection | selection=random | 50.0 (n=1) |" in ablation


def test_tables_note_classes_a_run_had_no_training_slide_of(tmp_path: Path) -> None:
    """`zoommil train` records the classes without a training slide (untrained_classes);
    such a run's metrics are low for a reason its cells do not show, so the tables say so."""
    data = fabricate_results(tmp_path)
    for seed in (0, 1):
        path = tmp_path / "eval" / "abmil" / f"seed~{seed}.json"
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "untrained_classes": ["atypia", "tumor"]}))
    _, outputs = _make_demo_tables(tmp_path, data, comparisons=True)
    note = "no training slide of class(es) atypia, tumor in 2 run(s): those models never learnt"
    for kind in ("main", "comparison"):
        assert note in outputs[f"{kind}_md"].read_text()
    data = fabricate_results(tmp_path / "plain")
    _, outputs = _make_demo_tables(tmp_path / "plain", data)
    assert "no training slide" not in outputs["main_md"].read_text()


def test_a_single_seed_has_no_std(tmp_path: Path) -> None:
    """One seed has no spread over seeds: its std is NaN and its cell reads `80.0 (n=1)`,
    even when the whole table ran one seed; it printed `80.0 ± 0.0`, as if seeds agreed.
    The figure of the same runs still draws (no error bar without a CI or a std)."""
    data = fabricate_results(tmp_path)
    evals = [p for p in data["evals"] if p.name == "seed~0.json"]
    made, outputs = _make_demo_tables(tmp_path, {**data, "evals": evals})
    zoom = made["main"].set_index("method").loc["zoommil"]
    assert zoom["weighted_f1_n"] == 1 and math.isnan(zoom["weighted_f1_std"])
    markdown = outputs["main_md"].read_text()
    assert "| **ZoomMIL** | 2.5x -> 5x -> 10x | 80.0 (n=1) | 81.0 (n=1) | 90.0 (n=1) |" in markdown
    assert "± 0.0" not in markdown
    assert "(n=1): one seed, so no std over seeds" in markdown
    frame = figure_throughput.throughput_figure(
        evals, data["timings"], ["zoommil", "abmil"], [tmp_path / "f.png"], "demo", "random"
    )
    assert frame["f1_low"].isna().all() and (tmp_path / "f.png").stat().st_size > 1000


def test_each_table_counts_its_own_full_seeds(tmp_path: Path) -> None:
    """Ablations may run more seeds than Tables 1-3 (`ablations.seeds`): complete main rows
    carry no (n=k) because an ablation had 4 seeds; the ablation table marks its reference."""
    data = fabricate_results(tmp_path)
    extra = []
    for seed in (1, 2, 3):
        path = tmp_path / "eval" / "zoommil_random" / f"seed~{seed}.json"
        path.write_text(json.dumps({"test": {"weighted_f1": 0.5, "accuracy": 0.5, "auc": 0.6}}))
        extra.append(path)
    _, outputs = _make_demo_tables(
        tmp_path,
        {**data, "evals": [*data["evals"], *extra]},
        ablations={"zoommil_random": {"arch": "zoommil", "k": 4, "selection": "random"}},
        reference="zoommil",
    )
    main = outputs["main_md"].read_text()
    assert "(n=" not in main
    assert "| **ZoomMIL** | 2.5x -> 5x -> 10x | 75.0 ± 7.1 | 76.0 ± 7.1 | 89.0 ± 1.4 |" in main
    ablation = outputs["ablation_md"].read_text()
    assert "fewer than the 4 of the full benchmark" in ablation
    assert "75.0 ± 7.1 (n=2)" in ablation


def test_tables_name_the_methods_timed_in_one_shared_pass(tmp_path: Path) -> None:
    data = fabricate_results(tmp_path)
    for path in data["timings"]["cpu1"]:
        record = json.loads(Path(path).read_text())
        if record.get("method", Path(path).parent.name) != "zoommil":
            record["shared_pass"] = ["abmil", "clam_sb"]
            Path(path).write_text(json.dumps(record))
    _, outputs = _make_demo_tables(tmp_path, data)
    assert (
        "each method charged the pass plus its own MIL head (their times differ only by the "
        "heads): ABMIL, CLAM-SB"
    ) in outputs["main_md"].read_text()


def add_per_slide(data: dict) -> None:
    """Per-slide values in `fabricate_results`' FLOPs and CPU timing files, as `zoommil
    flops` and `zoommil profile` write them: ZoomMIL's slides take 1.9 and 2.1 s on one core
    and 0.04 and 0.06 TFLOPs; on all cores two processes time the two slides at once."""
    for path in data["flops"]:
        if Path(path).parent.name == "zoommil":
            rows = [
                {"slide_id": s, "total_flops": t * 2.0**40} for s, t in (("a", 0.04), ("b", 0.06))
            ]
            Path(path).write_text(json.dumps({"mean_tflops": 0.05, "per_slide": rows}))
    for device, seconds, makespan in (("cpu1", (1.9, 2.1), 4.0), ("cpu", (1.9, 2.1), 2.1)):
        for path in data["timings"][device]:
            if Path(path).parent.name != "zoommil":
                continue
            rows = [
                {"slide_id": s, "seconds": t, "pid": i}
                for i, (s, t) in enumerate(zip("ab", seconds, strict=True))
            ]
            record = {"seconds_per_slide": makespan / 2, "slides_per_hour": 7200 / makespan,
                      "per_slide": rows, "skipped": None}  # fmt: skip
            Path(path).write_text(json.dumps(record))


def test_costs_carry_their_spread_over_the_slides(tmp_path: Path) -> None:
    """TFLOPs and s/slide are means over slides: the tables print them ± their std over the
    slides (the files' `per_slide` values); they printed bare means. A file without per-slide
    values (older, or ABMIL here) still gives its bare mean."""
    data = fabricate_results(tmp_path)
    add_per_slide(data)
    timing = results.timing_by_method(data["timings"]["cpu1"])
    sd = float(np.std([1.9, 2.1], ddof=1))
    assert timing["zoommil"]["seconds_sd"] == pytest.approx(sd)
    assert timing["zoommil"]["n_slides"] == 2
    assert math.isnan(timing["abmil"]["seconds_sd"]) and timing["abmil"]["seconds"] == 20.0
    # two processes: s/slide is the makespan / slides (1.05), the std scaled like it
    cpu = results.timing_by_method(data["timings"]["cpu"])["zoommil"]
    assert cpu["seconds_sd"] == pytest.approx(sd * 1.05 / 2.0)
    assert cpu["slides_per_hour_low"] == pytest.approx(3600 / (1.05 + cpu["seconds_sd"]))
    assert cpu["slides_per_hour_high"] == pytest.approx(3600 / (1.05 - cpu["seconds_sd"]))
    flops = results.flops_by_method(data["flops"])
    assert flops["zoommil"]["tflops_sd"] == pytest.approx(float(np.std([0.04, 0.06], ddof=1)))
    assert math.isnan(flops["abmil"]["tflops_sd"]) and flops["abmil"]["tflops"] == 0.5
    made, outputs = _make_demo_tables(
        tmp_path,
        data,
        ablations={"zoommil_random": {"arch": "zoommil", "k": 4, "selection": "random"}},
        reference="zoommil",
    )
    main = pd.read_csv(outputs["main_csv"]).set_index("method")
    assert main.loc["zoommil", "cpu1_s_per_slide_sd"] == pytest.approx(sd, rel=1e-5)
    assert main.loc["zoommil", "cpu1_n_slides"] == 2
    markdown = outputs["main_md"].read_text()
    # the sd to 2 significant digits, the mean to the same decimal place
    assert "| 0.050 ± 0.014 | 2.00 ± 0.14 | 1.050 ± 0.074 |" in markdown
    assert "| 0.5 | 20 | 10 |" in markdown  # ABMIL: no per-slide values, bare means
    assert "TFLOPs and s/slide: mean ± std over the slides" in markdown
    assert "0.050 ± 0.014" in outputs["ablation_md"].read_text()


def test_all_cores_column_is_named_by_the_processes_used(tmp_path: Path) -> None:
    """The all-cores timing runs no more processes than slides: its column (and the time
    ratio's) names the processes the files record, not "all cores"."""
    data = fabricate_results(tmp_path)
    for path in data["timings"]["cpu"]:
        record = json.loads(Path(path).read_text())
        Path(path).write_text(json.dumps({**record, "threads": 4, "processes": 2}))
    _, outputs = _make_demo_tables(tmp_path, data)
    markdown = outputs["main_md"].read_text()
    assert "CPU 2 processes (s/slide)" in markdown and "all cores" not in markdown
    headers = table_format.timing_headers({"cpu": {"a": {"processes": 1, "skipped": ""}}})
    assert headers["cpu"] == "CPU 1 process (s/slide)"
    assert table_format.timing_headers({})["cpu"] == "CPU all cores (s/slide)"  # older files


def test_tables_say_where_and_how_the_timings_were_taken(tmp_path: Path) -> None:
    """The tables name the CPU (or GPU) each timing ran on, the processes x threads, the
    slides timed, and that timings vary by machine; they named none of it."""
    data = fabricate_results(tmp_path, gpu=True)
    add_per_slide(data)
    setups = {"cpu1": (1, 1, "Xeon 6230"), "cpu": (2, 1, "Xeon 6230"), "gpu": (1, 4, "H200")}
    for device, (processes, threads, name) in setups.items():
        for path in data["timings"][device]:
            record = json.loads(Path(path).read_text())
            record |= {"processes": processes, "threads_per_process": threads, "device_name": name}
            Path(path).write_text(json.dumps(record))
    _, outputs = _make_demo_tables(tmp_path, data)
    note = (
        "CPU 1 thread timed on Xeon 6230, 1 process x 1 thread, n=2 slides; CPU 2 processes "
        "timed on Xeon 6230, 2 processes x 1 thread, n=2 slides; GPU timed on H200, 1 process "
        "x 4 threads; timings (s/slide, time ratios) vary by machine"
    )  # the GPU files have no per-slide values: no n
    assert note in outputs["main_md"].read_text()
    ablations = outputs["ablation_md"].read_text()  # Table 4 has no time column (review W)
    assert "timed on" not in ablations and "timed together" not in ablations
    # both say how many training runs and test slides their numbers come from
    assert "*Note:* 2 seeds per method (training runs)" in outputs["main_md"].read_text()
    assert "seeds per method" not in ablations  # none configured: no "0 seeds"
    frame = pd.DataFrame({"n_test": [15, 15, None]})
    assert table_notes.counts_note(frame, 3) == "3 seeds per method (training runs), 15 test slides"
    # ABMIL's files have no per-slide values: its slides are unknown, ZoomMIL's are 2
    assert "n=2 slides" in table_notes.timing_note({"cpu1": {"a": {"n_slides": 2}, "b": {}}})
    assert table_notes.timing_note({"gpu": {"a": {"skipped": "no CUDA device"}}}) == ""


def test_equal_per_slide_costs_have_no_spread() -> None:
    """Slides of one size cost the same: the spread is exactly 0 and the cell `0.1 ± 0`,
    not six decimals of float rounding."""
    sd, n = results.spread([0.1 * 2**40] * 3)
    assert sd == 0 and n == 3
    assert table_format._num_sd(0.1, results.spread([0.1, 0.1, 0.1])[0]) == "0.1 ± 0"
    assert results.spread([1.9, 2.1])[0] == pytest.approx(float(np.std([1.9, 2.1], ddof=1)))


def test_comparison_notes_say_ratios_are_of_the_means(tmp_path: Path) -> None:
    """The cost ratios are ratios of two means, printed without an interval: the notes say
    so and point to the spread of each mean."""
    data = fabricate_results(tmp_path)
    add_per_slide(data)
    made, outputs = _make_demo_tables(tmp_path, data, comparisons=True, reference="zoommil")
    assert made["comparisons"].iloc[0]["cpu1_time_ratio"] == pytest.approx(0.1)
    markdown = outputs["comparison_md"].read_text()
    assert "ratios: reference / method of the means" in markdown
    assert "point values without an interval" in markdown


def test_the_comparison_table_names_an_ablation_as_the_per_class_table(tmp_path: Path) -> None:
    """ "ZoomMIL vs zoommil_random": the comparison named an ablation by its config id."""
    data = fabricate_results(tmp_path)
    ablations = {"zoommil_random": {"arch": "zoommil", "k": 4, "selection": "random"}}
    _, outputs = _make_demo_tables(
        tmp_path, data, comparisons=True, ablations=ablations, reference="zoommil"
    )
    markdown = outputs["comparison_md"].read_text()
    assert "| ZoomMIL vs ZoomMIL, selection=random | ablation |" in markdown
    assert "| ZoomMIL vs ABMIL | baseline |" in markdown


def test_ablation_label() -> None:
    ref = {"arch": "zoommil", "k": 4}
    assert table_frames.ablation_label(
        {"arch": "zoommil", "k": 4, "aggregation": "concat"}, ref
    ) == (
        "aggregation",
        "aggregation=concat",
    )
    assert table_frames.ablation_label({"arch": "zoommil", "k": 4, "selection": "diff_topk"}, ref)[
        0
    ] == ("reference")
    # ZoomMIL's own defaults, written out on one side only, change nothing (the table had
    # three of its thirteen defaults, so `topk_grad: exact` read as an ablation)
    for same in ({"topk_grad": "exact"}, {"k": 12}, {"mags": [1.25, 2.5, 10]}, {"sigma": 0.002}):
        assert table_frames.ablation_label({"arch": "zoommil", **same}, {})[0] == "reference"
    assert table_frames.ablation_label({"topk_grad": "diagonal"}, {"arch": "zoommil"}) == (
        "topk_grad",
        "topk_grad=diagonal",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"test": {"accuracy": 0.5,', "not a readable JSON file"),
        ("[0.5, 0.6]", "expected a JSON object, found list"),
        ('{"test": {"weighted_f1": 0.8, "accuracy": 87.5}}', r"test.accuracy = 87.5 is outside"),
        ('{"auc": -0.1, "accuracy": 0.5}', r"auc = -0.1 is outside \[0, 1\]$"),
    ],
)
def test_a_bad_results_file_is_an_error_naming_it(tmp_path: Path, text: str, message: str) -> None:
    """A JSON decode error did not say which of a table's inputs it was, and a metric given as
    a percentage (87.5) was averaged as a fraction (printed 8750.0%)."""
    data = fabricate_results(tmp_path)
    bad = tmp_path / "eval" / "abmil" / "seed~1.json"
    bad.write_text(text)
    with pytest.raises(ZoomMILError, match=f"^{bad}: {message}"):
        _make_demo_tables(tmp_path, data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["predictions"][1].pop("pred"), r"predictions\[1\] has no pred"),
        (lambda r: r.update(classes="a b c"), "'classes' is not a list"),
        (
            lambda r: r["predictions"][0].update(label="tumour"),
            r"predictions\[0\] \(slide t0\): label 'tumour' is not one of the classes",
        ),
        (
            lambda r: r.update(classes=["x", "y", "z"]),
            r"predictions\[0\] \(slide t0\): label 'a' is not one of the classes",
        ),
    ],
)
def test_a_malformed_predictions_file_is_an_error_naming_it(
    tmp_path: Path, change, message: str
) -> None:
    """A missing key in the per-slide predictions was a bare KeyError from the statistics."""
    data = fabricate_results(tmp_path)
    bad = tmp_path / "eval" / "abmil" / "seed~1.json"
    record = {
        "seed": 1,
        "classes": ["a", "b", "c"],
        "weighted_f1": 0.5,
        "accuracy": 0.5,
        "predictions": [
            {"slide_id": "t0", "label": "a", "pred": "a"},
            {"slide_id": "t1", "label": "b", "pred": "c"},
        ],
    }
    other = tmp_path / "eval" / "abmil" / "seed~0.json"
    other.write_text(json.dumps({**record, "seed": 0}))  # a good seed beside the bad one
    change(record)
    bad.write_text(json.dumps(record))
    with pytest.raises(ZoomMILError, match=f"^{bad}: {message}"):
        _make_demo_tables(tmp_path, data)


@pytest.mark.parametrize(
    ("scalars", "message"),
    [
        ({"weighted_f1": 0.5, "accuracy": 0.75}, "accuracy = 0.75, but its 2 per-slide "),
        (
            {"test": {"weighted_f1": 0.6, "accuracy": 0.5}},
            "test.weighted_f1 = 0.6, but its 2 per-slide ",
        ),
    ],
)
def test_scalar_metrics_must_be_those_of_the_predictions(
    tmp_path: Path, scalars: dict, message: str
) -> None:
    """The table's means come from a JSON's scalar metrics and its CIs from the same JSON's
    per-slide predictions; they were never compared, so a file whose scalars were not its
    predictions' printed a mean from one source and an interval from another."""
    data = fabricate_results(tmp_path)
    predictions = [
        {"slide_id": "t0", "label": "a", "pred": "a"},
        {"slide_id": "t1", "label": "b", "pred": "c"},
    ]
    for seed in (0, 1):  # right on one of two slides: accuracy 0.5, weighted F1 0.5
        good = {"seed": seed, "classes": ["a", "b", "c"], "weighted_f1": 0.5, "accuracy": 0.5}
        path = tmp_path / "eval" / "abmil" / f"seed~{seed}.json"
        path.write_text(json.dumps({**good, "predictions": predictions}))
    made, _ = _make_demo_tables(tmp_path, data)  # consistent files pass
    assert made["main"].set_index("method").loc["abmil", "accuracy_mean"] == 0.5
    bad = tmp_path / "eval" / "abmil" / "seed~1.json"
    record = {"seed": 1, "classes": ["a", "b", "c"], **scalars}
    if "test" in scalars:  # a train-style metrics.json: predictions in the test block
        record["test"]["predictions"] = predictions
    else:
        record["predictions"] = predictions
    bad.write_text(json.dumps(record))
    with pytest.raises(ZoomMILError, match=f"^{bad}: {message}predictions give 0.5; "):
        _make_demo_tables(tmp_path, data)


def test_seeds_that_disagree_name_their_files(tmp_path: Path) -> None:
    data = fabricate_results(tmp_path)
    for seed, slide in ((0, "t0"), (1, "t9")):
        record = {"seed": seed, "classes": ["a", "b"], "weighted_f1": 1.0, "accuracy": 1.0,
                  "predictions": [{"slide_id": slide, "label": "a", "pred": "a"}]}  # fmt: skip
        (tmp_path / "eval" / "abmil" / f"seed~{seed}.json").write_text(json.dumps(record))
    files = ", ".join(str(tmp_path / "eval" / "abmil" / f"seed~{s}.json") for s in (0, 1))
    with pytest.raises(ZoomMILError, match=f"^abmil \\({files}\\): seed 1: test slides differ"):
        _make_demo_tables(tmp_path, data)


def test_checked_metric_aliases() -> None:
    assert results.checked_metric({"metrics": {"f1_weighted": 0.5}}, "weighted_f1", "r") == 0.5
    assert results.checked_metric({"acc": 0.25}, "accuracy", "r") == 0.25
    assert math.isnan(results.checked_metric({"auc": None}, "auc", "r"))
    assert results.parse_run("results/eval/abmil/seed~2.json") == ("abmil", 2)


# --- figures --------------------------------------------------------------------------------


def test_pareto_front() -> None:
    # fastest first; (100, 0.5) and (10, 0.9) are on the front, (50, 0.4) and (5, 0.8) are not
    front = figure_throughput.pareto_front([100, 50, 10, 5, math.nan], [0.5, 0.4, 0.9, 0.8, 1.0])
    assert front == [0, 2]
    assert figure_throughput.pareto_front([10, 10], [0.2, 0.3]) == [1]


def test_throughput_figure_without_gpu(tmp_path: Path) -> None:
    data = fabricate_results(tmp_path)
    outputs = [tmp_path / "fig.png", tmp_path / "fig.pdf"]
    frame = figure_throughput.throughput_figure(
        data["evals"], data["timings"], ["zoommil", "abmil"], outputs, "demo", "random"
    )
    assert all(p.stat().st_size > 1000 for p in outputs)
    gpu = frame[frame["device"] == "gpu"]
    assert gpu["slides_per_hour"].isna().all() and set(gpu["skipped"]) == {"no CUDA device"}
    cpu = frame[frame["device"] == "cpu1"].set_index("method")
    assert cpu.loc["zoommil", "slides_per_hour"] == pytest.approx(1800.0)


def test_attention_overlay_paints_the_lowest_magnification() -> None:
    from zoommil.reporting import attention

    prediction = {
        "attention": [
            {"mag": 5.0, "side0": 512, "xy": [[0, 0]], "weights": [1.0]},
            {"mag": 2.5, "side0": 1024, "xy": [[0, 0], [1024, 0]], "weights": [0.2, 0.6]},
        ]
    }
    entry = attention.attention_entries(prediction)[0]  # lowest first
    assert entry["mag"] == 2.5
    thumb = np.full((64, 64, 3), 255, np.uint8)
    image = attention.attention_overlay(thumb, (2048, 2048), entry, alpha=1.0)
    low, high = image[5, 5], image[5, 40]  # weights 0.2 and 0.6 -> min-max 0 and 1
    for pixel, value in ((low, 0.0), (high, 1.0)):
        colour = (np.array(attention.colormaps["inferno"](value)[:3]) * 255.0).astype(np.uint8)
        assert (pixel == colour).all()
    assert (image[40:, :] == 255).all()  # no attention outside the two patches


def test_tables_scale_benchmark_runs_on_inputs_the_tables_accept(tmp_path: Path) -> None:
    """benchmarks/tables_scale.py at toy size: its fabricated evaluation JSONs pass the
    tables' checks (scalars equal to their predictions), one row per size with a time and
    a peak RSS per run."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tables_scale.py"
    spec = importlib.util.spec_from_file_location("tables_scale", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--test-slides", "6", "--seeds", "2", "--repeats", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "tables_scale.json").read_text())["rows"]
    assert [(r["test_slides"], len(r["seconds"])) for r in rows] == [(6, 1)]
    assert rows[0]["seconds"][0] > 0 and rows[0]["peak_rss_mb"][0] > 50
    assert "| 6 | " in (tmp_path / "tables_scale.md").read_text()


@pytest.mark.parametrize("features", [{"weights": "hf", "encoder": "uni"}, {"weights": "random"}])
def test_the_reports_front_page_names_the_configured_encoder(features: dict) -> None:
    """`snakemake --report` renders workflow/report/workflow.rst with the run's config: it said
    "ResNet-50 (to layer3) features" whatever `features.encoder` was (a UNI run's report too)."""
    from types import SimpleNamespace

    jinja2 = pytest.importorskip("jinja2")
    text = (Path(__file__).parents[1] / "workflow" / "report" / "workflow.rst").read_text()
    config = {"dataset": "c16", "features": features}
    page = jinja2.Template(text).render(snakemake=SimpleNamespace(config=config))
    assert f"**{features.get('encoder', 'resnet50_layer3')}** encoder" in page, page


def test_report_scale_benchmark_grows_a_run_as_snakemake_would_have_recorded_it(
    tmp_path: Path,
) -> None:
    """benchmarks/report_scale.py's slides demo_NNN: demo_000's outputs and records under
    their own names, dates kept, the aggregate job's record listing them, and files of their
    own (its first version hard-linked them to the run copied, so that the workflow's date-back
    of a "replaced" slide re-dated that run's demo_000 outputs, and the report then lost
    every job after the qc_inspect checkpoint)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "report_scale.py"
    spec = importlib.util.spec_from_file_location("report_scale", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run = tmp_path / "run"
    files = [bench.SLIDE, *bench.PER_SLIDE]
    for i, pattern in enumerate(files):
        target = run / pattern.format(s="demo_000")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f'{{"path": "{bench.SLIDE.format(s="demo_000")}"}}')
        os.utime(target, (1e9 + i, 1e9 + i))
        rule = ["synth", *bench.PER_SLIDE_RULES][i]
        record = {"rule": rule, "job_hash": 7 + i, "input": [files[i - 1].format(s="demo_000")]}
        record_file = bench.record_path(run, pattern.format(s="demo_000"))
        record_file.parent.mkdir(parents=True, exist_ok=True)
        record_file.write_text(json.dumps(record))
    inputs = [bench.SHEET, "results/qc/demo_000.json"]
    aggregate = {"rule": "qc_inspect", "job_hash": 1, "input": inputs}
    bench.record_path(run, "results/qc/inspection.tsv").write_text(json.dumps(aggregate))
    for table in bench.TABLES:
        (run / table).write_text("slide_id\tpath\ndemo_000\tresults/features/demo_000.h5\n")
        os.utime(run / table, (2e9, 2e9))
    work = tmp_path / "work"
    bench.copy_run(run, work)
    assert bench.add_slides(work, 3) == ["demo_001", "demo_002"]
    for pattern in files:
        template = run / pattern.format(s="demo_000")
        for s in ("demo_001", "demo_002"):
            made = work / pattern.format(s=s)
            assert made.stat().st_mtime_ns == template.stat().st_mtime_ns
            assert not os.path.samefile(made, template)  # nothing of the run's own
    inspection = json.loads((work / "results/qc/demo_002.json").read_text())
    assert inspection["path"] == "results/demo/slides/demo_002.tiff"
    tile = json.loads(bench.record_path(work, "results/coords/demo_002.h5").read_text())
    assert tile["input"] == ["results/tissue/demo_002.png"] and tile["job_hash"] not in (7, 10)
    grown = json.loads(bench.record_path(work, "results/qc/inspection.tsv").read_text())["input"]
    assert grown == [bench.SHEET] + [f"results/qc/demo_00{i}.json" for i in range(3)]
    for table in bench.TABLES:
        assert (work / table).read_text().splitlines()[-1].startswith("demo_002\t")
        assert (work / table).stat().st_mtime == 2e9

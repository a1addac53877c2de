"""Rerun inputs derived from the code: import closures and their normalised hashes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from zoommil.workflow.codehash import closure, code_hash
from zoommil.workflow.params import library_root

REPO = Path(__file__).resolve().parents[1]
ROOT = library_root(REPO)


def test_closure_follows_imports_at_any_depth() -> None:
    features = closure(ROOT, ["features"])
    assert {"zoommil.cli", "zoommil.commands.features", "zoommil.features.extraction",
            "zoommil.wsi.lattice", "zoommil.io.featurefile", "zoommil.recipe",
            "zoommil.features"} <= set(features)  # fmt: skip
    assert "zoommil.models" not in features and "zoommil.training.trainer" not in features
    # predict reads features through the checkpoint: imports made inside functions count too
    predict = closure(ROOT, ["predict"])
    assert {"zoommil.features.extraction", "zoommil.training.checkpoint",
            "zoommil.models.zoommil", "zoommil.wsi.tiling", "zoommil.reporting.attention"} <= set(
        predict
    )  # fmt: skip
    script = closure(ROOT, ["scripts/qc_slides.py"], REPO)
    assert {"scripts/qc_slides.py", "zoommil.workflow.qc", "zoommil.io.sheet"} <= set(script)
    assert "zoommil.cli" not in script


@pytest.fixture()
def scratch(tmp_path: Path) -> Path:
    root = tmp_path / "zoommil"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _hashes(root: Path) -> dict[str, str]:
    entries = ["tile", "features", "train", "scripts/make_tables.py"]
    return {e: code_hash(root, [e], REPO) for e in entries}


def test_predict_s_heatmap_legend_leaves_the_tables_statistics_out() -> None:
    """The heatmap names the model as the tables do; taking the name from `table_frames` put
    the bootstrap CIs and evaluation checks into predict's hash, and an edit of those redid
    Figure 4's predictions."""
    predict = set(closure(ROOT, ["predict"]))
    assert "zoommil.reporting.names" in predict
    assert not {"zoommil.reporting.table_frames", "zoommil.reporting.stats",
                "zoommil.reporting.evalcheck", "zoommil.reporting.results"} & predict  # fmt: skip


def test_comments_docstrings_and_layout_do_not_count(scratch: Path) -> None:
    before = _hashes(scratch)
    path = scratch / "wsi" / "lattice.py"
    text = path.read_text()
    text = text.replace('"""The aligned', '"""Reworded: the aligned', 1)
    text = text.replace("def children_order(", "# a comment\n\n\ndef children_order(", 1)
    path.write_text(text + "\n# trailing comment\n")
    assert _hashes(scratch) == before


def test_a_behaviour_edit_changes_exactly_the_importers(scratch: Path) -> None:
    before = _hashes(scratch)
    path = scratch / "wsi" / "tiling.py"
    path.write_text(path.read_text() + "\nEDITED = 1\n")
    after = _hashes(scratch)
    assert after["tile"] != before["tile"]  # commands/tile imports wsi.tiling
    assert after["features"] == before["features"]  # extraction does not tile
    assert after["train"] == before["train"]
    assert after["scripts/make_tables.py"] == before["scripts/make_tables.py"]


def test_unknown_command_is_an_error() -> None:
    with pytest.raises(FileNotFoundError, match="no command module zoommil.commands.nope"):
        code_hash(ROOT, ["nope"])


def test_modules_imported_by_a_computed_name_count(scratch: Path) -> None:
    """The encoder registry loads its families with import_module(f"...encoders.{family}"):
    an edit of vit.py reruns feature extraction (and what reads features through the
    encoder), while the CLI's import of every command does not tie the commands together."""
    assert {"zoommil.features.encoders.resnet", "zoommil.features.encoders.vit"} <= set(
        closure(ROOT, ["features"])
    )
    assert "zoommil.commands.features" not in closure(ROOT, ["tile"])
    before = _hashes(scratch)
    path = scratch / "features" / "encoders" / "vit.py"
    path.write_text(path.read_text() + "\nEDITED = 1\n")
    after = _hashes(scratch)
    assert after["features"] != before["features"]
    assert after["train"] != before["train"]  # train imports the registry (weights.py) too
    assert after["tile"] == before["tile"]


def test_lazy_exports_count_for_the_steps_that_use_them(scratch: Path) -> None:
    """`zoommil evaluate` gets `evaluate_checkpoint` from `zoommil.training`'s lazy exports
    (import_module over a table of names): an edit of the metrics must rerun evaluation."""
    assert {"zoommil.training.evaluation", "zoommil.training.metrics"} <= set(
        closure(ROOT, ["evaluate"])
    )
    before = code_hash(scratch, ["evaluate"])
    path = scratch / "training" / "metrics.py"
    path.write_text(path.read_text() + "\nEDITED = 1\n")
    assert code_hash(scratch, ["evaluate"]) != before


def test_an_import_the_hash_cannot_follow_is_an_error(scratch: Path) -> None:
    path = scratch / "wsi" / "tiling.py"
    path.write_text(
        path.read_text() + "\n\ndef load(n):\n    import importlib\n\n"
        "    return importlib.import_module('zoommil.wsi.' + n)\n"
    )
    with pytest.raises(ValueError, match=r"cannot tell which module .*zoommil\.wsi\.tiling, line"):
        code_hash(scratch, ["tile"])


def test_the_python_api_s_names_count_only_where_they_are_taken(scratch: Path) -> None:
    """`zoommil/__init__` lazily exports the notebook API (models, training, inference), and
    every module imports `zoommil`: its table made every step hash every model, so an edit of
    TransMIL reran a cohort's tissue detection, tiling and features (review G). A name counts
    for the module that takes it: `from zoommil import load_classifier` or, after
    `import zoommil`, `zoommil.load_classifier`."""
    before = _hashes(scratch)
    path = scratch / "models" / "transmil.py"
    path.write_text(path.read_text() + "\nEDITED = 1\n")
    after = _hashes(scratch)
    assert after["tile"] == before["tile"] and after["features"] == before["features"]
    assert after["train"] != before["train"]
    # a script taking an API name by either spelling counts its module (and what it imports)
    spellings = (
        "from zoommil import load_classifier\n",
        "import zoommil\nzoommil.load_classifier\n",
    )
    for text in spellings:
        script = scratch.parent / "notebook.py"
        script.write_text(text)
        assert "zoommil.inference.classifier" in closure(scratch, ["notebook.py"], scratch.parent)
    script.write_text("import zoommil\nzoommil.__version__\n")
    assert "zoommil.inference.classifier" not in closure(scratch, ["notebook.py"], scratch.parent)

"""README "Sharing results and models": what the files users share contain, checked.

A real Aperio slide with a label and a macro image (CMU-1-Small-Region.svs, whose metadata
name the scanner, its user id, the original file name, the date and time), copied into a
user's folder under an accession-like file name, goes through inspection, `zoommil predict`
and the QuPath converter: no associated image is read, and no identifying property, folder or
file name reaches the prediction's heatmap or GeoJSON. The report, tables and figures name a
weights file by its file name, not its folder.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import openslide
import pytest
import torch
from slide_factory import KEEP_EVERY_PATCH

from zoommil.cli import main
from zoommil.interop import regions_geojson
from zoommil.models import build_model
from zoommil.reporting.table_notes import table_notes
from zoommil.training.checkpoint import save_checkpoint
from zoommil.workflow.shown import shown_weights
from zoommil.wsi.slide import inspect_slide

REPO = Path(__file__).resolve().parents[1]
#: The scanner's properties that identify a case, an operator or a scan (README's list).
IDENTIFYING = (
    "aperio.Filename",
    "aperio.User",
    "aperio.Date",
    "aperio.Time",
    "aperio.ScanScope ID",
    "aperio.ImageID",
    "tiff.ImageDescription",
)
LAB_FILE = "/home/alice.smith/weights/r50_lab.pth"


def test_a_weights_file_is_shown_by_its_name() -> None:
    assert shown_weights("random") == "random" and shown_weights("imagenet") == "imagenet"
    assert shown_weights(LAB_FILE) == "r50_lab.pth"
    assert shown_weights(r"C:\Users\alice\r50.pth") == "r50.pth"
    assert shown_weights("~/w/r50.pth") == "r50.pth"


def test_report_rules_pass_the_weights_by_name_to_the_tables_and_figures() -> None:
    """Tables' notes, Figure 3's note and the report's rule parameters print the rules'
    `weights` param: it was the configured path, so an absolute one reached a paper's
    table notes and report.html."""
    rules = (REPO / "workflow" / "rules" / "report.smk").read_text()
    passed = re.findall(r"^\s+weights=(.+),$", rules, flags=re.MULTILINE)
    assert passed and set(passed) == {"zshown.shown_weights(RECIPE.weights)"}, passed
    import pandas as pd

    qc = pd.DataFrame({"slide_id": ["a"], "status": ["ok"], "reason": [""], "split": ["test"]})
    notes = " ".join(table_notes("c16", shown_weights(LAB_FILE), qc, {}))
    assert "r50_lab.pth" in notes and "alice" not in notes


def test_the_reports_front_page_names_a_weights_file_by_its_name() -> None:
    jinja2 = pytest.importorskip("jinja2")
    text = (REPO / "workflow" / "report" / "workflow.rst").read_text()
    for weights, shown in ((LAB_FILE, "r50_lab.pth"), ("random", "random")):
        config = {"dataset": "c16", "features": {"weights": weights}}
        page = jinja2.Template(text).render(snakemake=SimpleNamespace(config=config))
        assert f"Encoder weights: **{shown}**" in page and "alice" not in page, page


@pytest.fixture(scope="module")
def lab_slide(slides_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CMU-1-Small-Region.svs (label, macro and thumbnail images) as a lab stores a case."""
    folder = tmp_path_factory.mktemp("lab") / "alice.smith" / "cohort"
    folder.mkdir(parents=True)
    return Path(shutil.copy(slides_dir / "CMU-1-Small-Region.svs", folder / "S24-004711 A1.svs"))


@pytest.fixture(scope="module")
def identifying(lab_slide: Path) -> dict[str, str]:
    with openslide.OpenSlide(lab_slide) as slide:
        assert {"label", "macro"} <= set(slide.associated_images)  # the point of this slide
        values = {key: slide.properties[key] for key in IDENTIFYING}
    return {**values, "folder": "alice.smith", "file name": "S24-004711"}


@pytest.fixture
def no_associated_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a label or macro image (OpenSlide's only way to them) fails the test."""

    def refuse(self):  # noqa: ANN001, ANN202
        raise AssertionError("an associated image (label, macro, thumbnail) was read")

    monkeypatch.setattr(openslide.OpenSlide, "associated_images", property(refuse))


def _found(data: bytes, identifying: dict[str, str]) -> list[str]:
    return [key for key, value in identifying.items() if value.encode() in data]


def test_inspection_records_no_identifying_property(
    lab_slide: Path, identifying: dict[str, str], no_associated_images: None
) -> None:
    report = inspect_slide(lab_slide, slide_id="case07")
    assert report["status"] == "ok"
    text = json.dumps(report).encode()
    assert _found(text, {k: v for k, v in identifying.items() if "." in k}) == []
    assert report["path"] == str(lab_slide)  # the path is recorded: README says so


def _checkpoint(path: Path) -> Path:
    mags = [5.0, 10.0, 20.0]
    torch.manual_seed(0)
    model = build_model("zoommil", in_dim=1024, n_classes=2, mags=mags, k=2)
    recipe = {"patch_size": 64, "weights": "random", "weights_seed": 0}
    config = {"method": "zoommil", "arch": "zoommil", "kwargs": {"k": 2},
              "classes": ["normal", "tumour"], "mags": mags, "config_mags": mags,
              "in_dim": 1024,
              "preprocessing": {**recipe, "tissue_threshold": KEEP_EVERY_PATCH}}  # fmt: skip
    return save_checkpoint(path, model.state_dict(), config)


def test_predict_writes_no_label_macro_or_scanner_metadata(
    lab_slide: Path, identifying: dict[str, str], no_associated_images: None, tmp_path: Path
) -> None:
    """The heatmap is drawn from the pyramid, never the label or macro image, and neither it
    nor the QuPath GeoJSON names the slide's folder, file or scanner properties; the JSON
    records the slide's path (QuPath conversion and --resume look for the file there)."""
    ckpt = _checkpoint(tmp_path / "checkpoint.pt")
    out, png, geo = tmp_path / "pred.json", tmp_path / "heat.png", tmp_path / "pred.geojson"
    argv = ["predict", str(lab_slide), "--checkpoint", str(ckpt), "--slide-id", "case07"]
    assert main([*argv, "--json", str(out), "--heatmap", str(png)]) == 0
    assert regions_geojson.main([str(out), "--out", str(geo), "--attention"]) == 0
    record = json.loads(out.read_text())
    assert record["slide_path"] == str(lab_slide.resolve())
    scanner = {k: v for k, v in identifying.items() if "." in k}
    assert _found(out.read_bytes(), scanner) == []
    assert _found(png.read_bytes(), identifying) == []
    assert _found(geo.read_bytes(), identifying) == []
    assert json.loads(geo.read_text())["zoommil"]["slide_id"] == "case07"

"""The `python -m zoommil.interop.*` tools behave as the `zoommil` commands do: --version, an
output that names an input refused before the work, an output under a file said as such,
and every error one line that names the tool and the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import zoommil
from zoommil.interop import geojson_mask, regions_geojson, share_checkpoint
from zoommil.models import build_model
from zoommil.training.checkpoint import save_checkpoint

TOOLS = {
    "share_checkpoint": share_checkpoint.main,
    "regions_geojson": regions_geojson.main,
    "geojson_mask": geojson_mask.main,
}


def _prediction(path: Path) -> Path:
    """A one-step ZoomMIL prediction as `zoommil predict --json` writes it."""
    xy = [[0, 0], [1024, 0]]
    attention = {"mag": 5.0, "side0": 1024, "xy": xy, "weights": [0.6, 0.4],
                 "selection_scores": [0.6, 0.4]}  # fmt: skip
    prediction = {"slide_id": "s", "slide_path": "/nonexistent/s.tiff", "method": "zoommil",
                  "classes": ["a", "b"], "probabilities": {"a": 0.3, "b": 0.7},
                  "predicted": "b", "mpp": 0.5, "attention": [attention],
                  "selected": [{"mag": 5.0, "side0": 1024, "xy": [xy[0]]}]}  # fmt: skip
    path.write_text(json.dumps(prediction))
    return path


def _regions(path: Path) -> Path:
    """A pathologist's annotation: one square polygon."""
    ring = [[0, 0], [512, 0], [512, 512], [0, 512], [0, 0]]
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    return path


def _checkpoint(path: Path) -> Path:
    config = {"method": "abmil", "arch": "abmil", "classes": ["a", "b"], "mags": [10.0],
              "in_dim": 4, "preprocessing": {}}  # fmt: skip
    return save_checkpoint(path, build_model("abmil", in_dim=4, n_classes=2).state_dict(), config)


def _argv(tool: str, make_slide: Callable[..., Path], tmp_path: Path) -> tuple[list[str], Path]:
    """The tool's arguments but ``--out``, and the input a careless ``--out`` would name."""
    if tool == "share_checkpoint":
        ckpt = _checkpoint(tmp_path / "checkpoint.pt")
        return [str(ckpt)], ckpt
    if tool == "regions_geojson":
        prediction = _prediction(tmp_path / "pred.json")
        return [str(prediction), "--no-crop"], prediction
    regions = _regions(tmp_path / "regions.geojson")
    return [str(make_slide("s.tiff")), str(regions)], regions


@pytest.mark.parametrize("tool", TOOLS)
def test_version_is_the_package_s(tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        TOOLS[tool](["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"zoommil {zoommil.__version__}\n"


@pytest.mark.parametrize("tool", TOOLS)
def test_an_output_that_names_an_input_is_refused(tool, make_slide, tmp_path, capsys):
    """regions_geojson replaced the prediction JSON with its GeoJSON, geojson_mask the
    annotation with a PNG, both with exit 0."""
    argv, source = _argv(tool, make_slide, tmp_path)
    before = source.read_bytes()
    assert TOOLS[tool]([*argv, "--out", str(source)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"python -m zoommil.interop.{tool}: error: output {source} is the ")
    assert "refusing to overwrite an input" in err
    assert source.read_bytes() == before
    assert TOOLS[tool]([*argv, "--out", str(tmp_path / "made" / "out")]) == 0


@pytest.mark.parametrize("tool", TOOLS)
def test_an_output_under_a_file_says_so_and_leaves_no_folder(tool, make_slide, tmp_path, capsys):
    """It said "cannot write FILE/x: File exists"; zoommil's commands say the folder is a
    file, before any work. A user error removes the folders the run made."""
    argv, _ = _argv(tool, make_slide, tmp_path)
    (tmp_path / "afile").write_text("")
    assert TOOLS[tool]([*argv, "--out", str(tmp_path / "afile" / "x")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"python -m zoommil.interop.{tool}: error: cannot write {tmp_path}/afile/x: "
        f"{tmp_path}/afile is not a folder\n"
    )
    missing = tmp_path / "new" / "deeper" / "x"
    assert TOOLS[tool](["/nonexistent/input", *argv[1:], "--out", str(missing)]) == 2
    assert capsys.readouterr().err.startswith(f"python -m zoommil.interop.{tool}: error: ")
    assert not (tmp_path / "new").exists()


def test_an_error_of_the_prediction_names_its_file(tmp_path, capsys):
    """The error "not a `zoommil predict` JSON (no probabilities)" named no file."""
    other = tmp_path / "timing.json"
    other.write_text(json.dumps({"seconds": 1.0}))
    assert regions_geojson.main([str(other), "--out", str(tmp_path / "r.geojson")]) == 2
    assert capsys.readouterr().err == (
        "python -m zoommil.interop.regions_geojson: error: "
        f"{other}: not a `zoommil predict` JSON (no probabilities)\n"
    )


def test_an_error_of_the_geojson_names_its_file(make_slide, tmp_path, capsys):
    points = tmp_path / "points.geojson"
    points.write_text(json.dumps({"type": "Point", "coordinates": [1, 2]}))
    argv = [str(make_slide("s.tiff")), str(points), "--out", str(tmp_path / "m.png")]
    assert geojson_mask.main(argv) == 2
    assert capsys.readouterr().err == (
        "python -m zoommil.interop.geojson_mask: error: "
        f"{points}: not GeoJSON polygons: top-level type 'Point'\n"
    )

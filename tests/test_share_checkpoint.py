"""`python -m zoommil.interop.share_checkpoint`: a checkpoint to send to another site carries
none of the training machine's paths, and still predicts and evaluates there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zoommil.errors import ZoomMILError
from zoommil.inference.predict import recorded_weights
from zoommil.interop.share_checkpoint import main, shareable_config
from zoommil.models import build_model
from zoommil.recipe import PreprocessingRecipe
from zoommil.training.checkpoint import load_checkpoint, save_checkpoint
from zoommil.training.evaluation_inputs import exclusions_for

LAB = "/home/alice/project-hospital-x"


def _checkpoint(path: Path) -> Path:
    """A checkpoint as `zoommil train` records it on the lab's machine."""
    recipe = PreprocessingRecipe(mags=[5.0, 10.0], weights=f"{LAB}/w/r50.pth").to_attrs()
    recipe.update(
        weights_file=f"{LAB}/w/r50.pth",
        weights_note=f"state dict {LAB}/w/r50.pth",
        weights_sha256="ab" * 32,
    )
    config = {"method": "abmil", "arch": "abmil", "classes": ["a", "b"], "mags": [10.0],
              "in_dim": 4, "features_dir": f"{LAB}/results/features",
              "sheet": f"{LAB}/slides.tsv", "exclude": f"{LAB}/results/qc/slides.tsv",
              "preprocessing": recipe, "zoommil_version": "0.1.0"}  # fmt: skip
    model = build_model("abmil", in_dim=4, n_classes=2)
    return save_checkpoint(path, model.state_dict(), config)


def test_copy_has_no_training_paths_and_the_same_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(tmp_path / "checkpoint.pt")
    out = tmp_path / "send" / "abmil.pt"
    assert main([str(ckpt), "--out", str(out)]) == 0
    assert b"alice" not in out.read_bytes()
    assert b"alice" in ckpt.read_bytes()  # the original is left as it is
    state, config = load_checkpoint(out)
    before, _ = load_checkpoint(ckpt)
    assert state.keys() == before.keys()
    assert all(torch.equal(state[k], before[k]) for k in state)
    recipe = config["preprocessing"]
    assert recipe["weights"] == "r50.pth" and recipe["weights_sha256"] == "ab" * 32
    assert recorded_weights(recipe) == "r50.pth"  # predict asks for that file by name
    assert "r50.pth" in capsys.readouterr().out


def test_receiver_passes_the_sheet_and_is_not_asked_for_a_qc_table(tmp_path: Path) -> None:
    """The original, away from the lab, demands --exclude (its sheet may be the lab's moved);
    the copy records no training sheet, so the receiver's sheet is simply theirs."""
    ckpt = _checkpoint(tmp_path / "checkpoint.pt")
    sheet = tmp_path / "ext.tsv"
    sheet.write_text("slide_id\tpath\tlabel\tsplit\n")
    _, original = load_checkpoint(ckpt)
    with pytest.raises(ZoomMILError, match="pass --exclude"):
        exclusions_for(sheet, None, original, ckpt)
    assert exclusions_for(sheet, None, shareable_config(original), ckpt) == ""


def test_refuses_to_overwrite_the_checkpoint(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "checkpoint.pt")
    assert main([str(ckpt), "--out", str(ckpt)]) == 2
    assert b"alice" in ckpt.read_bytes()

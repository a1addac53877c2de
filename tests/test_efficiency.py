"""FLOP counting (fvcore, cross-checked with torch's counter) and the profile command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from zoommil.cli import main
from zoommil.efficiency.flops import encoder_flops_per_patch, head_flops, slide_flops
from zoommil.models import build_model
from zoommil.training.checkpoint import save_checkpoint

MAGS = [2.5, 5.0, 10.0]


def _bag(n_low: int, dim: int = 1024) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(1, n_low * 4**i, dim) for i in range(len(MAGS))]


def test_encoder_flops_match_the_measured_reference():
    # ../shared/notes/cpu_throughput.md: ResNet-50 to layer3 + pool on 3x256x256 = 4.309 GFLOPs
    flops = encoder_flops_per_patch("resnet50_layer3", 256)
    assert flops["fvcore"] == pytest.approx(4.309e9, rel=1e-3)
    assert flops["torch"] == pytest.approx(flops["fvcore"], rel=0.02)


def test_zoommil_counts_only_the_zoomed_patches():
    k = 3
    model = build_model("zoommil", in_dim=1024, n_classes=3, mags=MAGS, k=k).eval()
    result = slide_flops(model, "zoommil", _bag(10))
    assert result["patches_per_mag"] == [10, k * 4, k * 4]
    assert result["patches_encoded"] == 10 + 2 * k * 4
    assert result["total_flops"] == pytest.approx(result["encoder_flops"] + result["head_flops"])
    assert result["encoder_flops"] == pytest.approx(result["patches_encoded"] * 4.309e9, rel=1e-3)


def test_all_patch_head_flops_grow_with_the_bag_and_agree_with_torch_counter():
    model = build_model("abmil", in_dim=1024, n_classes=3).eval()
    small = head_flops(model, [torch.randn(1, 100, 1024)])
    large = head_flops(model, [torch.randn(1, 200, 1024)])
    assert large["fvcore"] == pytest.approx(2 * small["fvcore"], rel=0.05)
    assert small["torch"] == pytest.approx(small["fvcore"], rel=0.1)
    result = slide_flops(model, "abmil", [torch.randn(1, 160, 1024)])
    assert result["patches_encoded"] == 160


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_importing_the_flop_counter_warns_about_nothing():
    """fvcore's import-time torch.jit.script FutureWarning stays out of every FLOPs log."""
    code = "import zoommil.efficiency.flops"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_profile_on_cuda_without_gpu_writes_a_skip_note(tmp_path):
    model = build_model("abmil", in_dim=1024, n_classes=2)
    config = {"arch": "abmil", "classes": ["a", "b"], "mags": [10.0], "in_dim": 1024}
    ckpt = save_checkpoint(tmp_path / "c.pt", model.state_dict(), config)
    out = tmp_path / "gpu.json"
    code = main(["profile", "--checkpoint", str(ckpt), "--device", "cuda", "--out", str(out)])
    assert code == 0
    assert json.loads(out.read_text())["skipped"] == "no CUDA device"


def test_profile_rejects_bad_thread_counts(tmp_path, capsys):
    model = build_model("abmil", in_dim=1024, n_classes=2)
    config = {"arch": "abmil", "classes": ["a", "b"], "mags": [10.0], "in_dim": 1024}
    ckpt = save_checkpoint(tmp_path / "c.pt", model.state_dict(), config)
    argv = ["profile", "--checkpoint", str(ckpt), "--threads", "0", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "--threads" in capsys.readouterr().err


def test_all_cores_profile_spreads_slides_over_single_threaded_processes(tmp_path):
    """threads N on CPU = N worker processes over the slides, each single-threaded; the slides
    and their patch counts are those of the 1-thread run, and the rate is per makespan."""
    from slide_factory import write_pyramid_tiff

    from zoommil.efficiency.throughput import measure_throughput
    from zoommil.inference.predict import Predictor
    from zoommil.recipe import PreprocessingRecipe

    mags = [5.0, 10.0]
    slide = write_pyramid_tiff(tmp_path / "s.tiff", width=512, height=512)
    torch.manual_seed(0)
    model = build_model("zoommil", in_dim=1024, n_classes=2, mags=mags, k=2).eval()
    recipe = PreprocessingRecipe(mags=mags, patch_size=64, weights="random", no_tissue="all")
    predictor = Predictor(
        model=model, arch="zoommil", classes=["a", "b"], recipe=recipe, method="zoommil"
    )
    slides = [("a", slide), ("b", slide)]
    one = measure_throughput(predictor, slides, torch.device("cpu"), threads=1)
    two = measure_throughput(predictor, slides, torch.device("cpu"), threads=2)
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["threads_per_process"] == 1 and two["cpu_count"] >= 1
    assert len({r["pid"] for r in two["per_slide"]}) == 2
    assert len({r["pid"] for r in one["per_slide"]}) == 1
    assert [r["patches_encoded"] for r in one["per_slide"]] == [
        r["patches_encoded"] for r in sorted(two["per_slide"], key=lambda r: r["slide_id"])
    ]
    busiest = max(r["seconds"] for r in two["per_slide"])
    assert two["seconds_per_slide"] == pytest.approx(busiest / 2)
    assert two["slides_per_hour"] == pytest.approx(3600 / two["seconds_per_slide"])

"""benchmarks/gpu.sh runs every step of the GPU benchmark in its CPU dry mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_script_dry_mode_runs_every_step(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh"), "--dry", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,  # < 60 s on a quiet machine
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    features = json.loads((tmp_path / "features.json").read_text())
    assert features["dry"] and features["device"] == "cpu"
    for row in features["slides"]:
        assert row["patches"] == 4 * 5  # 4 parents, 1 + 4 patches each (10x -> 20x)
        assert row["device_busy_seconds"] > 0 and row["reader_wait_seconds"] >= 0
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert [m["arch"] for m in profile["methods"]] == ["zoommil", "abmil"]
    assert [m["precision"] for m in profile["methods"]] == ["fp32", "fp32"]  # no emulated bf16
    zoom, abmil = profile["methods"]
    assert all(r["patches_encoded"] > 0 for r in zoom["per_slide"] + abmil["per_slide"])
    predict = json.loads((tmp_path / "predict.json").read_text())
    assert [r["status"] for r in predict["slides"]] == ["ok"] * 4
    assert len({r["patches_encoded"] for r in predict["slides"]}) == 1  # 4 copies, 1 answer
    assert predict["seconds_per_slide_after_the_first"] > 0
    train = json.loads((tmp_path / "train.json").read_text())
    assert train["slides"] == 16
    assert 0 < train["seconds_epoch"] < train["seconds_one_epoch_with_startup"]
    assert (tmp_path / "work" / "train" / "out" / "checkpoint.pt").exists()
    uni = json.loads((tmp_path / "features_uni.json").read_text())
    assert [(r["slide"], r["encoder"], r["patches"]) for r in uni["slides"]] == [("40x", "uni", 20)]
    assert json.loads((tmp_path / "summary.json").read_text())["seconds"] > 0

"""benchmarks/gpu.sh runs every step of the GPU benchmark in its CPU dry mode, and the JSONs
of one run never mix with another's."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ["features", "profile", "predict", "train", "features_uni"]


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


def stubbed_gpu(monkeypatch: pytest.MonkeyPatch, stop_at: str | None = None) -> ModuleType:
    """benchmarks/gpu.py with its steps replaced by instant ones; ``stop_at``'s step is
    interrupted (Ctrl-C, a node's time limit) as a real run may be."""
    import torch

    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "benchmarks" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the dry mode's, not ours
    monkeypatch.setattr(gpu, "slides_for", lambda dry, work, source=None: {"40x": work})
    monkeypatch.setattr(gpu, "checkpoints", lambda work, patch_size, k=12: {})

    def step(name: str):
        def run(*args, **kwargs) -> dict:
            if name == stop_at:
                raise KeyboardInterrupt
            return {"step": name}

        return run

    for name in ("profile", "predict", "train"):
        monkeypatch.setattr(gpu, f"{name}_step", step(name))
    monkeypatch.setattr(gpu, "features_step", step("features"))
    return gpu


def earlier_run(out: Path) -> None:
    """A complete earlier run's JSONs, as the script wrote them before run ids."""
    out.mkdir(parents=True, exist_ok=True)
    for name in [*STEPS, "summary"]:
        (out / f"{name}.json").write_text(json.dumps({"step": name, "seconds": 1.0}))


def test_a_run_stopped_part_way_leaves_no_earlier_runs_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each step's JSON is written as the step ends: a run stopped in its third step left its
    two JSONs beside an earlier run's predict, train and UNI JSONs and its summary.json, read
    as one run. The earlier run's files are removed at the start, and every JSON names its
    run."""
    earlier_run(tmp_path)
    gpu = stubbed_gpu(monkeypatch, stop_at="predict")
    with pytest.raises(KeyboardInterrupt):
        gpu.main(["--dry", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["features.json", "profile.json"]
    records = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("features", "profile")]
    assert records[0]["run_id"] and records[0]["run_id"] == records[1]["run_id"]
    assert records[0]["started"] == records[1]["started"]


def test_summary_lists_the_run_and_its_steps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """summary.json, written last, names the run every step JSON carries and lists them; a
    second run into the same folder is another run, whole."""
    earlier_run(tmp_path)
    runs = []
    for _ in range(2):
        stubbed_gpu(monkeypatch).main(["--dry", "--out", str(tmp_path)])
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["steps"] == [f"{n}.json" for n in STEPS]
        for name in STEPS:
            record = json.loads((tmp_path / f"{name}.json").read_text())
            assert record["step"] == ("features" if name == "features_uni" else name)
            assert (record["run_id"], record["started"]) == (summary["run_id"], summary["started"])
        runs.append(summary["run_id"])
    assert runs[0] != runs[1]

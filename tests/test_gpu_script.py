"""benchmarks/gpu.sh runs every step of the GPU benchmark in its CPU dry mode, and the JSONs
of one run never mix with another's."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ["features", "profile", "predict", "train", "features_uni"]


def check_energy(record: dict, slides: int, patches: int | None) -> None:
    """GPU 1 of the fake nvidia-smi draws 250 W (GPU 0, not sampled, 100 W): the phase's
    joules are 250 x its seconds, per slide and patch at its rate, CO2 at the given 400 g/kWh."""
    e = record["gpu_energy"]
    assert e["measured"] and e["gpus"] == ["1"] and e["interval_ms"] == 20, e
    assert e["joules"] == pytest.approx(250.0 * e["seconds"], rel=1e-9)
    assert e["samples"] >= 2 and e["per_gpu"]["1"]["mean_watts"] == pytest.approx(250.0)
    assert e["joules_per_slide"] == pytest.approx(e["joules"] / slides)
    assert e["kwh_per_1000_slides"] == pytest.approx(e["joules"] / slides * 1000 / 3.6e6)
    assert e["kg_co2_per_1000_slides"] == pytest.approx(e["kwh_per_1000_slides"] * 0.4)
    if patches is not None:
        assert e["joules_per_patch"] == pytest.approx(e["joules"] / patches)


def test_gpu_script_dry_mode_runs_every_step(tmp_path: Path) -> None:
    """Every step, with each phase's GPU energy from a fake nvidia-smi on PATH."""
    from test_energy import fake_smi

    path = f"{fake_smi(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO / "src"), "PATH": path}
    out = tmp_path / "out"
    energy = ["--power-gpus", "1", "--power-interval-ms", "20", "--grid-gco2-per-kwh", "400"]
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh"), "--dry", "--out", str(out), *energy],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,  # < 60 s on a quiet machine
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    tmp_path = out
    features = json.loads((tmp_path / "features.json").read_text())
    assert features["dry"] and features["device"] == "cpu"
    for row in features["slides"]:
        assert row["patches"] == 4 * 5  # 4 parents, 1 + 4 patches each (10x -> 20x)
        assert row["device_busy_seconds"] > 0 and row["reader_wait_seconds"] >= 0
        check_energy(row, 1, 20)
        assert row["gpu_energy"]["seconds"] >= row["seconds"]
    profile = json.loads((tmp_path / "profile.json").read_text())
    for method in profile["methods"]:  # 2 slides timed + the first once more, untimed
        patches = [r["patches_encoded"] for r in method["per_slide"]]
        check_energy(method, 3, sum(patches) + patches[0])
    assert [m["arch"] for m in profile["methods"]] == ["zoommil", "abmil"]
    assert [m["precision"] for m in profile["methods"]] == ["fp32", "fp32"]  # no emulated bf16
    zoom, abmil = profile["methods"]
    assert all(r["patches_encoded"] > 0 for r in zoom["per_slide"] + abmil["per_slide"])
    predict = json.loads((tmp_path / "predict.json").read_text())
    assert [r["status"] for r in predict["slides"]] == ["ok"] * 4
    assert len({r["patches_encoded"] for r in predict["slides"]}) == 1  # 4 copies, 1 answer
    assert predict["seconds_per_slide_after_the_first"] > 0
    check_energy(predict, 4, sum(r["patches_encoded"] for r in predict["slides"]))
    train = json.loads((tmp_path / "train.json").read_text())
    assert train["slides"] == 16
    assert 0 < train["seconds_epoch"] < train["seconds_one_epoch_with_startup"]
    assert (tmp_path / "work" / "train" / "out" / "checkpoint.pt").exists()
    check_energy(train, 8, 8 * 2 * (1 + 4 + 64))  # the 8 training slides
    uni = json.loads((tmp_path / "features_uni.json").read_text())
    assert [(r["slide"], r["encoder"], r["patches"]) for r in uni["slides"]] == [("40x", "uni", 20)]
    check_energy(uni["slides"][0], 1, 20)
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


def test_energy_not_measured_in_the_dry_mode_or_without_nvidia_smi(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The dry mode runs no GPU: its phases' GPU energy is "not measured" with the reason,
    unless --power-gpus names one; without nvidia-smi it is not measured either, never a
    number; a negative grid intensity stops the run with a one-line usage error."""
    gpu = stubbed_gpu(monkeypatch)

    def train_step(*args, **kwargs) -> dict:
        meter = gpu.Power.start()
        time.sleep(0.2)
        return {"step": "train", "gpu_energy": gpu.Power.stop(meter, "train", 8, 100)}

    monkeypatch.setattr(gpu, "train_step", train_step)
    monkeypatch.setenv("PATH", str(tmp_path / "no-such-bin"))
    for extra, reason in (
        ([], "dry mode: no GPU ran the phase (--power-gpus names one to sample)"),
        (["--power-gpus", "0"], "nvidia-smi not found on PATH"),
    ):
        gpu.main(["--dry", "--out", str(tmp_path), *extra])
        record = json.loads((tmp_path / "train.json").read_text())["gpu_energy"]
        assert not record["measured"] and record["reason"] == reason
        assert not any(k.startswith(("joules", "kwh")) for k in record)
    with pytest.raises(SystemExit) as stop:
        gpu.main(["--dry", "--out", str(tmp_path), "--grid-gco2-per-kwh", "-5"])
    assert stop.value.code == 2

"""benchmarks/energy.py: GPU board power integrated over a phase (a fake nvidia-smi printing
known wattages), the CPU's RAPL counters (a fake powercap tree, wrap-around included), and
"not measured" with the reason where there is nothing to read, never a made-up number."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import energy
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
FAKE_SMI = r"""#!/usr/bin/env bash
# nvidia-smi --query-gpu=timestamp,index,uuid,power.draw --format=csv,noheader,nounits
# --loop-ms=N, as the driver prints it: GPU 0 at 100 W, GPU 1 at 250 W (or POWER1)
ms=100
for a in "$@"; do case $a in --loop-ms=*) ms=${a#--loop-ms=} ;; esac; done
trap 'exit 0' INT TERM
while true; do
  t=$(date +"%Y/%m/%d %H:%M:%S.%3N")
  echo "$t, 0, GPU-aaaa-0000, 100.00"
  echo "$t, 1, GPU-bbbb-1111, ${POWER1:-250.00}"
  sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
done
"""


def fake_smi(folder: Path) -> Path:
    """A folder holding a fake ``nvidia-smi``, to put first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    return folder


def test_integral_of_a_ramp_is_exact_and_clipped_to_the_phase() -> None:
    """100 + 10 t W sampled every second from 0 to 10 s; the phase 2.5-7.5 s holds 750 J
    (the edges interpolated between the samples either side)."""
    samples = [(float(t), 100.0 + 10 * t) for t in range(11)]
    result = energy.integrate(samples[::-1], 2.5, 7.5)  # any order
    assert result["measured"]
    assert result["joules"] == pytest.approx(750.0, rel=1e-12)
    assert result["samples"] == 5 and result["median_interval_ms"] == pytest.approx(1000.0)


def test_uncovered_edges_are_held_at_the_mean_and_short_coverage_is_not_measured() -> None:
    """Samples from 1 to 9 s of a 0-10 s phase at a constant 80 W: 800 J, not 640; samples
    over 2 s of it: not measured, with the reason."""
    constant = [(float(t), 80.0) for t in range(1, 10)]
    result = energy.integrate(constant, 0.0, 10.0)
    assert result["joules"] == pytest.approx(800.0) and result["covered_seconds"] == 8.0
    short = energy.integrate([(4.0, 80.0), (5.0, 80.0), (6.0, 80.0)], 0.0, 10.0)
    assert not short["measured"] and "cover 2.00 s of the 10.00 s phase" in short["reason"]
    one = energy.integrate([(5.0, 80.0)], 0.0, 10.0)
    assert not one["measured"] and "fewer than 2 power samples" in one["reason"]
    assert "joules" not in short and "joules" not in one


def test_per_work_rates_and_carbon_only_from_a_given_grid_intensity() -> None:
    measured = {"measured": True, "joules": 7200.0, "seconds": 10.0}
    rates = energy.per_work(measured, slides=4, patches=1000)
    assert rates["joules_per_slide"] == 1800.0 and rates["joules_per_patch"] == 7.2
    assert rates["kwh_per_1000_slides"] == pytest.approx(0.5)
    assert not any("co2" in key for key in rates)  # no baked-in factor
    carbon = energy.per_work(measured, slides=4, patches=1000, grid_gco2_per_kwh=300)
    assert carbon["gco2"] == pytest.approx(0.6) and carbon["kg_co2_per_1000_slides"] == 0.15
    missing = energy.per_work(energy.not_measured("why"), 4, 1000, 300)
    assert missing == {"measured": False, "reason": "why"}


def test_gpu_power_from_a_fake_nvidia_smi_matches_the_known_wattage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The phase's GPU only (GPU 1, by index or by UUID; GPU 0's lines are dropped): 250 W
    over the phase's seconds, with the samples counted and the interval kept."""
    monkeypatch.setenv("PATH", f"{fake_smi(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    for gpu in ("1", "GPU-bbbb-1111"):
        meter = energy.GpuPower([gpu], interval_ms=20).start()
        time.sleep(1.0)
        result = meter.stop()
        assert result["measured"], result
        assert result["joules"] == pytest.approx(250.0 * result["seconds"], rel=1e-9)
        assert result["per_gpu"][gpu]["mean_watts"] == pytest.approx(250.0, rel=1e-12)
        assert result["samples"] >= 5 and result["interval_ms"] == 20
        assert result["per_gpu"][gpu]["median_interval_ms"] >= 19
    both = energy.GpuPower(["0", "1"], interval_ms=20).start()
    time.sleep(1.0)
    result = both.stop()
    assert result["joules"] == pytest.approx(350.0 * result["seconds"], rel=1e-9)
    assert result["mean_watts"] == pytest.approx(350.0, rel=1e-12)


def test_gpu_power_not_measured_without_nvidia_smi_or_power_readings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty, path = tmp_path / "empty", os.environ["PATH"]
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = energy.GpuPower(["0"]).start().stop()
    assert result == {
        "source": "nvidia-smi power.draw (board power)",
        "gpus": ["0"],
        "interval_ms": 100,
        "measured": False,
        "reason": "nvidia-smi not found on PATH",
    }
    monkeypatch.setenv("PATH", f"{fake_smi(tmp_path / 'bin')}{os.pathsep}{path}")
    monkeypatch.setenv("POWER1", "[N/A]")  # a board without power readings
    meter = energy.GpuPower(["1"], interval_ms=20).start()
    time.sleep(0.5)
    result = meter.stop()
    assert not result["measured"] and "joules" not in result
    assert result["reason"].startswith("GPU 1: fewer than 2 power samples")
    assert "unreadable line(s)" in result["reason"]
    assert not energy.GpuPower([]).start().stop()["measured"]


def powercap(root: Path, package_uj: int, dram_uj: int, max_uj: int = 10_000_000) -> Path:
    """A fake /sys/class/powercap: package 0 with core and DRAM sub-zones, listed flat too
    as sysfs does, and an mmio zone repeating the package's counter (neither the core zone,
    the mmio one nor a flat copy may be added)."""
    zones = {
        "intel-rapl:0": ("package-0", package_uj),
        "intel-rapl:0/intel-rapl:0:0": ("core", 123),
        "intel-rapl:0/intel-rapl:0:1": ("dram", dram_uj),
        "intel-rapl:0:0": ("core", 123),
        "intel-rapl:0:1": ("dram", dram_uj),
        "intel-rapl-mmio:0": ("package-0", package_uj),
    }
    for rel, (name, uj) in zones.items():
        zone = root / rel
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "name").write_text(f"{name}\n")
        (zone / "energy_uj").write_text(f"{uj}\n")
        (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return root


def test_rapl_counts_packages_and_dram_across_wrap_arounds(tmp_path: Path) -> None:
    """Package 9.5 J -> (wraps at 10 J) 2 J -> 8 J -> (wraps) 1 J: 0.5 + 2 + 6 + 3 = 11.5 J;
    DRAM 1 J -> 3 J: 2 J; 13.5 J in all, the core and mmio zones left out."""
    root = powercap(tmp_path, 9_500_000, 1_000_000)
    meter = energy.Rapl(root, poll_seconds=0).start()
    for package in (2_000_000, 8_000_000, 1_000_000):
        for zone in ("intel-rapl:0", "intel-rapl-mmio:0"):
            (root / zone / "energy_uj").write_text(f"{package}\n")
        meter.read()
    for dram in ("intel-rapl:0/intel-rapl:0:1", "intel-rapl:0:1"):
        (root / dram / "energy_uj").write_text("3000000\n")
    result = meter.stop()
    assert result["measured"]
    assert result["zones"] == {
        "intel-rapl:0 (package-0)": pytest.approx(11.5),
        "intel-rapl:0:1 (dram)": pytest.approx(2.0),
    }
    assert result["joules"] == pytest.approx(13.5)


def test_rapl_polls_in_the_background(tmp_path: Path) -> None:
    """A counter that wraps between start and stop is caught by the poller."""
    root = powercap(tmp_path, 9_000_000, 0)
    meter = energy.Rapl(root, poll_seconds=0.05).start()
    (root / "intel-rapl:0" / "energy_uj").write_text("9900000\n")
    time.sleep(0.3)
    (root / "intel-rapl:0" / "energy_uj").write_text("500000\n")
    assert meter.stop()["joules"] == pytest.approx(1.5)


def test_rapl_counter_lost_mid_phase_or_wrapped_without_range_is_not_measured(
    tmp_path: Path,
) -> None:
    """A counter unreadable at start or at a later read, or one that goes back with no
    max_energy_range_uj, missed energy: "not measured", never a TypeError or a negative sum."""
    root = powercap(tmp_path / "lost", 1_000_000, 0)
    meter = energy.Rapl(root, poll_seconds=0).start()
    (root / "intel-rapl:0" / "energy_uj").write_text("busy\n")
    meter.read()
    (root / "intel-rapl:0" / "energy_uj").write_text("3000000\n")
    result = meter.stop()
    assert not result["measured"] and "could not be read" in result["reason"], result
    root = powercap(tmp_path / "late", 1_000_000, 0)
    meter = energy.Rapl(root, poll_seconds=0)
    (root / "intel-rapl:0" / "energy_uj").write_text("busy\n")  # readable when found only
    meter.start()
    (root / "intel-rapl:0" / "energy_uj").write_text("3000000\n")
    assert not meter.stop()["measured"]
    root = powercap(tmp_path / "norange", 9_000_000, 0)
    (root / "intel-rapl:0" / "max_energy_range_uj").unlink()
    meter = energy.Rapl(root, poll_seconds=0).start()
    (root / "intel-rapl:0" / "energy_uj").write_text("1000000\n")
    result = meter.stop()
    assert not result["measured"] and "joules" not in result, result


def test_rapl_not_measured_without_counters(tmp_path: Path) -> None:
    result = energy.Rapl(tmp_path / "none").start().stop()
    assert not result["measured"] and "joules" not in result
    assert result["reason"].startswith("no RAPL counters readable")
    root = powercap(tmp_path / "pc", 5, 5)
    (root / "intel-rapl:0" / "energy_uj").write_text("permission denied\n")  # as unreadable
    result = energy.Rapl(root).start().stop()
    assert not result["measured"] and "cannot be read" in result["reason"]
    assert energy.describe(result).startswith("not measured (no RAPL counters readable")


def load_scale() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale", BENCHMARKS / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scale_child_reads_rapl_around_its_timed_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/scale.py's throughput child: the package counter advances 7.2 J (wrapping)
    while the slides are timed, and the row says 7.2 J, 3.6 J/slide for its 2 slides, and
    gCO2 at the user's intensity; scale.md lists it."""
    import zoommil.efficiency.throughput as throughput
    from zoommil.inference.predict import Predictor

    root = powercap(tmp_path, 9_000_000, 0)
    monkeypatch.setattr(energy, "POWERCAP", root)

    def timed(predictor, slides, *args, **kwargs) -> dict:
        (root / "intel-rapl:0" / "energy_uj").write_text("6200000\n")  # 1 J, wrap, 6.2 J
        return {"threads": 1, "cpu_count": 2, "seconds_per_slide": 1.0, "slides_per_hour": 3600}

    monkeypatch.setattr(throughput, "measure_throughput", timed)
    monkeypatch.setattr(Predictor, "from_checkpoint", lambda *args, **kwargs: None)
    scale = load_scale()
    r = scale.child_throughput(
        {"checkpoint": "x.pt", "slides": ["a.tiff", "b.tiff"], "threads": 1, "precision": "fp32"}
    )
    assert r["cpu_energy"]["measured"] and r["cpu_energy"]["joules"] == pytest.approx(7.2)
    scale.GRID["gco2_per_kwh"] = 500.0
    row = {**r, "cpu_energy": scale.rates(r["cpu_energy"], slides=2)}
    assert row["cpu_energy"]["joules_per_slide"] == pytest.approx(3.6)
    assert row["cpu_energy"]["gco2"] == pytest.approx(7.2 / 3.6e6 * 500)
    res = {"features": [], "predict": [], "threads": [row]}
    lines = scale.energy_lines(res)
    assert lines[1].startswith("## CPU energy (RAPL")
    assert lines[-1].startswith("- profile threads 1: 7.2 J over ")
    assert "3.6 J/slide, 0.0010 kWh per 1000 slides" in lines[-1]


def test_scale_says_not_measured_once_without_rapl(tmp_path: Path) -> None:
    scale = load_scale()
    missing = energy.Rapl(tmp_path / "none").start().stop()
    res = {
        "features": [{"slide": "40x", "precision": "fp32", "parents": 4, "cpu_energy": missing}],
        "predict": [],
        "threads": [{"threads": 1, "cpu_energy": missing}],
    }
    lines = scale.energy_lines(res)
    assert lines[-1] == (
        "- not measured (no RAPL counters readable (no powercap RAPL zone on this machine))"
    )
    assert sum("not measured" in line for line in lines) == 1


@pytest.fixture
def torch_threads_kept() -> Iterator[None]:
    """benchmarks/features.py's main sets torch's thread count for the process, as a script
    may; run in-process, the tests after it (test_training checks it) keep their own."""
    import torch

    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def test_features_benchmark_reports_the_whole_paths_cpu_energy_per_patch(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    synthetic_slide: Path,
    torch_threads_kept: None,
) -> None:
    """benchmarks/features.py: the package counter advances 2 J during each whole-path run
    (and not in the bare-encoder runs); 2 rounds give 4 J over 2 x the patches, in the JSON
    and in features.md; without counters, one "not measured" line."""
    spec = importlib.util.spec_from_file_location("bench_features", BENCHMARKS / "features.py")
    features = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(features)
    root = powercap(tmp_path / "powercap", 1_000_000, 0)
    counter = root / "intel-rapl:0" / "energy_uj"
    real = features.whole_rate

    def whole_rate(*args, **kwargs):
        counter.write_text(f"{int(counter.read_text()) + 2_000_000}\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "whole_rate", whole_rate)
    argv = ["--slide", str(synthetic_slide), "--mags", "10", "20", "--max-parents", "1",
            "--rounds", "2", "--precisions", "fp32", "--threads", "1"]  # fmt: skip
    monkeypatch.setattr(energy, "POWERCAP", root)
    assert features.main([*argv, "--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "features.json").read_text())
    e = report["results"][0]["cpu_energy"]
    assert e["measured"] and e["joules"] == pytest.approx(4.0) and e["runs"] == 2
    assert e["joules_per_patch"] == pytest.approx(4.0 / (2 * report["patches"]))
    md = (tmp_path / "a" / "features.md").read_text()
    assert "- 1 thread(s) fp32: 4.0 J over " in md
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "none")
    assert features.main([*argv, "--out", str(tmp_path / "b")]) == 0
    md = (tmp_path / "b" / "features.md").read_text()
    assert "- not measured (no RAPL counters readable" in md


class _StuckSmi:
    """An nvidia-smi stuck in the driver: neither SIGINT nor SIGKILL ends it."""

    pid = 4242

    def __init__(self, *args, **kwargs) -> None:
        self.signals: list[str] = []

    def send_signal(self, sig: int) -> None:
        self.signals.append("INT")

    def kill(self) -> None:
        self.signals.append("KILL")

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:  # what an unbounded wait would do: hang the benchmark
            raise AssertionError("waited without a timeout on a process that never exits")
        raise energy.subprocess.TimeoutExpired("nvidia-smi", timeout)


def test_a_hung_nvidia_smi_is_not_measured_and_never_waited_for_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT, then SIGKILL, each waited for a bounded time; a sampler that outlives both is
    "not measured" (its pid named), and stop() returns."""
    monkeypatch.setenv("PATH", f"{fake_smi(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    stuck: list[_StuckSmi] = []

    def popen(*args, **kwargs) -> _StuckSmi:
        stuck.append(_StuckSmi())
        return stuck[-1]

    monkeypatch.setattr(energy.subprocess, "Popen", popen)
    result = energy.GpuPower(["0"], interval_ms=20).start().stop()
    assert stuck[0].signals == ["INT", "KILL"]
    assert not result["measured"] and "joules" not in result
    assert result["reason"].startswith("nvidia-smi (pid 4242) did not exit when stopped")


def test_gpu_script_records_not_measured_when_power_sampling_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """benchmarks/gpu.py: an error inside the energy code is a "not measured" record, never a
    failed benchmark run."""
    spec = importlib.util.spec_from_file_location("bench_gpu_energy", BENCHMARKS / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)

    def broken(self) -> dict:
        raise ValueError("time data '12/07/2026 21:00:00' does not match format")

    monkeypatch.setattr(gpu.GpuPower, "stop", broken)
    monkeypatch.setattr(gpu.Power, "gpus", ["0"])
    record = gpu.Power.stop(gpu.GpuPower(["0"]), "features", 1, 10)
    assert not record["measured"] and "joules" not in record
    assert record["reason"].startswith("power sampling failed (ValueError: time data")

"""Benchmark at real size: features, predict and profile on 20x and 40x real-size slides.

    nice python benchmarks/scale.py            # writes results/benchmarks/scale.{json,md}
    nice python benchmarks/scale.py --quick    # fewer parents, for a smoke run

Slides: results/benchmarks/slides/large{20x,40x}.tiff, made by benchmarks/make_large_slide.py
when missing (a mosaic of ../shared/data/slides/CMU-1-Small-Region.svs, about half background).
Every measurement runs in its own child process (this script with --child), so its peak RSS is
its own; reader processes' peaks are reported apart (max over the children). Random encoder and
MIL weights: speed does not depend on them.

1. features (CAMELYON16 lattice: 10x -> 20x): bare encoder vs whole path (`extract_features`:
   reader process, batching, streaming HDF5 write) on the first N parents of each slide, fp32
   and bf16, 1 encoder thread, batch 4; bare and whole interleave in the same child (bare,
   whole, bare, ... with --repeats whole runs; each whole run against the mean of the bare runs
   either side, the median of those ratios reported; again without each run's wait for its
   first batch, the reader's start, paid once per slide). Peak RSS for N and 4N parents
   (fp32, and bf16 where the CPU has it natively) shows whether memory grows with the slide.
2. predict (BRIGHT: 1.25x -> 2.5x -> 10x, K = 12) ZoomMIL vs all-patch ABMIL (10x) on both
   slides, whole slides, end to end: seconds, patches encoded, phases, peak RSS; ZoomMIL's
   slides/h on one core (workers 0: reading inline) and with one reader process, next to
   patches encoded / bare-encoder patches/s; batch 4 vs 16.
3. threads: `measure_throughput` 1 thread vs all cores (single-threaded worker processes over
   slides) for ZoomMIL on copies of the 40x slide.
Timings on a shared machine vary with the load: compare ratios measured in the same run.

CPU energy: each child reads the RAPL counters (benchmarks/energy.py) around its timed phase
(features: the median whole-path run; predict: predict_slide; throughput: the slides) and
scale.md lists J/patch, J/slide and kWh per 1000 slides at that phase's rate (gCO2 only with
--grid-gco2-per-kwh). A package counter covers the whole socket, other processes included,
and not the rest of the machine; where no counter is readable (VMs, non-root) each row says
"not measured" and why.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_cli
import numpy as np
from energy import Rapl, describe, per_work

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "benchmarks"
#: The user's grid intensity (--grid-gco2-per-kwh), for gCO2 next to kWh; none assumed.
GRID: dict[str, float | None] = {"gco2_per_kwh": None}
SLIDES = OUT / "slides"
WORK = OUT / "scale"
BRIGHT = {"mags": [1.25, 2.5, 10.0], "k": 12}
CAMELYON = [10.0, 20.0]
PAPER_BRIGHT_SLIDES_PER_HOUR = 300


class ChildrenPeak:
    """Peak summed RSS of this process's descendants (the readers), sampled every 0.2 s.

    ru_maxrss cannot be used for them (nor for a fork-exec'd child: it survives exec)."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.peak = 0.0
        self._stop = threading.Event()
        me = psutil.Process()

        def sample() -> None:
            while not self._stop.wait(0.2):
                total = 0
                for child in me.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total / 2**20)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


_READERS: ChildrenPeak | None = None


def peak_rss_mb() -> dict[str, float]:
    """This process's peak RSS (VmHWM: reset at exec, unlike ru_maxrss), the readers' peak and
    CPU seconds (user + system, this process and waited-for children)."""
    hwm = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return {
        "peak_rss_mb": hwm,
        "readers_peak_rss_mb": _READERS.stop() if _READERS is not None else 0.0,
        "cpu_seconds": me.ru_utime + me.ru_stime,
        "children_cpu_seconds": kids.ru_utime + kids.ru_stime,
    }


# --------------------------------------------------------------------------- children


def child_features(a: dict[str, Any]) -> dict[str, Any]:
    """Bare encoder and whole path, interleaved (bare, whole, bare, ..., bare), same encoder.

    Why interleaved and repeated: on a VM one process's encoder rate moves by 10-30% within a
    minute, so a single bare timing next to a single whole one mostly measures that drift.
    Each whole run is compared with the mean of the bare runs just before and after it, and
    the ratio reported is the median over the repeats (with its range).
    """
    import torch

    from zoommil.features.encoder import PatchEncoder, build_encoder
    from zoommil.features.extraction import extract_features

    torch.set_num_threads(a["threads"])
    encoder = PatchEncoder(build_encoder("random")[0], precision=a["precision"])
    batch = torch.from_numpy(
        np.random.default_rng(0).integers(0, 256, (a["batch"], 256, 256, 3), dtype=np.uint8)
    )

    def bare(n: int) -> float:
        encoder.encode(batch)
        tic = time.perf_counter()
        for _ in range(n // a["batch"]):
            encoder.encode(batch)
        return n // a["batch"] * a["batch"] / (time.perf_counter() - tic)

    def whole() -> Any:
        return extract_features(
            a["slide"],
            a["coords"],
            a["out"],
            weights="random",
            batch_size=a["batch"],
            workers=a["workers"],
            device="cpu",
            precision=a["precision"],
            threads=a["threads"],
            progress=False,
        )

    # the --threads rows pass bare_patches 0: the whole path only, once, no ratio
    timed = bool(a["bare_patches"])
    rates = [bare(a["bare_patches"])] if timed else []
    wholes, ratios, steady_ratios, streams = [], [], [], []
    energies = []
    for _ in range(max(1, a.get("repeats", 1)) if timed else 1):
        meter = Rapl().start()
        result = whole()
        energies.append(meter.stop())
        wholes.append(result.patches_per_second)
        streams.append(result.attrs.get("stream") or {})
        if timed:
            rates.append(bare(a["bare_patches"]))
            around = (rates[-2] + rates[-1]) / 2
            ratios.append(wholes[-1] / around)
            # the same run without the wait for its first batch (the reader's start, once per
            # slide): what the path sustains once it runs
            first = streams[-1].get("first_read_wait_seconds", 0.0)
            steady = sum(result.num_patches) / (result.seconds - first)
            steady_ratios.append(steady / around)
    # the stream stats of the run whose ratio is the median
    middle = int(np.argsort(ratios)[len(ratios) // 2]) if ratios else 0
    nan = float("nan")
    return {
        "patches": int(sum(result.num_patches)),
        "bare_patches_per_s": float(np.median(rates)) if rates else nan,
        "bare_runs": rates,
        "whole_patches_per_s": float(np.median(wholes)),
        "whole_runs": wholes,
        "whole_over_bare": float(np.median(ratios)) if ratios else nan,
        "whole_over_bare_runs": ratios,
        "steady_over_bare": float(np.median(steady_ratios)) if steady_ratios else nan,
        "steady_over_bare_runs": steady_ratios,
        "stream": streams[middle],
        "cpu_energy": energies[middle],  # the run whose ratio is the median
        **peak_rss_mb(),
    }


def child_predict(a: dict[str, Any]) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))

    from zoommil.features.encoder_pool import EncoderRecipe, cpu_encoder, set_encoder_threads
    from zoommil.inference.predict import Predictor, make_encoder, predict_slide
    from zoommil.wsi.patches import ReaderPool

    # as `zoommil predict` does: the readers start while the checkpoint loads
    reader = ReaderPool(a["workers"]).start()
    set_encoder_threads(torch.device("cpu"), a["threads"])
    predictor = Predictor.from_checkpoint(a["checkpoint"])
    encoder, _ = make_encoder(predictor, precision=a["precision"])
    recipe = predictor.recipe
    pool_recipe = EncoderRecipe(recipe.encoder, recipe.weights, recipe.weights_seed)
    full: dict[str, int] = {}
    if a.get("max_parents"):  # whole-slide tissue detection and tiling, then a subset read
        from features import subset_parents

        import zoommil.inference.predict as predict_module

        real_tile = predict_module.tile_for_inference

        def subset_tile(*args: Any, **kwargs: Any) -> Any:
            lattice = real_tile(*args, **kwargs)
            full["patches"] = sum(len(xy) for xy in lattice.xy)
            return subset_parents(lattice, a["max_parents"])

        predict_module.tile_for_inference = subset_tile
    encoder.encode(np.full((4, 256, 256, 3), 255, np.uint8))  # one untimed batch
    tic = time.perf_counter()
    with cpu_encoder(encoder, pool_recipe, a["threads"]) as runner:
        runner.encode(np.full((4 * a["threads"], 256, 256, 3), 255, np.uint8))  # workers up
        pool_start = time.perf_counter() - tic
        with reader:
            tic = time.perf_counter()
            meter = Rapl().start()
            result = predict_slide(
                predictor, a["slide"], runner, batch_size=a["batch"], reader=reader
            )
            seconds = time.perf_counter() - tic
            energy = meter.stop()
    return {
        "seconds": seconds,
        "encoder_start_seconds": pool_start,
        "subset_of_patches": full.get("patches"),
        "patches_encoded": result["patches_encoded"],
        "patches_per_mag": result["patches_per_mag"],
        "phases": result["seconds"],
        "cpu_energy": energy,
        **peak_rss_mb(),
    }


def child_throughput(a: dict[str, Any]) -> dict[str, Any]:
    import torch

    from zoommil.efficiency.throughput import measure_throughput
    from zoommil.inference.predict import Predictor

    predictor = Predictor.from_checkpoint(a["checkpoint"])
    slides = [(f"s{i}", p) for i, p in enumerate(a["slides"])]
    meter = Rapl().start()
    result = measure_throughput(
        predictor, slides, torch.device("cpu"), a["threads"], precision=a["precision"]
    )
    return {**result, "cpu_energy": meter.stop(), **peak_rss_mb()}


def child_bare(a: dict[str, Any]) -> dict[str, Any]:
    """The bare single-threaded encoder from a shared start time: run alone and side by side
    with copies, it measures how much N cores give N independent encoders right now."""
    import torch

    from zoommil.features.encoder import PatchEncoder, build_encoder

    torch.set_num_threads(1)
    encoder = PatchEncoder(build_encoder("random")[0], precision="fp32")
    batch = np.random.default_rng(0).integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
    for _ in range(3):  # warm: the first batches after start-up run slow
        encoder.encode(batch)
    while time.time() < a["start_at"]:
        time.sleep(0.01)
    start = time.time()
    for _ in range(a["patches"] // 4):
        encoder.encode(batch)
    end = time.time()
    return {"patches_per_s": a["patches"] // 4 * 4 / (end - start), "start": start, "end": end}


CHILDREN = {
    "features": child_features,
    "predict": child_predict,
    "throughput": child_throughput,
    "bare": child_bare,
}


def run_child(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, __file__, "--child", kind, json.dumps(args)]
    tic = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["child_wall_seconds"] = time.perf_counter() - tic
    print(f"  {kind} {json.dumps({k: args[k] for k in args if k != 'out'})}", file=sys.stderr)
    return out


def parallel_capacity(processes: int, patches: int = 60, repeats: int = 2) -> list[dict]:
    """Bare-encoder patches/s of one process alone and of ``processes`` copies started
    together (a shared start time after their imports), alternating alone, together, alone,
    ...: each together run is compared with the mean of the alone runs on either side. The
    ratio is the speed-up the cores give fully independent work at that moment, the ceiling
    for the ``--threads`` rows; on a VM it moves (other tenants, SMT siblings), so it is
    measured next to them."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}

    def run(n: int) -> list[dict]:
        args = json.dumps({"patches": patches, "start_at": time.time() + 8.0 + 2.0 * n})
        cmd = [sys.executable, __file__, "--child", "bare", args]
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=env)
            for _ in range(n)
        ]  # fmt: skip
        return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]

    alone = [run(1)[0]["patches_per_s"]]
    rows = []
    for _ in range(repeats):
        together = run(processes)
        alone.append(run(1)[0]["patches_per_s"])
        overlap = min(r["end"] for r in together) - max(r["start"] for r in together)
        span = max(r["end"] for r in together) - min(r["start"] for r in together)
        base = (alone[-2] + alone[-1]) / 2
        total = sum(r["patches_per_s"] for r in together)
        rows.append(
            {"processes": processes, "alone_patches_per_s": base, "alone_runs": alone[-2:],
             "together_patches_per_s": total, "speedup": total / base,
             "overlap_fraction": overlap / span}
        )  # fmt: skip
        print(f"  capacity {rows[-1]}", file=sys.stderr)
    return rows


# --------------------------------------------------------------------------- set-up


def ensure_slides(presets: list[str], source: Path | None = None) -> dict[str, Path]:
    """The real-size slides, made from ``source`` (default: `source_slide.default_source`) when
    missing; a missing source stops here with one line saying where to download it."""
    from bench_cli import fail
    from source_slide import default_source, missing_source_message

    source = source or default_source()
    out = {}
    for preset in presets:
        path = SLIDES / f"large{preset}.tiff"
        if not path.exists():
            if not source.is_file():
                fail(missing_source_message(source))
            print(f"making {path} (minutes)", file=sys.stderr)
            subprocess.run(
                [sys.executable, str(REPO / "benchmarks" / "make_large_slide.py"),
                 "--preset", preset, "--out", str(path), "--source", str(source)],
                check=True,
            )  # fmt: skip
        out[preset] = path
    return out


def subset_coords(slide: Path, mags: list[float], n: int, name: str) -> tuple[Path, int]:
    """A coords file of the first n tissue parents (whole lattice kept when n is None)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from features import subset_parents

    from zoommil.io.coords import write_coords
    from zoommil.recipe import PreprocessingRecipe
    from zoommil.wsi.tiling import tile_slide

    lattice = tile_slide(slide, PreprocessingRecipe(mags=mags))
    total = len(lattice.xy[0])
    path = WORK / f"{name}.h5"
    write_coords(path, subset_parents(lattice, n))
    return path, total


def make_checkpoints() -> dict[str, Path]:
    import torch

    from zoommil.models import build_model
    from zoommil.training.checkpoint import save_checkpoint

    out = {}
    pre = {"patch_size": 256, "weights": "random", "weights_seed": 0, "precision": "fp32"}
    for arch, mags, kwargs in (
        ("zoommil", BRIGHT["mags"], {"k": BRIGHT["k"]}),
        ("abmil", [BRIGHT["mags"][-1]], {}),
    ):
        torch.manual_seed(0)
        model = build_model(arch, in_dim=1024, n_classes=2, mags=mags, **kwargs)
        config = {
            "method": arch,
            "arch": arch,
            "kwargs": kwargs,
            "classes": ["normal", "tumour"],
            "mags": mags,
            "config_mags": mags,
            "in_dim": 1024,
            "preprocessing": pre,
        }
        out[arch] = save_checkpoint(WORK / f"{arch}_bright.pt", model.state_dict(), config)
    return out


# --------------------------------------------------------------------------- report


def rates(
    energy: dict[str, Any], slides: float | None = None, patches: float | None = None
) -> dict[str, Any]:
    """A child's CPU energy per slide / patch at its rate, gCO2 from the user's intensity."""
    return per_work(energy, slides, patches, GRID["gco2_per_kwh"])


def energy_lines(res: dict[str, Any]) -> list[str]:
    """scale.md's CPU energy section: a line per measured row, or one "not measured" line."""
    rows = [
        (f"features {r['slide']} {r['precision']} {r['parents']} parents", r)
        for r in res["features"]
    ] + [
        (f"predict {r['slide']} {r['model']} {r.get('precision', 'fp32')} workers "
         f"{r['workers']} batch {r['batch']}", r)
        for r in res["predict"]
    ] + [(f"{r['what']} threads {r['threads']}", r) for r in res.get("cores", [])] + [
        (f"profile threads {r['threads']}", r) for r in res.get("threads", [])
    ]  # fmt: skip
    energies = [(what, r["cpu_energy"]) for what, r in rows if "cpu_energy" in r]
    if not energies:
        return []
    lines = [
        "",
        "## CPU energy (RAPL: CPU package and DRAM counters, whole socket)",
        "",
        "Each row's timed phase only; other processes on the socket count too, and the rest "
        "of the machine (disks, fans, power supply, cooling) does not. It varies by machine.",
        "",
    ]
    missing = {e["reason"] for _, e in energies if not e.get("measured")}
    if len(missing) == 1 and all(not e.get("measured") for _, e in energies):
        return [*lines, f"- not measured ({missing.pop()})"]
    return lines + [f"- {what}: {describe(e)}" for what, e in energies]


def ratio_cell(r: dict[str, Any], key: str = "whole_over_bare") -> str:
    """The median ratio, with the range over the repeats when there are several."""
    runs = r.get(f"{key}_runs") or []
    value = r.get(key, float("nan"))
    if len(runs) < 2:
        return f"{value:.2f}"
    return f"{value:.2f} ({min(runs):.2f}-{max(runs):.2f}, {len(runs)} runs)"


def over_encode(r: dict[str, Any]) -> str:
    """End to end over the run's own encoding time: what tissue, tiling and reading add,
    free of the drift of the bare rate measured minutes before."""
    ratios = r.get("runs_over_encode") or [r["seconds"] / r["phases"]["encode"]]
    spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
    return f"; over its own encoding time {r['seconds'] / r['phases']['encode']:.2f}{spread}"


def runs_range(r: dict[str, Any]) -> str:
    """The range of a predict row's seconds where it is the median of several runs."""
    runs = r.get("runs_seconds") or [r["seconds"]]
    return f" ({min(runs):.1f}-{max(runs):.1f}, {len(runs)} runs)" if len(runs) > 1 else ""


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# Scale benchmark (real-size slides)",
        "",
        f"Machine: {m['cpu_count']} cores ({m['processor']}), load average at start "
        f"{m['loadavg_start']}; torch {m['torch']}"
        + {True: "; bf16 native", False: "; bf16 emulated", None: ""}[m.get("native_bf16")]
        + ". Shared machine: other processes were "
        "running, so absolute speeds vary; ratios are measured in the same child process.",
        "",
        "Slides: "
        + "; ".join(
            f"{k}: {v['width']}x{v['height']} px at {v['mpp']} um/px, "
            f"{v['bytes'] / 2**20:.0f} MiB JPEG, {v.get('seconds', float('nan')):.0f} s and "
            f"{v.get('peak_rss_mb', float('nan')):.0f} MB peak RSS to generate"
            for k, v in res["slides"].items()
        ),
        "",
        "## Features (10x -> 20x lattice, 1 encoder thread, batch 4, 1 reader process)",
        "",
        "| slide | precision | parents (of) | patches | bare p/s | whole p/s | whole/bare | "
        "whole/bare after the first batch | reader wait s (first batch) | encode s | "
        "peak RSS MB | readers' peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["features"]:
        s = r.get("stream") or {}
        lines.append(
            f"| {r['slide']} | {r['precision']} | {r['parents']} ({r['parents_total']}) | "
            f"{r['patches']} | {r['bare_patches_per_s']:.1f} | {r['whole_patches_per_s']:.1f} | "
            f"{ratio_cell(r)} | {ratio_cell(r, 'steady_over_bare')} | "
            f"{s.get('reader_wait_seconds', 0):.1f} "
            f"({s.get('first_read_wait_seconds', float('nan')):.1f}) | "
            f"{s.get('encode_seconds', 0):.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['readers_peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "## Predict, BRIGHT setting (1.25x -> 2.5x -> 10x, K = 12; ABMIL: all 10x patches)",
        "",
        "| slide | model | precision | threads | reader procs | batch | s | patches | tiling s "
        "| read wait s | encode s | peak RSS MB | slides/h |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["predict"]:
        ph = r["phases"]
        lines.append(
            f"| {r['slide']} | {r['model']} | {r.get('precision', 'fp32')} | {r['threads']} | "
            f"{r['workers']} | {r['batch']} | "
            f"{r['seconds']:.1f}{runs_range(r)} | {r['patches_encoded']} | "
            f"{ph['tissue_and_tiling']:.1f} | "
            f"{ph['read']:.1f} | {ph['encode']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{3600 / r['seconds']:.0f} |"
        )
    lines += ["", "## ZoomMIL vs ABMIL and the one-core BRIGHT number", ""]
    for s in res["summary"]:
        lines.append(f"- {s}")
    if res.get("cores"):
        lines += [
            "",
            "## --threads on one slide (40x; features: CAMELYON16 lattice, fp32; predict: BRIGHT)",
            "",
            "Threads N > 1: this process's encoder plus N - 1 single-threaded encoder processes "
            "(`EncoderPool`), and one reader process. s: features, the slide's encoding from "
            "the start of the encoder processes (this process encodes while they start); "
            "predict, predict_slide with the encoder processes already up (their start-up is "
            "the next column).",
            "",
        ]
        for c in res.get("capacity", []):
            lines.append(
                f"- ceiling, measured first: {c['processes']} independent bare encoders started "
                f"together {c['together_patches_per_s']:.2f} p/s vs one alone "
                f"{c['alone_patches_per_s']:.2f} p/s = {c['speedup']:.2f}x (runs overlapped "
                f"{c['overlap_fraction']:.0%})"
            )
        lines += [
            "",
            "| what | threads | patches | s | speed-up | encoder start s | child wall s "
            "| peak RSS MB (main + readers) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        base = {r["what"]: r["seconds"] for r in res["cores"] if r["threads"] == 1}
        for r in res["cores"]:
            start = r.get("encoder_start_seconds")
            lines.append(
                f"| {r['what']} | {r['threads']} | {r['patches']} | {r['seconds']:.1f} | "
                f"{base.get(r['what'], float('nan')) / r['seconds']:.2f}x | "
                f"{'' if start is None else f'{start:.1f}'} | {r['child_wall_seconds']:.1f} | "
                f"{r['peak_rss_mb']:.0f} + {r['readers_peak_rss_mb']:.0f} |"
            )
    if res.get("threads"):
        lines += [
            "",
            "## All cores (ZoomMIL BRIGHT, copies of the 40x slide)",
            "",
            "| threads | processes | cores | s/slide | slides/h |",
            "|---|---|---|---|---|",
        ]
        for r in res["threads"]:
            lines.append(
                f"| {r['threads']} | {r.get('processes', 1)} | {r['cpu_count']} | "
                f"{r['seconds_per_slide']:.1f} | {r['slides_per_hour']:.0f} |"
            )
    lines += energy_lines(res)
    lines += ["", f"Command: `{res['command']}`; total {res['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("KIND", "JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="few parents, one slide's predict")
    parser.add_argument("--parents", type=int, default=40, help="parents per features run")
    parser.add_argument(
        "--bf16-parents",
        type=int,
        default=None,
        help="parents per bf16 run (default: as fp32 where the CPU has native bf16, else 4: "
        "emulated bf16 is ~8x slower than fp32)",
    )
    parser.add_argument(
        "--abmil-parents",
        type=int,
        default=120,
        help="ABMIL reads the first N tissue parents and is extrapolated to the whole slide "
        "(0: whole slide)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="whole-path runs per features row, each between two bare-encoder runs (median)",
    )
    parser.add_argument(
        "--predict-repeats",
        type=int,
        default=3,
        help="runs of the one-core ZoomMIL rows (40x slide, 1 reader, batch 4); the median is "
        "reported with the range",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=("features", "predict", "threads"))
    parser.add_argument(
        "--source", type=Path, help="CMU-1-Small-Region.svs, when the slides must be made"
    )
    parser.add_argument(
        "--grid-gco2-per-kwh",
        type=float,
        help="your grid's carbon intensity (gCO2 per kWh): adds CO2 to the energy rows "
        "(none is assumed)",
    )
    args = parser.parse_args(argv)
    if args.grid_gco2_per_kwh is not None and not args.grid_gco2_per_kwh >= 0:
        bench_cli.fail(f"--grid-gco2-per-kwh {args.grid_gco2_per_kwh}: must be 0 or more")
    GRID["gco2_per_kwh"] = args.grid_gco2_per_kwh
    if args.child:
        kind, payload = args.child
        global _READERS
        _READERS = ChildrenPeak()
        print(json.dumps(CHILDREN[kind](json.loads(payload))))
        return 0

    import torch

    tic = time.perf_counter()
    bench_cli.output_folder(WORK)
    slides = ensure_slides(["20x", "40x"], args.source)
    n = 8 if args.quick else args.parents
    res: dict[str, Any] = {
        "command": "python benchmarks/scale.py " + " ".join(argv or sys.argv[1:]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__,
        },
        "slides": {},
        "features": [],
        "predict": [],
        "summary": [],
        "threads": [],
        "cores": [],
        "capacity": [],
    }
    for name, path in slides.items():
        meta = Path(str(path) + ".json")
        res["slides"][name] = json.loads(meta.read_text()) if meta.exists() else {}

    from zoommil.features.encoder import native_bf16

    native = native_bf16(torch.device("cpu"))
    res["machine"]["native_bf16"] = native
    if "features" not in args.skip:
        # emulated bf16 is much slower: a few parents, and only once per slide
        bf16_parents = args.bf16_parents
        if bf16_parents is None and not native:
            bf16_parents = 4
        for name, path in slides.items():
            sizes = [n] + ([4 * n] if name == "40x" else [])
            for parents in sizes:
                coords, total = subset_coords(path, CAMELYON, parents, f"coords_{name}_{parents}")
                # bf16 at 4N too where it runs uncapped (native, no --bf16-parents)
                both = parents == n or bf16_parents is None
                for precision in ("fp32", "bf16") if both else ("fp32",):
                    slow_bf16 = precision == "bf16" and not native
                    used = parents
                    if precision == "bf16" and bf16_parents is not None:
                        used = min(bf16_parents, parents)
                    if used < parents:
                        coords, _ = subset_coords(path, CAMELYON, used, f"coords_{name}_bf16")
                    r = run_child(
                        "features",
                        {
                            "slide": str(path),
                            "coords": str(coords),
                            "out": str(WORK / f"feats_{name}_{parents}_{precision}.h5"),
                            "precision": precision,
                            "threads": 1,
                            "workers": 1,
                            "batch": 4,
                            "bare_patches": 8 if args.quick or slow_bf16 else 96,
                            "repeats": 1 if args.quick or slow_bf16 else args.repeats,
                        },
                    )
                    r["cpu_energy"] = rates(r["cpu_energy"], patches=r["patches"])
                    res["features"].append(
                        {"slide": name, "precision": precision, "parents": used,
                         "parents_total": total, **r}
                    )  # fmt: skip
                    save(res, tic)

    bare = {
        r["precision"]: r["bare_patches_per_s"]
        for r in res["features"]
        if r["slide"] == "40x" and r["parents"] == n
    }
    if "predict" not in args.skip:
        ckpts = make_checkpoints()
        runs = [("40x", "zoommil", 1, 4), ("40x", "abmil", 1, 4), ("40x", "zoommil", 0, 4)]
        if not args.quick:
            runs += [("20x", "zoommil", 1, 4), ("20x", "abmil", 1, 4), ("40x", "zoommil", 1, 16)]
        runs = [(*run, "fp32") for run in runs]
        if native and not args.quick:  # the one-core BRIGHT number at bf16 too, where it is fast
            runs.append(("40x", "zoommil", 1, 4, "bf16"))
        for name, model, workers, batch, precision in runs:
            one_core = (name, model, workers, batch) == ("40x", "zoommil", 1, 4)
            repeated = [
                run_child(
                    "predict",
                    {
                        "slide": str(slides[name]),
                        "checkpoint": str(ckpts[model]),
                        "threads": 1,
                        "workers": workers,
                        "batch": batch,
                        "precision": precision,
                        "max_parents": args.abmil_parents if model == "abmil" else None,
                    },
                )
                for _ in range(args.predict_repeats if one_core and not args.quick else 1)
            ]
            repeated.sort(key=lambda run: run["seconds"])
            r = repeated[len(repeated) // 2]  # the median run
            r["runs_seconds"] = [run["seconds"] for run in repeated]
            r["runs_over_encode"] = sorted(
                run["seconds"] / run["phases"]["encode"] for run in repeated
            )
            # a subset of ABMIL's slide is no slide: J/patch only
            r["cpu_energy"] = rates(
                r["cpu_energy"], None if r["subset_of_patches"] else 1, r["patches_encoded"]
            )
            res["predict"].append(
                {"slide": name, "model": model, "threads": 1, "workers": workers,
                 "batch": batch, "precision": precision, **r}
            )  # fmt: skip
            save(res, tic)
        for name in ["40x"] if args.quick else ["40x", "20x"]:
            z = next(
                r for r in res["predict"]
                if r["slide"] == name and r["model"] == "zoommil" and r["workers"] == 1
                and r["batch"] == 4 and r["precision"] == "fp32"
            )  # fmt: skip
            a = next(r for r in res["predict"] if r["slide"] == name and r["model"] == "abmil")
            n_all = a["subset_of_patches"] or a["patches_encoded"]
            ph = a["phases"]
            streamed = a["seconds"] - ph["tissue_and_tiling"]
            a_seconds = ph["tissue_and_tiling"] + streamed * n_all / a["patches_encoded"]
            how = (
                f"ABMIL measured on {a['patches_encoded']} of its {n_all} patches (whole-slide "
                f"tissue + tiling {ph['tissue_and_tiling']:.1f} s, then {streamed:.1f} s), "
                f"whole slide extrapolated to {a_seconds:.0f} s"
                if a["subset_of_patches"]
                else f"ABMIL {n_all} patches in {a_seconds:.1f} s"
            )
            speedup = a_seconds / z["seconds"]
            ratio = n_all / z["patches_encoded"]
            res["summary"].append(
                f"{name}: ZoomMIL {z['patches_encoded']} patches in {z['seconds']:.1f} s; {how}: "
                f"speed-up {speedup:.2f}x vs patch-count ratio {ratio:.2f}x "
                f"({speedup / ratio:.2f} of it); ABMIL peak RSS {a['peak_rss_mb']:.0f} MB"
            )
        for r in res["predict"]:
            precision = r["precision"]
            if r["slide"] == "40x" and r["model"] == "zoommil" and precision in bare:
                ideal = r["patches_encoded"] / bare[precision]
                res["summary"].append(
                    f"40x BRIGHT ZoomMIL, {precision}, 1 thread, {r['workers']} reader "
                    f"process(es), batch {r['batch']}: {r['seconds']:.1f} s{runs_range(r)} = "
                    f"{3600 / r['seconds']:.0f} slides/h (paper: ~{PAPER_BRIGHT_SLIDES_PER_HOUR} "
                    f"on one CPU core); end-to-end / (patches / bare {precision} "
                    f"{bare[precision]:.1f} p/s = {ideal:.1f} s) = {r['seconds'] / ideal:.2f}"
                    + (
                        f" ({min(runs) / ideal:.2f}-{max(runs) / ideal:.2f})"
                        if len(runs := r.get("runs_seconds", [])) > 1
                        else ""
                    )
                    + over_encode(r)
                )

    if "threads" not in args.skip:
        ckpts = make_checkpoints()
        cores = os.cpu_count() or 1
        res["capacity"] = parallel_capacity(cores)
        coords, total = subset_coords(slides["40x"], CAMELYON, 4 * n, f"coords_40x_{4 * n}")
        for threads in (1, cores):
            r = run_child(
                "features",
                {"slide": str(slides["40x"]), "coords": str(coords),
                 "out": str(WORK / f"feats_40x_{4 * n}_t{threads}.h5"), "precision": "fp32",
                 "threads": threads, "workers": 1, "batch": 4, "bare_patches": 0},
            )  # fmt: skip
            res["cores"].append(
                {"what": "features", "slide": "40x", "threads": threads, "parents": 4 * n,
                 "parents_total": total, "patches": r["patches"],
                 "seconds": r["patches"] / r["whole_patches_per_s"],
                 "cpu_energy": rates(r["cpu_energy"], patches=r["patches"]),
                 "child_wall_seconds": r["child_wall_seconds"], "encoder_start_seconds": None,
                 "peak_rss_mb": r["peak_rss_mb"], "readers_peak_rss_mb": r["readers_peak_rss_mb"]}
            )  # fmt: skip
            save(res, tic)
        for threads in (1, cores):
            r = run_child(
                "predict",
                {"slide": str(slides["40x"]), "checkpoint": str(ckpts["zoommil"]),
                 "threads": threads, "workers": 1, "batch": 4, "precision": "fp32",
                 "max_parents": None},
            )  # fmt: skip
            res["cores"].append(
                {"what": "predict zoommil (BRIGHT)", "slide": "40x", "threads": threads,
                 "patches": r["patches_encoded"], "seconds": r["seconds"],
                 "cpu_energy": rates(r["cpu_energy"], 1, r["patches_encoded"]),
                 "child_wall_seconds": r["child_wall_seconds"],
                 "encoder_start_seconds": r["encoder_start_seconds"],
                 "peak_rss_mb": r["peak_rss_mb"], "readers_peak_rss_mb": r["readers_peak_rss_mb"]}
            )  # fmt: skip
            save(res, tic)
        copies = [str(slides["40x"])] * 2
        for threads in (1, os.cpu_count() or 1):
            r = run_child(
                "throughput",
                {"checkpoint": str(ckpts["zoommil"]), "slides": copies, "threads": threads,
                 "precision": "fp32"},
            )  # fmt: skip
            r.pop("per_slide", None)
            r["cpu_energy"] = rates(r["cpu_energy"], slides=len(copies))
            res["threads"].append(r)
            save(res, tic)

    save(res, tic)
    print(markdown(res))
    return 0


def save(res: dict[str, Any], tic: float) -> None:
    """Write what is measured so far (a long run stopped early keeps its numbers)."""
    res["seconds"] = time.perf_counter() - tic
    bench_cli.write_text(OUT / "scale.json", json.dumps(res, indent=2) + "\n")
    bench_cli.write_text(OUT / "scale.md", markdown(res))


if __name__ == "__main__":
    sys.exit(main())

"""The GPU path end to end: features, profile (ZoomMIL and ABMIL), predict, a training epoch.

    bash benchmarks/gpu.sh            # GPU when there is one, else the CPU dry mode
    python benchmarks/gpu.py --dry    # CPU dry mode: tiny sizes, every step (CI runs this)

With a GPU: `extract_features --device cuda` (bf16 autocast, channels_last, pinned batches
copied non-blocking, reader processes feeding it) on the real-size slides of
benchmarks/make_large_slide.py (made when missing), `measure_throughput` for ZoomMIL and ABMIL
(BRIGHT setting) on them, ZoomMIL's `zoommil predict` over 4 copies of the 40x slide in one
process (the next slides tiled ahead), and one `zoommil train --device cuda` epoch on
synthetic feature files of realistic bag sizes; last, features with a foundation-model
architecture (UNI, ViT-L/16 at 224 px, random weights) on the first 200 tissue parents of the
40x slide (its resize to 224 px and bf16 attention on the device). Each step writes JSON under
results/benchmarks/gpu/ (dry mode: results/benchmarks/gpu-dry/ unless --out) as it ends, with
the device's busy (encode) time next to the time spent waiting for the readers, so a starved
GPU shows. A run first removes the previous run's JSONs from that folder; each JSON it writes
carries its `run_id` and `started` time, and summary.json, written last, lists its steps: a
folder without summary.json holds a run that stopped part-way.

Energy: each timed phase (each slide's features, each model's profile, the predict run, the
training command) samples the board power of the GPU it used with nvidia-smi every
--power-interval-ms and records ``gpu_energy``: joules, J/slide, J/patch and kWh per 1000
slides at the phase's own rate, with the samples taken and the interval kept; gCO2 only with
--grid-gco2-per-kwh. Without nvidia-smi, or in the dry mode unless --power-gpus names one,
the record says "not measured" and why (benchmarks/energy.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bench_cli
import numpy as np
from energy import GpuPower, describe, not_measured, per_work

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

BRIGHT_MAGS = [1.25, 2.5, 10.0]
CAMELYON_MAGS = [10.0, 20.0]
#: The steps, in the order they run, each writing ``{step}.json``; ``SUMMARY`` comes last.
STEPS = ("features", "profile", "predict", "train", "features_uni")
SUMMARY = "summary.json"


class Power:
    """Which GPUs a phase's energy is sampled on, how often, and the user's grid intensity."""

    gpus: list[str] = []
    interval_ms = 100
    grid_gco2_per_kwh: float | None = None
    reason = "no GPU used by this phase"

    @classmethod
    def start(cls) -> GpuPower:
        return GpuPower(cls.gpus, cls.interval_ms).start()

    @classmethod
    def stop(cls, meter: GpuPower, what: str, slides: float, patches: float | None) -> dict:
        try:
            energy = meter.stop()
        except Exception as error:  # energy is optional: it never stops the benchmark
            energy = not_measured(f"power sampling failed ({type(error).__name__}: {error})")
        if not cls.gpus:
            energy = {**energy, **not_measured(cls.reason)}
        energy = per_work(energy, slides, patches, cls.grid_gco2_per_kwh)
        print(f"GPU energy, {what}: {describe(energy)}", file=sys.stderr)
        return energy


def cuda_gpu_id() -> str:
    """The nvidia-smi id of the GPU torch runs on: its UUID (CUDA's device order need not be
    nvidia-smi's), else its entry in CUDA_VISIBLE_DEVICES, else its index."""
    import torch

    index = torch.cuda.current_device()
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
    except (AttributeError, RuntimeError):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        return visible[index].strip() if index < len(visible) and visible[index] else str(index)


def write_json(path: Path, data: dict[str, Any]) -> None:
    bench_cli.output_folder(path.parent)
    bench_cli.write_text(path, json.dumps(data, indent=2) + "\n")
    print(f"{path}", file=sys.stderr)


def start_run(out: Path) -> dict[str, str]:
    """A new run's ``run_id`` and ``started`` (UTC), once the previous run's step JSONs and
    summary are gone from ``out``.

    Why: each step's JSON is written as the step ends, so a run stopped part-way left its
    first steps' JSONs beside an earlier run's later ones and its summary.json, which read as
    one run. The summary goes first: a folder without one never passes for a whole run."""
    for name in (SUMMARY, *(f"{step}.json" for step in STEPS)):
        bench_cli.output_file(out / name).unlink(missing_ok=True)
    started = datetime.now(timezone.utc)
    return {
        "run_id": f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        "started": started.isoformat(timespec="seconds"),
    }


def slides_for(dry: bool, work: Path, source: Path | None = None) -> dict[str, Path]:
    """The real-size slides (made from ``source`` when missing), or (dry) two tiny mosaics
    made in a second."""
    if not dry:
        from scale import ensure_slides

        return ensure_slides(["20x", "40x"], source)
    import importlib.util

    from zoommil.synth.large import LargeSlideSpec, write_large_slide

    compression = "jpeg" if importlib.util.find_spec("imagecodecs") else "zlib"
    import cv2

    rng = np.random.default_rng(0)
    source = rng.integers(60, 190, size=(700, 900, 3), dtype=np.uint8)
    source[..., 0] = 170  # pink, blurred: tissue to the detector
    source = cv2.GaussianBlur(source, (0, 0), 3)
    out = {}
    for name, mpp in (("20x", 0.5), ("40x", 0.25)):
        path = work / f"tiny{name}.tiff"
        spec = LargeSlideSpec(width=1024, height=768, mpp=mpp, block=128, min_level_side=128)
        if not path.exists():
            write_large_slide(path, source, spec, compression)
        out[name] = path
    return out


def features_step(
    slides: dict[str, Path],
    device: str,
    dry: bool,
    work: Path,
    encoder: str | None = None,
    parents: int | None = None,
) -> dict:
    """`extract_features` on each slide: every tissue parent (dry: 4), or the first
    ``parents``; ``encoder`` a registered encoder (default the paper's ResNet-50), with
    random weights, so the cost is the architecture's."""
    from features import subset_parents

    from zoommil.features.extraction import extract_features
    from zoommil.io.coords import write_coords
    from zoommil.recipe import PreprocessingRecipe
    from zoommil.wsi.tiling import tile_slide

    rows = []
    for name, slide in slides.items():
        recipe = PreprocessingRecipe(mags=CAMELYON_MAGS, patch_size=64 if dry else 256)
        lattice = tile_slide(slide, recipe)
        coords = work / f"coords_{name}.h5"
        write_coords(coords, subset_parents(lattice, 4 if dry else parents))
        meter = Power.start()
        result = extract_features(
            slide,
            coords,
            work / f"features_{encoder or 'resnet'}_{name}.h5",
            weights="random",
            encoder_name=encoder,
            device=device,
            precision="bf16" if device == "cuda" else "fp32",
            threads=1 if device == "cpu" else None,
            progress=False,
        )
        patches = int(sum(result.num_patches))
        energy = Power.stop(meter, f"features {encoder or 'resnet50'} {name}", 1, patches)
        stream = result.attrs.get("stream", {})
        rows.append(
            {
                "slide": name,
                "encoder": result.attrs.get("encoder"),
                "patches": patches,
                "seconds": result.seconds,
                "patches_per_second": result.patches_per_second,
                "device_busy_seconds": stream.get("encode_seconds"),
                "reader_wait_seconds": stream.get("reader_wait_seconds"),
                "batch_size": result.attrs.get("batch_size"),
                "precision": result.attrs.get("precision"),
                "gpu_energy": energy,
            }
        )
    return {"step": "features", "device": device, "slides": rows}


def checkpoints(work: Path, patch_size: int, k: int = 12) -> dict[str, Path]:
    import torch

    from zoommil.models import build_model
    from zoommil.training.checkpoint import save_checkpoint

    out = {}
    pre = {"patch_size": patch_size, "weights": "random", "weights_seed": 0, "precision": "bf16"}
    for arch, mags, kwargs in (
        ("zoommil", BRIGHT_MAGS, {"k": k}),
        ("abmil", [BRIGHT_MAGS[-1]], {}),
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
        out[arch] = save_checkpoint(work / f"{arch}.pt", model.state_dict(), config)
    return out


def profile_step(slides: dict[str, Path], ckpts: dict[str, Path], device: str) -> dict:
    import torch

    from zoommil.efficiency.throughput import measure_throughput
    from zoommil.inference.predict import Predictor

    rows = []
    for ckpt in ckpts.values():
        predictor = Predictor.from_checkpoint(ckpt, device=device)
        meter = Power.start()
        result = measure_throughput(
            predictor,
            [(name, path) for name, path in slides.items()],
            torch.device(device),
            threads=1,
            precision="fp32" if device == "cpu" else "bf16",  # bf16 on a CPU is emulated
            # the first slide once untimed: a GPU's first calls of the heads (cuBLAS handle,
            # lazily loaded kernels) would otherwise land in the first timed slide
            warmup=1,
        )
        # the call's energy covers its untimed warm-up too: the first slide once more
        timed = result["per_slide"]
        patches = sum(r["patches_encoded"] for r in timed) + timed[0]["patches_encoded"]
        result["gpu_energy"] = Power.stop(meter, f"profile {ckpt.stem}", len(timed) + 1, patches)
        result["gpu_energy"]["note"] = "includes the untimed warm-up run of the first slide"
        for r in result["per_slide"]:
            r["device_busy_seconds"] = r["phases"]["encode"]
            r["reader_wait_seconds"] = r["phases"]["read"]
        rows.append(result)
    return {"step": "profile", "device": device, "methods": rows}


def predict_step(slides: dict[str, Path], ckpts: dict[str, Path], device: str, work: Path) -> dict:
    """`zoommil predict` over 4 copies of the 40x slide in one process (ZoomMIL BRIGHT): the
    next slides are tiled ahead while one is encoded, so the slides after the first show what
    is left per slide once tiling is off the device's path (compare the profile step, which
    times each slide alone, tiling included)."""
    from zoommil.inference.cohort import Settings, predict_slides, tasks_in_dir
    from zoommil.inference.predict import Predictor

    folder = work / "predict_slides"
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for i in range(4):
        link = folder / f"copy{i}{slides['40x'].suffix}"
        if not link.exists():
            link.symlink_to(slides["40x"].resolve())
        copies.append(link)
    predictor = Predictor.from_checkpoint(ckpts["zoommil"], device=device)
    precision = "bf16" if device == "cuda" else "fp32"
    tasks = tasks_in_dir(copies, work / "predict_out", heatmaps=True)
    meter = Power.start()
    summary = predict_slides(Settings(predictor, device, precision), tasks, threads=1)
    rows = [
        {k: r[k] for k in ("slide_id", "status", "patches_encoded", "seconds", "reason")}
        for r in summary["rows"]
    ]
    patches = sum(r["patches_encoded"] or 0 for r in rows)
    energy = Power.stop(meter, "predict", len(rows), patches)
    return {
        "step": "predict",
        "device": device,
        "precision": precision,
        "slides": rows,
        "wall_seconds": summary["wall_seconds"],
        "slides_per_hour": summary["slides_per_hour"],
        "seconds_per_slide_after_the_first": float(np.median([r["seconds"] for r in rows[1:]])),
        "gpu_energy": energy,
    }


def _children(coords: np.ndarray, depth: int) -> np.ndarray:
    """Depth-first descendants ``depth`` quadtree steps below each (row, col)."""
    steps = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
    for _ in range(depth):
        coords = (2 * coords[:, None, :] + steps[None]).reshape(-1, 2)
    return coords


def train_step(device: str, dry: bool, work: Path) -> dict:
    """One epoch of `zoommil train` on synthetic feature files of realistic bag sizes."""
    import yaml

    from zoommil.io.featurefile import write_feature_file

    rng = np.random.default_rng(0)
    n_parents = 2 if dry else 60  # BRIGHT: 1 + 4 + 64 patches per 1.25x parent
    root = work / "train"
    rows = []
    for split, n in (("train", 8 if dry else 24), ("val", 4), ("test", 4)):
        for i in range(n):
            slide_id = f"{split}_{i:02d}"
            low = np.stack([np.zeros(n_parents, int), np.arange(n_parents)], axis=1)
            coords = [low, _children(low, 1), _children(low, 3)]  # 1.25x, 2.5x, 10x
            feats = [rng.normal(size=(len(c), 1024)).astype(np.float32) for c in coords]
            sides = [2048, 1024, 256]  # level-0 px per patch at 0.25 um/px
            xy = [c[:, ::-1] * s for c, s in zip(coords, sides, strict=True)]
            attrs = {"patch_size": 256, "weights": "random", "tissue_method": "gaussian"}
            write_feature_file(
                root / "features" / f"{slide_id}.h5", BRIGHT_MAGS, feats, coords, xy, attrs
            )
            rows.append((slide_id, f"/nowhere/{slide_id}.svs", ["normal", "tumor"][i % 2], split))
    sheet = root / "slides.tsv"
    sheet.write_text("slide_id\tpath\tlabel\tsplit\n" + "".join("\t".join(r) + "\n" for r in rows))
    config = {
        "features_dir": str(root / "features"),
        "sheet": str(sheet),
        "mags": BRIGHT_MAGS,
        "epochs": 1,
        "lr": 1e-4,
        "selection": "val_loss",
        "methods": {"zoommil": {"arch": "zoommil", "k": 12}},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable, "-m", "zoommil", "train", "--config", str(root / "config.yaml"),
        "--model", "zoommil", "--out", str(root / "out"), "--device", device, "--epochs", "1",
        "--no-progress",
    ]  # fmt: skip
    tic = time.perf_counter()
    meter = Power.start()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - tic
    n_train = sum(r[3] == "train" for r in rows)
    energy = Power.stop(meter, "train", n_train, n_train * n_parents * (1 + 4 + 64))
    energy["note"] = (
        "the whole `zoommil train` command (start-up, one epoch, validation and test) per "
        "training slide: one epoch's J/slide at most"
    )
    if proc.returncode != 0:
        raise RuntimeError(f"zoommil train failed:\n{proc.stderr[-2000:]}")
    with (root / "out" / "log.csv").open() as log:
        epochs = list(csv.DictReader(log))
    return {
        "step": "train",
        "device": device,
        "slides": len(rows),
        "patches_per_slide": n_parents * (1 + 4 + 64),
        # the epoch alone (log.csv), then the whole command: start-up, CUDA init, reading bags
        "seconds_epoch": float(epochs[-1]["seconds"]),
        "seconds_one_epoch_with_startup": seconds,
        "gpu_energy": energy,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="CPU dry mode with tiny sizes")
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument(
        "--source",
        type=Path,
        help="CMU-1-Small-Region.svs, to make the real-size slides when results/benchmarks/"
        "slides has none (default: shared/data/slides/ in or beside the checkout)",
    )
    parser.add_argument(
        "--power-gpus",
        help="nvidia-smi GPU ids (index or UUID, comma-separated) whose board power each phase "
        "samples (default: the GPU torch runs on; none in the dry mode)",
    )
    parser.add_argument(
        "--power-interval-ms", type=int, default=100, help="power sampling interval (ms)"
    )
    parser.add_argument(
        "--grid-gco2-per-kwh",
        type=float,
        help="your grid's carbon intensity (gCO2 per kWh): adds gCO2 to each energy record "
        "(none is assumed)",
    )
    args = parser.parse_args(argv)
    if args.power_interval_ms < 1:
        bench_cli.fail(f"--power-interval-ms {args.power_interval_ms}: must be at least 1")
    if args.grid_gco2_per_kwh is not None and not args.grid_gco2_per_kwh >= 0:
        bench_cli.fail(f"--grid-gco2-per-kwh {args.grid_gco2_per_kwh}: must be 0 or more")
    import torch

    dry = args.dry or not torch.cuda.is_available()
    if dry and not args.dry:
        print(
            f"no CUDA device visible to torch {torch.__version__} "
            f"(CUDA build {torch.version.cuda}): running the CPU dry mode",
            file=sys.stderr,
        )
    device = "cpu" if dry else "cuda"
    Power.interval_ms = args.power_interval_ms
    Power.grid_gco2_per_kwh = args.grid_gco2_per_kwh
    if args.power_gpus:
        Power.gpus = [g.strip() for g in args.power_gpus.split(",") if g.strip()]
    else:
        Power.gpus = [] if dry else [cuda_gpu_id()]
        Power.reason = "dry mode: no GPU ran the phase (--power-gpus names one to sample)"
    out = args.out or REPO / "results" / "benchmarks" / ("gpu-dry" if dry else "gpu")
    bench_cli.output_folder(out)
    run = start_run(out)
    work = bench_cli.output_folder(out / "work")
    if dry:
        torch.set_num_threads(1)
    tic = time.perf_counter()
    info = {
        "dry": dry,
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    slides = slides_for(dry, work, args.source)
    ckpts = checkpoints(work, 64 if dry else 256, 2 if dry else 12)  # profile's and predict's
    steps = {
        "features": lambda: features_step(slides, device, dry, work),
        "profile": lambda: profile_step(slides, ckpts, device),
        "predict": lambda: predict_step(slides, ckpts, device, work),
        "train": lambda: train_step(device, dry, work),
        # last, so that the paper's steps are written even if this one runs out of time
        "features_uni": lambda: features_step(
            {"40x": slides["40x"]}, device, dry, work, encoder="uni", parents=200
        ),
    }
    written = []
    for name in STEPS:
        t0 = time.perf_counter()
        result = steps[name]()
        path = out / f"{name}.json"
        write_json(path, {**info, **run, **result, "step_seconds": time.perf_counter() - t0})
        written.append(path.name)
    summary = {**info, **run, "steps": written, "seconds": time.perf_counter() - tic}
    write_json(out / SUMMARY, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""All cores vs one: `zoommil features` and `predict` with --threads 1 vs N on one slide.

On CPU, ``--threads N`` > 1 encodes in the calling process and N - 1 single-threaded encoder
processes (`zoommil.features.encoder_pool.EncoderPool`); the goal (issue 15, item 4) is
>= 1.8x the 1-thread slides/h on 2 cores. Measured here:

- features: the whole CLI (`zoommil features ... --threads T`, a fresh process each run, so
  the encoder processes' start-up is included), wall seconds, median of ``--repeats``;
- predict: `predict_slide` for ZoomMIL and all-patch ABMIL with a warm encoder (one process,
  one torch thread) vs the same encoder with a warm pool of N - 1 processes, as a stream of
  slides would run; the pool's start-up (spawn + building N - 1 encoders) is reported on its
  own;
- predict over slides: the whole CLI, `zoommil predict S1 .. Sm --out-dir D --threads T` on
  ``--copies`` m copies of the slide (links), ZoomMIL: one process with its reader and
  encoder processes for T = 1, min(T, m) processes over whole slides for T > 1; slides/h is
  m / wall seconds, start-up included.

Random encoder weights (no download; weights do not change the time). Run it on a quiet
machine: the numbers are meaningless while other jobs share the cores.

    python benchmarks/threads.py                      # CMU-1-Small-Region, 5/10/20x, 1 vs 2
    python benchmarks/threads.py --slide big.tiff --mags 10 20 --k 300 --threads 4
    python benchmarks/threads.py --quick              # tiny: checks the script runs
    python benchmarks/threads.py --slide large40x.tiff --mags 1.25 2.5 10 --k 12 --what many

Writes results/benchmarks/threads.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import bench_cli
import torch
from source_slide import default_source

from zoommil.environment import cpu_model
from zoommil.features.encoder_pool import EncoderPool, EncoderRecipe
from zoommil.inference.predict import Predictor, make_encoder, predict_slide
from zoommil.models import build_model
from zoommil.recipe import PreprocessingRecipe
from zoommil.training.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
CMU = default_source()
OUT = REPO / "results" / "benchmarks"


def cli(*args: str) -> float:
    """Wall seconds of one `zoommil` command (fails loudly)."""
    tic = time.perf_counter()
    bench_cli.zoommil(*args)
    return time.perf_counter() - tic


def time_features(slide: Path, mags: list[float], threads: list[int], repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        coords = Path(tmp) / "coords.h5"
        cli("tile", str(slide), "--mags", *map(str, mags), "--out", str(coords))
        out = {}
        for t in threads:
            argv = ["features", str(slide), "--coords", str(coords), "--weights", "random"]
            argv += ["--threads", str(t), "--no-progress", "--out", str(Path(tmp) / f"f{t}.h5")]
            times = [cli(*argv) for _ in range(repeats)]
            out[t] = {"seconds": statistics.median(times), "runs": times}
    return out


def predictors(mags: list[float], k: int) -> list[Predictor]:
    torch.manual_seed(0)
    classes = ["a", "b"]
    zoom = build_model("zoommil", in_dim=1024, n_classes=2, mags=mags, k=k).eval()
    abmil = build_model("abmil", in_dim=1024, n_classes=2).eval()
    full = PreprocessingRecipe(mags=mags, weights="random", no_tissue="all")
    top = PreprocessingRecipe(mags=mags[-1:], weights="random", no_tissue="all")
    return [
        Predictor(zoom, "zoommil", classes, full, method="zoommil"),
        Predictor(abmil, "abmil", classes, top, method="abmil"),
    ]


def time_predict(slide: Path, predictor: Predictor, encoder, repeats: int) -> dict:
    predict_slide(predictor, slide, encoder)  # warm-up: allocators, reader processes
    times, patches = [], 0
    for _ in range(repeats):
        tic = time.perf_counter()
        patches = predict_slide(predictor, slide, encoder)["patches_encoded"]
        times.append(time.perf_counter() - tic)
    return {"seconds": statistics.median(times), "runs": times, "patches_encoded": patches}


def time_predict_many(
    slide: Path, predictor: Predictor, k: int, copies: int, threads: list[int], repeats: int
) -> dict:
    """The whole `zoommil predict` CLI on ``copies`` links to ``slide``, per thread count."""
    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "method": predictor.method,
            "arch": predictor.arch,
            "kwargs": {"k": k},
            "classes": predictor.classes,
            "mags": predictor.mags,
            "config_mags": predictor.mags,
            "in_dim": 1024,
            "preprocessing": {"patch_size": predictor.patch_size, "weights": "random"},
        }
        ckpt = save_checkpoint(Path(tmp) / "zoommil.pt", predictor.model.state_dict(), config)
        links = []
        for i in range(copies):
            links.append(Path(tmp) / f"copy{i}{slide.suffix}")
            links[-1].symlink_to(slide.resolve())
        out = {}
        for t in threads:
            argv = ["predict", *map(str, links), "--checkpoint", str(ckpt), "--threads", str(t)]
            times, per_slide = [], []
            for _ in range(repeats):
                times.append(cli(*argv, "--out-dir", str(Path(tmp) / "out")))
                with (Path(tmp) / "out" / "predictions.tsv").open() as handle:
                    rows = list(csv.DictReader(handle, delimiter="\t"))
                assert all(r["status"] == "ok" for r in rows), rows
                per_slide += [float(r["seconds"]) for r in rows]
            out[t] = {
                "seconds": statistics.median(times) / copies,
                "runs": times,
                # one slide's time inside its process, all runs: predictions.tsv's seconds,
                # the JSON's seconds.total (slide file to MIL head; start-up and writing the
                # JSON excluded)
                "slide_seconds": statistics.median(per_slide),
                "processes": min(t, copies),
            }
    return out


def run(args: argparse.Namespace) -> dict:
    slide = Path(args.slide)
    threads = [1, args.threads]
    result: dict = {
        "slide": slide.name,
        "mags": args.mags,
        "k": args.k,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "torch_version": torch.__version__,
        "threads": threads,
        "copies": args.copies,
        "features": {},
        "predict": {},
    }
    if "features" in args.what:
        result["features"] = time_features(slide, args.mags, threads, args.repeats)
    torch.set_num_threads(1)
    zoom = predictors(args.mags, args.k)[0]
    if "many" in args.what:
        result["many"] = time_predict_many(slide, zoom, args.k, args.copies, threads, args.repeats)
    for predictor in predictors(args.mags, args.k) if "predict" in args.what else []:
        encoder, _ = make_encoder(predictor)
        rows = {1: time_predict(slide, predictor, encoder, args.repeats)}
        tic = time.perf_counter()
        recipe = EncoderRecipe(predictor.recipe.encoder, "random", 0, encoder.precision)
        with EncoderPool(recipe, args.threads - 1, local=encoder) as pool:
            # workers up: two one-patch batches per worker go to the workers first
            warm = torch.zeros(2 * (args.threads - 1), 64, 64, 3, dtype=torch.uint8)
            pool.encode(warm.numpy(), batch_size=1)
            startup = time.perf_counter() - tic
            rows[args.threads] = time_predict(slide, predictor, pool, args.repeats)
        rows[args.threads]["pool_startup_seconds"] = startup
        result["predict"][predictor.method] = rows
    for rows in [result["features"], result.get("many", {}), *result["predict"].values()]:
        if not rows:
            continue
        for row in rows.values():
            row["slides_per_hour"] = 3600.0 / row["seconds"]
        rows["speedup"] = rows[1]["seconds"] / rows[args.threads]["seconds"]
    return result


def markdown(result: dict) -> str:
    n = result["threads"][-1]
    lines = [
        f"# --threads 1 vs {n}: {result['slide']} ({'/'.join(map(str, result['mags']))}x, "
        f"K={result['k']})",
        "",
        f"{result['cpu']}, {result['cpu_count']} cores, torch {result['torch_version']}, "
        f"median of {result['repeats']} run(s). Numbers vary by machine and load.",
        "",
        f"| what | 1 thread s/slide | {n} threads s/slide | slides/h 1 | slides/h {n} | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    rows = {"features (CLI, start-up included)": result["features"]}
    for method, r in result["predict"].items():
        rows[f"predict {method} (warm, {r[1]['patches_encoded']} patches)"] = r
    if result.get("many"):
        what = f"predict zoommil over {result['copies']} slides (CLI, start-up included)"
        rows[what] = result["many"]
    rows = {what: r for what, r in rows.items() if r}
    for what, r in rows.items():
        lines.append(
            f"| {what} | {r[1]['seconds']:.2f} | {r[n]['seconds']:.2f} | "
            f"{r[1]['slides_per_hour']:.0f} | {r[n]['slides_per_hour']:.0f} | "
            f"{r['speedup']:.2f}x |"
        )
    many = result.get("many")
    if many:
        # steady state: slides finish at processes / (one slide's time in its process)
        rate = {t: many[t]["processes"] / many[t]["slide_seconds"] for t in (1, n)}
        lines += [
            "",
            f"Over slides, start-up excluded (median time of a slide inside its process): "
            f"1 thread {many[1]['slide_seconds']:.1f} s, {many[n]['processes']} processes "
            f"{many[n]['slide_seconds']:.1f} s each: {rate[n] / rate[1]:.2f}x the slides/h.",
        ]
    startups = [f"{m} {r[n]['pool_startup_seconds']:.1f} s" for m, r in result["predict"].items()]
    if startups:
        lines += ["", f"Pool start-up ({n - 1} encoder processes): {', '.join(startups)}."]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", default=str(CMU))
    parser.add_argument("--mags", type=float, nargs="+", default=[5.0, 10.0, 20.0])
    parser.add_argument("--k", type=int, default=2, help="ZoomMIL's regions kept per step")
    parser.add_argument("--threads", type=int, default=2, help="compared against 1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2.5/5x, 1 repeat: a smoke run")
    parser.add_argument(
        "--what",
        nargs="+",
        choices=("features", "predict", "many"),
        default=["features", "predict", "many"],
        help="what to time (default: all three)",
    )
    parser.add_argument("--copies", type=int, default=4, help="slides for 'many' (default 4)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.mags, args.repeats = [2.5, 5.0], 1
    if args.threads < 2:
        parser.error("--threads must be >= 2 (it is compared against 1)")
    bench_cli.input_file(Path(args.slide), "slide")
    bench_cli.output_folder(args.out)
    result = run(args)
    text = json.dumps(result, indent=2, default=str) + "\n"
    bench_cli.write_text(args.out / "threads.json", text)
    bench_cli.write_text(args.out / "threads.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

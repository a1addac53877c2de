"""Zoom inference vs all-patch inference, end to end from the slide file.

For each slide: ZoomMIL `predict` (reads and encodes N_low + K*4^d1 + ... patches) against
ABMIL on every tissue patch at the highest magnification, on the same machine with the same
thread count. The ideal speed-up is the ratio of patches encoded; the goal is a measured
speed-up of at least 0.8 of it. Model weights do not change the time, so untrained models with
the random-weight encoder are timed.

    python benchmarks/zoom_speedup.py                       # demo slides + CMU-1-Small-Region
    python benchmarks/zoom_speedup.py --threads 1 --repeats 3

Writes results/benchmarks/zoom_speedup.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import bench_cli
import torch
from source_slide import default_source

from zoommil.features.extraction import default_workers
from zoommil.inference.predict import Predictor, make_encoder, predict_slide
from zoommil.models import build_model
from zoommil.recipe import PreprocessingRecipe
from zoommil.wsi.patches import ReaderPool

REPO = Path(__file__).resolve().parents[1]
CMU = default_source()
OUT = REPO / "results" / "benchmarks"


def recipe(mags: list[float]) -> PreprocessingRecipe:
    """The demo's preprocessing (random encoder weights: no download)."""
    return PreprocessingRecipe(mags=mags, weights="random", no_tissue="all")


def predictors(mags: list[float], k: int, n_classes: int = 3) -> tuple[Predictor, Predictor]:
    torch.manual_seed(0)
    zoom = build_model("zoommil", in_dim=1024, n_classes=n_classes, mags=mags, k=k).eval()
    abmil = build_model("abmil", in_dim=1024, n_classes=n_classes).eval()
    classes = [f"c{i}" for i in range(n_classes)]
    return (
        Predictor(zoom, "zoommil", classes, recipe(mags), method="zoommil"),
        Predictor(abmil, "abmil", classes, recipe(mags[-1:]), method="abmil"),
    )


def time_one(
    predictor: Predictor, slide: Path, repeats: int, reader: ReaderPool
) -> tuple[float, int]:
    """Median seconds and patches of `predict_slide` after one warm-up, with a reader
    process started once and kept, as `zoommil predict` keeps it across a cohort's slides
    (one started per call added its start-up, ~1 s, to every slide's time)."""
    encoder, _ = make_encoder(predictor)
    # the paper's comparison: no baseline attention pass (a heatmap's, not a prediction's cost)
    predict_slide(predictor, slide, encoder, reader=reader, attention=False)  # warm-up
    times, patches = [], 0
    for _ in range(repeats):
        tic = time.perf_counter()
        result = predict_slide(predictor, slide, encoder, reader=reader, attention=False)
        patches = result["patches_encoded"]
        times.append(time.perf_counter() - tic)
    return statistics.median(times), patches


def run_case(name: str, slides: list[Path], mags: list[float], k: int, threads: int, repeats: int):
    torch.set_num_threads(threads)
    zoom, abmil = predictors(mags, k)
    rows = []
    with ReaderPool(default_workers(torch.device("cpu"), threads)) as reader:
        reader.start()
        timed = [(time_one(zoom, s, repeats, reader), time_one(abmil, s, repeats, reader))
                 for s in slides]  # fmt: skip
    for slide, ((t_zoom, n_zoom), (t_all, n_all)) in zip(slides, timed, strict=True):
        speedup, ideal = t_all / t_zoom, n_all / n_zoom
        rows.append(
            {
                "slide": slide.name,
                "zoommil_seconds": t_zoom,
                "zoommil_patches": n_zoom,
                "abmil_seconds": t_all,
                "abmil_patches": n_all,
                "speedup": speedup,
                "patch_ratio": ideal,
                "efficiency": speedup / ideal,
            }
        )
        print(json.dumps(rows[-1]))
    return {
        "case": name,
        "mags": mags,
        "k": k,
        "threads": threads,
        "repeats": repeats,
        "slides": rows,
        "speedup": sum(r["abmil_seconds"] for r in rows) / sum(r["zoommil_seconds"] for r in rows),
        "patch_ratio": sum(r["abmil_patches"] for r in rows)
        / sum(r["zoommil_patches"] for r in rows),
    }


def demo_slides(folder: Path, n: int, scale: float = 1.0) -> list[Path]:
    """The first ``n`` demo slides (`zoommil synth`'s) written into ``folder``."""
    from zoommil.io.sheet import read_sheet
    from zoommil.synth import make_demo_dataset

    sheet = make_demo_dataset(folder, n_slides=n, seed=0, scale=scale, progress=False)
    return [Path(path) for path in read_sheet(sheet)["path"]][:n]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--demo-slides", type=int, default=3)
    parser.add_argument("--demo-k", type=int, default=4)
    parser.add_argument(
        "--demo-mags", type=float, nargs="+", default=[5.0, 10.0], help="as in config/config.yaml"
    )
    parser.add_argument("--demo-scale", type=float, default=1.0, help="demo slide size factor")
    parser.add_argument("--cmu-k", type=int, default=2)
    parser.add_argument("--no-cmu", action="store_true", help="the demo slides only")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    bench_cli.output_folder(args.out)
    cases = []
    with tempfile.TemporaryDirectory(prefix="zoommil-demo-") as folder:
        demo = demo_slides(Path(folder), args.demo_slides, args.demo_scale)
        for threads in args.threads:
            case = run_case("demo", demo, args.demo_mags, args.demo_k, threads, args.repeats)
            cases.append(case)
    for threads in args.threads:
        if CMU.exists() and not args.no_cmu:
            cases.append(
                run_case(
                    "CMU-1-Small-Region",
                    [CMU],
                    [5.0, 10.0, 20.0],
                    args.cmu_k,
                    threads,
                    args.repeats,
                )
            )
    for case in cases:
        case["efficiency"] = case["speedup"] / case["patch_ratio"]
    result = {"goal": "speedup >= 0.8 * patch_ratio", "torch": torch.__version__, "cases": cases}
    bench_cli.write_text(args.out / "zoom_speedup.json", json.dumps(result, indent=2) + "\n")
    lines = [
        "| case | threads | ABMIL patches / ZoomMIL patches | measured speed-up | efficiency |",
        "|---|---|---|---|---|",
    ]
    for c in cases:
        lines.append(
            f"| {c['case']} (K={c['k']}, mags {c['mags']}) | {c['threads']} | "
            f"{c['patch_ratio']:.2f} | {c['speedup']:.2f} | {c['efficiency']:.2f} |"
        )
    bench_cli.write_text(args.out / "zoom_speedup.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

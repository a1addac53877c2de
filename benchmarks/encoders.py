"""Benchmark: what each registered encoder costs, and what zooming saves with it.

Per encoder, with random weights (cost does not depend on the weights):

(a) FLOPs per patch (fvcore multiply-adds at the encoder's input size; `zoommil.efficiency.flops`);
(b) the bare encoder's patches/s on this CPU, one thread, on in-memory 256 px uint8 patches
    (transform included), after one untimed warm-up batch; a few batches only, since a ViT-g
    patch costs ~70 ResNet-50 patches;
(c) `zoommil predict`'s path end to end from the slide file (`predict_slide`: tissue detection,
    tiling, reading, encoding, MIL head): an untrained ZoomMIL against an untrained all-patch
    ABMIL at the highest magnification, seconds per slide and the measured speed-up next to the
    ratio of patches encoded (the ideal).

    nice python benchmarks/encoders.py                              # default encoders and slide
    nice python benchmarks/encoders.py --encoders resnet50_layer3 uni --threads 1

Encoders above ``--heavy-gflops`` run the predict comparison on ``--heavy-mags`` (fewer
magnification steps, so the all-patch side stays minutes, not hours, on a CPU). Writes
results/benchmarks/encoders.json and .md. Times vary by machine and load; ratios measured in the
same run are the robust numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import bench_cli
import numpy as np
import torch
from source_slide import default_source

from zoommil.efficiency.flops import encoder_flops_per_patch
from zoommil.features.encoder import PatchEncoder
from zoommil.features.encoders.registry import build_registered_encoder, get_spec
from zoommil.inference.predict import Predictor, predict_slide
from zoommil.models import build_model
from zoommil.recipe import PreprocessingRecipe
from zoommil.wsi.patches import ReaderPool

REPO = Path(__file__).resolve().parents[1]
SLIDE = default_source()
OUT = REPO / "results" / "benchmarks"
DEFAULT_ENCODERS = ["resnet50_layer3", "uni", "phikon-v2", "h-optimus-0"]


def bare_rate(encoder: PatchEncoder, n_patches: int, batch_size: int) -> dict[str, float]:
    """patches/s of ``encoder.encode`` on random 256 px patches, after one warm-up batch:
    per wall second and per CPU second of this process (the latter is what one idle core
    would give with one thread; on a loaded machine the wall rate drops, the CPU rate less)."""
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (batch_size, 256, 256, 3), dtype=np.uint8)
    encoder.encode(batch[:1])
    wall, cpu = [], []
    done = 0
    while done < n_patches:
        n = min(batch_size, n_patches - done)
        tic, cpu0 = time.perf_counter(), time.process_time()
        encoder.encode(batch[:n])
        wall.append((time.perf_counter() - tic) / n)
        cpu.append((time.process_time() - cpu0) / n)
        done += n
    return {
        "patches_per_second": 1.0 / statistics.median(wall),
        "patches_per_cpu_second": 1.0 / statistics.median(cpu),
        "cpu_seconds_per_patch_min": min(cpu),
        "cpu_seconds_per_patch_max": max(cpu),
        "patches_timed": done,
    }


def predict_case(
    encoder: PatchEncoder, slide: Path, mags: list[float], k: int, batch_size: int, warmup: bool
) -> dict[str, object]:
    """ZoomMIL vs all-patch ABMIL on one slide with this encoder (one timed run each, after a
    ZoomMIL warm-up unless the encoder is heavy; the encoder itself is already warm)."""
    dim = encoder.dim
    torch.manual_seed(0)
    zoom = build_model("zoommil", in_dim=dim, n_classes=2, mags=mags, k=k).eval()
    abmil = build_model("abmil", in_dim=dim, n_classes=2).eval()
    name = encoder.spec.name
    recipe = PreprocessingRecipe(mags=mags, encoder=name, weights="random", no_tissue="all")
    zoom_p = Predictor(zoom, "zoommil", ["a", "b"], recipe, method="zoommil")
    abmil_p = Predictor(abmil, "abmil", ["a", "b"], recipe.replace(mags=mags[-1:]), method="abmil")
    out: dict[str, object] = {"mags": mags, "k": k}
    with ReaderPool(0) as reader:  # read in this process: CPU-seconds stay on one core
        if warmup:
            predict_slide(zoom_p, slide, encoder, batch_size=batch_size, reader=reader)
        for label, predictor in (("zoommil", zoom_p), ("abmil", abmil_p)):
            cpu = time.process_time()
            tic = time.perf_counter()
            result = predict_slide(predictor, slide, encoder, batch_size=batch_size, reader=reader)
            out[f"{label}_seconds"] = time.perf_counter() - tic
            out[f"{label}_cpu_seconds"] = time.process_time() - cpu
            out[f"{label}_patches"] = result["patches_encoded"]
            out[f"{label}_patches_per_mag"] = result["patches_per_mag"]
            print(
                f"  {label}: {out[f'{label}_seconds']:.1f} s, {result['patches_encoded']} patches"
            )
    out["speedup"] = out["abmil_seconds"] / out["zoommil_seconds"]
    out["speedup_cpu"] = out["abmil_cpu_seconds"] / out["zoommil_cpu_seconds"]
    out["patch_ratio"] = out["abmil_patches"] / out["zoommil_patches"]
    return out


def run(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    rows: list[dict[str, object]] = []
    for name in args.encoders:
        spec = get_spec(name)
        print(f"{name}: counting FLOPs", flush=True)
        flops = encoder_flops_per_patch(name)
        gflops = flops["fvcore"] / 1e9
        heavy = gflops > args.heavy_gflops
        tic = time.perf_counter()
        model, info = build_registered_encoder(name, weights="random", seed=0)
        build_seconds = time.perf_counter() - tic
        encoder = PatchEncoder(model, device="cpu", precision="fp32")
        n = args.heavy_patches if heavy else args.patches
        print(f"{name}: built in {build_seconds:.1f} s; timing {n} patches", flush=True)
        rate = bare_rate(encoder, n, 1 if heavy else args.batch_size)
        row = {
            "encoder": name,
            "architecture": spec.architecture,
            "input_size": spec.input_size,
            "dim": spec.dim,
            "parameters": sum(p.numel() for p in model.parameters()),
            "gflops_per_patch": gflops,
            "gflops_per_patch_torch_counter": flops["torch"] / 1e9,
            "build_seconds": build_seconds,
            **rate,
        }
        if name in (args.predict or args.encoders):
            mags = args.heavy_mags if heavy else args.mags
            print(f"{name}: predict on {args.slide.name}, mags {mags}, K={args.k}", flush=True)
            bs = 1 if heavy else args.batch_size
            row["predict"] = predict_case(encoder, args.slide, mags, args.k, bs, not heavy)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "predict"}), flush=True)
        del encoder, model
        write(summary(args, rows), args.out)  # after every encoder: a long run leaves results
    return summary(args, rows)


def summary(args: argparse.Namespace, rows: list[dict[str, object]]) -> dict[str, object]:
    return {
        "slide": args.slide.name,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_version": torch.__version__,
        "precision": "fp32",
        "weights": "random (seed 0)",
        "rows": rows,
    }


def markdown(result: dict[str, object]) -> str:
    rows = result["rows"]
    base = next((r for r in rows if r["encoder"] == "resnet50_layer3"), rows[0])
    lines = [
        "# Encoder cost and zooming, per encoder",
        "",
        f"CPU {result['cpu']} ({result['cpu_count']} cores), {result['threads']} torch "
        f"thread(s), fp32, random weights; load average at the end {result['load_average_at_end']}"
        " (a shared machine: absolute times vary by machine and load, ratios within a row are "
        "the robust numbers). GFLOPs: fvcore multiply-adds per patch at the encoder's input.",
        "",
        "| encoder | arch | input px | dim | params (M) | GFLOPs/patch | x ResNet-50 | "
        "patches/s wall | patches per CPU-s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['encoder']} | {r['architecture']} | {r['input_size']} | {r['dim']} | "
            f"{r['parameters'] / 1e6:.1f} | {r['gflops_per_patch']:.1f} | "
            f"{r['gflops_per_patch'] / base['gflops_per_patch']:.1f} | "
            f"{r['patches_per_second']:.3f} | {r['patches_per_cpu_second']:.3f} "
            f"(n={r['patches_timed']}) |"
        )
    with_predict = [r for r in rows if "predict" in r]
    if with_predict:
        lines += [
            "",
            f"`predict_slide` end to end on {result['slide']} (untrained models: time does not "
            "depend on the weights), reading in process:",
            "",
            "| encoder | mags | K | ZoomMIL s wall / CPU (patches) | all-patch ABMIL s wall / CPU "
            "(patches) | speed-up wall / CPU | patch ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in with_predict:
            p = r["predict"]
            mags = " -> ".join(f"{m:g}x" for m in p["mags"])
            lines.append(
                f"| {r['encoder']} | {mags} | {p['k']} | {p['zoommil_seconds']:.1f} / "
                f"{p['zoommil_cpu_seconds']:.1f} ({p['zoommil_patches']}) | "
                f"{p['abmil_seconds']:.1f} / {p['abmil_cpu_seconds']:.1f} ({p['abmil_patches']}) | "
                f"{p['speedup']:.2f} / {p['speedup_cpu']:.2f} | {p['patch_ratio']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", nargs="+", default=DEFAULT_ENCODERS)
    parser.add_argument("--slide", type=Path, default=SLIDE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--patches", type=int, default=8, help="patches timed per encoder")
    parser.add_argument("--heavy-patches", type=int, default=2, help="for heavy encoders")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--mags", type=float, nargs="+", default=[5.0, 10.0])
    parser.add_argument("--heavy-mags", type=float, nargs="+", default=[5.0, 10.0])
    parser.add_argument("--heavy-gflops", type=float, default=100.0)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument(
        "--predict", nargs="*", help="encoders that also run the predict comparison (default all)"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    bench_cli.input_file(args.slide, "slide")
    bench_cli.output_folder(args.out)
    print(markdown(run(args)))


def write(result: dict[str, object], out: Path) -> None:
    bench_cli.write_text(out / "encoders.json", json.dumps(result, indent=2) + "\n")
    bench_cli.write_text(out / "encoders.md", markdown(result))


if __name__ == "__main__":
    main()

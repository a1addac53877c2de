"""Benchmark: the bare encoder vs the whole `zoommil features` path, on this machine.

Measures, at the same torch thread count and batch size:
(a) the bare encoder's patches/s on in-memory uint8 patches (ImageNet normalisation included);
(b) the whole extraction path's patches/s on a real slide (reader workers, the reads of each
    parent, area-resizing, batching, encoding; the encoder build and the file write are timed
    separately), and their ratio (goal: >= 0.9, i.e. reading hidden behind compute).
For 1 and all threads, fp32 and bf16 autocast, plus the cosine similarity of bf16 vs fp32
features of the same patches. Rounds interleave (a) and (b) so that load from other processes
hits both alike; medians are reported.

    .venv/bin/python benchmarks/features.py            # full: all parents of the slide
    .venv/bin/python benchmarks/features.py --quick    # a few minutes

Writes results/benchmarks/features.json and features.md. Speed does not depend on the weights,
so random weights are used (the cosine similarity is for random weights too). Each row's
whole-path runs also read the CPU's RAPL counters (benchmarks/energy.py): J/patch at that
rate, or "not measured" with the reason where none is readable (most VMs); gCO2 only with
--grid-gco2-per-kwh.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import bench_cli
import numpy as np
import torch
from energy import Rapl, describe, per_work, total
from source_slide import default_source

from zoommil.features.encoder import PatchEncoder, build_encoder
from zoommil.features.extraction import encode_plan
from zoommil.io.featurefile import mag_key
from zoommil.recipe import PreprocessingRecipe
from zoommil.wsi.lattice import Lattice
from zoommil.wsi.tiling import tile_slide

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SLIDE = default_source()


def subset_parents(lattice: Lattice, n: int | None) -> Lattice:
    """The first n parents and all their descendants (rows stay depth-first)."""
    if n is None or n >= len(lattice.xy[0]):
        return lattice
    depths = [round(np.log2(m / lattice.mags[0])) for m in lattice.mags]
    return Lattice(
        mags=lattice.mags,
        patch_size=lattice.patch_size,
        sides=lattice.sides,
        coords=[c[: n * 4**d] for c, d in zip(lattice.coords, depths, strict=True)],
        xy=[c[: n * 4**d] for c, d in zip(lattice.xy, depths, strict=True)],
        tissue_fraction=lattice.tissue_fraction[:n],
        attrs=lattice.attrs,
    )


def bare_rate(encoder: PatchEncoder, n: int, batch_size: int, patch_size: int) -> float:
    """patches/s of encoder.encode on in-memory uint8 batches (after one warm-up batch)."""
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(
        rng.integers(0, 256, (batch_size, patch_size, patch_size, 3), dtype=np.uint8)
    )
    encoder.encode(batch)
    done = 0
    start = time.perf_counter()
    while done < n:
        encoder.encode(batch[: min(batch_size, n - done)])
        done += min(batch_size, n - done)
    return done / (time.perf_counter() - start)


def whole_rate(
    slide: Path, lattice: Lattice, encoder: PatchEncoder, batch_size: int, workers: int
) -> tuple[float, list[np.ndarray]]:
    """patches/s of the extraction path (read + derive + encode) on the slide."""
    start = time.perf_counter()
    feats = encode_plan(slide, lattice, encoder, batch_size, workers, progress=False)
    seconds = time.perf_counter() - start
    return sum(len(f) for f in feats) / seconds, feats


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", type=Path, default=DEFAULT_SLIDE)
    parser.add_argument("--mags", type=float, nargs="+", default=[5.0, 10.0, 20.0])
    parser.add_argument("--quick", action="store_true", help="few parents, one round: minutes")
    parser.add_argument("--max-parents", type=int, default=None, help="use the first N parents")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (median)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=None, help="default: 1 and all (torch's)"
    )
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    parser.add_argument(
        "--grid-gco2-per-kwh",
        type=float,
        help="your grid's carbon intensity (gCO2 per kWh): adds CO2 to the energy rows "
        "(none is assumed)",
    )
    args = parser.parse_args(argv)
    if args.grid_gco2_per_kwh is not None and not args.grid_gco2_per_kwh >= 0:
        bench_cli.fail(f"--grid-gco2-per-kwh {args.grid_gco2_per_kwh}: must be 0 or more")
    bench_cli.input_file(args.slide, "slide")
    bench_cli.output_folder(args.out)

    all_threads = torch.get_num_threads()
    threads_list = args.threads or sorted({1, all_threads})
    max_parents = args.max_parents if args.max_parents is not None else (4 if args.quick else None)
    rounds = args.rounds or (1 if args.quick else 3)

    t0 = time.perf_counter()
    lattice = subset_parents(
        tile_slide(args.slide, PreprocessingRecipe(mags=args.mags, no_tissue="all")), max_parents
    )
    tile_seconds = time.perf_counter() - t0
    n_patches = sum(len(x) for x in lattice.xy)
    counts = ", ".join(
        f"{mag_key(m)}: {len(x)}" for m, x in zip(lattice.mags, lattice.xy, strict=True)
    )
    print(f"{args.slide.name}: {len(lattice.xy[0])} parents, {n_patches} patches ({counts})")
    t0 = time.perf_counter()
    model, info = build_encoder("random", seed=0)
    build_seconds = time.perf_counter() - t0

    rows: list[dict[str, Any]] = []
    feats_by: dict[tuple[int, str], list[np.ndarray]] = {}
    for threads in threads_list:
        torch.set_num_threads(threads)
        for precision in args.precisions:
            encoder = PatchEncoder(model, device="cpu", precision=precision)
            bare, whole, energies = [], [], []
            for _ in range(rounds):
                bare.append(bare_rate(encoder, n_patches, args.batch_size, lattice.patch_size))
                meter = Rapl().start()
                rate, feats = whole_rate(
                    args.slide, lattice, encoder, args.batch_size, args.workers
                )
                energies.append(meter.stop())
                whole.append(rate)
                feats_by[(threads, precision)] = feats
            row = {
                "threads": threads,
                "precision": precision,
                "batch_size": args.batch_size,
                "workers": args.workers,
                "bare_patches_per_s": statistics.median(bare),
                "whole_patches_per_s": statistics.median(whole),
                "bare_runs": bare,
                "whole_runs": whole,
                # the whole-path runs' CPU energy, per patch over all of them
                "cpu_energy": per_work(
                    total(energies), None, n_patches * rounds, args.grid_gco2_per_kwh
                ),
            }
            row["ratio"] = row["whole_patches_per_s"] / row["bare_patches_per_s"]
            rows.append(row)
            print(
                f"threads {threads} {precision}: bare {row['bare_patches_per_s']:.2f}, whole "
                f"{row['whole_patches_per_s']:.2f} patches/s, ratio {row['ratio']:.3f}",
                flush=True,
            )
    similarity = {}
    for threads in threads_list:
        if (threads, "fp32") in feats_by and (threads, "bf16") in feats_by:
            a = np.concatenate(feats_by[(threads, "fp32")])
            b = np.concatenate(feats_by[(threads, "bf16")])
            cos = cosine(a, b)
            rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
            similarity[str(threads)] = {
                "cosine_mean": float(cos.mean()),
                "cosine_min": float(cos.min()),
                "relative_l2_mean": float(rel.mean()),
            }
    report = {
        "slide": str(args.slide.resolve()),
        "mags": lattice.mags,
        "patch_size": lattice.patch_size,
        "parents": len(lattice.xy[0]),
        "patches": n_patches,
        "rounds": rounds,
        "quick": args.quick,
        "weights": info["weights_note"],
        "encoder_build_seconds": build_seconds,
        "tile_seconds": tile_seconds,
        "results": rows,
        "bf16_vs_fp32": similarity,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": str(torch.__version__),
            "python": sys.version.split()[0],
            "load_average": os.getloadavg(),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    bench_cli.write_text(args.out / "features.json", json.dumps(report, indent=2) + "\n")
    bench_cli.write_text(args.out / "features.md", markdown(report))
    print(f"wrote {args.out / 'features.json'} and features.md")
    return 0


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Feature extraction throughput ({Path(report['slide']).name}, "
        f"{', '.join(mag_key(m) for m in report['mags'])}, {report['patches']} patches)",
        "",
        "| threads | precision | batch | workers | bare encoder (patches/s) | whole path "
        "(patches/s) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['threads']} | {r['precision']} | {r['batch_size']} | {r['workers']} | "
            f"{r['bare_patches_per_s']:.2f} | {r['whole_patches_per_s']:.2f} | {r['ratio']:.3f} |"
        )
    lines.append("")
    for threads, s in report["bf16_vs_fp32"].items():
        lines.append(
            f"bf16 vs fp32 ({threads} thread(s)): cosine mean {s['cosine_mean']:.6f}, min "
            f"{s['cosine_min']:.6f}, relative L2 {s['relative_l2_mean']:.4f}"
        )
    energies = [(r, r["cpu_energy"]) for r in report["results"] if "cpu_energy" in r]
    if energies:
        lines += ["", "CPU energy of the whole path (RAPL: CPU package and DRAM, whole socket):"]
        if all(not e.get("measured") for _, e in energies):
            lines.append(f"- {describe(energies[0][1])}")
        for r, e in energies if any(e.get("measured") for _, e in energies) else []:
            lines.append(f"- {r['threads']} thread(s) {r['precision']}: {describe(e)}")
    m = report["machine"]
    lines += [
        "",
        f"Machine: {m['cpu_count']} CPUs, {m['platform']}, torch {m['torch']}, load average "
        f"{', '.join(f'{x:.1f}' for x in m['load_average'])}. Weights: {report['weights']}. "
        f"Medians of {report['rounds']} interleaved round(s).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

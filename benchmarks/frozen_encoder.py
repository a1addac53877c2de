"""Benchmark: the TorchScript-frozen fp32 CPU encoder against the eager one.

`PatchEncoder` freezes the paper's ResNet-50 (to layer3) for fp32 CPU inference
(`zoommil.features.frozen`: batch norm folded, convolution weights packed once). This times
both on the same in-memory 256 px uint8 patches, one thread, alternating eager / frozen rounds
so that the VM's drift lands on both, after one untimed warm-up batch each; and reports how far
apart their features are.

    nice python benchmarks/frozen_encoder.py                  # 6 rounds, batch 8
    nice python benchmarks/frozen_encoder.py --rounds 10 --batch-size 4

Writes results/benchmarks/frozen_encoder.json and .md. Patches/s vary by machine and load; the
ratio of medians from one run is the robust number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import bench_cli
import numpy as np
import torch

from zoommil.environment import cpu_model
from zoommil.features.encoder import PatchEncoder
from zoommil.features.encoders.registry import build_registered_encoder


def patches_per_second(encoder: PatchEncoder, batch: np.ndarray, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        encoder.encode(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="eager/frozen round pairs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4, help="batches per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/frozen_encoder"))
    args = parser.parse_args(argv)
    bench_cli.output_file(args.out.with_suffix(".json"))
    torch.set_num_threads(args.threads)

    model, _ = build_registered_encoder("resnet50_layer3", weights="random", seed=0)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (args.batch_size, 256, 256, 3), dtype=np.uint8)
    encoders = {
        "eager": PatchEncoder(model, frozen=False),
        "frozen": PatchEncoder(model, frozen=True),
    }
    features = {name: enc.encode(batch) for name, enc in encoders.items()}  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(args.rounds):
        for name, enc in encoders.items():
            rates[name].append(patches_per_second(enc, batch, args.repeats))

    diff = np.abs(features["frozen"] - features["eager"])
    median = {name: statistics.median(r) for name, r in rates.items()}
    result = {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "patches_per_s": rates,
        "median_patches_per_s": median,
        "range_patches_per_s": {n: [min(r), max(r)] for n, r in rates.items()},
        "speedup_of_medians": median["frozen"] / median["eager"],
        "feature_max_abs_diff": float(diff.max()),
        "feature_mean_abs_diff": float(diff.mean()),
        "feature_mean_abs": float(np.abs(features["eager"]).mean()),
    }
    bench_cli.write_text(args.out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    lines = [
        "# Frozen vs eager fp32 CPU encoder (ResNet-50 to layer3, 256 px, random weights)",
        "",
        f"{result['cpu']}, {args.threads} thread(s), batch {args.batch_size}, "
        f"{args.rounds} alternating rounds of {args.repeats} batches; torch {torch.__version__}.",
        "",
        "| encoder | median patches/s | range |",
        "|---|---|---|",
    ]
    for name in encoders:
        lo, hi = result["range_patches_per_s"][name]
        lines.append(f"| {name} | {median[name]:.2f} | {lo:.2f}-{hi:.2f} |")
    lines += [
        "",
        f"Speed-up (ratio of medians): {result['speedup_of_medians']:.2f}x. Features: max |diff| "
        f"{result['feature_max_abs_diff']:.2e}, mean |diff| {result['feature_mean_abs_diff']:.2e} "
        f"on values of mean |x| {result['feature_mean_abs']:.2f}.",
    ]
    bench_cli.write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Benchmark: how well the perturbed top-K's backward matches the gradient it estimates.

    python benchmarks/topk_gradient.py                  # 10 draws, N = 64, K = 12
    python benchmarks/topk_gradient.py --draws 20 --n 128 --k 24

Writes results/benchmarks/topk_gradient.{json,md}. For each draw (scores x = softmax of N
normal values, an upstream gradient G [K, N]), the reference is a central finite difference
of the smoothed objective E[<G, Y(x + sigma Z)>] over the same S noise samples (common random
numbers); each backward of `zoommil.models.topk.PerturbedTopK` (``exact``: ours, the full
vector-Jacobian product; ``diagonal``: the official code's) is compared with it by cosine
similarity. One draw is one number: the table gives the median and the range over draws.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import bench_cli
import torch
import torch.nn.functional as F

from zoommil.models.topk import PerturbedTopK, mean_indicators

REPO = Path(__file__).resolve().parents[1]
MODES = ("exact", "diagonal")


def smoothed(x: torch.Tensor, noise: torch.Tensor, g: torch.Tensor, sigma: float) -> float:
    """<G, mean over the noise of the top-K indicators of x + sigma Z>."""
    k, n = g.shape
    idx = torch.topk(x[None, None] + sigma * noise, k, dim=-1).indices.sort(-1).values
    return float((mean_indicators(idx, n, x.dtype)[0] * g).sum())


def cosines(seed: int, n: int, k: int, sigma: float, samples: int) -> dict[str, float]:
    """Each backward's cosine to the finite difference, for one draw of x and G."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.softmax(torch.randn(n, generator=gen, dtype=torch.float64), 0)
    g = torch.randn(k, n, generator=gen, dtype=torch.float64)
    noise = torch.randn(1, samples, n, generator=gen, dtype=torch.float64)
    h = sigma / 4
    steps = torch.eye(n, dtype=torch.float64) * h
    reference = torch.tensor(
        [(smoothed(x + e, noise, g, sigma) - smoothed(x - e, noise, g, sigma)) / (2 * h)
         for e in steps],
        dtype=torch.float64,
    )  # fmt: skip
    out = {}
    for mode in MODES:
        scores = x[None].clone().requires_grad_(True)
        torch.manual_seed(seed)
        (PerturbedTopK(k, samples, sigma, grad=mode)(scores)[0] * g).sum().backward()
        out[mode] = float(F.cosine_similarity(scores.grad[0], reference, dim=0))
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Perturbed top-K backward against a finite difference",
        "",
        f"`{meta['command']}`: N = {meta['n']}, K = {meta['k']}, sigma = {meta['sigma']}, "
        f"S = {meta['samples']} noise samples, {len(rows)} draws (seeds 0-{len(rows) - 1}).",
        "",
        "| backward | cosine, median (range) |",
        "|---|---|",
    ]
    for mode in MODES:
        values = [r[mode] for r in rows]
        lines.append(
            f"| {mode} | {statistics.median(values):.3f} ({min(values):.3f} to {max(values):.3f}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--sigma", type=float, default=0.002)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args(argv)
    bench_cli.output_folder(args.out)
    rows = []
    for seed in range(args.draws):
        rows.append({"seed": seed, **cosines(seed, args.n, args.k, args.sigma, args.samples)})
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "command": " ".join(["python benchmarks/topk_gradient.py", *(argv or sys.argv[1:])]),
        **{key: getattr(args, key) for key in ("n", "k", "sigma", "samples")},
    }
    bench_cli.write_text(
        args.out / "topk_gradient.json", json.dumps({"meta": meta, "rows": rows}, indent=1)
    )
    bench_cli.write_text(args.out / "topk_gradient.md", markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()

"""Benchmark: one ZoomMIL training step, ours vs the official dense approach.

ours:  PerturbedTopK storing indices [S, K] + noise [S, N] (exact backward) and zooming by
       mixing parent rows over the non-zero entries of the soft indicator.
dense: the official approach, written here: dense one-hots [S, K, N] kept for backward
       (diagonal einsum backward) and zooming by ``kron(select, I_r) @ x``.

Both use the same ZoomMIL modules and weights (fc, gated attentions, head); only top-K and
zooming differ. Magnifications 5/10/20x (4 and 16 descendants per lowest patch), S = 100,
sigma = 0.002. Each configuration runs in a fresh subprocess; peak memory is that process's
ru_maxrss (CPU) or torch.cuda.max_memory_allocated (CUDA), and "step" memory is the peak minus
the resident size after features and model were created. Dense configurations whose estimated
size exceeds --dense-limit-gb are skipped and listed as such.

    python benchmarks/topk.py [--quick] [--device cpu|cuda] [--out results/benchmarks/topk.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import bench_cli
import torch
import torch.nn.functional as F

MAGS = (5.0, 10.0, 20.0)
S, SIGMA = 100, 0.002


# ---------------------------------------------------------------- dense (official) baseline
class DenseTopK(torch.autograd.Function):
    """The official perturbed top-K: dense one-hots [B, S, K, N], diagonal backward."""

    @staticmethod
    def forward(ctx, x, k, s, sigma):
        noise = torch.randn(x.shape[0], s, x.shape[1], dtype=x.dtype, device=x.device)
        idx = torch.topk(x[:, None, :] + sigma * noise, k=k, dim=-1, sorted=False).indices
        onehot = F.one_hot(torch.sort(idx, dim=-1).values, x.shape[1]).to(x.dtype)
        ctx.save_for_backward(onehot, noise)
        ctx.s, ctx.sigma = s, sigma
        return onehot.mean(1)

    @staticmethod
    def backward(ctx, grad_output):
        onehot, noise = ctx.saved_tensors
        expected = torch.einsum("bskn,bsn->bkn", onehot, noise) / ctx.s / ctx.sigma
        return torch.einsum("bkn,bkn->bn", grad_output, expected), None, None, None


def dense_forward(model, feats):
    """ZoomMIL training forward as in the official code (kron zooming), using model's modules."""
    xs = [f[0] for f in feats]
    counts = [x.shape[0] for x in xs]
    pooled = []
    for m in range(len(xs)):
        h = model.fc[m](xs[m])
        w = torch.softmax(model.attention[m](h), 0)
        pooled.append((w * h).sum(0, keepdim=True))
        if m == len(xs) - 1:
            break
        probs = torch.softmax(model.selection_attention[m](h)[:, 0], 0)[None]
        k = min(model.ks[m], h.shape[0])
        select = DenseTopK.apply(probs, k, S, SIGMA)[0]
        for j in range(m + 1, len(xs)):
            r = counts[j] // counts[m]
            eye = torch.eye(r, device=select.device)
            xs[j] = torch.kron(select, eye) @ xs[j]
    return model.classify_pooled(pooled)


def dense_estimate_bytes(n: int, k: int, in_dim: int) -> int:
    """Largest live tensors of the dense step: [S,K,N] one-hots and kron(select, I_16) with its
    gradient at the highest magnification (float32)."""
    kron_hi = (k * 16) * (n * 16)
    return 4 * (2 * S * k * n + 2 * kron_hi + 20 * n * in_dim)


# ---------------------------------------------------------------- one configuration
def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def run_one(cfg: dict) -> dict:
    """Runs in a fresh subprocess: builds features + model, times train steps, measures memory."""
    from zoommil.models.zoommil import ZoomMIL

    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    torch.manual_seed(0)
    n, k, in_dim = cfg["n"], cfg["k"], cfg["in_dim"]
    feats = [torch.randn(1, n * r, in_dim, device=device) for r in (1, 4, 16)]
    model = ZoomMIL(in_dim=in_dim, n_classes=3, mags=MAGS, k=k, num_samples=S, sigma=SIGMA)
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    label = torch.tensor([1], device=device)
    forward = model if cfg["impl"] == "ours" else (lambda f: dense_forward(model, f))

    def step() -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(feats), label).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0

    base_mb = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_mb = torch.cuda.memory_allocated() / 2**20
    for _ in range(cfg["warmup"]):
        step()
    times, cpu = zip(*[step() for _ in range(cfg["reps"])], strict=True)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return cfg | {
        "step_seconds": statistics.median(times),
        "step_seconds_all": list(times),
        "step_cpu_seconds": statistics.median(cpu),
        "peak_mb": peak_mb,
        "base_mb": base_mb,
        "step_peak_mb": peak_mb - base_mb,
    }


# ---------------------------------------------------------------- driver
def _configs(quick: bool, device: str, threads: int, limit_gb: float) -> list[dict]:
    sizes = [(1000, 12), (1000, 300), (10000, 300)]
    if not quick:
        sizes = [(n, k) for n in (1000, 10000, 50000) for k in (12, 300)]
    out = []
    for n, k in sizes:
        for impl in ("ours", "dense"):
            small = n <= 1000
            cfg = {
                "impl": impl,
                "n": n,
                "k": k,
                "in_dim": 1024,
                "device": device,
                "threads": threads,
                "warmup": 1 if (impl == "ours" or small) else 0,
                "reps": 3 if (impl == "ours" or small) and not quick else 1,
            }
            est = dense_estimate_bytes(n, k, 1024) / 2**30
            if impl == "dense" and est > limit_gb:
                cfg["skipped"] = f"estimated {est:.0f} GB > {limit_gb:.0f} GB limit"
            out.append(cfg)
    return out


def _markdown(results: list[dict]) -> str:
    lines = [
        "| N (lowest) | rows 5/10/20x | K | impl | step s (wall) | step CPU s | peak MB "
        "| step peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows = f"{r['n']}/{4 * r['n']}/{16 * r['n']}"
        if r.get("skipped") or r.get("error"):
            why = r.get("skipped") or r.get("error")
            lines.append(f"| {r['n']} | {rows} | {r['k']} | {r['impl']} | skipped: {why} | | | |")
            continue
        lines.append(
            f"| {r['n']} | {rows} | {r['k']} | {r['impl']} | {r['step_seconds']:.3f} | "
            f"{r['step_cpu_seconds']:.3f} | {r['peak_mb']:.0f} | {r['step_peak_mb']:.0f} |"
        )
    lines += ["", "| N | K | wall speed-up | CPU-time speed-up | step-memory ratio |"]
    lines.append("|---|---|---|---|---|")
    by = {(r["n"], r["k"], r["impl"]): r for r in results if "step_seconds" in r}
    for (n, k, impl), ours in by.items():
        dense = by.get((n, k, "dense"))
        if impl == "ours" and dense:
            speed = dense["step_seconds"] / ours["step_seconds"]
            cpu = dense["step_cpu_seconds"] / ours["step_cpu_seconds"]
            mem = dense["step_peak_mb"] / max(ours["step_peak_mb"], 1.0)
            lines.append(f"| {n} | {k} | {speed:.1f}x | {cpu:.1f}x | {mem:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only (N, K) = (1k, 12), (1k, 300), (10k, 300), one timed step each",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dense-limit-gb", type=float, default=16.0)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/topk.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON config: run one, print JSON
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(json.loads(args.worker))))
        return
    bench_cli.output_file(args.out)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")

    results = []
    for cfg in _configs(args.quick, args.device, args.threads, args.dense_limit_gb):
        label = f"{cfg['impl']:5s} N={cfg['n']:6d} K={cfg['k']:3d}"
        if cfg.get("skipped"):
            print(f"{label}: skipped ({cfg['skipped']})", flush=True)
            results.append(cfg)
            continue
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(cfg)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or ["killed"])[-1]
            results.append(cfg | {"error": f"exit {proc.returncode}: {err}"})
            print(f"{label}: failed: {err}", flush=True)
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(res)
        print(
            f"{label}: {res['step_seconds']:.3f} s/step ({res['step_cpu_seconds']:.3f} CPU s), "
            f"peak {res['peak_mb']:.0f} MB "
            f"(step {res['step_peak_mb']:.0f} MB)",
            flush=True,
        )

    device_name = (
        torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu"
    )
    meta = {
        "benchmark": "zoommil train step: ours vs dense one-hot + kron",
        "mags": list(MAGS),
        "num_samples": S,
        "sigma": SIGMA,
        "device": args.device,
        "device_name": device_name,
        "threads": args.threads,
        "torch": torch.__version__,
        "quick": args.quick,
    }
    bench_cli.write_text(args.out, json.dumps(meta | {"results": results}, indent=2))
    md = _markdown(results)
    bench_cli.write_text(args.out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()

"""What a seed ensemble costs in `zoommil predict`: 1 vs N checkpoints on a real slide.

Tiny ZoomMIL checkpoints (as the tests make them: one model per seed, untrained, random-weight
encoder recipe) classify one slide with ``--checkpoint`` once, the N of them as one ensemble,
and the N one after another (what gluing separate runs together costs). Each run is a fresh
`zoommil predict` process under ``/usr/bin/time -v``: wall time and peak RSS; the patches
encoded come from its JSON.

    python benchmarks/predict_ensemble.py [--slide ../shared/data/slides/CMU-1-Small-Region.svs]
        [--seeds 3] [--repeats 3] [--out results/benchmarks]

Writes results/benchmarks/predict_ensemble.json and .md. Times and memory vary by machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_cli
import torch

from zoommil.models import build_model
from zoommil.training.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "benchmarks"
MAGS = [5.0, 10.0, 20.0]
PATCH = 64
K = 8


def make_checkpoint(path: Path, seed: int) -> Path:
    """A ZoomMIL checkpoint of a model initialised with ``seed`` (the seeds zoom into other
    regions) over a random-weight ResNet-50 recipe with the default tissue detector."""
    torch.manual_seed(seed)
    model = build_model("zoommil", in_dim=1024, n_classes=2, mags=MAGS, k=K).eval()
    config = {
        "method": "zoommil",
        "arch": "zoommil",
        "kwargs": {"k": K},
        "classes": ["normal", "tumour"],
        "mags": MAGS,
        "config_mags": MAGS,
        "in_dim": 1024,
        "seed": seed,
        "preprocessing": {"patch_size": PATCH, "weights": "random", "weights_seed": 0},
    }
    return save_checkpoint(path, model.state_dict(), config)


def timed_predict(slide: Path, checkpoints: list[Path], out: Path) -> dict:
    """One `zoommil predict` process: wall s, peak RSS MB (time -v), patches encoded."""
    argv = ["/usr/bin/time", "-v", sys.executable, "-m", "zoommil", "predict", str(slide)]
    for ckpt in checkpoints:
        argv += ["--checkpoint", str(ckpt)]
    argv += ["--json", str(out), "--threads", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    hours, minutes, seconds = wall.groups()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    cpu = sum(
        float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", done.stderr).group(1))
        for kind in ("User", "System")
    )
    record = json.loads(out.read_text())
    return {
        "wall_s": int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds),
        "peak_rss_mb": int(rss.group(1)) / 1024,
        "cpu_s": cpu,
        "patches_encoded": record["patches_encoded"],
        "patches_per_mag": record["patches_per_mag"],
        "printed": done.stdout.strip(),
    }


def summary(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
    parser.add_argument("--slide", type=Path, default=default)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    bench_cli.input_file(args.slide, "slide")
    bench_cli.output_folder(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpts = [make_checkpoint(root / f"seed{s}.pt", s) for s in range(args.seeds)]
        one, ensemble, separate = [], [], []
        for r in range(args.repeats):
            one.append(timed_predict(args.slide, ckpts[:1], root / f"one{r}.json"))
            ensemble.append(timed_predict(args.slide, ckpts, root / f"ens{r}.json"))
            runs = [timed_predict(args.slide, [c], root / f"sep{r}_{i}.json")
                    for i, c in enumerate(ckpts)]  # fmt: skip
            separate.append(
                {
                    "wall_s": sum(x["wall_s"] for x in runs),
                    "peak_rss_mb": max(x["peak_rss_mb"] for x in runs),
                    "cpu_s": sum(x["cpu_s"] for x in runs),
                    "patches_encoded": sum(x["patches_encoded"] for x in runs),
                }
            )
    result = {
        "slide": args.slide.name,
        "checkpoints": args.seeds,
        "recipe": {"mags": MAGS, "patch_size": PATCH, "k": K, "weights": "random"},
        "machine": {"cpus": os.cpu_count(), "threads": 1},
        "one_checkpoint": {k: summary(one, k) for k in ("wall_s", "cpu_s", "peak_rss_mb")}
        | {"patches_per_mag": one[0]["patches_per_mag"]},
        "ensemble": {k: summary(ensemble, k) for k in ("wall_s", "cpu_s", "peak_rss_mb")}
        | {"patches_per_mag": ensemble[0]["patches_per_mag"], "printed": ensemble[0]["printed"]},
        "separate_runs": {k: summary(separate, k) for k in ("wall_s", "cpu_s", "peak_rss_mb")}
        | {"patches_encoded": separate[0]["patches_encoded"]},
        "patches_encoded": {
            "one": one[0]["patches_encoded"],
            "ensemble": ensemble[0]["patches_encoded"],
            "separate": separate[0]["patches_encoded"],
        },
    }
    bench_cli.write_text(args.out / "predict_ensemble.json", json.dumps(result, indent=2) + "\n")
    lines = [
        f"# zoommil predict: 1 vs {args.seeds} checkpoints ({args.slide.name})",
        "",
        "| run | wall s | CPU s (user+sys) | peak RSS MB | patches encoded |",
        "|---|---|---|---|---|",
    ]
    for name, key in (("1 checkpoint", "one_checkpoint"), (f"{args.seeds} as ensemble",
                      "ensemble"), (f"{args.seeds} separate runs", "separate_runs")):  # fmt: skip
        w, c, m = (result[key][k] for k in ("wall_s", "cpu_s", "peak_rss_mb"))
        short = {"one_checkpoint": "one", "ensemble": "ensemble", "separate_runs": "separate"}
        lines.append(
            f"| {name} | {w['median']:.1f} [{w['min']:.1f}-{w['max']:.1f}] | "
            f"{c['median']:.1f} [{c['min']:.1f}-{c['max']:.1f}] | "
            f"{m['median']:.0f} [{m['min']:.0f}-{m['max']:.0f}] | "
            f"{result['patches_encoded'][short[key]]} |"
        )
    lines += [
        "",
        f"Median [min-max] of {args.repeats} repeats, each a fresh process, 1 thread, "
        f"{os.cpu_count()} CPUs; varies by machine. Patches per magnification: 1 checkpoint "
        f"{result['one_checkpoint']['patches_per_mag']}, ensemble "
        f"{result['ensemble']['patches_per_mag']}.",
    ]
    bench_cli.write_text(args.out / "predict_ensemble.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

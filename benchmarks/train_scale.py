"""Benchmark: training at cohort size (bags of CAMELYON16 size, tens to hundreds of slides).

    nice python benchmarks/train_scale.py                  # 20, 40, 80 slides
    nice python benchmarks/train_scale.py --slides 400 --features-dir /scratch/f

Writes results/benchmarks/train_scale.{json,md}. Each slide is a feature file of the real
contract (`zoommil.io.featurefile`) at CAMELYON16's magnifications (10x -> 20x) with
``--patches`` rows at 20x (10^4 by default, a 40x slide's tissue at 20x) and ResNet-50's
2048 dimensions: about 100 MB a slide. The features are random (training speed and memory do
not depend on their values). For each size, method and cache mode, one `zoommil train` process
runs ``--epochs`` epochs on one thread; the table gives its epoch time per training slide and
its peak RSS (from the job's own usage line, as in every workflow log).

What it shows: with ``cache: disk`` the peak memory stays at about one bag whatever the number
of slides (the cohort does not have to fit in memory); with ``cache: memory`` it grows with
the cohort, which is why ``auto`` keeps bags in memory only under ``cache_max_gb``. Disk reads
here come from the page cache when the files fit in memory (they do for up to ~150 slides on a
24 GB machine): a cohort larger than the node's memory reads from storage at every step, and
then the storage's speed adds to the epoch time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import bench_cli
import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "benchmarks"
MAGS = (10.0, 20.0)
#: Every method of Tables 1-3 with CAMELYON16's settings (config/camelyon16.yaml).
METHODS = yaml.safe_load((REPO / "config" / "camelyon16.yaml").read_text())["methods"]
USAGE = re.compile(r"zoommil train: ([0-9.]+) s wall, ([0-9.]+) CPU-s, peak RSS ([0-9]+) MB")


def write_slide(path: Path, n_high: int, dim: int, seed: int) -> None:
    """One feature file: n_high / 4 parents at 10x, their 4 children each at 20x."""
    from zoommil.io.featurefile import write_feature_file
    from zoommil.wsi.lattice import children_order

    rng = np.random.default_rng(seed)
    n_low = n_high // 4
    side = int(np.ceil(np.sqrt(n_low)))
    low = np.stack(np.divmod(np.arange(n_low), side), axis=1)
    high = children_order(low)  # the contract's depth-first order, which readers check
    feats = [rng.standard_normal((len(c), dim), dtype=np.float32) for c in (low, high)]
    write_feature_file(
        path,
        MAGS,
        feats,
        [low, high],
        [c * 512 for c in (low, high)],
        attrs={"encoder": "resnet50_trunc", "precision": "fp32", "weights_sha256": "random"},
    )


def make_cohort(folder: Path, n_train: int, n_high: int, dim: int) -> Path:
    """Feature files (reused across sizes) and a sheet: n_train train slides, plus a tenth as
    many (at least 2) for val and test each, labels alternating."""
    folder.mkdir(parents=True, exist_ok=True)
    n_other = max(2, n_train // 10)
    splits = ["train"] * n_train + ["val"] * n_other + ["test"] * n_other
    rows = []
    for i, split in enumerate(splits):
        slide = f"{split}_{i:04d}"
        path = folder / f"{slide}.h5"
        if not path.exists():
            write_slide(path, n_high, dim, seed=i)
        rows.append(f"{slide}\t{path}\t{('normal', 'tumor')[i % 2]}\t{split}")
    sheet = folder / f"sheet_{n_train}.tsv"
    sheet.write_text("slide_id\tpath\tlabel\tsplit\n" + "\n".join(rows) + "\n")
    return sheet


def train_once(
    work: Path, features: Path, sheet: Path, method: str, cache: str, epochs: int
) -> dict:
    """One `zoommil train` process; its epoch seconds (log.csv) and its usage line."""
    run = work / f"{sheet.stem}_{method}_{cache}"
    config = run / "train.yaml"
    run.mkdir(parents=True, exist_ok=True)
    config.write_text(
        yaml.safe_dump(
            {
                "features_dir": str(features),
                "sheet": str(sheet),
                "classes": ["normal", "tumor"],
                "mags": list(MAGS),
                "epochs": epochs,
                "cache": cache,
                "methods": METHODS,
            }
        )
    )
    command = [
        sys.executable, "-m", "zoommil", "train", "--config", str(config), "--model", method,
        "--seed", "0", "--out", str(run / "out"), "--threads", "1", "--no-progress",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    usage = USAGE.search(result.stderr + result.stdout)
    log = pd.read_csv(run / "out" / "log.csv")
    return {
        "epoch_s": [float(s) for s in log["seconds"]],
        "wall_s": float(usage.group(1)) if usage else None,
        "peak_rss_mb": int(usage.group(3)) if usage else None,
    }


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Training at cohort size",
        "",
        f"`{meta['command']}`; {meta['patches']} patches at 20x and {meta['patches'] // 4} at "
        f"10x per slide, {meta['dim']} dimensions ({meta['mb_per_slide']:.0f} MB a slide), "
        "1 thread, CPU; val and test a tenth of train each. Epoch time per training slide: "
        "median over epochs (min-max); peak RSS of the `zoommil train` process.",
        "",
        "| train slides | method | cache | s / slide / epoch | epoch s | peak RSS (MB) "
        "| process s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = [s / r["train_slides"] for s in r["epoch_s"]]
        lines.append(
            f"| {r['train_slides']} | {r['method']} | {r['cache']} | {np.median(per):.3f} "
            f"({min(per):.3f}-{max(per):.3f}) | {np.median(r['epoch_s']):.1f} | "
            f"{r['peak_rss_mb']} | {r['wall_s']:.0f} |"
        )
    lines += ["", f"Machine: {meta['machine']}. Times vary by machine; memory does not."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slides", type=int, nargs="+", default=[20, 40, 80],
                        help="training slides per size (default: 20 40 80)")  # fmt: skip
    parser.add_argument("--patches", type=int, default=10_000, help="20x patches per slide")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["zoommil", "abmil"], choices=list(METHODS),
                        help="methods timed at every size (default: zoommil abmil)")  # fmt: skip
    parser.add_argument("--all-methods-at", type=int, default=10, metavar="N",
                        help="also every method (disk) at N training slides; 0: no")  # fmt: skip
    parser.add_argument("--memory-max-slides", type=int, default=40,
                        help="also run cache: memory up to this many training slides")  # fmt: skip
    parser.add_argument("--features-dir", type=Path, default=OUT / "train_scale" / "features")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    bench_cli.output_folder(args.out)
    bench_cli.output_folder(args.features_dir)

    work = args.out / "train_scale"
    plan = []  # (train slides, method, cache)
    if args.all_methods_at:
        plan += [(args.all_methods_at, m, "disk") for m in METHODS]
    for n in sorted(args.slides):
        for method in args.methods:
            plan += [(n, method, "disk")] + (
                [(n, method, "memory")] if n <= args.memory_max_slides else []
            )
    rows, sheets = [], {}
    for n, method, cache in dict.fromkeys(plan):
        if n not in sheets:
            started = time.perf_counter()
            sheets[n] = make_cohort(args.features_dir, n, args.patches, args.dim)
            print(f"{n} slides: feature files ready in {time.perf_counter() - started:.0f} s")
        result = train_once(work, args.features_dir, sheets[n], method, cache, args.epochs)
        rows.append({"train_slides": n, "method": method, "cache": cache, **result})
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "command": "python benchmarks/train_scale.py " + " ".join(argv or sys.argv[1:]),
        "patches": args.patches,
        "dim": args.dim,
        "mb_per_slide": args.patches * 1.25 * args.dim * 4 / 2**20,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }
    bench_cli.write_text(
        args.out / "train_scale.json", json.dumps({"meta": meta, "rows": rows}, indent=1)
    )
    bench_cli.write_text(args.out / "train_scale.md", markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()

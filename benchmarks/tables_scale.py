"""Benchmark: Tables 1-4 (`zoommil.reporting.tables.make_tables`) at cohort size.

    nice python benchmarks/tables_scale.py                       # 100, 300, 1000 test slides
    nice python benchmarks/tables_scale.py --test-slides 300 --repeats 1
    nice python benchmarks/tables_scale.py --sites 2      # with the subgroup table by site

Writes results/benchmarks/tables_scale.{json,md}. For each number of test slides it writes the
evaluation JSONs the workflow's `tables` rule reads (the demo config's 9 methods and 6 Table 4
ablations, ``--seeds`` seeds, 3 classes, about 70% of the predictions right, each with its
class probabilities for the calibration table) plus a QC table
and the FLOPs and timing JSONs, then runs `make_tables` in a fresh process ``--repeats``
times: wall time and that process's peak RSS. The bootstrap CIs (5000 resamples per cell) and
the paired permutation tests of the comparison table (exact up to 16 slides, 20000 Monte
Carlo swaps above) are what grows with the slides; the demo has 15 test slides, a
1000-slide cohort about 300. ``--sites N`` adds a slide sheet whose test slides come from N
sites (in turn) and the subgroup table by site (`report.subgroups`: per site and method AUC
and balanced accuracy with their CIs, and the gap's CI and permutation test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_cli
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "benchmarks"
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
CLASSES = ("normal", "atypia", "carcinoma")


def fabricate(folder: Path, n_test: int, n_seeds: int, seed: int = 0, sites: int = 0) -> dict:
    """The `tables` rule's inputs for ``n_test`` test slides, under ``folder`` (with
    ``sites``, a slide sheet whose test slides come from that many sites, in turn)."""
    from zoommil.reporting import stats

    rng = np.random.default_rng(seed)
    slides = [f"slide_{i:04d}" for i in range(n_test)]
    labels = rng.integers(0, len(CLASSES), n_test)
    qc = folder / "qc.tsv"
    qc.write_text(
        "slide_id\tlabel\tsplit\tstatus\tstage\treason\n"
        + "".join(f"{s}\t{CLASSES[y]}\ttest\tok\t\t\n" for s, y in zip(slides, labels, strict=True))
    )
    sheet = folder / "slides.tsv"
    sheet.write_text(
        "slide_id\tlabel\tsplit\tsite\n"
        + "".join(f"{s}\t{CLASSES[y]}\ttest\tsite{i % max(sites, 1)}\n"
                  for i, (s, y) in enumerate(zip(slides, labels, strict=True)))
    )  # fmt: skip
    methods = {**CONFIG["methods"], **CONFIG["ablations"]["methods"]}
    evals, flops = [], []
    timings: dict[str, list[str]] = {"cpu1": [], "cpu": [], "gpu": []}
    for method in methods:
        for run_seed in range(n_seeds):
            right = rng.random(n_test) < 0.7
            preds = np.where(right, labels, (labels + rng.integers(1, 3, n_test)) % 3)
            pred = stats.Predictions(tuple(slides), (0,), labels, preds[None], len(CLASSES))
            # softmax-like probabilities whose largest is the prediction: calibration's input
            logits = rng.normal(0.0, 1.0, (n_test, len(CLASSES)))
            logits[np.arange(n_test), preds] += 2.0 + np.abs(logits).max(axis=1)
            probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            every = np.arange(n_test)
            record = {
                "method": method,
                "seed": run_seed,
                "classes": list(CLASSES),
                "accuracy": float(stats.seed_mean_metric(pred, "accuracy", every)),
                "weighted_f1": float(stats.seed_mean_metric(pred, "weighted_f1", every)),
                "auc": 0.8,
                "predictions": [
                    {
                        "slide_id": s,
                        "label": CLASSES[y],
                        "pred": CLASSES[p],
                        "probs": dict(zip(CLASSES, map(float, q), strict=True)),
                    }
                    for s, y, p, q in zip(slides, labels, preds, probs, strict=True)
                ],
            }
            path = folder / "eval" / method / f"seed~{run_seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record))
            evals.append(str(path))
        efficiency = folder / "efficiency" / method
        efficiency.mkdir(parents=True, exist_ok=True)
        (efficiency / "flops.json").write_text(json.dumps({"mean_tflops": 0.2}))
        flops.append(str(efficiency / "flops.json"))
        if method in CONFIG["methods"]:
            path = efficiency / "throughput_cpu1.json"
            path.write_text(json.dumps({"seconds_per_slide": 5.0, "slides_per_hour": 720.0}))
            timings["cpu1"].append(str(path))
    subgroups = ["site"] if sites else []
    return {"qc": str(qc), "evals": evals, "flops": flops, "timings": timings,
            "sheet": str(sheet), "subgroups": subgroups}  # fmt: skip


def make_tables_once(folder: Path) -> dict:
    """`make_tables` on ``folder``'s inputs in this process: its seconds and peak RSS (MB)."""
    from zoommil.reporting import tables

    inputs = json.loads((folder / "inputs.json").read_text())
    outputs = {
        f"{kind}_{ext}": folder / "tables" / f"{kind}.{ext}"
        for kind in ("main", "ablation", "comparison", "subgroups")
        for ext in ("csv", "md", "tex")
    }
    started, cpu_started = time.perf_counter(), time.process_time()
    tables.make_tables(
        qc_table=inputs["qc"],
        evals=inputs["evals"],
        flops=inputs["flops"],
        timings=inputs["timings"],
        outputs=outputs,
        dataset="benchmark",
        weights="imagenet",
        mags=CONFIG["preprocess"]["mags"],
        methods=CONFIG["methods"],
        ablations=CONFIG["ablations"]["methods"],
        reference=CONFIG["ablations"]["reference"],
        sheet=inputs["sheet"],
        subgroup_columns=inputs["subgroups"],
    )
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started  # a shared machine's wall time drifts
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_mb": round(peak_mb)}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Tables 1-4 at cohort size",
        "",
        f"`{meta['command']}`: `make_tables` on {meta['methods']} methods and ablations x "
        f"{meta['seeds']} seeds, 3 classes, one fresh process per run (median of "
        f"{meta['repeats']}, range); peak RSS of that process"
        + (f"; with the subgroup table over {meta['sites']} sites." if meta.get("sites") else "."),
        "",
        "| test slides | make_tables s | CPU s | peak RSS (MB) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        s, cpu = r["seconds"], r["cpu_seconds"]
        lines.append(
            f"| {r['test_slides']} | {np.median(s):.1f} ({min(s):.1f}-{max(s):.1f}) | "
            f"{np.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f}) | {max(r['peak_rss_mb'])} |"
        )
    lines += ["", f"Machine: {meta['machine']}. Times vary by machine; memory does not."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test-slides", type=int, nargs="+", default=[100, 300, 1000],
                        help="test slides per size (default: 100 300 1000)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sites",
        type=int,
        default=0,
        help="add the subgroup table by this many sites (default: none)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # one timed run
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(make_tables_once(args.child)))
        return
    bench_cli.output_folder(args.out)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="tables_scale.") as tmp:
        for n in sorted(args.test_slides):
            folder = Path(tmp) / str(n)
            folder.mkdir()
            inputs = fabricate(folder, n, args.seeds, sites=args.sites)
            (folder / "inputs.json").write_text(json.dumps(inputs))
            runs = []
            for _ in range(args.repeats):
                command = [sys.executable, __file__, "--child", str(folder)]
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            rows.append(
                {
                    "test_slides": n,
                    "seconds": [r["seconds"] for r in runs],
                    "cpu_seconds": [r["cpu_seconds"] for r in runs],
                    "peak_rss_mb": [r["peak_rss_mb"] for r in runs],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    meta = {
        "command": "python benchmarks/tables_scale.py " + " ".join(argv or sys.argv[1:]),
        "methods": len(CONFIG["methods"]) + len(CONFIG["ablations"]["methods"]),
        "seeds": args.seeds,
        "repeats": args.repeats,
        "sites": args.sites,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }
    bench_cli.write_text(
        args.out / "tables_scale.json", json.dumps({"meta": meta, "rows": rows}, indent=1)
    )
    bench_cli.write_text(args.out / "tables_scale.md", markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()

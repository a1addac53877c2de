"""What early stopping would change and save, replayed on the logs of full-length runs.

A run stopped early is a prefix of the full run (same seed, same epochs up to the stop), so the
`log.csv` of a run trained for every epoch tells exactly where each patience would have
stopped it, which epoch it would have kept and how many seconds of epochs it would not have
run. Runs that already stopped early are left out (their logs end at their stop).

    python benchmarks/early_stopping.py [--models results/models] [--patience 5 10 15 20 30]

Run it on a workflow run with `train.early_stopping: null`, e.g. the demo with every epoch:

    printf 'train: {early_stopping: null}\n' > every_epoch.yaml
    snakemake --cores 2 --configfile config/config.yaml every_epoch.yaml

(the second file is merged into the first; `--config train=...` would pass the value as a
string). Writes results/benchmarks/early_stopping.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import bench_cli

from zoommil.training.trainer import replay_early_stopping

REPO = Path(__file__).resolve().parents[1]


def read_runs(models: Path) -> tuple[list[dict], list[str]]:
    """Full-length runs (method, seed, selection, kept epoch, log rows) and the skipped ones."""
    runs, skipped = [], []
    for metrics_path in sorted(models.glob("*/seed~*/metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        name = f"{metrics['method']} seed {metrics['seed']}"
        with (metrics_path.parent / "log.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        if metrics.get("epochs_run", len(rows)) < metrics["epochs"] or len(rows) == 0:
            skipped.append(name)
            continue
        runs.append(
            {
                "method": metrics["method"],
                "seed": metrics["seed"],
                "selection": metrics["selection"],
                "kept_epoch": metrics["best_epoch"],
                "rows": rows,
            }
        )
    return runs, skipped


def replay(runs: list[dict], patience: int) -> dict:
    """Epochs and seconds not run, and the runs whose kept epoch would change."""
    changed, seconds_total, seconds_saved, epochs_saved = [], 0.0, 0.0, 0
    per_method: dict[str, float] = {}
    for run in runs:
        seconds = [float(r["seconds"]) for r in run["rows"]]
        stop, kept = replay_early_stopping(run["rows"], patience, run["selection"])
        saved = sum(seconds[stop:])
        seconds_total += sum(seconds)
        seconds_saved += saved
        epochs_saved += len(seconds) - stop
        per_method[run["method"]] = per_method.get(run["method"], 0.0) + saved
        if kept != run["kept_epoch"]:
            changed.append(
                {"method": run["method"], "seed": run["seed"], "kept": kept,
                 "full_run_kept": run["kept_epoch"], "stopped_after": stop}
            )  # fmt: skip
    return {
        "patience": patience,
        "epochs_not_run": epochs_saved,
        "epochs_total": sum(len(r["rows"]) for r in runs),
        "epoch_seconds_not_run": round(seconds_saved, 1),
        "epoch_seconds_total": round(seconds_total, 1),
        "seconds_not_run_per_method": {k: round(v, 1) for k, v in sorted(per_method.items())},
        "kept_epoch_changed": changed,
    }


def markdown(result: dict) -> str:
    lines = [
        "# Early stopping replayed on full-length runs",
        "",
        f"{result['n_runs']} runs from `{result['models']}`"
        + (
            f"; left out (already stopped early): {len(result['skipped'])}"
            if result["skipped"]
            else ""
        ),  # fmt: skip
        "",
        "| patience | epochs not run | epoch seconds not run | runs whose kept epoch changes |",
        "|---|---|---|---|",
    ]
    for r in result["replays"]:
        share = r["epoch_seconds_not_run"] / max(r["epoch_seconds_total"], 1e-9)
        changed = ", ".join(
            f"{c['method']} seed {c['seed']} ({c['full_run_kept']} -> {c['kept']})"
            for c in r["kept_epoch_changed"]
        )
        lines.append(
            f"| {r['patience']} | {r['epochs_not_run']} of {r['epochs_total']} | "
            f"{r['epoch_seconds_not_run']:.0f} of {r['epoch_seconds_total']:.0f} "
            f"({100 * share:.0f}%) | {len(r['kept_epoch_changed'])}"
            + (f": {changed}" if changed else "")
            + " |"
        )
    lines += [
        "",
        "Seconds are the logged wall time of each epoch (training + validation) on the machine "
        "that ran them; they vary by machine, the epoch counts and kept epochs do not.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO / "results" / "models")
    parser.add_argument("--patience", type=int, nargs="+", default=[5, 10, 15, 20, 30])
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args(argv)
    bench_cli.input_folder(args.models, "models folder")
    bench_cli.output_folder(args.out)
    runs, skipped = read_runs(args.models)
    if not runs:
        parser.error(f"{args.models}: no full-length runs (metrics.json + log.csv) found")
    result = {
        "models": str(args.models),
        "n_runs": len(runs),
        "skipped": skipped,
        "replays": [replay(runs, p) for p in args.patience],
    }
    bench_cli.write_text(args.out / "early_stopping.json", json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    bench_cli.write_text(args.out / "early_stopping.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One table from k folds' runs: mean and spread over folds, and the pooled out-of-fold score.

Why: each fold's `results/tables/main.csv` gives mean +- std over *seeds* and a CI over *that
fold's* test slides; neither is the cross-validation result. Averaging the folds' std columns,
or taking one std over every (fold, seed) run, mixes the fold-to-fold spread (which test
slides, which training slides) with the seed-to-seed one. Per method this writes:

- ``{metric}_mean``: the mean over folds of each fold's seed-mean (folds weigh alike);
- ``{metric}_std_folds``: the std (ddof 1) over folds of those seed-means, what CLAM-style
  "mean +- std over k folds" reports;
- ``{metric}_std_seeds``: the seed-to-seed std within a fold, pooled over folds (root mean of
  the folds' seed variances; NaN with one seed);
- ``{metric}_pooled`` with its 95% CI: the metric of every slide's out-of-fold prediction
  (each slide is a test slide of one fold), averaged over seeds, bootstrapped over slides, or
  over patients with ``--sheet`` naming a sheet with a `patient` column
  (`zoommil.reporting.stats`, as the tables do).

    python -m zoommil.cv.combine runs/fold_0 runs/fold_1 ... --out cv.csv [--sheet slides.tsv]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoommil.errors import ZoomMILError
from zoommil.interop.tool import add_version, run_checked
from zoommil.reporting import stats
from zoommil.reporting.results import checked_metric, eval_runs, patients

METRICS = ("weighted_f1", "accuracy")


def fold_runs(folders: Sequence[str | Path]) -> list[dict[str, list[dict[str, Any]]]]:
    """Per fold folder: method -> its evaluation records (results/eval/<method>/seed~*.json)."""
    runs = []
    for folder in folders:
        paths = sorted(Path(folder).glob("results/eval/*/seed~*.json"))
        if not paths:
            raise ZoomMILError(
                f"{folder}: no results/eval/<method>/seed~<seed>.json (run it first)"
            )
        runs.append(eval_runs(paths))
    return runs


def check_partition(folders: Sequence[str | Path], runs: Sequence[Mapping[str, Any]]) -> None:
    """Refuse folds whose test slides overlap: pooled, a slide would count twice, and a slide
    tested in two folds was trained on in one of them (the fold sheets were not a partition)."""
    seen: dict[str, str] = {}
    for folder, by_method in zip(folders, runs, strict=True):
        slides = {p["slide_id"] for r in next(iter(by_method.values())) for p in r["predictions"]}
        for slide in sorted(slides):
            if slide in seen:
                raise ZoomMILError(
                    f"slide {slide} is a test slide of both {seen[slide]} and {folder}: the "
                    "folds' test slides must be disjoint (write the fold sheets with "
                    "`python -m zoommil.cv.folds`)"
                )
            seen[slide] = str(folder)


def _pooled(records: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One evaluation record per seed holding every fold's test predictions of that seed."""
    seeds = [sorted(int(r["seed"]) for r in fold) for fold in records]
    if any(s != seeds[0] for s in seeds):
        raise ZoomMILError(f"the folds have different seeds ({seeds}): nothing to pool")
    merged = []
    for seed in seeds[0]:
        runs = [next(r for r in fold if int(r["seed"]) == seed) for fold in records]
        predictions = [p for run in runs for p in run["predictions"]]
        merged.append({"seed": seed, "classes": runs[0]["classes"], "predictions": predictions})
    return merged


def method_row(
    method: str, records: Sequence[Sequence[Mapping[str, Any]]], patient: Mapping[str, str]
) -> dict[str, Any]:
    """The combined row of one method from its records in each fold."""
    row: dict[str, Any] = {"method": method, "n_folds": len(records)}
    row["seeds"] = ",".join(str(s) for s in sorted({int(r["seed"]) for f in records for r in f}))
    merged = _pooled(records)
    pred = stats.predictions_from_evals(merged)
    if patient:
        pred = stats.with_patients(pred, patient)
    row["n_test_slides"] = len(pred.slides)
    row["n_test_units"] = stats.n_units(pred)
    for metric in METRICS:
        per_fold = [
            [checked_metric(r, metric, r.get("_source", method)) for r in fold] for fold in records
        ]
        means = np.array([np.mean(values) for values in per_fold])
        variances = [np.var(values, ddof=1) for values in per_fold if len(values) > 1]
        row[f"{metric}_mean"] = float(means.mean())
        row[f"{metric}_std_folds"] = float(means.std(ddof=1)) if len(means) > 1 else math.nan
        row[f"{metric}_std_seeds"] = float(math.sqrt(np.mean(variances))) if variances else math.nan
        interval = stats.method_ci(pred, metric)
        row[f"{metric}_pooled"] = interval.estimate
        row[f"{metric}_pooled_ci_low"] = interval.low
        row[f"{metric}_pooled_ci_high"] = interval.high
        row[f"{metric}_pooled_ci_method"] = interval.kind
    return row


def combine(folders: Sequence[str | Path], sheet: str | Path | None = None) -> pd.DataFrame:
    """The combined table, one row per method, every fold having each."""
    if len(folders) < 2:  # a glob such as runs/fold_* before the other folds ran
        listed = ", ".join(map(str, folders))
        raise ZoomMILError(
            f"{len(folders)} fold folder ({listed}): cross-validation combines at least 2"
        )
    runs = fold_runs(folders)
    check_partition(folders, runs)
    methods = sorted({m for fold in runs for m in fold})
    for folder, fold in zip(folders, runs, strict=True):
        if missing := [m for m in methods if m not in fold]:
            raise ZoomMILError(
                f"method(s) {', '.join(missing)} not evaluated in {folder} (no "
                "results/eval/<method>/seed~*.json there): run that fold to its end"
            )
    patient = patients(sheet)
    return pd.DataFrame([method_row(m, [fold[m] for fold in runs], patient) for m in methods])


def markdown(table: pd.DataFrame) -> str:
    """The table as `main.md` would show it: percentages, mean +- std over folds."""
    lines = [
        "| method | folds | seeds | weighted F1 (%) | accuracy (%) | pooled weighted F1 [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        f1 = f"{100 * r.weighted_f1_mean:.1f} ± {100 * r.weighted_f1_std_folds:.1f}"
        acc = f"{100 * r.accuracy_mean:.1f} ± {100 * r.accuracy_std_folds:.1f}"
        low, high = r.weighted_f1_pooled_ci_low, r.weighted_f1_pooled_ci_high
        ci = "n/a" if math.isnan(low) else f"{100 * low:.1f}, {100 * high:.1f}"
        pooled = f"{100 * r.weighted_f1_pooled:.1f} [{ci}]"
        lines.append(f"| {r.method} | {r.n_folds} | {r.seeds} | {f1} | {acc} | {pooled} |")
    lines.append(
        "\n± is the std over folds of each fold's mean over seeds; the pooled score is every "
        f"slide's out-of-fold prediction ({int(table.n_test_slides.iloc[0])} slides, "
        f"{int(table.n_test_units.iloc[0])} resampling units), its CI the bootstrap over them."
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoommil.cv.combine", description=__doc__)
    parser.add_argument(
        "folders", nargs="+", help="the folds' run folders (-d), each with results/"
    )
    parser.add_argument("--out", required=True, help="CSV to write (a .md beside it)")
    parser.add_argument("--sheet", help="a sheet with a `patient` column: resample patients")
    add_version(parser)
    args = parser.parse_args(argv)
    out = Path(args.out)
    sheet = [("sheet", Path(args.sheet))] if args.sheet else []
    table = run_checked(
        parser.prog,
        lambda: combine(args.folders, args.sheet),
        [out, out.with_suffix(".md")],
        [*sheet, *(("fold folder", Path(f)) for f in args.folders)],
    )
    if table is None:
        return 2
    table.to_csv(out, index=False)
    text = markdown(table)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Learning curve: how many labelled training slides does each method need?

    nice python benchmarks/learning_curve.py           # 180 runs, 3 seeds x 5 draws
    nice python benchmarks/learning_curve.py --quick   # 12 runs: 1 seed x 2 draws, n 8 and 32

A study planner asks "with 100 labelled slides, is ZoomMIL still better than ABMIL?"; the
paper trains on full cohorts only. Here every method is trained with `zoommil train` (the
train rule's command, through benchmarks/negative_control.py's `train_runs`) on nested,
class-balanced subsets of the train split of the same synthetic cohort (feature files of the
real contract with a planted lesion signal, `make_cohort`), with the validation split (model
selection) and the test split fixed:

- a *draw* is a seeded shuffle of each class's train slides; the subset of size n takes the
  first n / 2 of each class, so within a draw a larger subset contains every smaller one
  and the curve's steps differ only by the slides added;
- every (draw, n) is trained with each training seed; a (seed, draw) pair is a replicate.
  A draw whose subset at n an earlier draw already gave (n near the train split's size) is
  not trained or counted again (`repeated_draws`); the cohort's 96 train slides keep the
  default sizes' draws distinct.

Reported per method and n: the test AUC, mean ± sd over the replicates with a 95% t interval
of the mean; per n the paired difference ZoomMIL - ABMIL (same seed, same subset); and per
method the smallest n whose interval's lower bound is above 0.5. The epochs are the
config's at every n (as a user's run would be), so a smaller subset also gets fewer
optimiser steps.

Writes results/benchmarks/learning_curve.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import bench_cli
import label_noise as ln
import negative_control as nc
import numpy as np
import pandas as pd

OUT = nc.OUT
SIZES = (8, 16, 32, 64)
QUICK_SIZES = (8, 32)
DEFAULT_METHODS = ("zoommil", "abmil", "meanmil")
#: The paired difference reported per n: first minus second, same seed and subset.
PAIR = ("zoommil", "abmil")


def draw_subsets(
    sheet: pd.DataFrame, sizes: list[int], seed: int, classes: tuple[str, ...] = nc.CLASSES
) -> dict[int, list[str]]:
    """Train slide ids of each size n in ``sizes``: n / len(classes) of every class, the
    first of a shuffle of that class's train slides seeded by ``seed`` alone. The shuffle
    does not depend on ``sizes``, so the subsets of one seed are nested (a larger n holds
    every smaller one) whichever sizes are asked for. Ids in sheet order."""
    train = sheet.loc[sheet["split"] == "train"]
    if odd := sorted(set(train["label"]) - set(classes)):
        raise ValueError(f"train split: labels {odd} not among the classes {list(classes)}")
    k = len(classes)
    for n in sizes:
        if n % k:
            raise ValueError(f"n = {n}: not a multiple of the {k} classes (class-balanced)")
        if n // k < 2:
            raise ValueError(f"n = {n}: {n // k} slide(s) per class, at least 2 needed")
    rng = np.random.default_rng(seed)
    shuffled = {c: rng.permutation(train.loc[train["label"] == c, "slide_id"].to_numpy())
                for c in classes}  # fmt: skip
    subsets = {}
    for n in sorted(set(sizes)):
        for c in classes:
            if n // k > len(shuffled[c]):
                raise ValueError(
                    f"n = {n}: {n // k} train slides of class {c} needed, "
                    f"the sheet has {len(shuffled[c])}"
                )
        chosen = {s for c in classes for s in shuffled[c][: n // k]}
        subsets[n] = [s for s in train["slide_id"] if s in chosen]
    return subsets


def subset_sheet(sheet: pd.DataFrame, train_ids: list[str]) -> pd.DataFrame:
    """The sheet with only ``train_ids`` left in the train split; val and test as they were."""
    keep = (sheet["split"] != "train") | sheet["slide_id"].isin(train_ids)
    return sheet.loc[keep].reset_index(drop=True)


def repeated_draws(draws: list[dict[int, list[str]]]) -> dict[int, dict[int, int]]:
    """{draw: {n: the earlier draw of the same subset}}: where a class has few more train
    slides than n / 2 (all of them at its maximum), two draws can give the same subset, and
    for a seed `zoommil train` then gives the same run. Such a draw is not trained again and
    not counted, so that copies of one run do not narrow an interval."""
    seen: dict[tuple[int, frozenset[str]], int] = {}
    repeats: dict[int, dict[int, int]] = {}
    for d, subsets in enumerate(draws):
        for n, ids in subsets.items():
            first = seen.setdefault((n, frozenset(ids)), d)
            if first != d:
                repeats.setdefault(d, {})[n] = first
    return repeats


def first_above_chance(curve: dict[str, dict]) -> int | str:
    """The smallest n (keys of ``curve``) whose AUC interval's lower bound is above 0.5, or
    "never" (also where an n has no interval: one replicate)."""
    for n in sorted(curve, key=int):
        ci = curve[n]["auc"]["ci95"]
        if ci is not None and ci[0] > 0.5:
            return int(n)
    return "never"


def by_draw(values: dict[tuple[int, int], float]) -> dict:
    """`label_noise.interval` of the per-draw means of {(seed, draw): value}. The seeds of a
    draw train on one subset, so they are not independent replicates; with the draw as the
    unit the interval is wider and closer to what another set of labelled slides would give."""
    draws: dict[int, list[float]] = {}
    for (_, draw), value in values.items():
        draws.setdefault(draw, []).append(value)
    return ln.interval([float(np.mean(v)) for _, v in sorted(draws.items())])


def summarise(runs: list[dict], pair: tuple[str, str] = PAIR) -> dict:
    """Per method and n: test AUC and accuracy (`label_noise.interval` over the replicates)
    and the AUC's `by_draw` interval; per n: the paired difference ``pair[0] - pair[1]`` of
    test AUC over the (seed, draw) replicates both methods ran, and `by_draw`; per method:
    `first_above_chance` (of the replicates' interval)."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(r["method"], {}).setdefault(str(r["n"]), []).append(r)
    curves = {
        method: {
            n: {key: ln.interval([r[key] for r in rs]) for key in ("auc", "accuracy")}
            | {"auc_by_draw": by_draw({(r["seed"], r["draw"]): r["auc"] for r in rs})}
            for n, rs in sorted(by_n.items(), key=lambda kv: int(kv[0]))
        }
        for method, by_n in groups.items()
    }
    paired = {}
    if all(m in groups for m in pair):
        for n in curves[pair[0]]:
            auc = [{(r["seed"], r["draw"]): r["auc"] for r in groups[m].get(n, [])} for m in pair]
            keys = sorted(auc[0].keys() & auc[1].keys())
            if keys:
                paired[n] = {k: auc[0][k] - auc[1][k] for k in keys}
    return {
        "curves": curves,
        "paired": {
            "methods": list(pair),
            "difference": {n: ln.interval(list(d.values())) for n, d in paired.items()},
            "by_draw": {n: by_draw(d) for n, d in paired.items()},
        }
        if paired
        else None,
        "first_n_above_chance": {m: first_above_chance(c) for m, c in curves.items()},
        # the draw as the unit: the seeds of a draw share its subset (`by_draw`)
        "first_n_above_chance_by_draw": {
            m: first_above_chance({n: {"auc": v["auc_by_draw"]} for n, v in c.items()})
            for m, c in curves.items()
        },
    }


def markdown(result: dict) -> str:
    meta, summary = result["meta"], result["summary"]
    lines = [
        "# Learning curve: test AUC against the number of training slides",
        "",
        f"`{meta['command']}` ({meta['seconds']:.0f} s wall, {meta['cpu_seconds']:.0f} CPU-s, "
        f"peak RSS {meta['peak_rss_mb']:.0f} MB, {meta['machine']}; {meta['versions']}). "
        f"Cohort: {meta['cohort']}. SYNTHETIC feature files with a planted signal: the "
        "numbers rank the training paths on this signal, not on real tissue.",
        "",
        "n: train slides, class-balanced, nested within a draw; validation and test fixed. "
        "Test AUC of `zoommil train` (the workflow's train rule), mean ± sd over the (seed, "
        "draw) replicates [95% t interval of the mean]; over draws: the same of the per-draw "
        "means (the draw as the unit). The intervals cover training seeds "
        "and subset draws on one cohort and one test split, not the sampling of the test "
        "slides, and the replicates share seeds and draws: read them as approximate. The "
        "epochs are the same at every n, so a smaller n also has fewer optimiser steps.",
        "",
        "| method | n | runs | test AUC | test AUC over draws | test accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for method, curve in summary["curves"].items():
        for n, s in curve.items():
            auc, accuracy = ln.fmt_interval(s["auc"]), ln.fmt_interval(s["accuracy"])
            draws = ln.fmt_interval(s["auc_by_draw"])
            lines.append(f"| {method} | {n} | {s['auc']['n']} | {auc} | {draws} | {accuracy} |")
    if summary["paired"]:
        a, b = summary["paired"]["methods"]
        lines += [
            "",
            f"Paired difference {a} - {b} of test AUC (same seed, same subset), mean ± sd "
            f"[95% paired t interval]; positive: {a} better. Over draws: the same of the "
            "per-draw mean differences (the draw as the unit, closer to what another set of "
            "labelled slides would give).",
            "",
            "| n | pairs | difference | over draws |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {s['n']} | {ln.fmt_interval(s)} | "
            f"{ln.fmt_interval(summary['paired']['by_draw'][n])} |"
            for n, s in summary["paired"]["difference"].items()
        ]
    if repeats := result.get("repeated_draws"):
        same = "; ".join(f"draw {d} at n {', '.join(r)}" for d, r in repeats.items())
        lines += ["", f"Not trained or counted (the subset of an earlier draw): {same}."]
    first = ", ".join(f"{m} {n}" for m, n in summary["first_n_above_chance"].items())
    by_draw = summary.get("first_n_above_chance_by_draw") or {}
    draws = ", ".join(f"{m} {n}" for m, n in by_draw.items())
    lines += [
        "",
        f"Smallest n whose AUC interval's lower bound is above 0.5: {first}"
        + (f"; over draws (the draw as the unit): {draws}" if draws else "")
        + ".",
        "",
    ]
    return "\n".join(lines)


def versions() -> str:
    """The versions that move the numbers: Python, torch, numpy and this package."""
    import torch

    import zoommil

    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy "
        f"{np.__version__}, zoommil {zoommil.__version__}"
    )


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed x 2 draws, n = 8 and 32")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--sizes", type=int, nargs="+",
                        help=f"train slides per subset, multiples of 2 (default {list(SIZES)}; "
                        f"--quick: {list(QUICK_SIZES)})")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--draws", type=int, default=5, help="subset draws per size")
    parser.add_argument("--subset-seed", type=int, default=0, help="draw d with seed this + d")
    nc.add_cohort_arguments(parser)
    # 48 per class: the draws differ at the largest default size, n = 64 (32 per class)
    parser.set_defaults(n_train=96)
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    bench_cli.output_folder(args.out)
    if args.quick:
        args.seeds, args.draws = [0], 2
    if args.sizes is None:
        args.sizes = list(QUICK_SIZES if args.quick else SIZES)
    if args.draws < 1:
        bench_cli.fail(f"--draws {args.draws}: at least 1")
    methods = ln.chosen_methods(args.methods)
    sizes = sorted(set(args.sizes))

    started = time.perf_counter()
    temp = None if args.work else tempfile.TemporaryDirectory(prefix="learning_curve_")
    work = args.work or Path(temp.name)
    runs: list[dict] = []
    try:
        features = work / "features"
        sheet = nc.make_cohort(features, args)
        try:
            draws = [draw_subsets(sheet, sizes, args.subset_seed + d) for d in range(args.draws)]
        except ValueError as error:
            bench_cli.fail(f"--sizes: {error} (--n-train {args.n_train})")
        repeats = repeated_draws(draws)
        for d, subsets in enumerate(draws):
            for n, ids in subsets.items():
                if n in repeats.get(d, {}):
                    continue
                folder = work / f"d{d}_n{n}"
                sub = subset_sheet(sheet, ids)
                for run in nc.train_runs(folder, features, sub, args.seeds, args, methods):
                    del run["labels"], run["p_tumor"]
                    runs.append({**run, "n": n, "draw": d})
                print(f"draw {d}, n = {n}: {len(runs)} runs, "
                      f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    finally:
        if temp is not None:
            temp.cleanup()

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    result = {
        "meta": {
            **bench_cli.run_meta("learning_curve.py", argv, args.quick, started),
            "cpu_seconds": round(sum(u.ru_utime + u.ru_stime for u in usage), 1),
            "peak_rss_mb": round(max(u.ru_maxrss for u in usage) / 1024, 1),  # KiB on Linux
            "machine": machine(),
            "versions": versions(),
            "cohort": (
                f"{args.n_train} train / {args.n_val} val / {args.n_test} test synthetic slides "
                f"(benchmarks/negative_control.py's generator), {args.lesions} lesion parents of "
                f"shift {args.signal}; {args.epochs} epochs, lr {args.lr}; sizes {sizes}, "
                f"seeds {args.seeds} x {args.draws} subset draws"
            ),
            "args": bench_cli.args_json(args),
        },
        "summary": summarise(runs),
        "subsets": {str(d): {str(n): ids for n, ids in sub.items()} for d, sub in enumerate(draws)},
        "repeated_draws": {str(d): {str(n): f for n, f in r.items()} for d, r in repeats.items()},
        "runs": runs,
    }
    bench_cli.write_result(args.out, "learning_curve", result, markdown(result))


if __name__ == "__main__":
    main()

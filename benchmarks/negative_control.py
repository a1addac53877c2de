"""Negative control: with the slide labels shuffled, does every method fall to chance?

    nice python benchmarks/negative_control.py           # 36 trainings, ~250 CPU-s
    nice python benchmarks/negative_control.py --quick   # 15 trainings, ~100 CPU-s

A reviewer's question: if a method still scores above chance on permuted labels, something
leaks (a test slide in training, model selection on the test split, labels reaching the
features). Each method is trained with `zoommil train`, the command the workflow's `train`
rule runs (same flags: --eval-out, one thread, the config keys the workflow writes), on

- ``true``: the cohort's labels (a positive control: the signal must be learnable);
- ``permuted``: the labels shuffled within each split (class counts per split kept), several
  permutations x seeds; the test AUC must then scatter around 0.5;
- ``permuted+leak``: the same permuted sheets, plus a copy of every test slide's feature file
  in `train` under another slide id with its (permuted) test label: the leak the workflow's
  quickhash check refuses. It shows whether this control would see such a leak at all.

The cohort is made here, not with `zoommil synth` + `zoommil features` (15+ minutes on 2
cores for the demo): feature files of the real contract (`zoommil.io.featurefile`, two
magnifications, the quadtree's parent/children layout) whose values are drawn at random,
where a class-1 slide has a few "lesion" parents (and their children) shifted along one
direction. The features therefore carry the label only through that planted signal, by
construction, so the control tests the training path (sheet, splits, sampler, model
selection, evaluation), not the tissue/tile/feature steps, which never read the labels.

Writes results/benchmarks/negative_control.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import bench_cli
import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "benchmarks"
MAGS = (5.0, 10.0)
CLASSES = ("normal", "tumor")
#: The workflow's methods (config/config.yaml) at this cohort's bag sizes.
METHODS = {
    "zoommil": {"arch": "zoommil", "k": 4, "sigma": 0.01},
    "abmil": {"arch": "abmil"},
    "meanmil": {"arch": "meanmil"},
}


def write_slide(path: Path, label: int, rng: np.random.Generator, args: argparse.Namespace) -> None:
    """One slide: ``args.parents`` patches at 5x, their 4 children each at 10x. Every slide
    gets its own offset (stain, scanner); a class-1 slide has ``args.lesions`` parents whose
    features and whose children's are shifted by ``args.signal`` along one fixed direction."""
    from zoommil.io.featurefile import write_feature_file
    from zoommil.wsi.lattice import children_order

    side = int(np.ceil(np.sqrt(args.parents)))
    low = np.stack(np.divmod(np.arange(args.parents), side), axis=1)
    high = children_order(low)  # the 4 children of parent i are rows 4i..4i+3
    direction = np.zeros(args.dim, dtype=np.float32)
    direction[0] = 1.0
    offset = rng.normal(0.0, 0.5, args.dim).astype(np.float32)
    feats = [
        rng.standard_normal((len(rc), args.dim)).astype(np.float32) + offset for rc in (low, high)
    ]
    if label == 1:
        lesion = rng.choice(args.parents, args.lesions, replace=False)
        feats[0][lesion] += args.signal * direction
        feats[1][(4 * lesion[:, None] + np.arange(4)).ravel()] += args.signal * direction
    write_feature_file(
        path,
        MAGS,
        feats,
        [low, high],
        [rc * 512 for rc in (low, high)],
        attrs={"encoder": "synthetic", "precision": "fp32", "weights_sha256": "synthetic"},
    )


def make_cohort(folder: Path, args: argparse.Namespace) -> pd.DataFrame:
    """Feature files and the true sheet (slide_id, label, split), classes alternating."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.cohort_seed)
    rows = []
    for split, n in (("train", args.n_train), ("val", args.n_val), ("test", args.n_test)):
        for i in range(n):
            slide, label = f"{split}_{i:03d}", i % 2
            write_slide(folder / f"{slide}.h5", label, rng, args)
            rows.append({"slide_id": slide, "label": CLASSES[label], "split": split})
    return pd.DataFrame(rows)


def permute_labels(sheet: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The sheet with its labels shuffled within each split: every split keeps its class
    counts (no split loses a class), and a split's labels are never left as they were."""
    out = sheet.copy()
    for split, rows in sheet.groupby("split", sort=True):
        labels = rows["label"].to_numpy()
        if len(set(labels)) < 2:
            raise ValueError(f"split {split}: one class only, a permutation changes nothing")
        shuffled = labels
        while np.array_equal(shuffled, labels):
            shuffled = rng.permutation(labels)
        out.loc[rows.index, "label"] = shuffled
    return out


def with_leak(sheet: pd.DataFrame, features: Path) -> pd.DataFrame:
    """The sheet plus a train copy of each test slide (its feature file, its label)."""
    test = sheet.loc[sheet["split"] == "test"]
    copies = test.assign(slide_id="leak_" + test["slide_id"], split="train")
    for slide in test["slide_id"]:
        link = features / f"leak_{slide}.h5"
        if not link.exists():
            shutil.copyfile(features / f"{slide}.h5", link)
    return pd.concat([sheet, copies], ignore_index=True)


def train_runs(
    work: Path,
    features: Path,
    sheet: pd.DataFrame,
    seeds: list[int],
    args: argparse.Namespace,
    methods: dict[str, dict] | None = None,
) -> list[dict]:
    """Every method (default `METHODS`) on ``sheet`` with ``seeds``: one `zoommil train` call
    per method, as the workflow's rule makes it; the test split's AUC, accuracy and
    predictions of each run. benchmarks/label_noise.py trains through this too."""
    methods = METHODS if methods is None else methods
    from zoommil.cli import main as zoommil

    work.mkdir(parents=True, exist_ok=True)
    sheet.to_csv(work / "sheet.tsv", sep="\t", index=False)
    config = {
        "features_dir": str(features),
        "sheet": str(work / "sheet.tsv"),
        "classes": list(CLASSES),
        "mags": list(MAGS),
        "epochs": args.epochs,
        "lr": args.lr,
        "weight_decay": 0.0,
        "selection": "val_loss",
        "early_stopping": args.early_stopping,
        "feature_norm": "standardize",
        "methods": methods,
    }
    (work / "train.yaml").write_text(yaml.safe_dump(config))
    runs = []
    for method in methods:
        outs = [work / method / f"seed~{s}" for s in seeds]
        evals = [work / method / f"seed~{s}.json" for s in seeds]
        argv = ["train", "--config", str(work / "train.yaml"), "--model", method,
                "--seed", *map(str, seeds), "--out", *map(str, outs),
                "--eval-out", *map(str, evals), "--device", "cpu", "--threads", "1",
                "--no-progress"]  # fmt: skip
        if zoommil(argv) != 0:
            raise SystemExit(f"zoommil {' '.join(argv)} failed")
        for seed, out in zip(seeds, outs, strict=True):
            metrics = json.loads((out / "metrics.json").read_text())
            test = metrics["test"]
            runs.append(
                {
                    "method": method,
                    "seed": seed,
                    "auc": test["auc"],
                    "accuracy": test["accuracy"],
                    "best_epoch": metrics["best_epoch"],
                    "epochs_run": metrics["epochs_run"],
                    "labels": [p["label"] for p in test["predictions"]],
                    "p_tumor": [p["probs"][CLASSES[1]] for p in test["predictions"]],
                }
            )
    return runs


def bootstrap_auc(labels: list[str], scores: list[float], n: int, seed: int) -> list[float]:
    """95% percentile bootstrap CI of one run's test AUC over its test slides."""
    from zoommil.training.metrics import binary_auc

    y = np.asarray(labels) == CLASSES[1]
    s = np.asarray(scores)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            values.append(binary_auc(y[i], s[i]))
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def summarise(runs: list[dict], null_aucs: dict[str, list[float]] | None = None) -> dict:
    """Mean, std, min, max and 2.5-97.5 percentiles of the runs' test AUC and accuracy; with
    ``null_aucs`` (the method's permuted runs), the permutation p-value of the mean AUC."""
    out: dict = {"n_runs": len(runs)}
    for key in ("auc", "accuracy"):
        v = np.asarray([r[key] for r in runs], dtype=float)
        out[key] = {
            "mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()),
            "max": float(v.max()),
            "p2.5": float(np.percentile(v, 2.5)),
            "p97.5": float(np.percentile(v, 97.5)),
        }
    if null_aucs is not None:
        mean = out["auc"]["mean"]
        null = np.asarray(null_aucs)
        out["permutation_p"] = float((1 + (null >= mean).sum()) / (1 + len(null)))
    return out


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        "# Negative control: permuted labels",
        "",
        f"`python benchmarks/negative_control.py{' --quick' if meta['quick'] else ''}` "
        f"({meta['seconds']:.0f} s, {meta['machine']}). Cohort: {meta['cohort']}. Test AUC "
        "and accuracy of `zoommil train` (the workflow's train rule), mean ± std over runs "
        "[2.5-97.5 percentiles]; `true` runs also give each run's 95% bootstrap CI of the AUC "
        "over its test slides. p: permutation p-value of the true mean AUC against the "
        "method's permuted runs (at least 1 / (runs + 1)). Permuted: each permutation's AUC "
        "(mean over seeds) and z of their mean against chance (0.5) with the null sd of an "
        "AUC on the test split.",
        "",
        "| method | condition | runs | test AUC | test accuracy | notes |",
        "|---|---|---|---|---|---|",
    ]
    for method, conditions in result["summary"].items():
        for condition, s in conditions.items():
            auc, acc = s["auc"], s["accuracy"]
            notes = []
            if "permutation_p" in s:
                notes.append(f"p = {s['permutation_p']:.3f}")
            if "z_above_chance" in s:
                per = ", ".join(f"{v:.2f}" for v in s["per_permutation_auc"])
                notes.append(f"per permutation {per}; z {s['z_above_chance']:+.2f}")
            if "bootstrap_ci" in s:
                notes.append(
                    "CIs " + ", ".join(f"[{a:.2f}, {b:.2f}]" for a, b in s["bootstrap_ci"])
                )
            lines.append(
                f"| {method} | {condition} | {s['n_runs']} | {auc['mean']:.3f} ± {auc['std']:.3f} "
                f"[{auc['p2.5']:.2f}, {auc['p97.5']:.2f}] | {acc['mean']:.3f} ± {acc['std']:.3f} "
                f"[{acc['p2.5']:.2f}, {acc['p97.5']:.2f}] | {'; '.join(notes)} |"
            )
    lines += ["", result["verdict"], ""]
    return "\n".join(lines)


def null_check(permuted: list[dict], n_test: int) -> dict:
    """Is the permuted runs' AUC above chance? The permutation is the unit (its runs share a
    test labelling, so their AUCs move together): the mean over seeds of each permutation,
    then z of their mean against 0.5 with the null sd of a Mann-Whitney AUC on ``n_test``
    balanced slides, sqrt((n + 1) / (12 n1 n2)). One-sided: a leak raises the AUC, and a
    mean below 0.5 is chance with few permutations."""
    by_perm: dict[int, list[float]] = {}
    for run in permuted:
        by_perm.setdefault(run["permutation"], []).append(run["auc"])
    means = [float(np.mean(v)) for _, v in sorted(by_perm.items())]
    n1 = n_test // 2
    sd0 = float(np.sqrt((n_test + 1) / (12 * n1 * (n_test - n1))))
    z = (float(np.mean(means)) - 0.5) / (sd0 / np.sqrt(len(means)))
    return {"per_permutation_auc": means, "null_sd": sd0, "z_above_chance": float(z)}


def verdict(summary: dict) -> str:
    """One line: is any method's permuted AUC above chance, and do true labels beat it?"""
    above = [m for m, s in summary.items() if s["permuted"]["z_above_chance"] > 2]
    learnt = all(s["true"]["auc"]["mean"] > s["permuted"]["auc"]["max"] for s in summary.values())
    leak = {
        m: s["permuted+leak"]["auc"]["mean"] for m, s in summary.items() if "permuted+leak" in s
    }
    parts = [
        f"Permuted labels: above chance (z > 2) for {', '.join(above)}: look for a leak"
        if above
        else "Permuted labels: no method's test AUC above chance (every z <= 2, the "
        "permutation as the unit)",
        "true labels' mean AUC above every permuted run"
        if learnt
        else "true labels' mean AUC NOT above every permuted run for some method",
    ]
    if leak:
        parts.append(
            "planted leak (test copies in train): mean AUC "
            + ", ".join(f"{m} {v:.2f}" for m, v in leak.items())
        )
    return "; ".join(parts) + "."


def add_cohort_arguments(parser: argparse.ArgumentParser) -> None:
    """The cohort's and the training's options (`make_cohort`, `train_runs`), shared with
    benchmarks/label_noise.py so that both train on the same cohort by default."""
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-val", type=int, default=20)
    parser.add_argument("--n-test", type=int, default=40)
    parser.add_argument("--parents", type=int, default=16, help="5x patches per slide")
    parser.add_argument("--lesions", type=int, default=4, help="lesion parents of a tumor slide")
    parser.add_argument("--signal", type=float, default=3.0, help="lesion shift (feature sd 1)")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--early-stopping", type=int, default=None)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--cohort-seed", type=int, default=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 permutations x 1 seed")
    parser.add_argument("--permutations", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--true-seeds", type=int, nargs="+", default=[0, 1, 2])
    add_cohort_arguments(parser)
    parser.add_argument("--no-leak", action="store_true", help="skip the planted-leak runs")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    bench_cli.output_folder(args.out)
    if args.quick:
        args.permutations, args.seeds, args.true_seeds = 2, [0], [0, 1]

    started = time.perf_counter()
    temp = None if args.work else tempfile.TemporaryDirectory(prefix="negative_control_")
    work = args.work or Path(temp.name)
    try:
        features = work / "features"
        sheet = make_cohort(features, args)
        runs: dict[str, list[dict]] = {"true": train_runs(work / "true", features, sheet,
                                                          args.true_seeds, args)}  # fmt: skip
        runs["permuted"], runs["permuted+leak"] = [], []
        rng = np.random.default_rng(args.cohort_seed + 1)
        for p in range(args.permutations):
            shuffled = permute_labels(sheet, rng)
            for run in train_runs(work / f"perm{p}", features, shuffled, args.seeds, args):
                runs["permuted"].append({**run, "permutation": p})
            if not args.no_leak and p == 0:
                leaky = with_leak(shuffled, features)
                for run in train_runs(work / f"leak{p}", features, leaky, args.seeds, args):
                    runs["permuted+leak"].append({**run, "permutation": p})
    finally:
        if temp is not None:
            temp.cleanup()

    summary: dict[str, dict] = {}
    for method in METHODS:
        of = {c: [r for r in rs if r["method"] == method] for c, rs in runs.items() if rs}
        null = [r["auc"] for r in of["permuted"]]
        summary[method] = {c: summarise(rs, null if c == "true" else None) for c, rs in of.items()}
        summary[method]["permuted"].update(null_check(of["permuted"], args.n_test))
        summary[method]["true"]["bootstrap_ci"] = [
            bootstrap_auc(r["labels"], r["p_tumor"], 2000, r["seed"]) for r in of["true"]
        ]
    for rs in runs.values():
        for r in rs:
            del r["labels"], r["p_tumor"]
    result = {
        "meta": {
            "quick": args.quick,
            "seconds": round(time.perf_counter() - started, 1),
            "machine": f"{platform.machine()}, {platform.python_version()}",
            "cohort": (
                f"{args.n_train} train / {args.n_val} val / {args.n_test} test synthetic slides, "
                f"2 classes alternating, {args.parents} parents at 5x (x4 children at 10x), "
                f"dim {args.dim}, {args.lesions} lesion parents of shift {args.signal} per "
                f"tumor slide; {args.epochs} epochs, lr {args.lr}, standardised features; "
                f"permuted: {args.permutations} permutations x seeds {args.seeds}; true: seeds "
                f"{args.true_seeds}; planted leak: permutation 0 x seeds {args.seeds}"
            ),
            "args": bench_cli.args_json(args),
        },
        "summary": summary,
        "verdict": verdict(summary),
        "runs": runs,
    }
    bench_cli.write_result(args.out, "negative_control", result, markdown(result))


if __name__ == "__main__":
    main()

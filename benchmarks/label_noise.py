"""Label noise: how does each method's test AUC degrade when some training labels are wrong?

    nice python benchmarks/label_noise.py           # 117 `zoommil train` runs, ~10 CPU-min
    nice python benchmarks/label_noise.py --quick   # 1 seed, 1 draw, r 0 and 0.3, train arm

Slide labels of a cohort come from pathology reports, and a few percent of them are wrong.
Here a fraction r of the labels is flipped (binary task) and every method is trained with
`zoommil train` on the same synthetic cohort as benchmarks/negative_control.py (feature files
of the real contract with a planted lesion signal; its `make_cohort` and `train_runs`, the
train rule's command), in two arms:

- ``train``: r of the train split's labels flipped; validation (model selection) clean;
- ``train+val``: r of the train split's and r of the val split's labels flipped, as when
  all labels come from the same reports;

test labels are always clean. Each (seed, noise draw) at r > 0 is paired with the same
seed's clean run (r = 0), so the drop in test AUC has a paired confidence interval.

Writes results/benchmarks/label_noise.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import platform
import tempfile
import time
from pathlib import Path

import bench_cli
import negative_control as nc
import numpy as np
import pandas as pd
import yaml
from scipy import stats

OUT = nc.OUT
RATES = (0.0, 0.1, 0.2, 0.3)
#: The splits whose labels each arm flips; never test.
ARMS = {"train": ("train",), "train+val": ("train", "val")}
#: A split's index in the seed of its draw, so that a split's flips do not depend on which
#: other splits are flipped (the train+val arm flips train exactly as the train arm does).
SPLIT_INDEX = {"train": 0, "val": 1}
DEFAULT_METHODS = ("zoommil", "abmil", "meanmil")


def n_flips(rate: float, n: int) -> int:
    """round(rate * n), half up (0.5 -> 1, not Python's half-to-even 0), with a tolerance
    so that 0.15 * 10 = 1.4999999999999998 counts as the 1.5 it is."""
    return int(math.floor(rate * n + 0.5 + 1e-9))


def flip_labels(
    sheet: pd.DataFrame,
    splits: tuple[str, ...],
    rate: float,
    seed: int,
    classes: tuple[str, str] = nc.CLASSES,
) -> pd.DataFrame:
    """The sheet with round(rate * n) labels of each split in ``splits`` flipped to the other
    class (n: that split's slides); every other row as it was.

    Class counts: half the flips go each way (tumor -> normal and normal -> tumor), so a
    split keeps its class counts when the number of flips is even and moves by one when it
    is odd (the odd flip comes from the larger class, a seeded coin on a tie); only where a
    class has fewer slides than its half do the counts move more. Which slides: the first
    of a seeded shuffle of each class, so for one seed the flipped slides at a lower rate
    are among those at a higher rate, and a split's flips do not depend on the other splits
    flipped. Deterministic per (seed, split).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate {rate}: a fraction in [0, 1]")
    if unknown := [s for s in splits if s not in SPLIT_INDEX]:
        raise ValueError(
            f"splits {unknown}: only train and val labels are flipped, test stays clean"
        )
    if len(classes) != 2:
        raise ValueError(f"classes {list(classes)}: flipping is defined for two classes")
    out = sheet.copy()
    for split in splits:
        rows = sheet.loc[sheet["split"] == split, "label"]
        if odd := sorted(set(rows) - set(classes)):
            raise ValueError(f"split {split}: labels {odd} not among the classes {list(classes)}")
        rng = np.random.default_rng([seed, SPLIT_INDEX[split]])
        tie = int(rng.integers(2))  # drawn first always, so the shuffles below do not move
        by_class = [rng.permutation(rows.index[rows == c].to_numpy()) for c in classes]
        k = n_flips(rate, len(rows))
        share = [k // 2, k // 2]
        if k % 2:
            sizes = [len(v) for v in by_class]
            share[tie if sizes[0] == sizes[1] else int(np.argmax(sizes))] += 1
        for i in (0, 1):  # a class with too few slides: the other class gives the rest
            short = max(0, share[i] - len(by_class[i]))
            share[i] -= short
            share[1 - i] += short
        if share[0] > len(by_class[0]) or share[1] > len(by_class[1]):
            raise ValueError(f"split {split}: {k} flips of {len(rows)} slides")
        for i in (0, 1):
            out.loc[by_class[i][: share[i]], "label"] = classes[1 - i]
    return out


def interval(values: list[float] | np.ndarray) -> dict:
    """n, mean, sample sd and the 95% t interval of the mean (None with one value)."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    mean = float(v.mean())
    if n < 2:
        return {"n": n, "mean": mean, "std": 0.0, "ci95": None}
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "std": sd, "ci95": [mean - half, mean + half]}


def summarise(runs: list[dict]) -> dict:
    """Per method, arm and rate: the test AUC (`interval`) and its paired drop from r = 0.

    The clean runs (rate 0) are one arm, ``clean``. A run at r > 0 is paired with the clean
    run of its method and seed; the drop is clean AUC - noisy AUC (positive: worse with
    noise), one value per (seed, draw)."""
    clean = {(r["method"], r["seed"]): r["auc"] for r in runs if r["rate"] == 0}
    groups: dict = {}
    for r in runs:
        key = (r["method"], r["arm"], r["rate"])
        groups.setdefault(key, []).append(r)
    summary: dict = {}
    for (method, arm, rate), rs in groups.items():
        row = {"auc": interval([r["auc"] for r in rs])}
        if rate > 0:
            row["drop"] = interval([clean[(method, r["seed"])] - r["auc"] for r in rs])
            row["flipped"] = sorted({r["flipped"] for r in rs})
        summary.setdefault(method, {}).setdefault(arm, {})[str(rate)] = row
    return summary


def known_methods() -> dict[str, dict]:
    """The workflow's methods and ablations (config/config.yaml) by name."""
    config = yaml.safe_load((nc.REPO / "config" / "config.yaml").read_text())
    return {**config["methods"], **config["ablations"]["methods"], **nc.METHODS}


def chosen_methods(names: list[str]) -> dict[str, dict]:
    """``names``' settings (`known_methods`), or stop before any training naming the unknown
    ones; benchmarks/learning_curve.py's --methods checks through this too."""
    known = known_methods()
    if unknown := [m for m in names if m not in known]:
        bench_cli.fail(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    return {m: known[m] for m in names}


def fmt_interval(s: dict) -> str:
    """An `interval` as "mean ± sd [low, high]" ("n/a" for the interval of one value)."""
    ci = "n/a" if s["ci95"] is None else f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"
    return f"{s['mean']:.3f} ± {s['std']:.3f} {ci}"


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        "# Label noise: flipped training labels",
        "",
        f"`{meta['command']}` ({meta['seconds']:.0f} s, {meta['machine']}). Cohort: "
        f"{meta['cohort']}. Test labels always clean. Test AUC of `zoommil train` (the "
        "workflow's train rule), mean ± sd over runs [95% t interval of the mean]; drop: "
        "clean AUC (same method and seed, r = 0) minus noisy AUC, per (seed, draw), mean ± "
        "sd [95% paired t interval]; positive is worse. clean: r = 0, shared by both arms. "
        "The intervals are over training seeds and noise draws on this one cohort and test "
        f"split ({meta['args']['n_test']} slides): they do not include "
        "the sampling of the test slides, and the (seed, draw) pairs share seeds and draws, "
        "so read them as approximate. flipped: labels flipped in train (+ val).",
        "",
        "| method | arm | r | runs | flipped | test AUC | drop from r = 0 |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, arms in result["summary"].items():
        for arm, rates in arms.items():
            for rate, s in rates.items():
                flipped = ", ".join(s.get("flipped", [])) or "0"
                drop = fmt_interval(s["drop"]) if "drop" in s else ""
                lines.append(
                    f"| {method} | {arm} | {rate} | {s['auc']['n']} | {flipped} | "
                    f"{fmt_interval(s['auc'])} | {drop} |"
                )
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, 1 draw, r 0 and 0.3, train arm"
    )
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--draws", type=int, default=2, help="noise draws per rate and arm")
    parser.add_argument("--noise-seed", type=int, default=0, help="draw d flips with seed this + d")
    nc.add_cohort_arguments(parser)
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    bench_cli.output_folder(args.out)
    if args.quick:
        args.seeds, args.draws, args.rates, args.arms = [0], 1, [0.0, 0.3], ["train"]
    if bad := [r for r in args.rates if not 0 <= r <= 1]:
        bench_cli.fail(f"--rates: {bad} not fractions in [0, 1]")
    methods = chosen_methods(args.methods)
    rates = sorted(set(args.rates) | {0.0})

    started = time.perf_counter()
    temp = None if args.work else tempfile.TemporaryDirectory(prefix="label_noise_")
    work = args.work or Path(temp.name)
    runs: list[dict] = []
    try:
        features = work / "features"
        sheet = nc.make_cohort(features, args)
        for run in nc.train_runs(work / "clean", features, sheet, args.seeds, args, methods):
            runs.append({**run, "arm": "clean", "rate": 0.0, "draw": None, "flipped": "0"})
        for arm in args.arms:
            for rate in rates[1:]:
                for draw in range(args.draws):
                    noisy = flip_labels(sheet, ARMS[arm], rate, args.noise_seed + draw)
                    changed = noisy["label"] != sheet["label"]
                    flipped = " + ".join(
                        str(int(changed[sheet["split"] == s].sum())) for s in ARMS[arm]
                    )
                    folder = work / f"{arm}_r{rate}_d{draw}"
                    for run in nc.train_runs(folder, features, noisy, args.seeds, args, methods):
                        runs.append(
                            {**run, "arm": arm, "rate": rate, "draw": draw, "flipped": flipped}
                        )
    finally:
        if temp is not None:
            temp.cleanup()
    for r in runs:
        del r["labels"], r["p_tumor"]

    result = {
        "meta": {
            **bench_cli.run_meta("label_noise.py", argv, args.quick, started),
            "machine": f"{platform.machine()}, {platform.python_version()}",
            "cohort": (
                f"{args.n_train} train / {args.n_val} val / {args.n_test} test synthetic slides "
                f"(benchmarks/negative_control.py's), {args.lesions} lesion parents of shift "
                f"{args.signal}; {args.epochs} epochs, lr {args.lr}; rates {rates}, arms "
                f"{args.arms}, seeds {args.seeds} x {args.draws} noise draws"
            ),
            "args": bench_cli.args_json(args),
        },
        "summary": summarise(runs),
        "runs": runs,
    }
    bench_cli.write_result(args.out, "label_noise", result, markdown(result))


if __name__ == "__main__":
    main()

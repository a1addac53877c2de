"""Operating points fixed on the validation split, and their test sensitivity and specificity.

Why: `calibration`'s ``sens_at_spec90/95`` lets each seed pick its threshold on the test
slides themselves, which is optimistic; a deployed model has one threshold, fixed before the
test slides are seen. Here each seed's threshold is fixed on its VALIDATION slides (the
``val`` report of the training run's metrics.json, which holds per-slide ``probs``; nothing is
retrained), then applied to the test slides:

- the threshold: the smallest of ``roc_curve``'s thresholds on the validation P(positive)
  (each distinct score; a slide scoring exactly the threshold counts as positive, so tied
  slides fall on the same side) whose validation specificity is at least the target;
- n/a, with the reason, where the validation split cannot resolve the target: no negative
  slide, or fewer negatives than allow one false positive (fewer than 10 for 90%, 20 for
  95%: then only "no negative above the threshold" reaches it, a threshold set by one slide),
  or ties at the top leaving only the threshold above every slide;
- the test sensitivity and specificity at that threshold, seed mean, sample std over seeds
  and the same 95% bootstrap CI over test slides (or patients) as the other columns.

Each method and seed's point is also written as a file for `zoommil predict --operating-point`
(`zoommil.inference.operating_point`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoommil.errors import ZoomMILError
from zoommil.inference import operating_point as point_file
from zoommil.io.atomic import write_text_atomic
from zoommil.io.jsonio import write_json
from zoommil.reporting import calibration, results, stats

TARGETS = calibration.SPECIFICITIES
#: Integer counts against a fraction of them: 10 negatives at 90% allow 1 false positive.
TIES = 1e-9


def key(target: float) -> str:
    """`val_spec90` for 0.90: the columns' and files' name of a target."""
    return f"val_spec{round(100 * target)}"


@dataclass(frozen=True)
class Threshold:
    """A threshold fixed on validation slides (None with ``reason`` where none is)."""

    target: float
    threshold: float | None
    val_sensitivity: float
    val_specificity: float
    n_negative: int
    n_positive: int
    reason: str | None = None


def min_negatives(target: float) -> int:
    """The fewest negative slides whose specificity can miss one and still reach ``target``."""
    return math.ceil(1.0 / (1.0 - target) - TIES)


def val_threshold(
    labels: np.ndarray, score: np.ndarray, target: float, classes: Sequence[str] = ("0", "1")
) -> Threshold:
    """The smallest ``roc_curve`` threshold on ``score`` (P(positive), ``labels`` 1 for the
    positive class) whose specificity is >= ``target``: the highest sensitivity there."""
    labels, score = np.asarray(labels), np.asarray(score, dtype=float)
    neg, pos = np.sort(score[labels == 0]), score[labels == 1]
    n_neg, n_pos = len(neg), len(pos)
    undefined = Threshold(target, None, math.nan, math.nan, n_neg, n_pos)
    if n_neg == 0:
        return _with(undefined, f"no validation slide of {classes[0]} (the negative class)")
    allowed = math.floor((1.0 - target) * n_neg + TIES)  # false positives within the target
    if allowed < 1:
        return _with(
            undefined,
            f"{n_neg} validation slide{'s' if n_neg != 1 else ''} of {classes[0]}: "
            f"{round(100 * target)}% specificity "
            f"needs at least {min_negatives(target)} to allow one false positive",
        )
    candidates = np.unique(score)  # roc_curve's finite thresholds, ascending
    false_pos = n_neg - np.searchsorted(neg, candidates, side="left")  # negatives >= each
    within = false_pos <= allowed
    if not within.any():
        return _with(
            undefined,
            f"more than {allowed} validation slides of {classes[0]} tie at the top score: only "
            "a threshold above every slide (sensitivity 0) reaches the target",
        )
    first = int(np.argmax(within))
    threshold = float(candidates[first])
    sensitivity = float((pos >= threshold).sum() / n_pos) if n_pos else math.nan
    specificity = 1.0 - false_pos[first] / n_neg
    return Threshold(target, threshold, sensitivity, float(specificity), n_neg, n_pos)


def _with(t: Threshold, reason: str) -> Threshold:
    return Threshold(t.target, None, math.nan, math.nan, t.n_negative, t.n_positive, reason)


# --- the validation reports of the training runs ---------------------------------------------


@dataclass(frozen=True)
class ValRun:
    """One method and seed's validation predictions (its metrics.json) and checkpoint."""

    source: str
    classes: tuple[str, ...]
    labels: np.ndarray  # 1 for the positive (second) class
    score: np.ndarray  # P(positive)
    checkpoint: str | None


def run_key(path: str | Path) -> tuple[str, int] | None:
    """(method, seed) of a path ``.../{method}/seed~{seed}/...``."""
    match = results.RUN_PATTERN.search(Path(path).as_posix())
    return (match["method"], int(match["seed"])) if match else None


def val_runs(
    reports: Iterable[str | Path], checkpoints: Iterable[str | Path] = ()
) -> dict[tuple[str, int], ValRun]:
    """The ``val`` blocks of the training runs' metrics.json files, by (method, seed); a
    binary run's block without per-slide ``probs`` is an error naming the file. Runs with
    another number of classes than two are skipped (no operating point)."""
    ckpts = {run_key(c): str(c) for c in checkpoints}
    out = {}
    for path in reports:
        where = run_key(path)
        if where is None:
            raise ZoomMILError(f"{path}: not a run's file (.../<method>/seed~<seed>/...)")
        data = results.load_json(path)
        classes = tuple(data.get("classes") or ())
        if len(classes) != 2:
            continue
        val = data.get("val")
        if not isinstance(val, Mapping) or not val.get("predictions"):
            raise ZoomMILError(f"{path}: no 'val' report with per-slide predictions")
        labels, score = [], []
        for entry in val["predictions"]:
            probs = entry.get("probs")
            if entry.get("label") not in classes or not isinstance(probs, Mapping):
                raise ZoomMILError(
                    f"{path}: val slide {entry.get('slide_id')}: needs a 'label' of {classes} "
                    "and per-class 'probs'"
                )
            try:
                value = float(probs[classes[1]])
            except (KeyError, TypeError, ValueError):
                raise ZoomMILError(
                    f"{path}: val slide {entry.get('slide_id')}: no number for "
                    f"P({classes[1]}) in 'probs'"
                ) from None
            labels.append(int(entry["label"] == classes[1]))
            score.append(value)
        out[where] = ValRun(str(path), classes, np.array(labels), np.array(score), ckpts.get(where))
    return out


# --- the table's columns ----------------------------------------------------------------------


def _test_rates(
    prob: calibration.Probabilities, thresholds: np.ndarray, which: str
) -> Any:  # a function counts [B, n] -> [S, B]
    """Each seed's test sensitivity ("sens") or specificity ("spec") at its threshold."""
    decided = prob.probs[..., 1] >= np.nan_to_num(thresholds, nan=np.inf)[:, None]  # [S, n]
    positive = prob.labels == 1
    hit = decided & positive if which == "sens" else ~decided & ~positive
    base = (positive if which == "sens" else ~positive).astype(float)

    def per_counts(counts: np.ndarray) -> np.ndarray:
        num = hit.astype(float) @ counts.T  # [S, B]
        den = base @ counts.T  # [B]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(den > 0, num / den, np.nan)
        out[np.isnan(thresholds)] = np.nan
        return out

    return per_counts


def column(which: str, target: float) -> str:
    """`test_sens_at_val_spec90` / `test_spec_at_val_spec90`."""
    return f"test_{which}_at_{key(target)}"


def add_columns(
    table: pd.DataFrame,
    probs: Mapping[str, calibration.Probabilities],
    runs: Mapping[tuple[str, int], ValRun],
) -> pd.DataFrame:
    """``table`` (`calibration.calibration_table`) plus, for binary methods: ``n_val``,
    ``n_val_negative``, ``n_val_positive`` (the fewest over seeds) and per target
    ``test_{sens,spec}_at_val_spec{90,95}_{mean,std,ci_low,ci_high,ci_method}`` and
    ``val_spec{90,95}_na`` (why n/a; empty where every seed has a threshold)."""
    table = table.copy()
    for i, method in enumerate(table.get("method", [])):
        prob = probs[method]
        if len(prob.classes) != 2:
            continue
        mine = [runs.get((method, int(s))) for s in prob.seeds]
        if any(r is None for r in mine):
            missing = [s for s, r in zip(prob.seeds, mine, strict=True) if r is None]
            for target in TARGETS:
                table.loc[i, f"{key(target)}_na"] = (
                    f"no validation report (metrics.json) for seed(s) {missing}"
                )
            continue
        table.loc[i, "n_val"] = min(len(r.labels) for r in mine)
        table.loc[i, "n_val_negative"] = min(int((r.labels == 0).sum()) for r in mine)
        table.loc[i, "n_val_positive"] = min(int((r.labels == 1).sum()) for r in mine)
        for target in TARGETS:
            points = [val_threshold(r.labels, r.score, target, prob.classes) for r in mine]
            thresholds = np.array(
                [math.nan if p.threshold is None else p.threshold for p in points]
            )
            table.loc[i, f"{key(target)}_na"] = _reasons(prob.seeds, points)
            every = np.ones((1, len(prob.slides)))
            for which in ("sens", "spec"):
                per_counts = _test_rates(prob, thresholds, which)
                values = per_counts(every)[:, 0]
                name = column(which, target)
                if np.isnan(values).any():
                    interval = stats.Interval(math.nan, math.nan, math.nan, calibration.UNDEFINED)
                else:
                    interval = calibration.counts_interval(prob, per_counts)
                table.loc[i, f"{name}_mean"] = interval.estimate
                std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
                table.loc[i, f"{name}_std"] = std
                table.loc[i, f"{name}_ci_low"] = interval.low
                table.loc[i, f"{name}_ci_high"] = interval.high
                table.loc[i, f"{name}_ci_method"] = interval.kind
    return table


def _reasons(seeds: Sequence[int], points: Sequence[Threshold]) -> str:
    """``seeds 0, 1: <reason>`` per distinct reason (the seeds of a split share most)."""
    by_reason: dict[str, list[str]] = {}
    for seed, point in zip(seeds, points, strict=True):
        if point.reason:
            by_reason.setdefault(point.reason, []).append(str(seed))
    return "; ".join(
        f"seed{'s' if len(s) > 1 else ''} {', '.join(s)}: {reason}"
        for reason, s in by_reason.items()
    )


def headers() -> dict[str, str]:
    """Display headers of the new columns, in order."""
    out = {}
    for target in TARGETS:
        pct = round(100 * target)
        out[column("sens", target)] = f"Test sensitivity, threshold at {pct}% val specificity (%)"
        out[column("spec", target)] = f"Test specificity, threshold at {pct}% val specificity (%)"
    return out


def notes(table: pd.DataFrame, classes: Sequence[str]) -> list[str]:
    """How the validation columns are made, and each method's n/a reason."""
    if len(classes) != 2:
        return []
    out = [
        f"test sensitivity / specificity at a threshold fixed at 90% (95%) val specificity: "
        f"each seed's threshold on P({classes[1]}) is the smallest roc_curve threshold (a "
        f"slide at it counts as {classes[1]}) with specificity >= 90% (95%) on the "
        "VALIDATION slides; the test slides are then classified at it (what a deployed model "
        "would do; the files are in results/operating_points/). n/a where the validation "
        f"split cannot resolve the target (fewer than {min_negatives(TARGETS[0])} "
        f"({min_negatives(TARGETS[1])}) {classes[0]} slides, or more {classes[0]} slides "
        f"tied at the top score than it allows); a split without {classes[1]} slides still "
        "fixes one (specificity needs only negatives)"
    ]
    for _, row in table.iterrows():
        for target in TARGETS:
            reason = row.get(f"{key(target)}_na")
            if isinstance(reason, str) and reason:
                out.append(f"{row['method']}, {round(100 * target)}% val specificity n/a: {reason}")
    return out


# --- the files for `zoommil predict --operating-point` ---------------------------------------


def write_files(
    folder: str | Path,
    probs: Mapping[str, calibration.Probabilities],
    runs: Mapping[tuple[str, int], ValRun],
    order: Sequence[str],
) -> list[Path]:
    """``folder/{method}/seed~{seed}/val_spec{90,95}.json`` per binary method, seed and
    target whose run has a checkpoint (n/a ones too, with the reason: predict refuses them),
    and ``folder/index.tsv`` listing them. Always makes ``folder`` (the rule's output)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written, rows = [], []
    for method in order:
        if method not in probs or len(probs[method].classes) != 2:
            continue
        for seed in probs[method].seeds:
            run = runs.get((method, int(seed)))
            if run is None or run.checkpoint is None:
                continue
            digest = point_file.sha256_file(run.checkpoint)
            for target in TARGETS:
                t = val_threshold(run.labels, run.score, target, run.classes)
                record = point_file.make_record(
                    method=method,
                    seed=int(seed),
                    checkpoint=run.checkpoint,
                    checkpoint_sha256=digest,
                    classes=run.classes,
                    target_specificity=target,
                    threshold=t.threshold,
                    val_sensitivity=t.val_sensitivity,
                    val_specificity=t.val_specificity,
                    n_val={run.classes[0]: t.n_negative, run.classes[1]: t.n_positive},
                    val_source=run.source,
                    reason=t.reason,
                )
                path = folder / method / f"seed~{seed}" / f"{key(target)}.json"
                written.append(write_json(path, record))
                rows.append(
                    {
                        "method": method,
                        "seed": seed,
                        "target_specificity": target,
                        "threshold": t.threshold,
                        "val_sensitivity": t.val_sensitivity,
                        "val_specificity": t.val_specificity,
                        "file": path.relative_to(folder).as_posix(),
                        "reason": t.reason or "",
                    }
                )
    columns = ["method", "seed", "target_specificity", "threshold", "val_sensitivity"]
    frame = pd.DataFrame(rows, columns=[*columns, "val_specificity", "file", "reason"])
    write_text_atomic(
        folder / "index.tsv", frame.to_csv(sep="\t", index=False, float_format="%.6g")
    )
    return written

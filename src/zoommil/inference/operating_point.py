"""A binary model's decision threshold fixed on the validation split, as a file for deployment.

Why: a probability is not a decision. The tables rule picks, per method and seed, the smallest
threshold on P(positive class) whose specificity on the validation slides is at least a
target (`zoommil.reporting.operating_points`) and writes it here as JSON, with the sha256 of
the checkpoint it was chosen for; `zoommil predict --operating-point FILE` reads it back and
prints (and writes) the decision beside the probabilities. A file made for another checkpoint,
for a model that is not binary, or without a threshold (too few validation slides) is refused
in one line before any slide is read. Light imports only: `zoommil predict` loads this.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zoommil.errors import ZoomMILError

# the checkpoint's sha256 as Predictor.checkpoint_sha256 has it (re-exported for the tables)
from zoommil.features.encoders.weight_files import sha256_file as sha256_file
from zoommil.io.atomic import write_text_atomic

#: The ``format`` of an operating-point file (a JSON that is not one is refused).
FORMAT = "zoommil-operating-point/1"
RULE = "positive if P(positive_class) >= threshold"


def make_record(
    *,
    method: str,
    seed: int,
    checkpoint: str | None,
    checkpoint_sha256: str | None,
    classes: Sequence[str],
    target_specificity: float,
    threshold: float | None,
    val_sensitivity: float | None,
    val_specificity: float | None,
    n_val: Mapping[str, int],
    val_source: str,
    reason: str | None = None,
) -> dict[str, Any]:
    """The file's content; ``threshold`` None with the ``reason`` where the validation
    slides fix none (predict then refuses the file, naming the reason)."""

    def number(value: float | None) -> float | None:
        return None if value is None or math.isnan(value) else float(value)

    return {
        "format": FORMAT,
        "method": method,
        "seed": int(seed),
        "checkpoint": checkpoint,
        "checkpoint_sha256": checkpoint_sha256,
        "classes": list(classes),
        "positive_class": classes[1],
        "rule": RULE,
        "threshold": number(threshold),
        "target_specificity": float(target_specificity),
        "val_sensitivity": number(val_sensitivity),
        "val_specificity": number(val_specificity),
        "n_val_slides": {c: int(n_val.get(c, 0)) for c in classes},
        "val_source": val_source,
        "reason": reason,
    }


def load(path: str | Path) -> dict[str, Any]:
    """An operating-point file, checked for its format and a usable threshold."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ZoomMILError(f"--operating-point {path}: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ZoomMILError(f"--operating-point {path}: not a JSON file") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ZoomMILError(
            f"--operating-point {path}: not an operating-point file (format {FORMAT!r}, as the "
            "tables rule writes under results/operating_points/)"
        )
    if data.get("threshold") is None:
        raise ZoomMILError(
            f"--operating-point {path}: no threshold: {data.get('reason') or 'none recorded'}"
        )
    return data


def check(point: Mapping[str, Any], path: str | Path, checkpoint: str | Path,
          sha256: str, classes: Sequence[str]) -> None:  # fmt: skip
    """Refuse a binary threshold for a model with another number of classes, another class
    order, or another checkpoint (its sha256): the threshold means nothing for them."""
    if len(classes) != 2:
        raise ZoomMILError(
            f"--operating-point {path}: {checkpoint} has {len(classes)} classes "
            f"({', '.join(classes)}); an operating point thresholds a binary model's P(positive)"
        )
    if point.get("checkpoint_sha256") != sha256:
        made = str(point.get("checkpoint_sha256") or "none")[:12]
        raise ZoomMILError(
            f"--operating-point {path}: made for checkpoint sha256 {made}... "
            f"({point.get('method')} seed {point.get('seed')}), not {checkpoint} "
            f"(sha256 {sha256[:12]}...)"
        )
    if list(point.get("classes") or []) != list(classes):
        raise ZoomMILError(
            f"--operating-point {path}: classes {point.get('classes')} differ from "
            f"{checkpoint}'s {list(classes)}"
        )


def for_predictor(path: str | Path | None, predictor: Any) -> dict[str, Any] | None:
    """`zoommil predict --operating-point`: the file checked against the loaded checkpoint
    (a `Predictor`), before any slide; None without the option."""
    if path is None:
        return None
    point = load(path)
    check(point, path, predictor.checkpoint, predictor.checkpoint_sha256, predictor.classes)
    return point


def decide(point: Mapping[str, Any], probabilities: Mapping[str, float]) -> str:
    """The class the threshold gives: the positive one where P(positive) >= threshold."""
    positive = point["positive_class"]
    negative = next(c for c in point["classes"] if c != positive)
    return positive if float(probabilities[positive]) >= float(point["threshold"]) else negative


def describe(point: Mapping[str, Any], probabilities: Mapping[str, float] | None) -> str:
    """``; decision tumor (P(tumor) 0.734 >= 0.412, val specificity >= 90%)`` for a printed
    line; empty without probabilities (a slide not classified)."""
    if not probabilities:
        return ""
    positive, threshold = point["positive_class"], float(point["threshold"])
    p = float(probabilities[positive])
    sign = ">=" if p >= threshold else "<"
    target = round(100 * float(point["target_specificity"]))
    return (
        f"; decision {decide(point, probabilities)} (P({positive}) {p:.3f} {sign} "
        f"{threshold:.4g}, val specificity >= {target}%)"
    )


def annotate(point: Mapping[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """A prediction JSON with ``decision`` and the ``operating_point`` that made it."""
    result["decision"] = decide(point, result["probabilities"])
    keys = ("threshold", "positive_class", "target_specificity", "method", "seed")
    result["operating_point"] = {k: point[k] for k in keys}
    return result


def add_to_table(
    point: Mapping[str, Any], table: str | Path, rows: Sequence[Mapping[str, Any]]
) -> Path:
    """predictions.tsv with ``threshold`` and ``decision`` after the probabilities (empty for
    a slide not classified). ``rows``: the table's rows in order, whose exact probabilities
    decide, as for the printed line and the JSON: the table's ``p_`` cells are rounded to 6
    decimals, and a slide within 5e-7 of the threshold was given the other class there."""
    lines = list(csv.reader(io.StringIO(Path(table).read_text(encoding="utf-8")), delimiter="\t"))
    header, body = lines[0], lines[1:]
    if len(body) != len(rows):
        raise ValueError(f"{table}: {len(body)} rows, {len(rows)} given")
    at = max(i for i, name in enumerate(header) if name.startswith("p_")) + 1
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow([*header[:at], "threshold", "decision", *header[at:]])
    for line, row in zip(body, rows, strict=True):
        probabilities = row.get("probabilities") or {}
        decision = decide(point, probabilities) if probabilities else ""
        threshold = repr(float(point["threshold"])) if decision else ""
        writer.writerow([*line[:at], threshold, decision, *line[at:]])
    return write_text_atomic(table, out.getvalue())

"""Every slide a run left out, at any stage, with why: results/qc/exclusions.{tsv,html}.

results/qc/slides.tsv is the QC checkpoint, written before training: it lists the slides left
out of training and evaluation (stages inspect, tissue, tile, features) and cannot be
rewritten later without rerunning everything after it. A slide can still fail after training:
at `predict` (Figure 4; predict reads the thumbnail the figure draws, so the figure meets no
slide that predict could read) or at `profile` (a throughput timing). Such a slide keeps its
place in the metrics but is missing from that output. This table joins both kinds, one row
per slide and stage, with what the slide is missing from, so that the tables' notes and the
HTML report show every exclusion.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from zoommil.io.atomic import write_text_atomic
from zoommil.workflow import qc
from zoommil.workflow.failure import FAILED, read_marker

COLUMNS = ["slide_id", "label", "split", "status", "stage", "reason", "left_out_of"]
TRAINING = "training and evaluation"
FIGURE = "Figure 4"


def qc_rows(qc_table: pd.DataFrame) -> pd.DataFrame:
    """The slides QC excluded (results/qc/slides.tsv), left out of training and evaluation."""
    excluded = qc_table.loc[qc_table["status"] != "ok"].copy()
    excluded["left_out_of"] = TRAINING
    return excluded.reindex(columns=COLUMNS, fill_value="")


def predict_rows(paths: Iterable[str | Path]) -> pd.DataFrame:
    """The slides whose prediction for Figure 4 failed (`zoommil predict --no-fail` markers;
    the figure leaves them out with a note)."""
    rows = []
    for path in paths:
        failure = read_marker(path)
        if failure is not None:
            rows.append(
                {"slide_id": Path(path).stem, "status": failure.status, "stage": failure.stage,
                 "reason": failure.reason, "left_out_of": FIGURE}
            )  # fmt: skip
    return pd.DataFrame(rows).reindex(columns=COLUMNS, fill_value="")


def profile_rows(paths: Iterable[str | Path]) -> pd.DataFrame:
    """The slides a throughput measurement left out (`excluded_slides` of `zoommil profile`)."""
    rows = []
    for path in paths:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        device = Path(path).stem.removeprefix("throughput_")
        where = f"{record.get('method') or Path(path).parent.name} timing ({device})"
        for entry in record.get("excluded_slides") or []:
            rows.append(
                {
                    "slide_id": str(entry.get("slide_id", "")),
                    "status": FAILED,
                    "stage": "profile",
                    "reason": str(entry.get("reason", "")),
                    "left_out_of": where,
                }
            )
    return pd.DataFrame(rows).reindex(columns=COLUMNS, fill_value="")


def exclusions_table(qc_table: pd.DataFrame, late: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One row per excluded slide and stage: QC's rows, then the late stages' (label and split
    from the QC table; one slide left out of several timings is one row naming them all)."""
    frames = [f for f in late if len(f)]
    if not frames:
        return qc_rows(qc_table)
    later = pd.concat(frames, ignore_index=True)
    info = qc_table.set_index("slide_id")
    for column in ("label", "split"):
        later[column] = [info[column].get(s, "") for s in later["slide_id"]]
    keys = ["slide_id", "label", "split", "status", "stage", "reason"]
    later = later.groupby(keys, sort=False, as_index=False)["left_out_of"].agg(", ".join)
    return pd.concat([qc_rows(qc_table), later[COLUMNS]], ignore_index=True)


def is_late(table: pd.DataFrame) -> pd.Series:
    """Rows of slides that were evaluated and then missed a later output."""
    return table["left_out_of"] != TRAINING


def late_summary(table: pd.DataFrame) -> str | None:
    """'1 evaluated slide left out later: s3 (predict: <reason>; missing from Figure 4)', or
    None when every slide that was evaluated made it into every output."""
    late = table.loc[is_late(table)]
    if not len(late):
        return None
    n = late["slide_id"].nunique()
    items = [
        f"{s} ({stage}: {reason}; missing from {_outputs_text(where)})"
        for s, stage, reason, where in zip(
            late["slide_id"], late["stage"], late["reason"], late["left_out_of"], strict=True
        )
    ]
    listed = qc.first_of(items, NOTE_SLIDES_SHOWN)
    return f"{n} evaluated slide{'s' if n > 1 else ''} left out later: {listed}"


#: Slides a table note names before '; and N more' (the rest: results/qc/exclusions.tsv).
NOTE_SLIDES_SHOWN = 10


def _outputs_text(where: str) -> str:
    """'Figure 4', or for a slide every timing missed 'zoommil timing (cpu1) and 26 more
    outputs' rather than all 27."""
    outputs = where.split(", ")
    if len(outputs) <= 3:
        return where
    return f"{outputs[0]} and {len(outputs) - 1} more outputs"


def summary_lines(qc_table: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """'N of M slides excluded (...)' by QC, then the late exclusions if any."""
    late = late_summary(table)
    return [qc.exclusion_summary(qc_table)] + ([late] if late else [])


def to_html(table: pd.DataFrame, lines: Sequence[str], title: str) -> str:
    """A standalone page (what the HTML report shows): the summary sentences, then the table."""
    body = "".join(f"<p>{html.escape(line)}</p>\n" for line in lines)
    rows = table.to_html(index=False, escape=True, border=0) if len(table) else ""
    style = "body{font-family:sans-serif;font-size:14px} td,th{padding:2px 8px;text-align:left}"
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head>\n<body>\n<h3>{html.escape(title)}</h3>\n{body}{rows}\n"
        "</body></html>\n"
    )


def write_exclusions(
    qc_table: str | Path,
    predictions: Iterable[str | Path],
    timings: Iterable[str | Path],
    outputs: Mapping[str, str | Path],
    dataset: str,
) -> pd.DataFrame:
    """Write `outputs["table"]` (TSV) and `outputs["html"]` from the QC table and the late
    stages' records (Figure 4's predictions, the timing JSONs); returns the table."""
    qc_frame = pd.read_csv(qc_table, sep="\t", dtype={"slide_id": str}, keep_default_na=False)
    late = [predict_rows(predictions), profile_rows(timings)]
    table = exclusions_table(qc_frame, late)
    qc.write_tsv(table, outputs["table"])
    page = to_html(table, summary_lines(qc_frame, table), f"Excluded slides ({dataset})")
    write_text_atomic(outputs["html"], page)
    return table

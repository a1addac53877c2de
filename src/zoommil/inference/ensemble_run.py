"""`zoommil predict --checkpoint A --checkpoint B ...`: a seed ensemble (see `ensemble`).

Kept apart from `zoommil.commands.predict` so that a single checkpoint runs exactly as before.
Several slides are classified one after another in this process (the encoder and reader
built once; ``--threads`` are encoder threads), not spread over slide processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoommil.errors import ZoomMILError
from zoommil.inference.cohort import write_table
from zoommil.inference.ensemble import check_combinable, combine, predict_members, spread_text
from zoommil.inference.predict import Predictor


def run_ensemble(args: argparse.Namespace) -> int:
    """Load and check the checkpoints, then classify one slide or many."""
    from zoommil.commands.predict import load_predictor
    from zoommil.device import resolve_device
    from zoommil.features.encoder_pool import set_encoder_threads
    from zoommil.training.checkpoint import load_checkpoint

    if args.heatmap is not None:
        raise ZoomMILError(
            f"--heatmap draws one model's attention; the {len(args.checkpoint)} checkpoints "
            "each zoom into their own regions, so no one map stands for them: drop --heatmap "
            "(the --json records each checkpoint's attention), or draw one checkpoint's map "
            "with a single --checkpoint"
        )
    if getattr(args, "operating_point", None) is not None:
        raise ZoomMILError(
            f"--operating-point {args.operating_point} is a threshold fixed on the validation "
            f"split for one checkpoint; the mean of {len(args.checkpoint)} checkpoints' "
            "probabilities has none of its own: give that one --checkpoint, or drop "
            "--operating-point"
        )
    single = len(args.slides) == 1 and args.out_dir is None
    if args.slide_id is not None and not single:
        raise ZoomMILError("--slide-id names one slide; with several or --out-dir each "
                           "slide's id is its file name")  # fmt: skip
    if args.json and not single:  # a usage error: before the checkpoints are loaded
        raise ZoomMILError(
            "--json names one slide's file; with several slides or --out-dir, use --out-dir alone"
        )
    device = resolve_device(args.device)
    set_encoder_threads(device, args.threads)
    predictors = [
        load_predictor(argparse.Namespace(**{**vars(args), "checkpoint": c}), device)
        for c in args.checkpoint
    ]
    check_combinable(predictors)
    seeds = [load_checkpoint(c)[1].get("seed") for c in args.checkpoint]
    if single:
        return _one(args, predictors, seeds, device)
    return _many(args, predictors, seeds, device)


def _members(
    args: argparse.Namespace,
    predictors: Sequence[Predictor],
    seeds: Sequence[int | None],
    slide: str | Path,
    encoder: Any,
    reader: Any,
) -> dict[str, Any]:
    """The ensemble's record of one slide (a read error retried once, as for one model)."""
    from zoommil.inference.predict import _retrying

    def members(models: Sequence[Predictor], path: str | Path) -> tuple:
        return predict_members(
            models, path, encoder, args.mpp, args.batch_size, reader, args.default_mpp
        )

    results, encoded = _retrying(members, predictors, slide)
    return combine(predictors, results, encoded, seeds)


def _encoder_and_reader(
    args: argparse.Namespace, predictors: Sequence[Predictor], device: Any
) -> tuple[Any, Any]:
    """The shared encoder's context (built once, from the first checkpoint: they share its
    recipe and weights) and a reader pool."""
    from zoommil.features.extraction import default_workers
    from zoommil.inference.predict import local_encoder
    from zoommil.wsi.patches import ReaderPool

    workers = default_workers(device, args.threads) if args.workers is None else args.workers
    return local_encoder(predictors[0], device, args.precision, args.threads), ReaderPool(workers)


def _share_weights_sha(predictors: Sequence[Predictor]) -> None:
    """The others' records name the weights the shared encoder was built with."""
    for other in predictors[1:]:
        other.encoder_weights_sha256 = predictors[0].encoder_weights_sha256


def _one(
    args: argparse.Namespace,
    predictors: Sequence[Predictor],
    seeds: Sequence[int | None],
    device: Any,
) -> int:
    from zoommil.commands.predict import note_tail, random_tag, summary_line
    from zoommil.io.jsonio import write_json

    encoder_context, reader = _encoder_and_reader(args, predictors, device)
    with reader, encoder_context as runner:
        reader.start()
        _share_weights_sha(predictors)
        record = _members(args, predictors, seeds, args.slides[0], runner, reader)
    if args.slide_id is not None:
        record["slide_id"] = args.slide_id
    if args.json:
        write_json(args.json, record)
    counts = json.dumps(record["patches_per_mag"])
    note = note_tail(record.get("tissue_note"))
    tail = spread_text(record) + note + random_tag(record["weights"])
    print(f"{summary_line(record)} {counts}{tail}")
    return 0


def _many(
    args: argparse.Namespace,
    predictors: Sequence[Predictor],
    seeds: Sequence[int | None],
    device: Any,
) -> int:
    from zoommil.commands.predict import exit_code, note_tail, random_tag, summary_line
    from zoommil.inference.cohort import (
        SlideTask,
        check_not_another_slides,
        error_row,
        finished_rows,
        ok_row,
        old_heatmap,
        read_record,
        tasks_in_dir,
    )
    from zoommil.inference.ensemble import ensemble_id
    from zoommil.io.jsonio import write_json

    if args.out_dir is not None:
        tasks = tasks_in_dir(args.slides, args.out_dir, heatmaps=False)
        check_not_another_slides(tasks)
    else:
        tasks = [SlideTask(str(s)) for s in args.slides]
    lead = predictors[0]
    kept = finished_rows(tasks, ensemble_id(predictors), lead.tissue_version) if args.resume else {}
    for index, row in kept.items():  # their spread, from the JSON kept
        row.update(_spread_fields(read_record(tasks[index]) or {}))
    if kept:
        print(f"--resume: {len(kept)} of {len(tasks)} slides already classified, kept")
    todo = [i for i in range(len(tasks)) if i not in kept]
    rows = [kept.get(i) for i in range(len(tasks))]
    failed = 0
    if todo:
        encoder_context, reader = _encoder_and_reader(args, predictors, device)
        with reader, encoder_context as runner:
            reader.start()
            _share_weights_sha(predictors)
            for i in todo:
                task = tasks[i]
                try:
                    record = _members(args, predictors, seeds, task.slide, runner, reader)
                    if heatmap := old_heatmap(task):  # an earlier single model's map
                        heatmap.unlink(missing_ok=True)
                    if task.json:
                        write_json(task.json, record)
                except Exception as error:  # one slide's failure never stops the others
                    rows[i] = error_row(task, error)
                    failed += 1
                    print(f"zoommil predict: {task.slide}: {rows[i]['reason']}", file=sys.stderr)
                    continue
                rows[i] = ok_row(task, record, record.get("tissue_note") or "")
                rows[i].update(_spread_fields(record))
                tag = note_tail(rows[i]["reason"]) + random_tag(lead.recipe.weights)
                print(summary_line(rows[i]) + spread_text(record) + tag, flush=True)
    if args.out_dir is not None:
        table = write_ensemble_table(args.out_dir / "predictions.tsv", rows, predictors)
        print(f"wrote {table}")
    if not todo:
        print(f"--resume: all {len(rows)} slides were already classified; nothing to do")
        return 0
    print(f"{len(todo) - failed} of {len(todo)} slides classified by {len(predictors)} checkpoints")
    return exit_code([rows[i] for i in todo], len(rows), args.no_fail, failed)


def _spread_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A row's ensemble fields from its record: the spread and each checkpoint's
    probabilities by sha256 (empty for a record without them)."""
    spread = record.get("ensemble")
    members = record.get("checkpoints")
    if not isinstance(spread, dict) or not isinstance(members, list):
        return {}
    return {
        "ensemble": spread,
        "members": {m["checkpoint_sha256"]: m["probabilities"] for m in members},
    }


def write_ensemble_table(
    path: str | Path, rows: Sequence[dict[str, Any]], predictors: Sequence[Predictor]
) -> Path:
    """``predictions.tsv`` of an ensemble: the single-checkpoint columns (``p_<class>``: the
    mean), then the spread of the predicted class's probability (sample sd, min, max), whether
    the checkpoints' argmax agree, and each checkpoint's ``p_<class>_<sha256[:12]>``."""
    classes = predictors[0].classes
    shas = [p.checkpoint_sha256 for p in predictors]
    spread_columns = ["p_predicted_sd", "p_predicted_min", "p_predicted_max"]
    member_columns = [f"p_{c}_{sha[:12]}" for sha in shas for c in classes]

    def extra(row: dict[str, Any]) -> list[str]:
        spread = row.get("ensemble") or {}
        members = row.get("members") or {}
        cells = [f"{spread[k]:.6f}" if k in spread else "" for k in spread_columns]
        agree = spread.get("argmax_agree")
        cells.append("" if agree is None else "yes" if agree else "no")
        return cells + [
            f"{members[sha][c]:.6f}" if sha in members else "" for sha in shas for c in classes
        ]

    columns = [*spread_columns, "argmax_agree", *member_columns]
    return write_table(path, rows, classes, columns, extra)

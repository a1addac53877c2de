"""`zoommil predict --checkpoint A --checkpoint B ...`: a seed ensemble (see `ensemble`).

Kept apart from `zoommil.commands.predict` so that a single checkpoint runs exactly as before.
Several slides are spread over slide processes as with one checkpoint
(`zoommil.inference.cohort.predict_slides`, `EnsembleSettings`): ``--threads N`` runs
``min(N, slides)`` single-threaded processes, each classifying whole slides by every
checkpoint (the encoder built once per process), with the same failure rows and isolation;
``--threads 1`` (or a GPU) classifies them in this process with the next slides tiled ahead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoommil.errors import ZoomMILError
from zoommil.features.encoder_pool import AnyEncoder
from zoommil.inference.cohort import (
    Settings,
    SlideTask,
    error_row,
    ok_row,
    write_outputs,
    write_table,
)
from zoommil.inference.ensemble import check_combinable, combine, predict_members, spread_text
from zoommil.inference.predict import Predictor
from zoommil.io.jsonio import write_json
from zoommil.wsi.lattice import Lattice
from zoommil.wsi.patches import ReaderPool


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


@dataclass(frozen=True)
class EnsembleSettings(Settings):
    """What every slide process needs to classify a slide by the ensemble (all picklable):
    `Settings` of its first checkpoint (whose encoder and recipe the others share), the
    checkpoints and their seeds."""

    members: tuple[Predictor, ...] = ()
    seeds: tuple[int | None, ...] = ()

    def record(
        self,
        slide: str | Path,
        encoder: AnyEncoder,
        reader: ReaderPool | None,
        tiled: Lattice | None = None,
    ) -> dict[str, Any]:
        """The ensemble's record of one slide (a read error retried once, as for one
        model)."""
        from zoommil.inference.predict import _retrying

        # their records name the weights the shared encoder was built with
        for other in self.members:
            other.encoder_weights_sha256 = self.predictor.encoder_weights_sha256

        def members(models: Sequence[Predictor], path: str | Path) -> tuple:
            return predict_members(
                models, path, encoder, self.mpp, self.batch_size, reader, self.default_mpp, tiled
            )

        results, encoded = _retrying(members, self.members, slide)
        return combine(self.members, results, encoded, self.seeds)

    def classify_task(
        self,
        task: SlideTask,
        encoder: AnyEncoder,
        reader: ReaderPool,
        tiled: Lattice | None = None,
    ) -> dict[str, Any]:
        """One slide's row with the spread (`_spread_fields`), its JSON written (the heatmap
        of an earlier single checkpoint removed); any error is its failure row."""
        try:
            record = self.record(task.slide, encoder, reader, tiled)
            write_outputs(task, record)  # no attention of its own: no heatmap
        except Exception as error:  # one slide's failure never stops the others
            return error_row(task, error)
        row = ok_row(task, record, record.get("tissue_note") or "")
        row.update(_spread_fields(record))
        return row


def _settings(
    args: argparse.Namespace,
    predictors: Sequence[Predictor],
    seeds: Sequence[int | None],
    device: Any,
) -> EnsembleSettings:
    from zoommil.commands.predict import settings_fields

    fields = settings_fields(args, device)
    return EnsembleSettings(predictors[0], members=tuple(predictors), seeds=tuple(seeds), **fields)


def _one(
    args: argparse.Namespace,
    predictors: Sequence[Predictor],
    seeds: Sequence[int | None],
    device: Any,
) -> int:
    from zoommil.commands.predict import note_tail, random_tag, summary_line
    from zoommil.features.extraction import default_workers
    from zoommil.inference.predict import local_encoder

    workers = default_workers(device, args.threads) if args.workers is None else args.workers
    with ReaderPool(workers) as reader:
        reader.start()
        with local_encoder(predictors[0], device, args.precision, args.threads) as runner:
            record = _settings(args, predictors, seeds, device).record(
                args.slides[0], runner, reader
            )
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
    """Several slides, spread over slide processes as with one checkpoint
    (`cohort.predict_slides`)."""
    from zoommil.commands.options import show_progress
    from zoommil.commands.predict import exit_code, note_tail, random_tag, run_summary, summary_line
    from zoommil.inference.cohort import (
        check_not_another_slides,
        finished_rows,
        predict_slides,
        read_record,
        tasks_in_dir,
    )
    from zoommil.inference.ensemble import ensemble_id

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

    def report(row: dict[str, Any]) -> None:
        if row["status"] == "ok":
            tag = note_tail(row["reason"]) + random_tag(lead.recipe.weights)
            print(summary_line(row) + spread_text(row) + tag, flush=True)
        else:
            print(f"zoommil predict: {row['slide']}: {row['reason']}", file=sys.stderr)

    summary = (
        predict_slides(_settings(args, predictors, seeds, device), [tasks[i] for i in todo],
                       args.threads, progress=show_progress(args), on_row=report)
        if todo
        else {"rows": [], "failed": 0}
    )  # fmt: skip
    rows = [kept.get(i) for i in range(len(tasks))]
    for i, row in zip(todo, summary["rows"], strict=True):
        rows[i] = row
    if args.out_dir is not None:
        table = write_ensemble_table(args.out_dir / "predictions.tsv", rows, predictors)
        print(f"wrote {table}")
    if not todo:
        print(f"--resume: all {len(rows)} slides were already classified; nothing to do")
        return 0
    print(run_summary(summary, len(todo), len(kept), f"{len(predictors)} checkpoints"))
    return exit_code(summary["rows"], len(rows), args.no_fail, summary["failed"])


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

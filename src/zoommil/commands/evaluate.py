"""`zoommil evaluate`: metrics and per-slide predictions of a checkpoint on one split."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from zoommil.commands.options import add_device, add_threads
from zoommil.io.clobber import folder_inputs

log = logging.getLogger(__name__)

DESCRIPTION = """\
Evaluate a checkpoint written by `zoommil train` on one split of a slide sheet.

The class list, magnifications and model come from the checkpoint (loaded with
weights_only=True); the sheet and QC exclusion table default to those used in training
(recorded absolute in the checkpoint; one that is no longer there is an error: pass
--sheet / --exclude). With --sheet of another cohort (an external test set), the training
QC table, which names the training sheet's slides, is not applied: pass that cohort's own
with --exclude (where the training sheet is not on this machine, --exclude must be given:
'' for none). Every feature file must have the patch size and magnifications the
checkpoint's training features had.
Writes JSON with accuracy, weighted/macro/per-class F1, one-vs-rest AUC (null with a reason
when a class is missing from the split), the confusion matrix and, per slide, the label, the
prediction and the class probabilities.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint on a split (metrics + per-slide predictions)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint.pt")
    parser.add_argument(
        "--features-dir", required=True, metavar="DIR", help="folder of {slide_id}.h5"
    )
    parser.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="default: test"
    )
    parser.add_argument("--out", required=True, metavar="JSON", help="output JSON file")
    parser.add_argument("--sheet", metavar="TSV", help="slide sheet (default: the training one)")
    parser.add_argument(
        "--exclude", metavar="TSV", help="QC table of slides to skip (default: the training one)"
    )
    add_device(parser)
    add_threads(parser, default=1, why="the numbers train wrote")
    parser.set_defaults(func=run, outputs=lambda a: [a.out], inputs=_inputs)


def _inputs(args: argparse.Namespace) -> list[tuple[str, str | Path | None]]:
    features = folder_inputs("feature file", args.features_dir)
    return [
        ("checkpoint", args.checkpoint),
        ("sheet", args.sheet),
        ("QC table", args.exclude),
        *features,
    ]


def run(args: argparse.Namespace) -> int:
    from zoommil.io.jsonio import write_json
    from zoommil.io.sheet import read_table
    from zoommil.training import evaluate_checkpoint
    from zoommil.training.checkpoint import load_checkpoint
    from zoommil.training.data import read_exclusions
    from zoommil.training.evaluation_inputs import check_split_lattice, exclusions_for

    # The paths given first, before the checkpoint is loaded: a wrong --sheet or --exclude
    # was reported only after that load, and after a bad checkpoint's error.
    if args.sheet:
        # as train, flops and profile say it; the evaluation's own check, written for the
        # sheet the checkpoint recorded, told a user who had given --sheet to "pass --sheet"
        read_table(args.sheet)
    if args.exclude:  # '' is none
        read_exclusions(args.exclude)
    _, meta = load_checkpoint(args.checkpoint)
    exclude = exclusions_for(args.sheet, args.exclude, meta, args.checkpoint)
    recipe = meta.get("preprocessing") or {}
    qc = meta.get("exclude") if exclude is None else exclude
    sheet = args.sheet or meta.get("sheet")
    check_split_lattice(sheet, args.split, args.features_dir, qc, recipe, args.checkpoint)
    result = evaluate_checkpoint(
        args.checkpoint,
        args.features_dir,
        split=args.split,
        sheet=args.sheet,
        exclude=exclude,
        device=args.device,
        threads=args.threads or None,
    )
    write_json(args.out, result)
    log.info(
        "%s on %s (%d slides): accuracy %.4f, weighted F1 %.4f -> %s",
        result["method"],
        args.split,
        result["n_slides"],
        result["accuracy"],
        result["weighted_f1"],
        args.out,
    )
    return 0

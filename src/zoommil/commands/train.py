"""`zoommil train`: train one method with one seed on the feature files of a slide sheet."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from zoommil.commands.options import add_device, add_threads

log = logging.getLogger(__name__)

DESCRIPTION = """\
Train one MIL model on precomputed feature files and keep the best epoch.

NAME is a method under `methods:` in the config (an architecture plus keyword arguments, so
ablation variants are methods) or an architecture name with default arguments. Slides come
from the sheet (TSV: slide_id, label, split [, path, mpp]); slides whose status is not `ok` in
the optional `exclude:` QC table and slides whose feature file has no patches are skipped and
listed in metrics.json; any other slide without {features_dir}/{slide_id}.h5 is an error.

One bag per step, Adam, ReduceLROnPlateau(factor 0.8, patience 5) on the validation loss,
class-balanced sampling, cross-entropy (or the model's own training loss). On CPU a run is
bit-for-bit repeatable for a given seed and --threads.

Writes to DIR: checkpoint.pt (best epoch; loads with torch.load(weights_only=True)),
log.csv (one row per epoch) and metrics.json (validation and test metrics of the kept
epoch, with per-slide predictions). With --eval-out, also the test split's evaluation exactly
as `zoommil evaluate` would write it for checkpoint.pt (no second run over the features).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one method with one seed on feature files",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="train config (YAML/JSON)")
    parser.add_argument(
        "--model", required=True, metavar="NAME", help="method in the config, or architecture"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--epochs", type=int, metavar="E", help="override the config's number of epochs"
    )
    parser.add_argument("--features-dir", metavar="DIR", help="override the config's features_dir")
    parser.add_argument("--sheet", metavar="TSV", help="override the config's slide sheet")
    add_device(parser)
    add_threads(parser, default=1, why="repeatable, and one job per core")
    parser.add_argument(
        "--eval-out",
        metavar="JSON",
        help="also write the test evaluation (the `zoommil evaluate` JSON of checkpoint.pt)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run, outputs=lambda a: [Path(a.out) / "checkpoint.pt"])


def run(args: argparse.Namespace) -> int:
    from zoommil.errors import ZoomMILError
    from zoommil.training import load_config, resolve_method, train
    from zoommil.training.modeling import known_archs

    if args.epochs is not None and args.epochs < 1:
        raise ZoomMILError(f"--epochs must be at least 1, got {args.epochs}")
    config = load_config(args.config, {"features_dir": args.features_dir, "sheet": args.sheet})
    method = resolve_method(config, args.model, known_archs())
    metrics = train(
        config,
        method,
        seed=args.seed,
        out_dir=args.out,
        device=args.device,
        threads=args.threads or None,
        epochs=args.epochs,
        progress=not args.no_progress,
    )
    if args.eval_out:
        from pathlib import Path

        from zoommil.io.jsonio import write_json
        from zoommil.training.evaluation import evaluation_from_training

        record = evaluation_from_training(
            metrics, Path(args.out) / "checkpoint.pt", config.features_dir, config.sheet
        )
        write_json(args.eval_out, record)
    test = metrics["test"] or {}
    log.info(
        "%s seed %d: best epoch %d, val weighted F1 %.4f, test weighted F1 %s -> %s",
        method.name,
        args.seed,
        metrics["best_epoch"],
        metrics["val"]["weighted_f1"],
        f"{test['weighted_f1']:.4f}" if test else "n/a",
        args.out,
    )
    return 0

"""`zoommil train`: train one method with one or more seeds on the feature files of a sheet."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from zoommil.commands.options import (
    add_device,
    add_no_progress,
    add_threads,
    check_one_per,
    check_seed,
    show_progress,
)

if TYPE_CHECKING:
    from zoommil.training.config import MethodSpec, TrainConfig

log = logging.getLogger(__name__)

#: What `zoommil.training.train` writes into each --out folder.
OUTPUT_FILES = ("checkpoint.pt", "log.csv", "metrics.json")

DESCRIPTION = """\
Train one MIL model on precomputed feature files and keep the best epoch.

Several seeds (--seed 0 1 2 with one --out per seed) train one after the other in this one
process, each exactly as it would alone: the imports and the process start (~3-4 s on a
small CPU) are paid once instead of once per seed.

NAME is a method under `methods:` in the config (an architecture plus keyword arguments, so
ablation variants are methods) or an architecture name with default arguments. Slides come
from the sheet (TSV: slide_id, label, split [, path, mpp]); slides whose status is not `ok` in
the optional `exclude:` QC table and slides whose feature file has no patches are skipped and
listed in metrics.json; any other slide without {features_dir}/{slide_id}.h5 is an error.

One bag per step, Adam, ReduceLROnPlateau(factor 0.8, patience 5) on the validation loss,
class-balanced sampling, cross-entropy (or the model's own training loss). On CPU a run is
bit-for-bit repeatable for a given seed and --threads.

The best epoch is chosen on the val split alone, by the config's `selection`: val_loss (the
lowest; on a tie the earlier epoch) or val_weighted_f1 (the highest; on a tie the lower val
loss, then the earlier epoch). A class without val slides is warned of: selection cannot see it.

Writes to each DIR: checkpoint.pt (best epoch; loads with torch.load(weights_only=True)),
log.csv (one row per epoch) and metrics.json (validation and test metrics of the kept
epoch, with per-slide predictions). With --eval-out, also the test split's evaluation exactly
as `zoommil evaluate` would write it for checkpoint.pt (no second run over the features).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one method with one or more seeds on feature files",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="train config (YAML/JSON)")
    parser.add_argument(
        "--model", required=True, metavar="NAME", help="method in the config, or architecture"
    )
    parser.add_argument(
        "--seed", type=int, nargs="+", default=[0], metavar="S", help="random seed(s) (default 0)"
    )
    parser.add_argument(
        "--out", required=True, nargs="+", metavar="DIR", help="output folder, one per seed"
    )
    parser.add_argument(
        "--epochs", type=int, metavar="E", help="override the config's number of epochs"
    )
    parser.add_argument("--features-dir", metavar="DIR", help="override the config's features_dir")
    parser.add_argument("--sheet", metavar="TSV", help="override the config's slide sheet")
    add_device(parser)
    add_threads(parser, default=1, why="repeatable, and one job per core")
    parser.add_argument(
        "--eval-out",
        nargs="+",
        metavar="JSON",
        help="also write the test evaluation (the `zoommil evaluate` JSON of checkpoint.pt), "
        "one per seed",
    )
    add_no_progress(parser)
    parser.set_defaults(func=run, outputs=_outputs, inputs=_inputs)
    # Ctrl-C or a time limit: nothing is resumed, and the folder's earlier run was removed
    # once the data loaded (a stopped run must not look finished), so say both.
    parser.set_defaults(
        interrupted_hint="training does not resume: the same command starts again from epoch "
        "1 (the folder's earlier checkpoint and metrics were removed when this run began)"
    )


def _outputs(args: argparse.Namespace) -> list[Path]:
    """Each DIR's files and the --eval-out files: checked before training, not after it."""
    files = [Path(d) / name for d in args.out for name in OUTPUT_FILES]
    return files + [Path(e) for e in args.eval_out or []]


def _inputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    return [("config", args.config), ("sheet", args.sheet)]


def check_seeds(args: argparse.Namespace) -> None:
    """Each seed once, with one --out (and one --eval-out, if given) per seed."""
    from zoommil.errors import ZoomMILError

    for seed in args.seed:
        check_seed(seed)
    if len(set(args.seed)) != len(args.seed):
        raise ZoomMILError(f"--seed {' '.join(map(str, args.seed))}: a seed is given twice")
    check_one_per(len(args.seed), "seed", {"--out": args.out, "--eval-out": args.eval_out})


def run(args: argparse.Namespace) -> int:
    from zoommil.errors import ZoomMILError
    from zoommil.training import load_config, resolve_method
    from zoommil.training.modeling import known_archs

    if args.epochs is not None and args.epochs < 1:
        raise ZoomMILError(f"--epochs must be at least 1, got {args.epochs}")
    check_seeds(args)
    config = load_config(args.config, {"features_dir": args.features_dir, "sheet": args.sheet})
    method = resolve_method(config, args.model, known_archs())
    eval_outs = args.eval_out or [None] * len(args.seed)
    for seed, out, eval_out in zip(args.seed, args.out, eval_outs, strict=True):
        train_one(args, config, method, seed, Path(out), eval_out)
    return 0


def train_one(
    args: argparse.Namespace,
    config: TrainConfig,
    method: MethodSpec,
    seed: int,
    out: Path,
    eval_out: str | None,
) -> None:
    """Train and (with --eval-out) evaluate one seed."""
    from zoommil.training import train

    # A run killed mid-way rewrites log.csv every epoch: the earlier run's files go once the
    # data has loaded, so that the folder cannot hold a new log beside an old checkpoint.
    stale = [out / name for name in OUTPUT_FILES] + ([Path(eval_out)] if eval_out else [])
    metrics = train(
        config,
        method,
        seed=seed,
        out_dir=out,
        device=args.device,
        threads=args.threads or None,
        epochs=args.epochs,
        progress=show_progress(args),
        stale=stale,
        need_test=bool(eval_out),
    )
    if eval_out:
        from zoommil.io.jsonio import write_json
        from zoommil.training.evaluation import evaluation_from_training

        record = evaluation_from_training(
            metrics,
            out / "checkpoint.pt",
            config.features_dir,
            config.sheet,
            exclude=config.exclude,
        )
        write_json(eval_out, record)
    test = metrics["test"] or {}
    log.info(
        "%s seed %d: best epoch %d, val weighted F1 %.4f, test weighted F1 %s -> %s",
        method.name,
        seed,
        metrics["best_epoch"],
        metrics["val"]["weighted_f1"],
        f"{test['weighted_f1']:.4f}" if test else "n/a",
        out,
    )

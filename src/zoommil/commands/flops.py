"""`zoommil flops`: FLOPs per slide of trained methods (encoder x patches + MIL head)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoommil.commands.options import add_no_progress, add_threads, check_one_per, show_progress
from zoommil.io.clobber import folder_inputs


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flops",
        help="count FLOPs per slide with fvcore (encoder x patches encoded + MIL head)",
        description=(
            "Count the FLOPs of classifying each slide of a split: the FLOPs per patch of the "
            "encoder the checkpoint's features were made with (at its input size) times the "
            "patches the method encodes (ZoomMIL: only the zoomed-in ones), plus the MIL head "
            "on that bag. fvcore counts one multiply-add as one flop; "
            "TFLOPs are 2^40 flops, as in the paper's tables. The head is cross-checked with "
            "torch.utils.flop_counter. Several checkpoints (with one --out each) are counted "
            "in one process."
        ),
    )
    parser.add_argument(
        "--model",
        nargs="+",
        help="method name to record, one per checkpoint (default: the checkpoint's)",
    )
    parser.add_argument(
        "--checkpoint", type=Path, nargs="+", required=True, help="checkpoint.pt, one or more"
    )
    parser.add_argument("--features-dir", type=Path, required=True, help="folder of {slide_id}.h5")
    parser.add_argument(
        "--sheet",
        type=Path,
        help="slide sheet (default: the checkpoint's, with its QC table as --exclude)",
    )
    parser.add_argument(
        "--exclude",
        metavar="TSV",
        type=Path,
        help="QC table of slides not to count (default: the checkpoint's, where --sheet is "
        "not given)",
    )
    parser.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="default: test"
    )
    parser.add_argument(
        "--max-slides", type=int, help="count only the first N slides (default: all)"
    )
    parser.add_argument(
        "--out", type=Path, nargs="+", required=True, help="output JSON, one per checkpoint"
    )
    add_no_progress(parser)
    add_threads(parser, default=1, why="the workflow's one core; counts do not depend on it")
    parser.set_defaults(func=run, outputs=lambda a: list(a.out), inputs=_inputs)


def _inputs(args: argparse.Namespace) -> list[tuple[str, Path | None]]:
    features = folder_inputs("feature file", args.features_dir)
    given = [("sheet", args.sheet), ("QC table", args.exclude)]
    return [("checkpoint", c) for c in args.checkpoint] + given + features


def run(args: argparse.Namespace) -> int:
    import torch

    from zoommil.efficiency.flops import TFLOP, checkpoint_flops
    from zoommil.io.jsonio import write_json

    if args.threads:  # torch's default, every core, ran beside the jobs on the others
        torch.set_num_threads(args.threads)
    n = len(args.checkpoint)
    check_one_per(n, "checkpoint", {"--out": args.out, "--model": args.model})
    methods = args.model or [None] * n
    for checkpoint, method, out in zip(args.checkpoint, methods, args.out, strict=True):
        result = checkpoint_flops(
            checkpoint,
            args.features_dir,
            sheet=args.sheet,
            split=args.split,
            max_slides=args.max_slides,
            method=method,
            progress=show_progress(args),
            exclude=args.exclude,
        )
        write_json(out, result)
        print(
            f"{out}: {result['mean_total_flops'] / TFLOP:.4f} TFLOPs per slide over "
            f"{len(result['per_slide'])} slides"
            + (f" ({len(result['excluded'])} left out)" if result["excluded"] else "")
        )
    return 0

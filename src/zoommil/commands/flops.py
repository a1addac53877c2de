"""`zoommil flops`: FLOPs per slide of a trained method (encoder x patches + MIL head)."""

from __future__ import annotations

import argparse
from pathlib import Path


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
            "torch.utils.flop_counter."
        ),
    )
    parser.add_argument("--model", help="method name to record (default: the checkpoint's)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt")
    parser.add_argument("--features-dir", type=Path, required=True, help="folder of {slide_id}.h5")
    parser.add_argument("--sheet", type=Path, help="slide sheet (default: the checkpoint's)")
    parser.add_argument("--split", default="test", help="split to count (default test)")
    parser.add_argument("--max-slides", type=int, help="count only the first N slides")
    parser.add_argument("--out", type=Path, required=True, help="output JSON")
    parser.set_defaults(func=run, outputs=lambda a: [a.out])


def run(args: argparse.Namespace) -> int:
    from zoommil.efficiency.flops import TFLOP, checkpoint_flops
    from zoommil.io.jsonio import write_json

    result = checkpoint_flops(
        args.checkpoint,
        args.features_dir,
        sheet=args.sheet,
        split=args.split,
        max_slides=args.max_slides,
        method=args.model,
    )
    write_json(args.out, result)
    print(
        f"{args.out}: {result['mean_total_flops'] / TFLOP:.4f} TFLOPs per slide over "
        f"{len(result['per_slide'])} slides"
    )
    return 0

"""`zoommil tissue`: tissue mask PNG (at ~1.25x, 8 um/px) plus a QC overlay."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoommil.commands.options import add_no_fail
from zoommil.recipe import TISSUE_METHODS, default
from zoommil.wsi.tissue import (
    DEFAULT_PARAMS,
    OVERLAY_FORMATS,
    default_overlay_path,
    mask_metadata,
    parse_param_args,
    save_mask,
    save_overlay,
    tissue_mask_for_slide,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    defaults = "; ".join(f"{m}: {json.dumps(p)}" for m, p in DEFAULT_PARAMS.items())
    parser = subparsers.add_parser(
        "tissue",
        help="detect tissue and write a mask PNG and an overlay image",
        description=(
            "Detect tissue on a thumbnail at 8 um/px (~1.25x) read from the coarsest suitable "
            "pyramid level. 'gaussian' is the ZoomMIL paper's detector (saturation pre-"
            "whitening, blur + Otsu + largest-component peeling); 'otsu' is CLAM-like "
            "(median-blurred saturation, Otsu, closing, small-object removal). The mask PNG "
            "(tissue = 255) covers the whole slide and stores its mpp, method and parameters "
            "as PNG text chunks (zoommil.*), so 'zoommil tile --tissue-mask' can reuse it. "
            "An empty mask is written with a warning."
        ),
        epilog=f"Parameter defaults: {defaults}",
    )
    parser.add_argument("slide", type=Path, help="slide file")
    parser.add_argument("--out", type=Path, required=True, help="mask PNG to write")
    parser.add_argument(
        "--method",
        choices=TISSUE_METHODS,
        default=default("tissue_method"),
        help=f"detector (default {default('tissue_method')})",
    )
    parser.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="detector parameter, repeatable (e.g. --param sigma=10 --param kernel_size=7)",
    )
    parser.add_argument(
        "--overlay",
        type=overlay_path,
        default=None,
        help="QC overlay image, .png, .jpg or .jpeg (default: MASK.overlay.jpg next to the mask)",
    )
    parser.add_argument("--mpp", type=float, default=None, help="level-0 um/px override")
    parser.add_argument(
        "--default-mpp", type=float, default=None, help="um/px if the metadata has none"
    )
    add_no_fail(parser)
    parser.set_defaults(
        func=run, outputs=_outputs, inputs=lambda a: [("slide", a.slide)], stage="tissue"
    )


def overlay_path(value: str) -> Path:
    """``--overlay``: a name whose suffix says a format `save_overlay` writes."""
    path = Path(value)
    if path.suffix.lower() not in OVERLAY_FORMATS:
        raise argparse.ArgumentTypeError(
            f"{value}: the overlay is written as {', '.join(OVERLAY_FORMATS)}; name it so"
        )
    return path


def _outputs(args: argparse.Namespace) -> list[Path]:
    return [args.out, args.overlay or default_overlay_path(args.out)]


def run(args: argparse.Namespace) -> int:
    params = parse_param_args(args.param)
    mask, mask_mpp, info = tissue_mask_for_slide(
        args.slide, args.mpp, args.method, params, default_mpp=args.default_mpp
    )
    save_mask(args.out, mask, mask_metadata(mask_mpp, args.method, info["params"], info))
    overlay = args.overlay or default_overlay_path(args.out)
    save_overlay(overlay, info["thumbnail"], mask)
    print(
        f"{args.slide}: tissue {100 * mask.mean():.1f}% of {mask.shape[1]}x{mask.shape[0]} px "
        f"at {mask_mpp:g} um/px -> {args.out} (overlay {overlay})"
    )
    return 0

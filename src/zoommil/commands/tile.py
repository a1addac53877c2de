"""`zoommil tile`: the aligned multi-magnification patch lattice of one slide (coords HDF5)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from zoommil.commands.options import add_no_fail
from zoommil.recipe import NO_TISSUE_POLICIES, TISSUE_METHODS, PreprocessingRecipe, default, mag_key
from zoommil.wsi.tissue import parse_param_args

log = logging.getLogger("zoommil.wsi.tiling")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tile",
        help="aligned multi-magnification patch coordinates (HDF5)",
        description=(
            "Build one integer lattice anchored at level-0 (0, 0): a patch at the highest "
            "magnification is s = round(patch_size * (10 / mag) / mpp) level-0 px, and "
            "s * 2^k at k steps lower, so each patch covers exactly 2^d x 2^d patches d steps "
            "higher. Magnifications must be power-of-two multiples of each other (mag = 10 / "
            "mpp, 20x = 0.5 um/px). Lowest-magnification patches are kept if their tissue "
            "fraction >= --tissue-threshold; all their descendants are kept, in depth-first "
            "quadtree order. Writes per magnification '{mag}x_coords' (row, col) and "
            "'{mag}x_xy' (level-0 x, y), 'tissue_fraction' per parent and provenance attributes."
        ),
    )
    parser.add_argument("slide", type=Path, help="slide file")
    parser.add_argument(
        "--mags",
        type=float,
        nargs="+",
        required=True,
        help="magnifications, e.g. 2.5 5 10 (power-of-two multiples of each other)",
    )
    parser.add_argument("--out", type=Path, required=True, help="coords HDF5 to write")
    parser.add_argument(
        "--patch-size",
        type=int,
        default=default("patch_size"),
        help=f"patch side in pixels (default {default('patch_size')})",
    )
    parser.add_argument("--mpp", type=float, default=None, help="level-0 um/px override")
    parser.add_argument(
        "--default-mpp", type=float, default=None, help="um/px if the metadata has none"
    )
    parser.add_argument(
        "--tissue-mask",
        type=Path,
        default=None,
        help="mask PNG from 'zoommil tissue' (default: compute one with --tissue-method)",
    )
    parser.add_argument(
        "--tissue-method",
        choices=TISSUE_METHODS,
        default=None,
        help=f"tissue detector when no mask is given (default {default('tissue_method')}); "
        "with --tissue-mask the mask's own method counts and this one is ignored, with a warning",
    )
    parser.add_argument(
        "--tissue-param",
        action="append",
        metavar="NAME=VALUE",
        help="tissue detector parameter, repeatable (see 'zoommil tissue --help')",
    )
    parser.add_argument(
        "--tissue-threshold",
        type=float,
        default=default("tissue_threshold"),
        help="minimum tissue fraction of a lowest-magnification patch "
        f"(default {default('tissue_threshold')})",
    )
    parser.add_argument(
        "--no-tissue",
        choices=NO_TISSUE_POLICIES,
        default="all",
        help="when no patch passes: keep all its patches with a warning (all, the default: the "
        "workflow's QC step then applies the recipe's no-tissue policy) or fail the slide "
        "(exclude)",
    )
    parser.add_argument(
        "--allow-upsampling",
        action="store_true",
        help="allow magnifications finer than the slide's native one (recorded in the file)",
    )
    add_no_fail(parser)
    parser.set_defaults(
        func=run,
        outputs=lambda a: [a.out],
        inputs=lambda a: [("slide", a.slide), ("tissue mask", a.tissue_mask)],
        stage="tile",
    )


def run(args: argparse.Namespace) -> int:
    from zoommil.io.coords import write_coords
    from zoommil.workflow.failure import check_input
    from zoommil.wsi.tiling import tile_slide

    check_input(args.tissue_mask, args.slide)
    if args.tissue_mask is not None and args.tissue_method is not None:
        log.warning(
            "%s: --tissue-method %s is ignored with --tissue-mask (the mask's own method, "
            "recorded in the coords file, counts)",
            args.slide,
            args.tissue_method,
        )
    recipe = PreprocessingRecipe(
        mags=args.mags,
        patch_size=args.patch_size,
        tissue_method=args.tissue_method or default("tissue_method"),
        tissue_params=parse_param_args(args.tissue_param),
        tissue_threshold=args.tissue_threshold,
        no_tissue=args.no_tissue,
        allow_upsampling=args.allow_upsampling,
    )
    lattice = tile_slide(
        args.slide, recipe, mpp=args.mpp, default_mpp=args.default_mpp, mask_path=args.tissue_mask
    )
    write_coords(args.out, lattice)
    counts = ", ".join(
        f"{mag_key(m)}: {n}" for m, n in zip(lattice.mags, lattice.num_patches(), strict=True)
    )
    print(f"{args.slide}: {counts} patches -> {args.out}")
    return 0

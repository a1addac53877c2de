"""`zoommil tile`: the aligned multi-magnification patch lattice of one slide (coords HDF5)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoommil.wsi.lattice import NO_TISSUE_POLICIES, mag_key, tile_slide, write_coords
from zoommil.wsi.tissue import METHODS, parse_param_args


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
    parser.add_argument("--patch-size", type=int, default=256, help="patch side in pixels")
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
    parser.add_argument("--tissue-method", choices=METHODS, default="gaussian")
    parser.add_argument(
        "--tissue-param",
        action="append",
        metavar="NAME=VALUE",
        help="tissue detector parameter, repeatable (see 'zoommil tissue --help')",
    )
    parser.add_argument(
        "--tissue-threshold",
        type=float,
        default=0.1,
        help="minimum tissue fraction of a lowest-magnification patch (default 0.1)",
    )
    parser.add_argument(
        "--no-tissue",
        choices=NO_TISSUE_POLICIES,
        default="all",
        help="when no patch passes: keep all patches with a warning, or fail the slide",
    )
    parser.add_argument(
        "--allow-upsampling",
        action="store_true",
        help="allow magnifications finer than the slide's native one (recorded in the file)",
    )
    parser.add_argument(
        "--no-fail",
        action="store_true",
        help=(
            "for workflows: a slide that cannot be used (or failed at an earlier stage) gets a "
            "failure marker as output (status, stage, reason) and exit 0, so one bad slide "
            "never stops a batch; other errors still exit non-zero"
        ),
    )
    parser.set_defaults(func=run, outputs=lambda a: [a.out], stage="tile")


def run(args: argparse.Namespace) -> int:
    from zoommil.workflow.failure import check_input

    check_input(args.tissue_mask, args.slide)
    lattice = tile_slide(
        args.slide,
        args.mags,
        patch_size=args.patch_size,
        mpp=args.mpp,
        default_mpp=args.default_mpp,
        mask_path=args.tissue_mask,
        tissue_method=args.tissue_method,
        tissue_params=parse_param_args(args.tissue_param),
        threshold=args.tissue_threshold,
        no_tissue=args.no_tissue,
        allow_upsampling=args.allow_upsampling,
    )
    write_coords(args.out, lattice)
    counts = ", ".join(
        f"{mag_key(m)}: {n}" for m, n in zip(lattice.mags, lattice.num_patches(), strict=True)
    )
    print(f"{args.slide}: {counts} patches -> {args.out}")
    return 0

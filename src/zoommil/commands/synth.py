"""`zoommil synth`: write the built-in demo dataset (slides + slides.tsv)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoommil.commands.options import add_no_progress, check_seed, show_progress
from zoommil.synth import DEMO_N_SLIDES, make_demo_dataset

DESCRIPTION = """\
Write the demo dataset: seeded H&E-like pyramidal TIFF slides (level 0 at 1.0 um/px = 10x,
deflate tiles, >= 3 levels), OUT/slides.tsv (slide_id, path, label, split; path relative to
OUT) and OUT/regions.tsv (ground-truth regions). Three classes, normal / atypia / carcinoma,
told apart only by the nuclei of one lesion at 10x; the lesion (crowded glands, visible at
low magnification) says where to look, and looks the same in every class. Same arguments ->
byte-identical files, with any number of --workers.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write the demo dataset (slides + slides.tsv)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--n-slides",
        type=int,
        default=DEMO_N_SLIDES,
        help=f"slides, classes in turn (default {DEMO_N_SLIDES}: 33 train/12 val/15 test)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="slide side scale, 0.25 to 4 (default 1.0 = 4096x3072 px; 0.5 for quick tests)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="slides rendered in parallel processes (default 1; files are the same either way)",
    )
    add_no_progress(parser)
    parser.set_defaults(func=run, outputs=lambda a: [a.out / "slides.tsv"])


def run(args: argparse.Namespace) -> int:
    check_seed(args.seed)
    sheet = make_demo_dataset(
        args.out,
        n_slides=args.n_slides,
        seed=args.seed,
        scale=args.scale,
        progress=show_progress(args),
        workers=args.workers,
    )
    print(sheet)
    return 0

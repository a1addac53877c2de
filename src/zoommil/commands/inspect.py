"""`zoommil inspect`: slide QC as JSON (mpp and its source, levels, objective, status)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zoommil.errors import SlideError
from zoommil.io.atomic import atomic_path
from zoommil.wsi.slide import inspect_slide


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="check a slide and report its resolution, pyramid and status as JSON",
        description=(
            "Open a whole-slide image, test-read its pixels, resolve its resolution (mpp) and "
            "print a JSON report: path, status ('ok' or an error status such as missing, "
            "not_a_slide, unreadable, no_mpp, implausible_mpp, not_brightfield: a dark "
            "fluorescence-like background) with its reason, mpp, mpp_source, magnification "
            "(10/mpp), objective, levels [dims, downsample] and OpenSlide's quickhash (the "
            "workflow refuses one slide under two names). "
            "mpp order: --mpp (overrides metadata) > openslide.mpp-x > vendor keys > TIFF "
            "resolution > objective power > --default-mpp; values outside 0.05-5.0 um/px are "
            "never used. A bad slide exits 2 with a one-line error unless --no-fail is given."
        ),
    )
    parser.add_argument("slide", type=Path, help="slide file (any format OpenSlide reads)")
    parser.add_argument(
        "--mpp", type=float, default=None, help="level-0 um/px; overrides the slide metadata"
    )
    parser.add_argument(
        "--default-mpp",
        type=float,
        default=None,
        help="um/px used only when the metadata has no plausible value (with a warning)",
    )
    parser.add_argument(
        "--slide-id",
        help="the slide's id in the JSON (default: the file name without its extension; the "
        "workflow passes the sheet's slide_id)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--no-fail",
        action="store_true",
        help=(
            "for workflows: always write the JSON (with status and reason) and exit 0, even "
            "for a bad slide, so one bad slide never stops a batch"
        ),
    )
    parser.set_defaults(func=run, outputs=lambda a: [a.out], inputs=lambda a: [("slide", a.slide)])


def run(args: argparse.Namespace) -> int:
    report = inspect_slide(
        args.slide, mpp=args.mpp, default_mpp=args.default_mpp, slide_id=args.slide_id
    )
    if report["status"] != "ok" and not args.no_fail:
        raise SlideError(args.slide, report["reason"])
    text = json.dumps(report, indent=2)
    if args.out is not None:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0

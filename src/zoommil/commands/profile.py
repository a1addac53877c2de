"""`zoommil profile`: end-to-end inference throughput of a trained method, from slide files."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoommil.commands.options import (
    add_device,
    add_no_progress,
    add_precision,
    check_one_per,
    show_progress,
    timing_threads_value,
    weights_file,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="time end-to-end inference per slide on CPU or GPU (slides/hour)",
        description=(
            "Time the classification of slides from their files, end to end (tissue "
            "detection, tiling, reading, encoding, MIL head): ZoomMIL through zoom inference, "
            "the other methods by encoding every tissue patch at their magnification(s). "
            "Writes seconds per slide and slides per hour. --device cuda without a GPU "
            "writes a JSON with a 'skipped' reason and exits 0."
        ),
    )
    parser.add_argument(
        "--model",
        nargs="+",
        help="method name to record per checkpoint (default: the checkpoint's)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        required=True,
        help="checkpoint.pt, one or more: ZoomMIL checkpoints are timed one by one, the others "
        "in groups that read the same patches (one read-and-encode pass per slide, each "
        "method charged that pass plus its own head)",
    )
    add_device(parser)
    parser.add_argument(
        "--threads",
        type=timing_threads_value,
        default=1,
        metavar="T",
        help="CPU cores: N (or 'all') single-threaded processes over the slides (default 1); "
        "on cuda: torch threads of the one process",
    )
    parser.add_argument("--sheet", type=Path, help="slide sheet (default: the checkpoint's)")
    parser.add_argument(
        "--slides",
        nargs="+",
        help="the sheet's slide_ids to time, not files (default: the split's); to time other "
        "slide files, list them in a sheet and pass --sheet",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="split to time when --slides is absent (default: test)",
    )
    parser.add_argument(
        "--max-slides",
        type=int,
        default=3,
        help="time the first N slides that can be read; an unreadable one is listed in the "
        "JSON with its reason and the next slide is timed instead (default 3)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="untimed warm-up passes over the split's first N slides (at most all of them; "
        "they are timed afterwards like the others), default 0; the encoder always runs one "
        "untimed batch",
    )
    add_precision(parser, None)
    parser.add_argument(
        "--weights",
        help="encoder weights (default: the checkpoint's); timing only, so other weights than "
        "the checkpoint's are allowed (e.g. random for a checkpoint of gated weights)",
    )
    parser.add_argument(
        "--out", type=Path, nargs="+", required=True, help="output JSON, one per checkpoint"
    )
    add_no_progress(parser)
    parser.set_defaults(func=run, outputs=lambda a: list(a.out), inputs=_inputs)


def _inputs(args: argparse.Namespace) -> list[tuple[str, Path | str | None]]:
    return [
        *(("checkpoint", c) for c in args.checkpoint),
        ("sheet", args.sheet),
        ("weights file", weights_file(args.weights)),
    ]


def run(args: argparse.Namespace) -> int:
    from zoommil.efficiency.throughput import profile_checkpoints
    from zoommil.io.jsonio import write_json

    check_one_per(len(args.checkpoint), "checkpoint", {"--out": args.out}, noun="file(s)")
    results = profile_checkpoints(
        args.checkpoint,
        device=args.device,
        threads=args.threads,
        sheet=args.sheet,
        slides=args.slides,
        split=args.split,
        max_slides=args.max_slides,
        warmup=args.warmup,
        precision=args.precision,
        weights=args.weights,
        methods=args.model,
        progress=show_progress(args),
    )
    for out, result in zip(args.out, results, strict=True):
        write_json(out, result)
        if result.get("skipped"):
            print(f"{out}: skipped ({result['skipped']})")
            continue
        print(
            f"{out}: {result['seconds_per_slide']:.2f} s/slide, "
            f"{result['slides_per_hour']:.1f} slides/h ({result['device']}, "
            f"{result['processes']} process(es) x {result['threads_per_process']} thread(s), "
            f"{result['cpu_count']} cores)"
        )
    return 0

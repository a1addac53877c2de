"""`zoommil profile`: end-to-end inference throughput of a trained method, from slide files."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from zoommil.errors import ZoomMILError


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
    parser.add_argument("--model", help="method name to record (default: the checkpoint's)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--threads",
        default="1",
        help="CPU cores: N (or 'all') single-threaded processes over the slides (default 1); "
        "on cuda: torch threads of the one process",
    )
    parser.add_argument("--sheet", type=Path, help="slide sheet (default: the checkpoint's)")
    parser.add_argument("--slides", nargs="+", help="slide_ids to time (default: the split's)")
    parser.add_argument("--split", default="test", help="split to time when --slides is absent")
    parser.add_argument("--max-slides", type=int, default=3, help="time at most N slides")
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="untimed warm-up slides (default 0; the encoder always runs one untimed batch)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        help="encoder precision (default: the one the checkpoint's features were made with)",
    )
    parser.add_argument("--weights", help="encoder weights (default: the checkpoint's)")
    parser.add_argument("--out", type=Path, required=True, help="output JSON")
    parser.set_defaults(func=run, outputs=lambda a: [a.out])


def _threads(value: str) -> int:
    if value == "all":
        return os.cpu_count() or 1
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ZoomMILError(f"--threads must be a positive number or 'all', got {value!r}")
    return threads


def run(args: argparse.Namespace) -> int:
    import torch

    from zoommil.efficiency.throughput import measure_throughput
    from zoommil.inference.predict import Predictor
    from zoommil.io.jsonio import write_json
    from zoommil.io.sheet import resolve_slide_path
    from zoommil.training.checkpoint import load_checkpoint
    from zoommil.training.data import read_sheet

    threads = _threads(args.threads)
    _, config = load_checkpoint(args.checkpoint)
    method = args.model or config.get("method", config["arch"])
    if args.device == "cuda" and not torch.cuda.is_available():
        write_json(args.out, {"method": method, "device": "cuda", "skipped": "no CUDA device"})
        print(f"{args.out}: skipped (no CUDA device)")
        return 0
    sheet_path = args.sheet or config["sheet"]
    sheet = read_sheet(sheet_path)
    if args.slides:
        unknown = sorted(set(args.slides) - set(sheet["slide_id"].astype(str)))
        if unknown:
            raise ZoomMILError(f"{sheet_path}: unknown slide_id(s) {', '.join(unknown)}")
        sheet = sheet[sheet["slide_id"].astype(str).isin(args.slides)]
    else:
        sheet = sheet[sheet["split"] == args.split]
    sheet = sheet.head(args.max_slides)
    if sheet.empty:
        raise ZoomMILError(f"{sheet_path}: no slides to profile")
    slides = [(str(r.slide_id), resolve_slide_path(sheet_path, r.path)) for r in sheet.itertuples()]
    mpp = {}
    if "mpp" in sheet.columns:
        mpp = {str(r.slide_id): float(r.mpp) for r in sheet.itertuples() if str(r.mpp).strip()}
    device = torch.device(args.device)
    predictor = Predictor.from_checkpoint(args.checkpoint, weights=args.weights, device=device)
    predictor.method = method
    result = measure_throughput(
        predictor, slides, device, threads, args.precision, args.warmup, mpp
    )
    write_json(args.out, result)
    print(
        f"{args.out}: {result['seconds_per_slide']:.2f} s/slide, "
        f"{result['slides_per_hour']:.1f} slides/h ({args.device}, {result['processes']} "
        f"process(es) x {result['threads_per_process']} thread(s), "
        f"{result['cpu_count']} cores)"
    )
    return 0

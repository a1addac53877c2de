"""End-to-end inference time per slide, from the slide file (the paper's Figure 3).

Each slide goes through the whole path a user would run: tissue detection, tiling, reading,
encoding and the MIL head (`zoommil.inference.predict.predict_slide`). One warm-up slide is
run first and not counted (``warmup``, default 0) and the encoder always sees one untimed
batch first, so one-off costs (allocators, thread pools, kernel selection) do not land on the
first slide.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoommil.device import resolve_device
from zoommil.errors import ZoomMILError
from zoommil.inference.predict import Predictor, make_encoder, predict_slide
from zoommil.io.sheet import read_sheet
from zoommil.training.checkpoint import load_checkpoint


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def measure_throughput(
    predictor: Predictor,
    slides: Sequence[tuple[str, str | Path]],
    device: torch.device,
    threads: int,
    precision: str | None = None,
    warmup: int = 0,
    mpp: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Seconds per slide and slides per hour over ``slides`` ((slide_id, path) pairs)."""
    torch.set_num_threads(threads)
    predictor.model.to(device)
    encoder, info = make_encoder(predictor, device=device, precision=precision)
    mpp = mpp or {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    p = predictor.patch_size
    encoder.encode(np.full((4, p, p, 3), 255, dtype=np.uint8))
    for slide_id, path in list(slides)[:warmup]:
        predict_slide(predictor, path, encoder, mpp=mpp.get(slide_id))
    rows = []
    for slide_id, path in slides:
        sync()
        tic = time.perf_counter()
        result = predict_slide(predictor, path, encoder, mpp=mpp.get(slide_id))
        sync()
        rows.append(
            {
                "slide_id": slide_id,
                "seconds": time.perf_counter() - tic,
                "patches_encoded": result["patches_encoded"],
                "phases": result["seconds"],
            }
        )
    seconds = float(np.mean([r["seconds"] for r in rows]))
    return {
        "method": predictor.method,
        "arch": predictor.arch,
        "device": device.type,
        "device_name": device_name(device),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "precision": encoder.precision,
        "encoder": info.get("encoder"),
        "feature_dim": info.get("feature_dim"),
        "encoder_weights": info.get("weights"),
        "warmup_slides": min(warmup, len(slides)),
        "per_slide": rows,
        "seconds_per_slide": seconds,
        "slides_per_hour": 3600.0 / seconds if seconds > 0 else None,
        "mean_patches_encoded": float(np.mean([r["patches_encoded"] for r in rows])),
        "torch_version": torch.__version__,
        "skipped": None,
    }


def profile_slides(
    sheet_path: str | Path, slides: Sequence[str] | None, split: str, max_slides: int
) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """(slide_id, path) pairs to time (``slides``, else the split's) and their sheet mpp."""
    sheet = read_sheet(sheet_path)
    if slides:
        unknown = sorted(set(slides) - set(sheet["slide_id"]))
        if unknown:
            raise ZoomMILError(f"{sheet_path}: unknown slide_id(s) {', '.join(unknown)}")
        sheet = sheet[sheet["slide_id"].isin(slides)]
    else:
        sheet = sheet[sheet["split"] == split]
    sheet = sheet.head(max_slides)
    if sheet.empty:
        raise ZoomMILError(f"{sheet_path}: no slides to profile")
    if "path" not in sheet.columns:
        raise ZoomMILError(f"{sheet_path}: profiling reads the slides: the sheet needs a path")
    pairs = [(str(r.slide_id), str(r.path)) for r in sheet.itertuples()]
    mpp = {}
    if "mpp" in sheet.columns:
        mpp = {str(r.slide_id): float(r.mpp) for r in sheet.itertuples() if str(r.mpp).strip()}
    return pairs, mpp


def profile_checkpoint(
    checkpoint: str | Path,
    device: str = "auto",
    threads: int = 1,
    sheet: str | Path | None = None,
    slides: Sequence[str] | None = None,
    split: str = "test",
    max_slides: int = 3,
    warmup: int = 0,
    precision: str | None = None,
    weights: str | None = None,
    method: str | None = None,
) -> dict[str, Any]:
    """`zoommil profile`: throughput of a checkpoint's method on a sheet's slides.

    Without a CUDA device, ``device="cuda"`` returns a record with a ``skipped`` reason, so a
    workflow can ask for GPU timings on any machine.
    """
    if threads < 1:
        raise ZoomMILError(
            f"--threads must be a positive number or 'all' for timing, got {threads}"
        )
    _, config = load_checkpoint(checkpoint)
    method = method or config.get("method", config["arch"])
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        return {"method": method, "device": "cuda", "skipped": "no CUDA device"}
    torch_device = resolve_device(device)
    sheet_path = sheet or config["sheet"]
    pairs, mpp = profile_slides(sheet_path, slides, split, max_slides)
    predictor = Predictor.from_checkpoint(checkpoint, weights=weights, device=torch_device)
    predictor.method = method
    return measure_throughput(predictor, pairs, torch_device, threads, precision, warmup, mpp)

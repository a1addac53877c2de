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

from zoommil.inference.predict import Predictor, make_encoder, predict_slide


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's or the CPU's model name (stated on Figure 3)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


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

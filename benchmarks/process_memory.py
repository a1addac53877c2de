"""Benchmark: peak memory of one process that holds an encoder, the unit the rules size by.

A features, predict or profile worker builds its encoder and encodes batches; a job holds one
such process per encoder thread or timing worker (`zoommil.workflow.resources`, whose
``ENCODER_PROCESS_MB`` these numbers feed). Each measurement is a fresh process that builds the
encoder with random weights (memory does not depend on the weights), encodes two batches of 4
256-px patches on CPU at fp32 with one torch thread, and reports its own peak RSS (VmHWM).

    nice python benchmarks/process_memory.py
    nice python benchmarks/process_memory.py --encoders resnet50_layer3 uni --repeats 3

Writes results/benchmarks/process_memory.json and .md. Peak RSS varies a little with the
torch build and allocator (the spread over repeats is in the table), far less than times do.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import bench_cli
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ENCODERS = ("resnet50_layer3", "uni", "virchow2", "h-optimus-0")

#: What each measuring process runs: the worker's real path (build_encoder + PatchEncoder).
MEASURE = """
import sys
import numpy as np
import torch
from zoommil.features.encoder import PatchEncoder, build_encoder, spec_of
torch.set_num_threads(1)
model, _ = build_encoder("random", encoder=sys.argv[1])
encoder = PatchEncoder(model, "cpu", "fp32", spec_of(model))
for _ in range(2):
    encoder.encode(np.full((4, 256, 256, 3), 200, dtype=np.uint8))
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(sum(p.numel() for p in model.parameters()), int(hwm.split()[1]) // 1024)
"""


def measure(encoder: str) -> tuple[int, int]:
    """(parameters, peak RSS in MB) of one fresh process holding ``encoder``."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, encoder], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"{encoder}: the measuring process failed:\n{done.stderr[-2000:]}")
    params, peak = done.stdout.split()[-2:]
    return int(params), int(peak)


def run(encoders: list[str], repeats: int) -> dict[str, object]:
    rows = []
    for name in encoders:
        runs = [measure(name) for _ in range(repeats)]
        peaks = [peak for _, peak in runs]
        row = {"encoder": name, "parameters": runs[0][0], "peak_rss_mb": peaks}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {
        "cpu": platform.processor() or platform.machine(),
        "torch_version": torch.__version__,
        "precision": "fp32",
        "threads": 1,
        "weights": "random",
        "rows": rows,
    }


def markdown(result: dict[str, object]) -> str:
    lines = [
        "# Peak memory of one encoder process",
        "",
        f"CPU {result['cpu']}, torch {result['torch_version']}, fp32, 1 thread, random "
        "weights; a fresh process per measurement: build the encoder, encode 2 batches of 4 "
        "256-px patches, VmHWM. Min-max over the repeats.",
        "",
        "| encoder | parameters (M) | peak RSS (MB) |",
        "|---|---:|---:|",
    ]
    for row in result["rows"]:
        peaks = row["peak_rss_mb"]
        spread = f"{min(peaks)}" if min(peaks) == max(peaks) else f"{min(peaks)}-{max(peaks)}"
        lines.append(f"| {row['encoder']} | {row['parameters'] / 1e6:.1f} | {spread} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", nargs="+", default=list(DEFAULT_ENCODERS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args(argv)
    bench_cli.output_folder(args.out)
    result = run(args.encoders, max(1, args.repeats))
    bench_cli.write_text(args.out / "process_memory.json", json.dumps(result, indent=2) + "\n")
    bench_cli.write_text(args.out / "process_memory.md", markdown(result))


if __name__ == "__main__":
    main()

"""Reader cost: CPU time per patch of reading a slide's lattice, as a reader process does.

The reader processes (`zoommil.wsi.patches.ReaderPool`) read each lowest-magnification
patch whole and its descendants one patch of the previous magnification at a time. Their CPU
time matters twice: on a CPU-only machine it comes out of the encoders' cores, and on a GPU
it bounds how many patches/s one reader process can feed. This times `read_task` in this
process (one lowest-magnification patch per task, OpenCV single-threaded, as in a reader)
and reports process CPU seconds per patch, the
best of ``--repeats`` passes (the first pass's warm-up read excluded).

    python benchmarks/reading.py                                  # CMU-1-Small-Region, 5x -> 20x
    python benchmarks/reading.py --slide big40x.tiff --mags 10 20 --max-parents 160

Writes results/benchmarks/reading.json and .md. CPU time varies by machine and load.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import bench_cli
import cv2
from source_slide import default_source

from zoommil.io.coords import load_coords
from zoommil.wsi.lattice import depths
from zoommil.wsi.patches import chunk_tasks, read_task

REPO = Path(__file__).resolve().parents[1]
CMU = default_source()
OUT = REPO / "results" / "benchmarks"


def time_reading(slide: Path, mags: list[float], max_parents: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        coords = Path(tmp) / "coords.h5"
        bench_cli.zoommil("tile", str(slide), "--mags", *map(str, mags), "--out", str(coords))
        plan = load_coords(coords)
    xy = plan.xy[0][: max_parents or None]
    tasks = list(chunk_tasks(str(slide), xy, plan.sides[0], depths(plan.mags), plan.patch_size, 1))
    if not tasks:
        raise SystemExit(f"{slide}: no tissue patches at {plan.mags[0]}x")
    read_task(tasks[0])  # opens the handle, warms the caches
    passes, patches = [], 0
    for _ in range(max(1, repeats)):
        tic, patches = time.process_time(), 0
        for task in tasks:
            patches += len(read_task(task))
        passes.append(time.process_time() - tic)
    return {
        "slide": str(slide),
        "mags": plan.mags,
        "parents": len(tasks),
        "patches": patches,
        "cpu_seconds_per_pass": passes,
        "cpu_ms_per_patch": 1000 * min(passes) / patches,
        "patches_per_cpu_second": patches / min(passes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=CMU)
    parser.add_argument("--mags", type=float, nargs="+", default=[5.0, 20.0])
    parser.add_argument("--max-parents", type=int, default=0, help="0: every tissue parent")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    bench_cli.input_file(args.slide, "slide")
    bench_cli.output_folder(args.out)
    cv2.setNumThreads(1)  # as in a reader process
    result = time_reading(args.slide, args.mags, args.max_parents, args.repeats)
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "python": sys.version}
    bench_cli.write_text(args.out / "reading.json", json.dumps(result, indent=2))
    mags = " -> ".join(f"{m:g}x" for m in result["mags"])
    passes = ", ".join(f"{s:.2f}" for s in result["cpu_seconds_per_pass"])
    table = (
        "# Reader CPU per patch\n\n"
        "| slide | lattice | parents | patches | CPU s per pass | CPU ms/patch (best) |\n"
        "|---|---|---|---|---|---|\n"
        f"| {Path(result['slide']).name} | {mags} | {result['parents']} | {result['patches']} "
        f"| {passes} | {result['cpu_ms_per_patch']:.2f} |\n"
    )
    bench_cli.write_text(args.out / "reading.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

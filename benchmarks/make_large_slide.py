"""Write a real-size pyramidal JPEG slide (mosaic of a real H&E region) for the scale benchmarks.

    python benchmarks/make_large_slide.py --preset 40x --out results/benchmarks/slides/large40x.tiff

Prints (and writes next to the slide as <slide>.json) the geometry, the generation time and the
process's peak RSS: the slide is written tile by tile, so memory stays at the source image's
size whatever the slide's. See `zoommil.synth.large`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import bench_cli
from source_slide import default_source, missing_source_message

from zoommil.synth.large import PRESETS, load_source, write_large_slide


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="20x")
    parser.add_argument("--out", type=Path, required=True, help="output .tiff")
    parser.add_argument(
        "--source",
        type=Path,
        default=default_source(),
        help="real H&E region (CMU-1-Small-Region.svs)",
    )
    parser.add_argument("--width", type=int, help="level-0 width (default: the preset's)")
    parser.add_argument("--height", type=int, help="level-0 height (default: the preset's)")
    parser.add_argument("--tile", type=int, choices=(256, 512), help="TIFF tile side")
    parser.add_argument("--level-factor", type=int, choices=(2, 4), help="pyramid downsample")
    parser.add_argument("--compression", choices=("jpeg", "zlib"), default="jpeg")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.source.is_file():
        bench_cli.fail(missing_source_message(args.source))
    bench_cli.output_file(args.out)
    changes = {
        k: v
        for k, v in {
            "width": args.width,
            "height": args.height,
            "tile": args.tile,
            "level_factor": args.level_factor,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    spec = dataclasses.replace(PRESETS[args.preset], **changes)
    tic = time.perf_counter()
    source = load_source(args.source, spec.mpp)
    info = write_large_slide(args.out, source, spec, args.compression)
    info.update(
        preset=args.preset,
        source=str(args.source),
        total_seconds=time.perf_counter() - tic,
        peak_rss_mb=peak_rss_mb(),
    )
    bench_cli.write_text(Path(str(args.out) + ".json"), json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())

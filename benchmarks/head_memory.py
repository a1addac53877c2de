"""Benchmark: memory a MIL head's forward pass adds over a bag, the part of a timing process
that grows with the slide (`zoommil.workflow.resources.HEAD_MB_PER_10K`).

Each measurement is a fresh process that builds one architecture (random init, 2 classes),
makes a bag of random 1024-d features at 10x and 20x (``--patches`` at 20x, a quarter at 10x;
each model takes the magnifications it reads), resets its peak RSS (/proc/self/clear_refs)
and runs one forward pass in inference mode on CPU at fp32 with one torch thread, as a timing
worker does. It reports the peak RSS above the process before the pass (MB).

    nice python benchmarks/head_memory.py
    nice python benchmarks/head_memory.py --archs transmil abmil dsmil --patches 10000 40000

Linux only (VmHWM and clear_refs). Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from zoommil.models import MODEL_NAMES

#: What each measuring process runs.
MEASURE = """
import math, sys, torch
from zoommil.models import build_model, default_mags
torch.set_num_threads(1)
arch, n = sys.argv[1], int(sys.argv[2])
def status(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key))
    return int(line.split()[1]) // 1024
model = build_model(arch, mags=[10.0, 20.0], in_dim=1024, n_classes=2).eval()
feats, coords = [], []
for mag in default_mags(arch, [10.0, 20.0]):
    k = n // 4 ** round(math.log2(20 / mag))
    side = math.ceil(math.sqrt(k))
    feats.append(torch.randn(1, k, 1024))
    coords.append(torch.stack([torch.arange(k) // side, torch.arange(k) % side], 1))
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # the peak (VmHWM) starts again from the current RSS
with torch.inference_mode():
    model(feats, coords)
print(before, status("VmHWM") - before)
"""


def measure(arch: str, patches: int) -> dict[str, object]:
    """One fresh process's RSS before the pass and the peak the pass added (MB)."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, arch, str(patches)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{arch}: the measuring process failed:\n{done.stderr[-2000:]}")
    before, added = map(int, done.stdout.split()[-2:])
    return {"arch": arch, "patches_20x": patches, "rss_before_mb": before, "head_mb": added}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(MODEL_NAMES))
    parser.add_argument("--patches", nargs="+", type=int, default=[10_000, 40_000])
    args = parser.parse_args()
    for arch in args.archs:
        for patches in args.patches:
            print(json.dumps(measure(arch, patches)), flush=True)


if __name__ == "__main__":
    main()

"""Where does a trained ZoomMIL zoom? Its selections on the demo against the lesion ground truth.

After a demo run (`snakemake --cores 2`), for every ZoomMIL checkpoint under
results/models/<method>/seed~<s>/ and every slide of a split: the fraction of the patches
selected at each zoom step that touch the lesion (from results/demo/regions.tsv), next to the
same fraction over all the step's candidates (what a random choice gets). A model that has
learnt where to look scores well above chance at the lowest magnification.

    python benchmarks/zoom_precision.py [--methods zoommil zoommil_nondiff_topk] [--split test]

Writes results/benchmarks/zoom_precision.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import bench_cli
import h5py
import numpy as np
import torch

from zoommil.io.featurefile import mag_key
from zoommil.training.checkpoint import model_from_checkpoint
from zoommil.training.normalize import FeatureNorm

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def touches_lesion(xy: np.ndarray, side: float, lesion: dict[str, str]) -> np.ndarray:
    """Patches (level-0 top-left xy, square of `side`) that overlap the lesion disk."""
    cx, cy, radius = float(lesion["cx"]), float(lesion["cy"]), float(lesion["radius"])
    nearest_x = np.clip(cx, xy[:, 0], xy[:, 0] + side)
    nearest_y = np.clip(cy, xy[:, 1], xy[:, 1] + side)
    return np.hypot(nearest_x - cx, nearest_y - cy) < radius


def slide_precision(model, norm, path: Path, lesion: dict[str, str]) -> list[tuple[float, float]]:
    """Per zoom step: (fraction of selected patches on the lesion, fraction of candidates)."""
    with h5py.File(path, "r") as f:
        keys = [mag_key(m) for m in model.mags]
        feats = [torch.from_numpy(f[f"{k}_patches"][()]).float() for k in keys]
        xys = [f[f"{k}_xy"][()] for k in keys]
        sides = [float(s) for s in f.attrs["side0"]]
    if norm is not None:
        feats = [norm(x) for x in feats]
    with torch.no_grad():
        details = model.forward_with_details([x.unsqueeze(0) for x in feats])
    out = []
    for step, selected in enumerate(details["selected"]):
        candidates = details["rows"][step]  # rows of this magnification that were kept
        on_lesion = touches_lesion(xys[step], sides[step], lesion)
        out.append((on_lesion[selected.numpy()].mean(), on_lesion[candidates.numpy()].mean()))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["zoommil"])
    parser.add_argument("--split", default="test")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sheet = read_tsv(bench_cli.input_file(args.results / "demo" / "slides.tsv", "demo sheet"))
    bench_cli.input_file(args.results / "demo" / "regions.tsv", "demo regions")
    checkpoints = {m: sorted((args.results / "models" / m).glob("seed~*/checkpoint.pt"))
                   for m in args.methods}  # fmt: skip
    for method, found in checkpoints.items():
        if not found:  # else the run would overwrite the result with an empty one
            bench_cli.fail(f"{args.results / 'models' / method}: no seed~*/checkpoint.pt")
    out = bench_cli.output_folder(args.results / "benchmarks")
    lesions = {
        r["slide_id"]: r
        for r in read_tsv(args.results / "demo" / "regions.tsv")
        if r["kind"] == "lesion"
    }
    slides = [r["slide_id"] for r in sheet if r["split"] == args.split]
    rows = []
    for method in args.methods:
        for ckpt in checkpoints[method]:
            model, config = model_from_checkpoint(ckpt)
            norm = FeatureNorm.from_config(config.get("feature_norm"))
            per_slide = [
                slide_precision(model, norm, args.results / "features" / f"{s}.h5", lesions[s])
                for s in slides
            ]
            for step, mag in enumerate(model.mags[:-1]):
                selected = float(np.mean([p[step][0] for p in per_slide]))
                chance = float(np.mean([p[step][1] for p in per_slide]))
                rows.append(
                    {
                        "method": method,
                        "seed": ckpt.parent.name.split("~")[1],
                        "magnification": mag,
                        "k": model.ks[step],
                        "selected_on_lesion": round(selected, 3),
                        "candidates_on_lesion": round(chance, 3),
                        "n_slides": len(slides),
                    }
                )
                print(json.dumps(rows[-1]))
    bench_cli.write_text(out / "zoom_precision.json", json.dumps(rows, indent=2) + "\n")
    lines = [
        f"**Where ZoomMIL zooms ({args.split} split): selected patches on the lesion vs all "
        "candidates**",
        "",
        "| method | seed | step | K | selected on lesion | candidates on lesion |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['seed']} | {r['magnification']}x | {r['k']} | "
            f"{r['selected_on_lesion']:.2f} | {r['candidates_on_lesion']:.2f} |"
        )
    bench_cli.write_text(out / "zoom_precision.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Does the demo make zooming matter? Linear probes on random-ResNet-50 features per magnification.

Evidence for the "Demo dataset" rule of DESIGN.md: the class signal must be invisible at the
lowest magnification and clear at the highest. We generate demo slides with `zoommil synth`,
read patches with the library reader (level 0 + INTER_AREA, coarsest sufficient level), encode
them with the seeded random-init encoder (torch.manual_seed(0); resnet50 to layer3 + avgpool,
ImageNet mean/std, 256 px, no resize) and fit cross-validated logistic regressions, grouped by
slide so that no slide is in both the train and the test fold:

- lesion_abnormal_vs_normal: lesion patches of atypia/carcinoma slides vs lesion patches of
  normal slides (the lesion looks the same at low magnification in every class). Want:
  chance at 2.5x, high at 10x.
- lesion_class: 3 classes (none / atypia / carcinoma) on the same patches.
- where_cue: lesion vs ordinary gland regions (distractors), all classes. Want: high at 2.5x
  (the low magnification says where to zoom).
- architecture_cue: gland region (lesion or not) vs plain stroma.

Views: for each sampled point the patch centred on it at 10x (256 level-0 px), 5x (512) and
2.5x (1024), all read at 256 px; plus `10x_blur4`: the 10x patch area-reduced 4x and
upsampled back (same field of view, 2.5x resolution) to show the loss is about resolution.

    .venv/bin/python benchmarks/demo_probe.py [--n-slides 18] [--views-per-region 5]

Writes results/benchmarks/demo_probe.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import bench_cli
import cv2
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from zoommil.features.encoder import build_encoder, encode_patches
from zoommil.io.sheet import read_sheet
from zoommil.synth import make_demo_dataset
from zoommil.wsi.pixels import read_region_at
from zoommil.wsi.slide import open_slide

ROOT = Path(__file__).resolve().parents[1]
VIEWS = {"10x": 256, "5x": 512, "2.5x": 1024}  # level-0 side of a 256-px patch (mpp0 = 1.0)
ALIGN = 16  # patch corners on a multiple of 16 level-0 px, as on the lattice


def read_regions(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t"), strict=True))
        out.setdefault(row["slide_id"], []).append(row)
    return out


def sample_points(slide, regions: list[dict], per_region: int, rng: np.random.Generator):
    """Points in gland regions (within 0.6 radius of the centre) and in plain stroma."""
    points = []
    for r in regions:
        cx, cy, rad = float(r["cx"]), float(r["cy"]), float(r["radius"])
        for _ in range(per_region):
            a, d = rng.uniform(0, 2 * np.pi), 0.6 * rad * np.sqrt(rng.uniform())
            points.append((cx + d * np.cos(a), cy + d * np.sin(a), r["kind"], r["abnormality"]))
    # Plain stroma: tissue points at least 700 px from every region centre (a 2.5x view is
    # 1024 px wide, so its view holds no gland region).
    thumb = read_region_at(slide, 0, 0, max(slide.dimensions), max(slide.dimensions) // 16)
    tissue = thumb.mean(axis=2) < 225
    found, tries = 0, 0
    while found < per_region and tries < 5000:
        tries += 1
        x, y = rng.uniform(0, slide.dimensions[0]), rng.uniform(0, slide.dimensions[1])
        if not tissue[int(y) // 16, int(x) // 16]:
            continue
        if any(np.hypot(x - float(r["cx"]), y - float(r["cy"])) < 700 for r in regions):
            continue
        # The 10x patch must be mostly tissue.
        ys, xs = int(y) // 16, int(x) // 16
        if tissue[max(0, ys - 8) : ys + 8, max(0, xs - 8) : xs + 8].mean() < 0.9:
            continue
        points.append((x, y, "stroma", "none"))
        found += 1
    return points


def read_views(slide, x: float, y: float) -> dict[str, np.ndarray]:
    out = {}
    for name, side in VIEWS.items():
        x0 = int(round((x - side / 2) / ALIGN)) * ALIGN
        y0 = int(round((y - side / 2) / ALIGN)) * ALIGN
        out[name] = read_region_at(slide, x0, y0, side, 256)
    small = cv2.resize(out["10x"], (64, 64), interpolation=cv2.INTER_AREA)
    out["10x_blur4"] = cv2.resize(small, (256, 256), interpolation=cv2.INTER_LINEAR)
    return out


def probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5) -> dict:
    """Grouped stratified k-fold logistic regression: balanced accuracy (and AUC if binary)."""
    classes = np.unique(y)
    folds = min(folds, len(np.unique(groups)))
    pred = np.empty(len(y), dtype=y.dtype)
    proba = np.zeros((len(y), len(classes)))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0)
    per_fold = []
    for train, test in cv.split(x, y, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
        model.fit(x[train], y[train])
        pred[test] = model.predict(x[test])
        cols = np.searchsorted(classes, model.classes_)
        proba[np.ix_(test, cols)] = model.predict_proba(x[test])
        # a fold's own score (the classes its slides have): the spread the pooled one hides
        per_fold.append(float(np.mean([(pred[test][y[test] == c] == c).mean()
                                       for c in np.unique(y[test])])))  # fmt: skip
    result = {
        "n": int(len(y)),
        "classes": {str(c): int((y == c).sum()) for c in classes},
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "fold_balanced_accuracy": per_fold,
        "chance": float(1.0 / len(classes)),
    }
    if len(classes) == 2:
        result["auc"] = float(roc_auc_score(y == classes[1], proba[:, 1]))
    return result


def _shown(result: dict) -> str:
    folds = result["fold_balanced_accuracy"]
    return f"{result['balanced_accuracy']:.3f} ({min(folds):.2f}-{max(folds):.2f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-slides", type=int, default=18)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--views-per-region", type=int, default=5)
    parser.add_argument("--slides-dir", type=Path, default=None, help="reuse/keep slides here")
    parser.add_argument("--out", type=Path, default=ROOT / "results/benchmarks/demo_probe.json")
    parser.add_argument("--views", nargs="+", default=[*VIEWS, "10x_blur4"], help="views to probe")
    parser.add_argument("--save-features", type=Path, default=None, help="also write an .npz")
    args = parser.parse_args(argv)
    bench_cli.output_file(args.out)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        slides_dir = args.slides_dir or Path(tmp)
        t0 = time.perf_counter()
        sheet = slides_dir / "slides.tsv"
        if not sheet.exists():
            make_demo_dataset(slides_dir, args.n_slides, args.seed, args.scale)
        t_synth = time.perf_counter() - t0
        rows = read_sheet(sheet).to_dict("records")
        regions = read_regions(slides_dir / "regions.tsv")
        sizes = [Path(r["path"]).stat().st_size for r in rows]

        rng = np.random.default_rng(args.seed)
        patches: dict[str, list[np.ndarray]] = {}
        meta = []
        for row in tqdm(rows, desc="read patches", unit="slide"):
            slide = open_slide(row["path"])
            for x, y, kind, abn in sample_points(
                slide, regions[row["slide_id"]], args.views_per_region, rng
            ):
                for name, img in read_views(slide, x, y).items():
                    patches.setdefault(name, []).append(img)
                meta.append((row["slide_id"], row["label"], kind, abn))
            slide.close()

        encoder, info = build_encoder("random", seed=0)
        feats = {}
        t1 = time.perf_counter()
        for name in tqdm(args.views, desc="encode views", unit="view"):
            imgs = patches[name]
            feats[name] = encode_patches(encoder, np.stack(imgs), batch_size=32)
        t_encode = time.perf_counter() - t1
        n_encoded = sum(len(patches[v]) for v in args.views)

    groups = np.array([m[0] for m in meta])
    if args.save_features:
        np.savez(args.save_features, meta=np.array(meta), **feats)
    kind = np.array([m[2] for m in meta])
    abn = np.array([m[3] for m in meta])
    in_region = kind != "stroma"
    lesion = kind == "lesion"
    is_abnormal = np.where(abn[lesion] == "none", "normal", "abnormal")
    results = {}
    for name, f in feats.items():
        results[name] = {
            "lesion_abnormal_vs_normal": probe(f[lesion], is_abnormal, groups[lesion]),
            "lesion_class": probe(f[lesion], abn[lesion], groups[lesion]),
            "where_cue": probe(f[in_region], kind[in_region], groups[in_region]),
            "architecture_cue": probe(f, np.where(in_region, "gland", "stroma"), groups),
        }
    # Low-magnification colour check: mean RGB of abnormal vs normal lesions.
    lesion = kind == "lesion"
    abnormal = lesion & (abn != "none")
    colour = {
        name: {
            k: np.stack(patches[name])[m].reshape(-1, 3).mean(0).round(2).tolist()
            for k, m in (("abnormal_lesion", abnormal), ("normal_lesion", lesion & ~abnormal))
        }
        for name in ("2.5x", "10x")
        if name in patches
    }
    report = {
        "what": "linear probes (grouped 5-fold logistic regression) on random-ResNet-50 "
        "layer3 features of demo patches per view; chance-level at 2.5x, high at 10x wanted",
        "n_slides": args.n_slides,
        "seed": args.seed,
        "scale": args.scale,
        "encoder": info["encoder"],
        "weights": info["weights_note"],
        "n_points": len(meta),
        "results": results,
        "mean_rgb_abnormal_vs_normal_lesion": colour,
        "slide_file_mb_mean": float(np.mean(sizes) / 2**20),
        "synth_seconds_per_slide": t_synth / max(1, len(rows)),
        "encode_patches_per_second": n_encoded / t_encode,
        "host": platform.node(),
        "torch_threads": torch.get_num_threads(),
    }
    bench_cli.write_text(args.out, json.dumps(report, indent=2) + "\n")
    print("balanced accuracy, pooled over the folds (range over the 5 folds)")
    for name, r in results.items():
        s, a, w = r["lesion_abnormal_vs_normal"], r["lesion_class"], r["where_cue"]
        print(
            f"{name:10s} lesion abnormal/normal {_shown(s)} | 3-class {_shown(a)} | "
            f"lesion/gland {_shown(w)} | gland/stroma {_shown(r['architecture_cue'])}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

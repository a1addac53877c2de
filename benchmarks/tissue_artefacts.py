"""Tissue detection on slide artefacts: patches kept on pen ink, a coverslip edge and a bubble.

Real slides carry pen marks (a pathologist's blue, green, black or red outlines), air bubbles
and coverslip edges. This copies real H&E slides onto a wider glass canvas, draws those
artefacts in at level 0 (where, is known exactly), writes both the clean and the marked copy as
pyramidal TIFFs, then runs ``zoommil tissue`` and ``zoommil tile --tissue-mask`` under each
setting and counts the kept patches on tissue, on each artefact and on bare glass.

    python benchmarks/tissue_artefacts.py                 # both slides, every setting (~3 min)
    python benchmarks/tissue_artefacts.py --keep          # keep slides, masks and overlays

Writes results/benchmarks/tissue_artefacts.json and .md (and, with --keep, the slides, masks
and their overlays under results/benchmarks/tissue_artefacts/).

The last setting, ``ink-filter (prototype)``, is not a zoommil option: it removes blue/green
and near-black thumbnail pixels from the default mask before tiling, to measure what such a
step in the detector would gain and cost. Ground truth: the drawn strokes (their alpha > 0.5)
and a reference tissue map of the clean copy at 4 um/px (not glass: saturation >= 20 or
grey <= 205). A patch "has" tissue or an artefact when it covers >= 5% of the patch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_cli
import cv2
import h5py
import numpy as np
import openslide

from zoommil.synth.pyramid import write_pyramidal_tiff
from zoommil.wsi.pixels import read_thumbnail_at_mpp

REPO = Path(__file__).resolve().parents[1]
SLIDES = next(
    (p for p in (REPO / "shared/data/slides", REPO.parent / "shared/data/slides") if p.is_dir()),
    REPO.parent / "shared/data/slides",
)
OUT = REPO / "results" / "benchmarks"
MAGS = (5.0, 10.0)
HAS = 0.05  # a patch has tissue / an artefact when it covers at least this fraction
REF_MPP = 4.0  # reference tissue map resolution (um/px)

#: Each artefact's transmittance (the fraction of light of R, G, B it lets through where its
#: density is 1): marker inks as they look on glass in bright field, a dark coverslip edge, a
#: grey bubble rim. Drawn over tissue they multiply its colour, as an absorbing layer does.
TRANSMITTANCE = {
    "blue_ink": (0.22, 0.38, 0.80),
    "green_ink": (0.20, 0.55, 0.38),
    "black_ink": (0.16, 0.16, 0.18),
    "red_ink": (0.85, 0.18, 0.22),
    "coverslip_edge": (0.30, 0.30, 0.32),
    "bubble": (0.55, 0.55, 0.57),
}
INKS = ("blue_ink", "green_ink", "black_ink", "red_ink")
ARTEFACTS = (*INKS, "coverslip_edge", "bubble")


@dataclasses.dataclass(frozen=True)
class Stroke:
    """One artefact: a polyline (canvas fractions, x right, y down) of ``width_um``, or for a
    bubble a circle (``points`` its centre, ``width_um`` its diameter)."""

    kind: str
    points: tuple[tuple[float, float], ...]
    width_um: float


@dataclasses.dataclass(frozen=True)
class SlideSpec:
    """A real slide, the mpp its copy is written at, the glass margin added and its artefacts."""

    name: str
    source: str
    mpp: float
    margin_um: float
    strokes: tuple[Stroke, ...]


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 40):
    angles = np.radians(np.linspace(a0, a1, n))
    return tuple((cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles)


#: Pens 400 um wide (a fine marker), the coverslip edge line 40 um, the bubble 700-900 um.
SPECS = (
    SlideSpec(
        "cmu_small",
        "CMU-1-Small-Region.svs",
        0.499,
        1000.0,
        (
            # a pathologist's outline: round the tissue's right side, over glass and tissue
            Stroke("blue_ink", _arc(0.50, 0.52, 0.36, 0.36, -80, 95), 400),
            Stroke("green_ink", ((0.08, 0.10), (0.20, 0.16), (0.14, 0.26)), 400),  # on glass
            Stroke("black_ink", ((0.30, 0.62), (0.62, 0.58)), 400),  # across the tissue
            Stroke("red_ink", ((0.10, 0.90), (0.45, 0.69)), 400),  # glass into tissue
            Stroke("coverslip_edge", ((0.955, 0.0), (0.965, 1.0)), 40),
            Stroke("bubble", ((0.30, 0.40),), 700),
        ),
    ),
    SlideSpec(
        "tcga_frozen",
        "TCGA-CR-7395-01A-01-TS1.svs",
        1.0,  # the file has no mpp: 1.0 um/px assumed (4.4 x 3.6 mm of tissue)
        1000.0,
        (
            Stroke("blue_ink", _arc(0.48, 0.50, 0.30, 0.42, 150, 330), 400),
            Stroke("green_ink", ((0.03, 0.06), (0.12, 0.04), (0.10, 0.12)), 400),
            Stroke("black_ink", ((0.55, 0.55), (0.80, 0.62)), 400),
            Stroke("red_ink", ((0.70, 0.93), (0.86, 0.80)), 400),
            Stroke("coverslip_edge", ((0.0, 0.965), (1.0, 0.955)), 40),
            Stroke("bubble", ((0.60, 0.25),), 900),
        ),
    ),
)

#: (name, method, detector params, tissue threshold, post-filter): the defaults, the paper's
#: presets and every existing knob that could plausibly drop ink.
SETTINGS: tuple[tuple[str, str, dict, float, str | None], ...] = (
    ("gaussian (default)", "gaussian", {}, 0.1, None),
    ("gaussian kernel 100 (BRIGHT/C16)", "gaussian", {"kernel_size": 100}, 0.1, None),
    ("gaussian min_saturation 40", "gaussian", {"min_saturation": 40}, 0.1, None),
    ("gaussian background_gray 200", "gaussian", {"background_gray": 200}, 0.1, None),
    ("gaussian threshold 0.5 (CRC)", "gaussian", {"sigma": 10, "kernel_size": 7}, 0.5, None),
    ("otsu", "otsu", {}, 0.1, None),
    ("otsu min_saturation 40", "otsu", {"min_saturation": 40}, 0.1, None),
    ("otsu min_saturation 80", "otsu", {"min_saturation": 80}, 0.1, None),
    ("otsu min_area 1 mm^2", "otsu", {"min_area_um2": 1e6}, 0.1, None),
    ("otsu threshold 0.5", "otsu", {}, 0.5, None),
    ("gaussian + ink-filter (prototype)", "gaussian", {}, 0.1, "ink"),
    ("otsu + ink-filter (prototype)", "otsu", {}, 0.1, "ink"),
)


# --------------------------------------------------------------------------- drawing


def _glass(image: np.ndarray) -> np.ndarray:
    """The slide's glass colour: the median of its brightest low-saturation pixels."""
    small = cv2.resize(image, (image.shape[1] // 8, image.shape[0] // 8), cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    glass = (hsv[..., 1] < 20) & (hsv[..., 2] > 200)
    return np.median(small[glass], axis=0) if glass.any() else np.array([242, 242, 242])


def load_canvas(spec: SlideSpec) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The real slide's level 0 centred on glass ``margin_um`` wide: (canvas, crop box)."""
    with openslide.OpenSlide(str(SLIDES / spec.source)) as slide:
        w, h = slide.dimensions
        rgba = np.asarray(slide.read_region((0, 0), 0, (w, h)))
    image = rgba[..., :3].copy()
    image[rgba[..., 3] == 0] = 255
    pad = round(spec.margin_um / spec.mpp)
    rng = np.random.default_rng(0)
    canvas = np.empty((h + 2 * pad, w + 2 * pad, 3), dtype=np.uint8)
    noise = rng.normal(0, 1.5, canvas.shape[:2])[..., None]
    canvas[...] = np.clip(_glass(image)[None, None] + noise, 0, 255).astype(np.uint8)
    canvas[pad : pad + h, pad : pad + w] = image
    return canvas, (pad, pad, w, h)


def draw_artefacts(canvas: np.ndarray, spec: SlideSpec) -> np.ndarray:
    """Draw the spec's artefacts into ``canvas`` (in place); returns a uint8 map with bit k
    set where artefact ``ARTEFACTS[k]`` has density > 0.5 (the ground truth)."""
    height, width = canvas.shape[:2]
    truth = np.zeros((height, width), dtype=np.uint8)
    rng = np.random.default_rng(1)
    for stroke in spec.strokes:
        px = np.array([(x * width, y * height) for x, y in stroke.points])
        size = stroke.width_um / spec.mpp
        soft = 8.0 / spec.mpp  # an 8 um soft edge
        reach = int(size / 2 + 4 * soft + 2)
        x0, y0 = (np.floor(px.min(axis=0)) - reach).astype(int).clip(0)
        x1 = int(min(width, np.ceil(px[:, 0].max()) + reach))
        y1 = int(min(height, np.ceil(px[:, 1].max()) + reach))
        alpha = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        local = np.round(px - (x0, y0)).astype(np.int32)
        if stroke.kind == "bubble":
            centre, radius = tuple(local[0]), int(size / 2)
            cv2.circle(alpha, centre, radius, 90, -1, cv2.LINE_AA)  # faint grey body
            cv2.circle(alpha, centre, radius, 255, max(1, int(30 / spec.mpp)), cv2.LINE_AA)
        else:
            cv2.polylines(alpha, [local], False, 255, max(1, int(size)), cv2.LINE_AA)
        density = cv2.GaussianBlur(alpha.astype(np.float32) / 255, (0, 0), soft)
        if stroke.kind in INKS:  # marker ink is laid on unevenly
            streaks = cv2.GaussianBlur(
                rng.normal(0, 1, density.shape).astype(np.float32), (0, 0), 40 / spec.mpp
            )
            density *= np.clip(0.9 + 3.0 * streaks / (streaks.std() + 1e-6) * 0.03, 0.75, 1.0)
        trans = np.asarray(TRANSMITTANCE[stroke.kind], dtype=np.float32)
        window = canvas[y0:y1, x0:x1].astype(np.float32)
        window *= 1.0 - density[..., None] * (1.0 - trans)
        canvas[y0:y1, x0:x1] = np.clip(np.rint(window), 0, 255).astype(np.uint8)
        mark = density > 0.5 if stroke.kind != "bubble" else _disc(alpha.shape, centre, radius)
        truth[y0:y1, x0:x1] |= mark.astype(np.uint8) << ARTEFACTS.index(stroke.kind)
    return truth


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    disc = np.zeros(shape, dtype=np.uint8)
    cv2.circle(disc, centre, radius, 1, -1)
    return disc.astype(bool)


def reference_tissue(clean: np.ndarray, mpp: float) -> np.ndarray:
    """Tissue of the clean copy at `REF_MPP`: not glass (saturation >= 20 or grey <= 205)."""
    factor = REF_MPP / mpp
    size = (round(clean.shape[1] / factor), round(clean.shape[0] / factor))
    small = cv2.resize(clean, size, interpolation=cv2.INTER_AREA)
    sat = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)[..., 1]
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    tissue = ((sat >= 20) | (grey <= 205)).astype(np.uint8)
    return cv2.morphologyEx(tissue, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8)).astype(bool)


# --------------------------------------------------------------------------- the prototype


def ink_pixels(thumb: np.ndarray) -> np.ndarray:
    """Prototype pen filter on the 8 um/px thumbnail: green-to-blue hues (70-250 degrees)
    with saturation >= 50, which H&E's pink-to-purple (260-20 degrees) hardly takes, or
    dark and grey (value < 90, saturation < 90: black ink, a coverslip edge), which H&E's
    dark regions are not (they are saturated purple); grown by one pixel for the strokes'
    soft edges. Red ink is left: its hue is eosin's."""
    hsv = cv2.cvtColor(np.ascontiguousarray(thumb), cv2.COLOR_RGB2HSV)
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    ink = ((hue >= 35) & (hue <= 125) & (sat >= 50)) | ((val < 90) & (sat < 90))
    return cv2.dilate(ink.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def ink_filtered_mask(slide: Path, mpp: float, method: str, params: dict) -> np.ndarray:
    """What a pen filter in the detector would give: `ink_pixels` whitened in the thumbnail
    before detection (so ink neither counts as tissue nor moves the Otsu thresholds) and
    cleared from the mask after it (the Gaussian detector's dilation grows back over them);
    as the 0/255 image ``tile --tissue-mask`` takes."""
    from zoommil.wsi.tissue import MASK_MPP, detect_tissue

    eff_mpp = max(MASK_MPP, mpp)
    with openslide.OpenSlide(str(slide)) as handle:
        thumb = read_thumbnail_at_mpp(handle, mpp, eff_mpp)
    ink = ink_pixels(thumb)
    thumb[ink] = 255
    mask = detect_tissue(thumb, method, mask_mpp=eff_mpp, **params) & ~ink
    return np.where(mask, 255, 0).astype(np.uint8)


# --------------------------------------------------------------------------- measuring


def zoommil(*args: str) -> None:
    """Run the zoommil CLI (what a user runs), failing loudly."""
    cmd = [sys.executable, "-m", "zoommil", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")


def patch_table(
    coords: Path, truth: np.ndarray | None, tissue_ref: np.ndarray, mpp: float
) -> dict[str, dict]:
    """Per magnification: kept patches by class, and each artefact's kept patches."""
    out: dict = {}
    with h5py.File(coords, "r") as f:
        out["no_tissue_fallback"] = bool(f.attrs["no_tissue_applied"])
        side = dict(zip(f.attrs["mags"].tolist(), f.attrs["side0"].tolist(), strict=True))
        for mag, s in side.items():
            xy = f[f"{float(mag)}x_xy"][:]
            out[f"{mag:g}x"] = _classify(xy, int(s), truth, tissue_ref, mpp)
    return out


def _classify(
    xy: np.ndarray, side: int, truth: np.ndarray | None, ref: np.ndarray, mpp: float
) -> dict:
    scale = mpp / REF_MPP
    counts = dict.fromkeys(("kept", "tissue", "tissue_and_ink", "ink_only", "other_only"), 0)
    counts["glass"] = 0
    per = {name: {"kept": 0, "without_tissue": 0} for name in ARTEFACTS}
    for x, y in xy:
        box = ref[
            int(y * scale) : int((y + side) * scale), int(x * scale) : int((x + side) * scale)
        ]
        tissue = box.size > 0 and box.mean() >= HAS
        hits = set()
        if truth is not None:
            cell = truth[y : y + side, x : x + side]
            area = side * side  # beyond the slide's edge counts as neither
            for k, name in enumerate(ARTEFACTS):
                if np.count_nonzero(cell & (1 << k)) / area >= HAS:
                    hits.add(name)
                    per[name]["kept"] += 1
                    per[name]["without_tissue"] += int(not tissue)
        inked = bool(hits & set(INKS))
        counts["kept"] += 1
        if tissue:
            counts["tissue_and_ink" if inked else "tissue"] += 1
        elif inked:
            counts["ink_only"] += 1
        elif hits:
            counts["other_only"] += 1
        else:
            counts["glass"] += 1
    counts["artefacts"] = per
    return counts


def lattice_tissue(shape: tuple[int, int], side: int, ref: np.ndarray, mpp: float) -> int:
    """Cells of the lattice (side ``side`` level-0 px, anchored at 0) that have tissue."""
    scale = mpp / REF_MPP
    n = 0
    for y in range(0, shape[0], side):
        for x in range(0, shape[1], side):
            box = ref[
                int(y * scale) : int((y + side) * scale), int(x * scale) : int((x + side) * scale)
            ]
            n += int(box.size > 0 and box.mean() >= HAS)
    return n


def run_setting(slide: Path, work: Path, mpp: float, setting: tuple) -> tuple[Path, float]:
    """``zoommil tissue`` then ``zoommil tile`` for one setting: (coords file, seconds)."""
    name, method, params, threshold, post = setting
    tag = f"{slide.stem}.{SETTINGS.index(setting)}"
    mask = work / f"{tag}.png"
    tic = time.perf_counter()
    extra = [a for k, v in params.items() for a in ("--param", f"{k}={v:g}")]
    zoommil("tissue", str(slide), "--out", str(mask), "--method", method, *extra)
    if post == "ink":
        mask = work / f"{tag}.ink.png"
        cv2.imwrite(str(mask), ink_filtered_mask(slide, mpp, method, params))
    coords = work / f"{tag}.h5"
    mags = [f"{m:g}" for m in MAGS]
    zoommil("tile", str(slide), "--mags", *mags, "--tissue-mask", str(mask), "--out", str(coords),
            "--tissue-threshold", f"{threshold:g}", "--no-tissue", "all")  # fmt: skip
    return coords, time.perf_counter() - tic


def measure(spec: SlideSpec, work: Path) -> dict:
    canvas, crop = load_canvas(spec)
    ref = reference_tissue(canvas, spec.mpp)
    clean_path, marked_path = work / f"{spec.name}.clean.tiff", work / f"{spec.name}.pen.tiff"
    write_pyramidal_tiff(clean_path, canvas, spec.mpp)
    truth = draw_artefacts(canvas, spec)
    write_pyramidal_tiff(marked_path, canvas, spec.mpp)
    cv2.imwrite(str(work / f"{spec.name}.pen.thumb.png"), _thumb(canvas))
    height, width = canvas.shape[:2]
    side_hi = round(256 * (10 / MAGS[-1]) / spec.mpp)
    result: dict = {
        "source": spec.source,
        "mpp": spec.mpp,
        "level0": [width, height],
        "crop_box": list(crop),
        "strokes": [dataclasses.asdict(s) for s in spec.strokes],
        "artefact_area_mm2": {
            name: float(np.count_nonzero(truth & (1 << k)) * spec.mpp**2 / 1e6)
            for k, name in enumerate(ARTEFACTS)
        },
        "tissue_cells": {
            f"{m:g}x": lattice_tissue((height, width), side_hi * 2**i, ref, spec.mpp)
            for i, m in enumerate(reversed(MAGS))
        },
        "settings": {},
    }
    del canvas
    for setting in SETTINGS:
        row = {}
        for label, path, gt in (("clean", clean_path, None), ("pen", marked_path, truth)):
            coords, seconds = run_setting(path, work, spec.mpp, setting)
            row[label] = patch_table(coords, gt, ref, spec.mpp)
            row[label]["seconds"] = round(seconds, 2)
        result["settings"][setting[0]] = row
        hi = row["pen"][f"{MAGS[-1]:g}x"]
        print(f"{spec.name}: {setting[0]}: {MAGS[-1]:g}x kept {hi['kept']}, ink only "
              f"{hi['ink_only']}, tissue+ink {hi['tissue_and_ink']}", flush=True)  # fmt: skip
    return result


def _thumb(canvas: np.ndarray) -> np.ndarray:
    scale = 800 / max(canvas.shape[:2])
    small = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2BGR)


# --------------------------------------------------------------------------- report


def markdown(results: dict) -> str:
    hi = f"{MAGS[-1]:g}x"
    lines = [
        "# Tissue detection on slide artefacts",
        "",
        f"`python benchmarks/tissue_artefacts.py`. Kept {hi} patches (256 px at {hi}) of real "
        "slides copied onto glass with pen strokes (blue, green, black, red; 400 um wide), a "
        "coverslip edge line and a bubble drawn in. *tissue*: the patch has >= 5% tissue "
        "(reference map of the clean copy) and no ink; *tissue+ink*: both; *ink only*: ink, "
        "no tissue (a pure false positive); *edge/bubble*: only those; *glass*: nothing. "
        "*clean*: the same setting on the copy without artefacts (kept / with tissue); "
        "*all (none found)*: the detector found no tissue and `--no-tissue all` kept every "
        "patch.",
        "",
    ]
    for name, res in results["slides"].items():
        cells = res["tissue_cells"][hi]
        lines += [
            f"## {name} ({res['source']}, {res['mpp']} um/px, {res['level0'][0]} x "
            f"{res['level0'][1]} px; {cells} lattice cells at {hi} have tissue)",
            "",
            "| setting | clean | kept | tissue | tissue+ink | ink only | "
            "edge/bubble | glass | blue | green | black | red | edge | bubble |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for setting, row in res["settings"].items():
            clean, pen = row["clean"][hi], row["pen"][hi]
            none = " all (none found)"
            clean_cell = f"{clean['kept']} / {clean['tissue']}" + (
                none if row["clean"]["no_tissue_fallback"] else ""
            )
            kept = f"{pen['kept']}" + (none if row["pen"]["no_tissue_fallback"] else "")
            art = pen["artefacts"]
            per = " | ".join(f"{art[a]['kept']} ({art[a]['without_tissue']})" for a in ARTEFACTS)
            lines.append(
                f"| {setting} | {clean_cell} | {kept} | {pen['tissue']} | "
                f"{pen['tissue_and_ink']} | {pen['ink_only']} | {pen['other_only']} | "
                f"{pen['glass']} | {per} |"
            )
        lines += [
            "",
            "Per artefact: kept patches that cover it (in brackets: of them, without tissue).",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep slides, masks, overlays")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not SLIDES.is_dir():
        bench_cli.fail(f"{SLIDES}: real slides not found")
    bench_cli.output_folder(args.out)
    work = Path(tempfile.mkdtemp(prefix="tissue_artefacts."))
    tic = time.perf_counter()
    try:
        slides = {spec.name: measure(spec, work) for spec in SPECS}
        if args.keep:
            keep = args.out / "tissue_artefacts"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(work, keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "mags": list(MAGS),
        "has_fraction": HAS,
        "settings": [
            {"name": n, "method": m, "params": p, "threshold": t, "post": q}
            for n, m, p, t, q in SETTINGS
        ],
        "slides": slides,
        "seconds": round(time.perf_counter() - tic, 1),
    }
    bench_cli.write_text(args.out / "tissue_artefacts.json", json.dumps(results, indent=2) + "\n")
    bench_cli.write_text(args.out / "tissue_artefacts.md", markdown(results) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

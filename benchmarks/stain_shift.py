"""Stain and scanner colour shifts: do they change which patches we tile?

Slides from another lab or scanner differ in stain intensity and colour balance, and tissue
detection decides which patches exist at all: a detector that drops pale tissue gives every
method downstream a different slide. This perturbs the pixels the detector reads and compares
the tissue mask and the patch lattice with the unperturbed slide's, through the library's own
`zoommil.wsi.tissue.detect_tissue` and `zoommil.wsi.lattice.build_lattice` (the calls of
`zoommil tissue` and `zoommil tile`), under each workflow recipe.

    nice python benchmarks/stain_shift.py          # 2 real slides, 3 recipes, 10 seeds (~2 min)
    nice python benchmarks/stain_shift.py --quick  # CMU-1-Small-Region, demo recipe, 2 seeds
    python benchmarks/stain_shift.py --source my.svs --source-mpp 0.25   # add slides

Writes results/benchmarks/stain_shift.json and .md.

Perturbations (each at a few strengths; strength 0 is the identity):

- ``eosin`` / ``hematoxylin``: that stain's amount times 1 - s (s < 0: stronger), by colour
  deconvolution into haematoxylin, eosin and DAB optical densities with Ruifrok and Johnston's
  stain vectors ("Quantification of histochemical staining by color deconvolution", Anal.
  Quant. Cytol. Histol. 2001; the matrix scikit-image's ``rgb2hed`` uses, computed here with
  NumPy, as scikit-image is no dependency of zoommil). A weaker stain is the lab shift that can
  drop tissue.
- ``hed_jitter``: the HED stain augmentation of Tellez et al. ("Whole-slide mitosis detection in
  H&E breast histology using PHH3 as a reference to train distilled stain-invariant
  convolutional networks", IEEE TMI 2018; "Quantifying the effects of data augmentation and
  stain color normalization in convolutional neural networks for computational pathology",
  Medical Image Analysis 2019): each stain's optical density ``c * alpha + beta``, alpha drawn
  from U(1 - s, 1 + s), beta from U(-s, s) (here in natural-log optical density units), seeded;
  s = 0.05 and 0.2 by number as their HED-light and HED-strong. As in the augmentation, beta
  also colours the glass.
- ``brightness``: RGB times 1 + s. ``gamma``: 255 (I / 255) ** (2 ** s) (s > 0: darker).
- ``tint``: a white-balance error (scanner): R, G, B times exp(s * u), u a seeded unit vector
  orthogonal to grey, so the glass takes a colour.
- ``jpeg``: recompressed at quality q (OpenCV, 4:2:0), the strength listed as q.

Where: by default (``--at level``) on the pyramid level the detector reads, before it is
area-resized to the 8 um/px thumbnail (as a scanner or lab shift acts on the whole image;
JPEG's 8x8 blocks are then level pixels); ``--at thumbnail`` perturbs the thumbnail itself,
a harsher JPEG. The unperturbed thumbnail and mask are checked against
`zoommil.wsi.pixels.read_thumbnail_at_mpp` and `tissue_mask_from_slide` in every run.

Measured per slide, recipe, perturbation, strength and seed: the tissue mask's Dice with the
unperturbed one and its area ratio; per magnification of the recipe the Jaccard of the patch
coordinate sets and the patches gained and lost (only the lowest magnification is filtered,
so every magnification's Jaccard is the lowest one's). A slide whose perturbed thumbnail
`check_brightfield` refuses, or that the no-tissue policy excludes, keeps no patch.
Summaries: median and min over slides and seeds, a percentile-bootstrap 95% interval of the
median where there are at least `MIN_BOOTSTRAP` samples (seeds on the same slide are not
independent: read it as approximate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_cli
import cv2
import numpy as np
import yaml

from zoommil.errors import SlideCheckError, ZoomMILError
from zoommil.recipe import PreprocessingRecipe
from zoommil.wsi.lattice import build_lattice
from zoommil.wsi.pixels import best_level, read_rgb, read_thumbnail_at_mpp
from zoommil.wsi.slide import check_brightfield, open_with_mpp
from zoommil.wsi.tissue import MASK_MPP, detect_tissue, tissue_mask_from_slide

REPO = Path(__file__).resolve().parents[1]
SLIDES = next(
    (p for p in (REPO / "shared/data/slides", REPO.parent / "shared/data/slides") if p.is_dir()),
    REPO.parent / "shared/data/slides",
)
OUT = REPO / "results" / "benchmarks"

#: The real slides run by default, with the mpp assumed where the file has none (the TCGA
#: frozen section: 1.0 um/px, as benchmarks/tissue_artefacts.py). prostate-he-generic.tiff
#: is left out: it is tissue edge to edge (no glass to tell from) and its mpp is unknown.
DEFAULT_SLIDES: tuple[tuple[str, float | None], ...] = (
    ("CMU-1-Small-Region.svs", None),
    ("TCGA-CR-7395-01A-01-TS1.svs", 1.0),
)
QUICK_SLIDES = DEFAULT_SLIDES[:1]

#: Recipes by name: a workflow config (its `preprocess:`), or a config with another detector.
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "demo": ("config/config.yaml", {}),
    "camelyon16": ("config/camelyon16.yaml", {}),
    "demo-otsu": ("config/config.yaml", {"tissue_method": "otsu", "tissue_params": {}}),
}

#: Strengths of each perturbation (0, the identity, is measured once per slide as "none").
STRENGTHS: dict[str, tuple[float, ...]] = {
    "eosin": (-0.3, 0.2, 0.4, 0.6),
    "hematoxylin": (-0.3, 0.2, 0.4, 0.6),
    "hed_jitter": (0.05, 0.1, 0.2),
    "brightness": (-0.2, -0.1, 0.1, 0.2),
    "gamma": (-0.5, -0.25, 0.25, 0.5),
    "tint": (0.05, 0.1, 0.2),
    "jpeg": (90.0, 70.0, 50.0, 30.0),
}
QUICK_STRENGTHS: dict[str, tuple[float, ...]] = {
    "eosin": (0.6,),
    "hed_jitter": (0.2,),
    "brightness": (-0.2,),
    "tint": (0.2,),
    "jpeg": (30.0,),
}
#: The recipe settings the JSON records (what decides the mask and the lattice).
RECIPE_KEYS = (
    "mags",
    "patch_size",
    "tissue_method",
    "tissue_params",
    "tissue_threshold",
    "no_tissue",
)
#: Perturbations that draw random numbers (run once per seed); the others run once.
SEEDED = ("hed_jitter", "tint")
#: The identity strength of each perturbation (JPEG's is "not recompressed").
IDENTITY = {"jpeg": 100.0}
MIN_BOOTSTRAP = 8
BOOTSTRAP_DRAWS = 2000
#: A perturbation "changes the tissue" at a strength whose median Dice falls below this.
DICE_BREAK = 0.9
#: Level pixels above which ``--at level`` falls back to the thumbnail (memory, time).
MAX_LEVEL_PIXELS = 64_000_000

# --------------------------------------------------------------------------- colour

#: Ruifrok and Johnston's stain optical-density vectors (rows: haematoxylin, eosin, DAB;
#: columns: R, G, B); optical densities are ``stains @ RGB_FROM_HED``.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """Stain amounts (natural-log optical density; H, E, D channels) of RGB uint8 pixels.
    Light transmitted is (I + 1) / 256, so white glass is near 0 and black is finite."""
    od = -np.log((rgb.astype(np.float64) + 1.0) / 256.0)
    return od @ HED_FROM_RGB


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_hed`, rounded and clipped to uint8."""
    rgb = 256.0 * np.exp(-(hed @ RGB_FROM_HED)) - 1.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def hed_affine(rgb: np.ndarray, alpha: Sequence[float], beta: Sequence[float]) -> np.ndarray:
    """Each stain channel ``c * alpha + beta`` (H, E, D order)."""
    hed = rgb_to_hed(rgb)
    hed = hed * np.asarray(alpha, dtype=np.float64) + np.asarray(beta, dtype=np.float64)
    return hed_to_rgb(hed)


def _unit_chroma(rng: np.random.Generator) -> np.ndarray:
    """A random unit vector orthogonal to (1, 1, 1): a colour direction with no grey part."""
    v = rng.normal(size=3)
    v -= v.mean()
    return v / np.linalg.norm(v)


def perturb(rgb: np.ndarray, name: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    """``rgb`` (uint8 [H, W, 3]) under perturbation ``name`` at ``strength``; the identity
    strength (0, or 100 for JPEG) returns an unchanged copy. ``rng`` serves the seeded ones
    and draws the same numbers at every strength (one seed: one direction, scaled)."""
    if name not in STRENGTHS:
        raise ValueError(f"unknown perturbation {name!r}; known: {', '.join(STRENGTHS)}")
    s = float(strength)
    if s == IDENTITY.get(name, 0.0):
        return rgb.copy()
    if name == "eosin":
        return hed_affine(rgb, (1.0, 1.0 - s, 1.0), (0.0, 0.0, 0.0))
    if name == "hematoxylin":
        return hed_affine(rgb, (1.0 - s, 1.0, 1.0), (0.0, 0.0, 0.0))
    if name == "hed_jitter":
        u = rng.uniform(-1.0, 1.0, size=(2, 3))
        return hed_affine(rgb, 1.0 + s * u[0], s * u[1])
    if name == "brightness":
        return np.clip(np.rint(rgb * (1.0 + s)), 0, 255).astype(np.uint8)
    if name == "gamma":
        table = 255.0 * (np.arange(256) / 255.0) ** (2.0**s)
        return np.clip(np.rint(table), 0, 255).astype(np.uint8)[rgb]
    if name == "tint":
        gains = np.exp(s * _unit_chroma(rng))
        return np.clip(np.rint(rgb * gains), 0, 255).astype(np.uint8)
    # jpeg
    ok, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(s)])
    if not ok:
        raise RuntimeError(f"JPEG encoding at quality {int(s)} failed")
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])


# --------------------------------------------------------------------------- comparing


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def patch_change(ref: np.ndarray, new: np.ndarray) -> dict[str, Any]:
    """Jaccard of two sets of level-0 (x, y) rows, and the rows gained and lost."""
    a = {tuple(r) for r in np.asarray(ref).tolist()}
    b = {tuple(r) for r in np.asarray(new).tolist()}
    union = len(a | b)
    return {
        "n_ref": len(a),
        "n": len(b),
        "jaccard": 1.0 if union == 0 else len(a & b) / union,
        "gained": len(b - a),
        "lost": len(a - b),
    }


# --------------------------------------------------------------------------- slides


@dataclass
class Source:
    """A slide opened once: what the detector reads, and how to shrink it to the thumbnail."""

    name: str
    path: Path
    mpp: float
    mpp_source: str
    dims: tuple[int, int]
    mask_mpp: float
    pixels: np.ndarray  # the level read (``at`` "level") or the thumbnail itself
    thumb_size: tuple[int, int]  # (width, height)
    at: str
    level: int | None
    reference_masks: dict[str, np.ndarray]  # per recipe, from `tissue_mask_from_slide`

    def describe(self) -> dict[str, Any]:
        """The slide as the JSON's ``meta.slides`` lists it."""
        return {
            "name": self.name,
            "path": str(self.path),
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "dimensions": list(self.dims),
            "thumbnail": list(self.thumb_size),
            "at": self.at,
            "level": self.level,
        }

    def thumbnail(self, pixels: np.ndarray) -> np.ndarray:
        """The thumbnail the detector would get from ``pixels`` (the library's area resize)."""
        if pixels.shape[1::-1] == self.thumb_size:
            return pixels
        return cv2.resize(pixels, self.thumb_size, interpolation=cv2.INTER_AREA)


def open_source(
    path: Path, mpp: float | None, at: str, recipes: dict[str, PreprocessingRecipe]
) -> Source:
    """Open ``path``, read what its detector reads, and check it against the library's own
    thumbnail and masks (a mismatch would measure another path than `zoommil tissue`'s)."""
    slide, mpp0, source = open_with_mpp(path, None, mpp)
    try:
        dims = (int(slide.dimensions[0]), int(slide.dimensions[1]))
        mask_mpp = max(MASK_MPP, mpp0)
        thumb = read_thumbnail_at_mpp(slide, mpp0, mask_mpp)
        size = (thumb.shape[1], thumb.shape[0])
        level, pixels = None, thumb
        if at == "level":
            level = best_level(slide, min(dims[0] / size[0], dims[1] / size[1]))
            lw, lh = slide.level_dimensions[level]
            if lw * lh <= MAX_LEVEL_PIXELS:
                pixels = read_rgb(slide, (0, 0), level, (lw, lh))
            else:
                level = None
        refs = {}
        for name, recipe in recipes.items():
            refs[name], _, _ = tissue_mask_from_slide(
                slide, mpp0, recipe.tissue_method, recipe.tissue_params
            )
    finally:
        slide.close()
    src = Source(
        path.stem,
        path,
        mpp0,
        source,
        dims,
        mask_mpp,
        pixels,
        size,
        "level" if level is not None else "thumbnail",
        level,
        refs,
    )
    if not np.array_equal(src.thumbnail(pixels), thumb):
        raise ZoomMILError(f"{path}: the level read and resized differs from the thumbnail")
    for name, recipe in recipes.items():
        mine = detect_tissue(thumb, recipe.tissue_method, mask_mpp, **recipe.tissue_params)
        if not np.array_equal(mine, refs[name]):
            raise ZoomMILError(f"{path}: recipe {name}: mask differs from tissue_mask_from_slide")
    return src


def tiles(src: Source, recipe: PreprocessingRecipe, mask: np.ndarray | None) -> dict[str, Any]:
    """The recipe's lattice from ``mask`` (None: the thumbnail was refused) as
    ``{"excluded": bool, "xy": [per mag]}``; a slide the no-tissue policy excludes has none."""
    if mask is not None:
        try:
            lattice = build_lattice(src.path, src.dims, src.mpp, recipe, mask=mask)
            return {
                "excluded": False,
                "all_kept": lattice.attrs["no_tissue_applied"],
                "xy": lattice.xy,
            }
        except SlideCheckError:
            pass
    empty = np.zeros((0, 2), dtype=np.int64)
    return {"excluded": True, "all_kept": False, "xy": [empty] * len(recipe.mags)}


def measure(
    src: Source,
    recipes: dict[str, PreprocessingRecipe],
    strengths: dict[str, tuple[float, ...]],
    seeds: Sequence[int],
) -> list[dict[str, Any]]:
    """Every (recipe, perturbation, strength, seed) row of one slide, plus "none" rows."""
    reference = {n: tiles(src, r, src.reference_masks[n]) for n, r in recipes.items()}
    jobs: list[tuple[str, float, int | None]] = [("none", 0.0, None)]
    for name, values in strengths.items():
        for seed in seeds if name in SEEDED else [None]:
            jobs += [(name, float(s), seed) for s in values]
    rows = []
    for name, strength, seed in jobs:
        if name == "none":
            thumb = src.thumbnail(src.pixels)
        else:
            rng = np.random.default_rng([seed or 0, list(STRENGTHS).index(name)])
            thumb = src.thumbnail(perturb(src.pixels, name, strength, rng))
        try:
            check_brightfield(thumb, src.path)
            refused = None
        except SlideCheckError as error:
            refused = error.reason
        for rname, recipe in recipes.items():
            ref_mask = src.reference_masks[rname]
            mask = None
            if refused is None:
                mask = detect_tissue(
                    thumb, recipe.tissue_method, src.mask_mpp, **recipe.tissue_params
                )
            got = tiles(src, recipe, mask)
            empty = np.zeros_like(ref_mask)
            ref_px = int(ref_mask.sum())
            new_px = int((empty if mask is None else mask).sum())
            rows.append(
                {
                    "slide": src.name,
                    "recipe": rname,
                    "perturbation": name,
                    "strength": strength,
                    "seed": seed,
                    "refused": refused,
                    "excluded": got["excluded"],
                    "all_kept": got["all_kept"],
                    "dice": dice(ref_mask, empty if mask is None else mask),
                    "area_ratio": new_px / ref_px if ref_px else None,
                    "tissue_px": new_px,
                    "ref_tissue_px": ref_px,
                    "mags": {
                        f"{float(m)}x": patch_change(a, b)
                        for m, a, b in zip(
                            recipe.mags, reference[rname]["xy"], got["xy"], strict=True
                        )
                    },
                }
            )
    return rows


# --------------------------------------------------------------------------- summary


def spread(values: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """n, median, min and max, and a percentile-bootstrap 95% interval of the median when
    there are at least `MIN_BOOTSTRAP` values (else None)."""
    v = np.asarray(values, dtype=float)
    out: dict[str, Any] = {
        "n": int(v.size),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "ci95": None,
    }
    if v.size >= MIN_BOOTSTRAP:
        rng = np.random.default_rng(seed)
        medians = np.median(rng.choice(v, size=(BOOTSTRAP_DRAWS, v.size)), axis=1)
        out["ci95"] = [float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))]
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per recipe, perturbation and strength: Dice, area ratio, the lowest magnification's
    Jaccard, lost and gained fractions of its patches (`spread` over slides and seeds), and
    how many samples were refused or excluded."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["perturbation"], r["strength"]), []).append(r)
    out: dict[str, Any] = {}
    for (recipe, name, strength), rs in groups.items():
        low = [next(iter(r["mags"].values())) for r in rs]
        ratios = [r["area_ratio"] for r in rs if r["area_ratio"] is not None]
        out.setdefault(recipe, {}).setdefault(name, {})[f"{strength:g}"] = {
            "dice": spread([r["dice"] for r in rs]),
            "area_ratio": spread(ratios) if ratios else None,
            "jaccard": spread([m["jaccard"] for m in low]),
            "lost_fraction": spread([m["lost"] / m["n_ref"] if m["n_ref"] else 0.0 for m in low]),
            "gained_fraction": spread(
                [m["gained"] / m["n_ref"] if m["n_ref"] else float(m["gained"] > 0) for m in low]
            ),
            "refused": sum(r["refused"] is not None for r in rs),
            "excluded": sum(r["excluded"] for r in rs),
        }
    return out


def breaking_points(summary: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """Per recipe and perturbation: the mildest strength whose median Dice is below
    `DICE_BREAK` or where a sample was refused or excluded (None: none of those measured)."""
    out: dict[str, dict[str, str | None]] = {}
    for recipe, perts in summary.items():
        for name, by_strength in perts.items():
            if name == "none":
                continue
            broken = [
                s
                for s, row in by_strength.items()
                if row["dice"]["median"] < DICE_BREAK or row["refused"] or row["excluded"]
            ]
            mildest = min(broken, key=lambda s: _severity(name, float(s)), default=None)
            out.setdefault(recipe, {})[name] = mildest
    return out


def _severity(name: str, strength: float) -> float:
    """How far ``strength`` is from the identity (JPEG: lower quality is stronger)."""
    return abs(strength - IDENTITY.get(name, 0.0))


# --------------------------------------------------------------------------- report


def _fmt(s: dict[str, Any] | None, digits: int = 3) -> str:
    if s is None:
        return "n/a"
    text = f"{s['median']:.{digits}f} (min {s['min']:.{digits}f}"
    if s["ci95"] is not None:
        text += f"; CI {s['ci95'][0]:.{digits}f}-{s['ci95'][1]:.{digits}f}"
    return text + ")"


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    slides = ", ".join(
        f"{s['name']} ({s['mpp']:g} um/px, {s['mpp_source']}; thumbnail "
        f"{s['thumbnail'][0]}x{s['thumbnail'][1]}, perturbed at the "
        f"{s['at']})"
        for s in meta["slides"]
    )
    lines = [
        "# Stain and scanner colour shifts: tissue masks and tiled patches",
        "",
        f"`{meta['command']}` ({meta['seconds']:.0f} s, {meta['machine']}). Slides: {slides}. "
        f"Seeds {meta['seeds']} for the seeded perturbations ({', '.join(SEEDED)}). Each cell: "
        "median (min over slides and seeds; CI: percentile-bootstrap 95% interval of the "
        f"median where n >= {MIN_BOOTSTRAP}, approximate: seeds share a slide). Dice and area "
        "ratio: the tissue mask against the unperturbed one; Jaccard, lost, gained: the "
        "lowest magnification's patch set (every magnification's Jaccard is the same), lost "
        "and gained as fractions of the unperturbed count. refused/excl.: samples whose "
        "thumbnail `check_brightfield` refused or that the no-tissue policy excluded. "
        f"Strengths with a median Dice below {DICE_BREAK} are in bold.",
        "",
    ]
    for recipe, perts in result["summary"].items():
        info = meta["recipes"][recipe]
        lines += [
            f"## {recipe}: {info['tissue_method']} {json.dumps(info['tissue_params'])}, "
            f"threshold {info['tissue_threshold']:g}, mags {info['mags']}",
            "",
            "| perturbation | strength | n | Dice | area ratio | Jaccard | lost | gained "
            "| refused/excl. |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, by_strength in perts.items():
            for strength, row in by_strength.items():
                bold = "**" if row["dice"]["median"] < DICE_BREAK else ""
                lines.append(
                    f"| {name} | {bold}{strength}{bold} | {row['dice']['n']} | "
                    f"{_fmt(row['dice'])} | {_fmt_range(row['area_ratio'])} | "
                    f"{_fmt(row['jaccard'])} | {_fmt_max(row['lost_fraction'])} | "
                    f"{_fmt_max(row['gained_fraction'])} | {row['refused']}/{row['excluded']} |"
                )
        broken = result["breaks"].get(recipe, {})
        text = ", ".join(f"{n} at {s}" for n, s in broken.items() if s is not None)
        # as `breaking_points`: one excluded sample counts, whatever the median (a tint that
        # emptied one mask of 20 has a median Dice of 1.000)
        lines += [
            "",
            f"Changes the tissue (median Dice < {DICE_BREAK}, or a sample refused or excluded): "
            f"{text or 'none'}.",
            "",
        ]
    lines += [
        f"## Samples with Dice < {DICE_BREAK}, refused or excluded",
        "",
        "| slide | recipe | perturbation | strength | seed | Dice | area ratio | patches "
        "(lowest mag) | refused/excluded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w in result["worst"]:
        low = w["lowest_mag"]
        ratio = "n/a" if w["area_ratio"] is None else f"{w['area_ratio']:.2f}"
        lines.append(
            f"| {w['slide']} | {w['recipe']} | {w['perturbation']} | {w['strength']:g} | "
            f"{'' if w['seed'] is None else w['seed']} | {w['dice']:.3f} | {ratio} | "
            f"{low['n_ref']} -> {low['n']} (+{low['gained']} -{low['lost']}) | "
            f"{w['refused'] or ''}{'excluded' if w['excluded'] else ''} |"
        )
    return "\n".join(lines + [""])


def _fmt_max(s: dict[str, Any]) -> str:
    return f"{s['median']:.2f} (max {s['max']:.2f})"


def _fmt_range(s: dict[str, Any] | None) -> str:
    return "n/a" if s is None else f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def worst(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples whose Dice is below `DICE_BREAK` or that kept no patch, worst first:
    which slide, recipe, perturbation, strength and seed, for a person to reproduce."""
    keys = (
        "slide",
        "recipe",
        "perturbation",
        "strength",
        "seed",
        "dice",
        "area_ratio",
        "refused",
        "excluded",
    )
    bad = [r for r in rows if r["dice"] < DICE_BREAK or r["excluded"] or r["refused"]]
    out = []
    for r in sorted(bad, key=lambda r: r["dice"]):
        low = next(iter(r["mags"].values()))
        out.append({**{k: r[k] for k in keys}, "lowest_mag": low})
    return out


# --------------------------------------------------------------------------- command line


def load_recipes(names: Sequence[str]) -> dict[str, PreprocessingRecipe]:
    """The named `RECIPES`, each from its workflow config (`PreprocessingRecipe.from_config`)."""
    out = {}
    for name in names:
        path, changes = RECIPES[name]
        config = yaml.safe_load((REPO / path).read_text(encoding="utf-8"))
        out[name] = PreprocessingRecipe.from_config(config).replace(**changes)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    quick = "CMU-1-Small-Region, demo recipe, 2 seeds, one strength each, on the thumbnail"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument(
        "--source", type=Path, action="append", default=[], help="another slide to run (repeatable)"
    )
    parser.add_argument(
        "--source-mpp", type=float, help="um/px of a --source slide whose file has no usable mpp"
    )
    parser.add_argument(
        "--no-default-slides", action="store_true", help="run only the --source slides"
    )
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument(
        "--at",
        choices=("level", "thumbnail"),
        default="level",
        help="perturb the level the detector reads, or its thumbnail",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args(argv)


def slide_list(args: argparse.Namespace) -> list[tuple[Path, float | None]]:
    """The slides to run, each file checked readable now (a missing one stops the run)."""
    slides: list[tuple[Path, float | None]] = []
    if not args.no_default_slides:
        for name, mpp in QUICK_SLIDES if args.quick else DEFAULT_SLIDES:
            slides.append((bench_cli.input_file(SLIDES / name, "real slide"), mpp))
    slides += [(bench_cli.input_file(p, "--source slide"), args.source_mpp) for p in args.source]
    if not slides:
        bench_cli.fail("no slides: --no-default-slides needs at least one --source")
    return slides


def open_all(
    slides: list[tuple[Path, float | None]], at: str, recipes: dict[str, PreprocessingRecipe]
) -> list[Source]:
    """Every slide opened before the work; one that cannot be read stops the run, naming it."""
    out = []
    for path, mpp in slides:
        try:
            out.append(open_source(path, mpp, at, recipes))
        except ZoomMILError as error:
            reason = getattr(error, "reason", None) or str(error)
            bench_cli.fail(f"{path}: cannot be read as a slide ({reason})")
    return out


def main(argv: list[str] | None = None, progress: Callable[[str], None] = print) -> int:
    args = parse_args(argv)
    if args.quick:
        args.recipes, args.seeds, args.at = ["demo"], args.seeds[:2], "thumbnail"
    strengths = QUICK_STRENGTHS if args.quick else STRENGTHS
    bench_cli.output_folder(args.out)
    started = time.perf_counter()
    recipes = load_recipes(args.recipes)
    sources = open_all(slide_list(args), args.at, recipes)
    rows: list[dict[str, Any]] = []
    for src in sources:
        rows += measure(src, recipes, strengths, args.seeds)
        progress(f"{src.name}: {len(rows)} rows, {time.perf_counter() - started:.0f} s")
    summary = summarise(rows)
    result = {
        "meta": {
            **bench_cli.run_meta("stain_shift.py", argv, args.quick, started),
            "cpu_seconds": round(sum(os.times()[:2]), 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}",
            "seeds": list(args.seeds),
            "at": args.at,
            "dice_break": DICE_BREAK,
            "strengths": {k: list(v) for k, v in strengths.items()},
            "recipes": {n: r.to_attrs(RECIPE_KEYS) for n, r in recipes.items()},
            "slides": [s.describe() for s in sources],
        },
        "summary": summary,
        "breaks": breaking_points(summary),
        "worst": worst(rows),
        "runs": rows,
    }
    bench_cli.write_text(args.out / "stain_shift.json", json.dumps(result, indent=1) + "\n")
    bench_cli.write_text(args.out / "stain_shift.md", markdown(result))
    progress(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

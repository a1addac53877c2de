"""The demo dataset on disk: pyramidal TIFF slides, `slides.tsv` and `regions.tsv`.

Layout of `OUT/`:
    slides/demo_000.tiff ...   pyramidal tiled TIFFs, level 0 at 1.0 um/px (10x)
    slides.tsv                 slide_id, path, label, split
    regions.tsv                ground truth of the gland regions (lesion or distractor)

`path` in slides.tsv is relative to the folder that holds slides.tsv, so the folder can be
moved and the files are byte-identical wherever they are written; `zoommil.io.sheet.read_sheet`
turns it into an absolute path. Absolute paths are kept as they are.
"""

from __future__ import annotations

import csv
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from tqdm import tqdm

from zoommil.errors import ZoomMILError
from zoommil.io.atomic import atomic_path
from zoommil.synth.painting import Region
from zoommil.synth.pyramid import write_pyramidal_tiff
from zoommil.synth.render import DEMO_MPP, DEMO_SIZE, SlideSpec, render_slide

CLASSES = ("normal", "atypia", "carcinoma")
DEMO_N_SLIDES = 60
SHEET_COLUMNS = ("slide_id", "path", "label", "split")
REGION_COLUMNS = ("slide_id", "region_id", "kind", "abnormality", "cx", "cy", "radius")


def split_counts(n: int, class_index: int) -> tuple[int, int, int]:
    """(train, val, test) slides for a class with n slides: about 58/17/25 percent.

    Every class has val and test slides once it has 3; with 2 slides the second one goes to
    test (or val for the middle class, so a 6-slide demo still has a val split).
    """
    if n <= 1:
        return n, 0, 0
    if n == 2:
        return (1, 1, 0) if class_index == 1 else (1, 0, 1)
    test = max(1, round(n * 0.25))
    val = max(1, round(n * 7 / 36))
    return n - val - test, val, test


def plan_slides(n_slides: int, seed: int, scale: float = 1.0) -> list[tuple[SlideSpec, str]]:
    """Specs and splits of the demo: classes in turn (balanced), splits stratified by class."""
    if n_slides < 1:
        raise ZoomMILError(f"--n-slides must be at least 1, got {n_slides}")
    if seed < 0:  # numpy's SeedSequence takes only non-negative entropy
        raise ZoomMILError(f"--seed must be at least 0, got {seed}")
    if not 0.25 <= scale <= 4.0:
        raise ZoomMILError(f"--scale must be between 0.25 and 4, got {scale}")
    width = max(512, int(round(DEMO_SIZE[0] * scale / 64)) * 64)
    height = max(512, int(round(DEMO_SIZE[1] * scale / 64)) * 64)
    specs = [
        SlideSpec(f"demo_{i:03d}", CLASSES[i % len(CLASSES)], seed, i, width, height)
        for i in range(n_slides)
    ]
    split_of: dict[str, str] = {}
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(2**31,)))
    for ci, label in enumerate(CLASSES):
        ids = [s.slide_id for s in specs if s.label == label]
        order = rng.permutation(len(ids))
        n_train, n_val, _ = split_counts(len(ids), ci)
        for rank, j in enumerate(order):
            split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            split_of[ids[j]] = split
    return [(s, split_of[s.slide_id]) for s in specs]


def _write_tsv(path: Path, columns: Sequence[str], rows: list[Sequence]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)


def _write_slide(spec: SlideSpec, path: Path) -> list[Region]:
    """Render one slide into `path`; returns its regions (the ground truth)."""
    slide = render_slide(spec)
    write_pyramidal_tiff(path, slide.rgb, DEMO_MPP)
    return slide.regions


def make_demo_dataset(
    out_dir: str | Path,
    n_slides: int = DEMO_N_SLIDES,
    seed: int = 0,
    scale: float = 1.0,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Write the demo slides and sheets into `out_dir`; returns the path of slides.tsv.

    Deterministic: the same (n_slides, seed, scale) gives byte-identical files, whatever the
    number of `workers` (each slide has its own random streams).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ZoomMILError(f"--out {out_dir} exists and is not a directory")
    if workers < 1:
        raise ZoomMILError(f"--workers must be at least 1, got {workers}")
    plan = plan_slides(n_slides, seed, scale)  # checks the arguments before anything is written
    (out_dir / "slides").mkdir(parents=True, exist_ok=True)
    sheet_rows, region_rows = [], []
    rels = [Path("slides") / f"{spec.slide_id}.tiff" for spec, _ in plan]
    specs, paths = [spec for spec, _ in plan], [out_dir / rel for rel in rels]
    with ExitStack() as stack:
        if workers == 1:
            results = map(_write_slide, specs, paths)
        else:  # spawn: a forked child can inherit a held OpenCV lock (features.extraction)
            context = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=context))
            results = pool.map(_write_slide, specs, paths)
        bar = tqdm(results, total=len(plan), desc="synth slides", unit="slide",
                   disable=not progress)  # fmt: skip
        for (spec, split), rel, regions in zip(plan, rels, bar, strict=True):
            sheet_rows.append((spec.slide_id, rel.as_posix(), spec.label, split))
            for r in regions:
                region_rows.append((spec.slide_id, r.region_id, r.kind, r.abnormality,
                                    f"{r.cx:.1f}", f"{r.cy:.1f}", f"{r.radius:.1f}"))  # fmt: skip
    _write_tsv(out_dir / "regions.tsv", REGION_COLUMNS, region_rows)
    _write_tsv(out_dir / "slides.tsv", SHEET_COLUMNS, sheet_rows)
    return out_dir / "slides.tsv"

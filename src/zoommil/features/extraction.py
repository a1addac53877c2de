"""Slide + coords file -> feature file: one region read per lowest-magnification parent.

Why per parent: the lattice is aligned by construction (a parent at magnification m covers
exactly 2^d x 2^d patches at 2^d m), so reading the parent's level-0 extent once at the highest
magnification's resolution and area-resizing it down in exact 2x steps yields every
magnification's patches with one read per pixel, and a child's pixels are by construction the
matching quadrant of its parent at the finer scale. Reading is done in DataLoader worker
processes (each with its own OpenSlide handle) so that it hides behind the encoder.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openslide
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import zoommil
from zoommil.errors import SlideError, ZoomMILError
from zoommil.features.encoder import FEATURE_DIM, PatchEncoder, build_encoder, resolve_device
from zoommil.io.coords import load_coords
from zoommil.io.featurefile import write_feature_file
from zoommil.recipe import ENCODER_FIELDS, PreprocessingRecipe
from zoommil.recipe import default as recipe_default
from zoommil.wsi import slide as wsi_slide  # module attribute: tests patch its readers
from zoommil.wsi.lattice import Lattice, depths, descendant_offsets

log = logging.getLogger(__name__)

#: Relative mpp difference above which a coords file is taken to belong to another slide or mpp.
MPP_TOLERANCE = 0.01
#: Arrays larger than this go only to datasets (HDF5 attributes are limited to 64 KiB).
_MAX_ATTR_BYTES = 32 * 1024
#: Provenance of the coords file carried into the feature file.
_COPIED_COORDS_ATTRS = (
    "dimensions",
    "tissue_method",
    "tissue_params",
    "tissue_threshold",
    "tissue_mask",
    "mask_mpp",
    "no_tissue_policy",
    "no_tissue_applied",
    "n_parents_total",
    "n_parents_kept",
)


# --------------------------------------------------------------------------- pixels


def derive_patches(
    region: np.ndarray,
    depths: Sequence[int],
    patch_size: int,
    offsets: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Cut one parent's region (read at the highest magnification) into every magnification.

    ``region`` is [P * 2^D, P * 2^D, 3] with D = max(depths). Coarser scales are made by exact
    2x INTER_AREA steps (2x2 block means), so each coarser image's quadrant equals the
    area-resized quadrant of the finer image. Returns, per depth d, uint8 [4^d, P, P, 3] in the
    order of ``offsets[k]`` (grid (row, col) offsets inside the parent; default depth-first).
    """
    top = max(depths)
    side = patch_size * 2**top
    if region.shape[:2] != (side, side):
        raise ValueError(f"region is {region.shape[:2]}, expected {(side, side)}")
    scales = {top: np.ascontiguousarray(region)}
    image = scales[top]
    for d in range(top - 1, min(depths) - 1, -1):
        s = patch_size * 2**d
        image = cv2.resize(image, (s, s), interpolation=cv2.INTER_AREA)
        scales[d] = image
    out = []
    for k, d in enumerate(depths):
        grid = descendant_offsets(d) if offsets is None else np.asarray(offsets[k])
        img = scales[d]
        p = patch_size
        # view as [2^d, P, 2^d, P, 3] blocks, then gather the (row, col) blocks in order
        blocks = img.reshape(2**d, p, 2**d, p, 3).transpose(0, 2, 1, 3, 4)
        out.append(np.ascontiguousarray(blocks[grid[:, 0], grid[:, 1]]))
    return out


def read_parent_patches(
    slide: openslide.OpenSlide,
    x0: int,
    y0: int,
    side0: int,
    depths: Sequence[int],
    patch_size: int,
    offsets: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """One read of a parent's level-0 extent at the finest resolution, then `derive_patches`.

    Shared with ``zoommil predict``, which calls it (or `derive_patches`) on selected regions.
    """
    out_px = patch_size * 2 ** max(depths)
    region = wsi_slide.read_region_at(slide, int(x0), int(y0), int(side0), out_px)
    return derive_patches(region, depths, patch_size, offsets)


class ParentDataset(Dataset):
    """Item i = all patches of parent i, all magnifications stacked lowest first, uint8.

    The OpenSlide handle is opened lazily in whichever process reads (each DataLoader worker
    gets its own; handles are never pickled or shared across a fork). Errors are returned as
    values because DataLoader cannot re-raise `SlideError` from a worker.
    """

    def __init__(self, slide_path: str | Path, plan: Lattice) -> None:
        self.slide_path = str(slide_path)
        self.depths = depths(plan.mags)
        self.patch_size = plan.patch_size
        self.parent_xy = plan.xy[0]
        self.side0 = plan.sides[0]
        # grid offsets of every magnification's rows inside their parent, from the coords file
        self.offsets: list[np.ndarray] = []
        for k, d in enumerate(self.depths):
            rel = plan.xy[k] - np.repeat(plan.xy[0], 4**d, axis=0)
            grid = (rel // plan.sides[k])[:, ::-1]  # (x, y) -> (row, col)
            self.offsets.append(grid.reshape(-1, 4**d, 2) if len(grid) else grid.reshape(0, 1, 2))
        self._slide: openslide.OpenSlide | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.parent_xy)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_slide"] = None
        state["_pid"] = None
        return state

    def _handle(self) -> openslide.OpenSlide:
        if self._slide is None or self._pid != os.getpid():
            self._slide = wsi_slide.open_slide(self.slide_path, test_read=False)
            self._pid = os.getpid()
        return self._slide

    def close(self) -> None:
        """Close this process's handle (OpenSlide errors latch: the next read reopens)."""
        if self._slide is not None and self._pid == os.getpid():
            self._slide.close()
        self._slide = None

    def __getitem__(self, i: int) -> dict[str, Any]:
        x0, y0 = (int(v) for v in self.parent_xy[i])
        offsets = [o[i] for o in self.offsets]
        error = ""
        for _attempt in range(2):
            try:
                patches = read_parent_patches(
                    self._handle(), x0, y0, self.side0, self.depths, self.patch_size, offsets
                )
                return {"index": i, "patches": torch.from_numpy(np.concatenate(patches))}
            except SlideError as exc:
                return {"index": i, "error": exc.reason}
            except openslide.OpenSlideError as exc:
                error = f"cannot read the region at level-0 ({x0}, {y0}): {exc}"
                self.close()
        return {"index": i, "error": error}


def _worker_init(_worker_id: int) -> None:
    """Readers are single-threaded: the cores belong to the encoder."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def iter_parents(
    dataset: ParentDataset, workers: int, prefetch: int = 4, pin_memory: bool = False
) -> Iterator[dict[str, Any]]:
    """Parents in order; with workers > 0 they are read ahead in worker processes."""
    if workers <= 0:
        for i in range(len(dataset)):
            yield dataset[i]
        return
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        worker_init_fn=_worker_init,
        # Not fork: a process that already ran OpenCV/OpenMP thread pools (a long-lived
        # caller, a test session) can hand a forked worker a locked mutex and hang it.
        multiprocessing_context="spawn",
        prefetch_factor=prefetch,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
    yield from loader


# --------------------------------------------------------------------------- extraction


@dataclass
class ExtractResult:
    path: Path
    num_patches: list[int]
    seconds: float
    attrs: dict[str, Any]

    @property
    def patches_per_second(self) -> float:
        return sum(self.num_patches) / self.seconds if self.seconds > 0 else float("nan")


def default_batch_size(device: torch.device) -> int:
    """Small batches are fastest on CPU (cache-bound: bs 4 beats 16 by ~1.3x); large on GPU."""
    return 64 if device.type == "cuda" else 4


def _default_workers(device: torch.device) -> int:
    cpus = os.cpu_count() or 1
    return min(8, max(1, cpus - 1)) if device.type == "cuda" else 1


def encode_plan(
    slide_path: str | Path,
    plan: Lattice,
    encoder: PatchEncoder,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """Features of every patch of the plan, per magnification, rows in the plan's order."""
    plan_depths = depths(plan.mags)
    n_parents = len(plan.xy[0])
    feats = [np.zeros((n_parents * 4**d, FEATURE_DIM), dtype=np.float32) for d in plan_depths]
    if n_parents == 0:
        return feats
    if workers is None:
        workers = _default_workers(encoder.device)
    if batch_size is None:
        batch_size = default_batch_size(encoder.device)
    dataset = ParentDataset(slide_path, plan)
    per_parent = sum(4**d for d in plan_depths)
    # destination (magnification, row) of each stacked patch of parent i: rows i*4^d + j
    layout = [(k, j) for k, d in enumerate(plan_depths) for j in range(4**d)]
    pending: list[torch.Tensor] = []
    targets: list[tuple[int, int]] = []

    def flush(n: int) -> None:
        stack = torch.cat(pending) if len(pending) > 1 else pending[0]
        out = encoder.encode(stack[:n])
        for row, (k, r) in zip(out, targets[:n], strict=True):
            feats[k][r] = row
        rest = stack[n:]
        pending.clear()
        if len(rest):
            pending.append(rest)
        del targets[:n]
        if on_batch is not None:
            on_batch(n)
        bar.update(n)

    total = n_parents * per_parent
    with tqdm(total=total, unit="patch", desc="features", disable=not progress) as bar:
        pin = encoder.device.type == "cuda"
        try:
            for item in iter_parents(dataset, workers, pin_memory=pin):
                if "error" in item:
                    raise SlideError(slide_path, item["error"])
                i = item["index"]
                pending.append(item["patches"])
                targets.extend((k, i * 4 ** plan_depths[k] + j) for k, j in layout)
                while len(targets) >= batch_size:
                    flush(batch_size)
            if targets:
                flush(len(targets))
        finally:
            dataset.close()
    return feats


def check_plan_matches_slide(
    slide: openslide.OpenSlide,
    slide_path: str | Path,
    plan: Lattice,
    mpp_override: float | None = None,
) -> tuple[float, str]:
    """The coords file must describe this slide: same size, same mpp; returns (mpp, source).

    The coords file is the authority on geometry. Its mpp is checked against ``--mpp`` when
    given, else against the slide's metadata when the coords file took its mpp from there (a
    coords mpp that came from an override or a default cannot be checked against metadata).
    """
    dims = plan.attrs.get("dimensions")
    w, h = slide.dimensions
    if dims is not None and [int(d) for d in dims] != [int(w), int(h)]:
        raise SlideError(
            slide_path,
            f"the coords file was made for a {dims[0]}x{dims[1]} slide but this one is {w}x{h}: "
            "it belongs to another slide",
        )
    if len(plan.xy[0]):
        xy = plan.xy[0]
        if (xy < 0).any() or (xy[:, 0] >= w).any() or (xy[:, 1] >= h).any():
            raise SlideError(
                slide_path,
                f"the coords file has patches outside the slide's {w}x{h} level-0 extent: "
                "it belongs to another slide",
            )
    coords_mpp = plan.attrs.get("mpp")
    coords_source = str(plan.attrs.get("mpp_source", "coords file"))
    if coords_mpp is None:
        return wsi_slide.resolve_mpp(slide, slide_path, mpp_override)
    coords_mpp = float(coords_mpp)
    if mpp_override is not None:
        mpp, source = wsi_slide.resolve_mpp(slide, slide_path, mpp_override)
    elif coords_source in ("override", "default"):
        return coords_mpp, coords_source
    else:
        mpp, source = wsi_slide.resolve_mpp(slide, slide_path)
    if abs(mpp - coords_mpp) > MPP_TOLERANCE * coords_mpp:
        raise SlideError(
            slide_path,
            f"the coords file was made for mpp {coords_mpp:.4g} ({coords_source}) but the slide "
            f"has mpp {mpp:.4g} ({source}): wrong coords file, or pass the same --mpp as to tile",
        )
    return coords_mpp, coords_source


def extract_features(
    slide_path: str | Path,
    coords_path: str | Path,
    out_path: str | Path,
    weights: str | Path | None = None,
    seed: int | None = None,
    mpp: float | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> ExtractResult:
    """Encode every patch of a coords file and write the feature file (atomically).

    The feature file records the coords file's tiling recipe plus the encoder part (encoder,
    weights, seed, precision actually used), which training copies into the checkpoint.
    ``weights``, ``seed`` and ``precision`` default to the recipe's defaults.
    """
    weights = recipe_default("weights") if weights is None else weights
    seed = recipe_default("weights_seed") if seed is None else seed
    precision = recipe_default("precision") if precision is None else precision
    if batch_size is not None and batch_size < 1:
        raise ZoomMILError(f"--batch-size must be >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise ZoomMILError(f"--workers must be >= 0, got {workers}")
    if threads is not None:
        if threads < 1:
            raise ZoomMILError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    torch_device = resolve_device(device)  # fail fast on --device cuda without a GPU
    plan = load_coords(coords_path, check=True)
    slide = wsi_slide.open_slide(slide_path)
    try:
        mpp0, mpp_source = check_plan_matches_slide(slide, slide_path, plan, mpp)
    finally:
        slide.close()
    model, weights_info = build_encoder(weights, seed=seed)
    encoder = PatchEncoder(model, device=torch_device, precision=precision)
    if batch_size is None:
        batch_size = default_batch_size(encoder.device)
    if len(plan.xy[0]) == 0:
        log.warning(
            "%s: no tissue parents in %s: writing an empty feature file", slide_path, coords_path
        )
    start = time.perf_counter()
    feats = encode_plan(slide_path, plan, encoder, batch_size, workers, progress)
    seconds = time.perf_counter() - start
    attrs = _provenance(slide_path, coords_path, plan, mpp0, mpp_source, weights_info, encoder)
    attrs.update(batch_size=batch_size, threads=torch.get_num_threads())
    recipe = PreprocessingRecipe.from_attrs(
        {"mags": plan.mags}, weights=str(weights), weights_seed=seed, precision=encoder.precision
    )
    attrs.update(recipe.to_attrs(ENCODER_FIELDS))
    path = write_feature_file(
        out_path,
        plan.mags,
        feats,
        plan.coords,
        plan.xy,
        attrs,
        datasets={"tissue_fraction": np.asarray(plan.tissue_fraction, dtype=np.float32)},
    )
    return ExtractResult(path, [len(f) for f in feats], seconds, attrs)


def _provenance(
    slide_path: str | Path,
    coords_path: str | Path,
    plan: Lattice,
    mpp: float,
    mpp_source: str,
    weights_info: dict[str, Any],
    encoder: PatchEncoder,
) -> dict[str, Any]:
    device = encoder.device
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    attrs: dict[str, Any] = {
        "slide": str(slide_path),
        "slide_id": Path(slide_path).stem,
        "coords_file": str(coords_path),
        "mags": [float(m) for m in plan.mags],
        "patch_size": int(plan.patch_size),
        "side0": [int(s) for s in plan.sides],
        "mpp": float(mpp),
        "mpp_source": str(mpp_source),
        **weights_info,
        "feature_dim": FEATURE_DIM,
        "zoommil_version": zoommil.__version__,
        "torch_version": str(torch.__version__),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": device_name,
        "precision": encoder.precision,
        "empty": len(plan.xy[0]) == 0,
    }
    for key in _COPIED_COORDS_ATTRS:
        if key in plan.attrs and plan.attrs[key] is not None:
            attrs[key] = plan.attrs[key]
    attrs.setdefault("tissue_method", "none")  # coords made without a tissue detector
    attrs.setdefault("tissue_params", {})
    fractions = np.asarray(plan.tissue_fraction, dtype=np.float32)
    if fractions.nbytes <= _MAX_ATTR_BYTES:  # also always stored as a dataset
        attrs["tissue_fraction"] = fractions
    return attrs

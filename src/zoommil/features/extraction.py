"""Slide + coords file -> feature file, read a lowest-magnification parent at a time.

Why per parent: the lattice is aligned by construction (a parent at magnification m covers
exactly 2^d x 2^d patches at 2^d m), so a parent's patches at every magnification come from a
few reads of its level-0 square, each the read `zoommil predict` makes for the same patches
(see `zoommil.wsi.patches.read_parent_patches`): training and prediction see the same pixels.

Streaming: reader processes (`ReaderPool`) read a bounded window of parents ahead of the
encoder, batches are encoded as they fill, and the features go straight to the file's chunked
datasets (`FeatureFileWriter`), so memory is a few batches whatever the slide's size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import torch
from tqdm import tqdm

import zoommil
from zoommil.cpus import gpu_readers, usable_cpus
from zoommil.device import resolve_device
from zoommil.environment import cpu_model
from zoommil.errors import SlideError, ZoomMILError
from zoommil.features.encoder import PatchEncoder, build_encoder
from zoommil.features.encoder_pool import (
    EncoderPool,
    EncoderRecipe,
    cpu_encoder,
    set_encoder_threads,
    wants_pool,
)
from zoommil.io.atomic import atomic_path, check_free_space
from zoommil.io.coords import load_coords
from zoommil.io.featurefile import FeatureFileWriter
from zoommil.recipe import ENCODER_FIELDS, PreprocessingRecipe, default_weights
from zoommil.recipe import default as recipe_default
from zoommil.wsi.lattice import Lattice
from zoommil.wsi.lattice import depths as mag_depths
from zoommil.wsi.patches import ReaderPool, chunk_tasks

log = logging.getLogger(__name__)

#: Relative mpp difference above which a coords file is taken to belong to another slide or mpp.
MPP_TOLERANCE = 0.01
#: Arrays larger than this go only to datasets (HDF5 attributes are limited to 64 KiB).
_MAX_ATTR_BYTES = 32 * 1024
#: Provenance of the coords file carried into the feature file.
_COPIED_COORDS_ATTRS = (
    "dimensions",
    "tissue_method",
    "tissue_version",
    "tissue_params",
    "tissue_threshold",
    "tissue_mask",
    "mask_mpp",
    "no_tissue_policy",
    "no_tissue_applied",
    "n_parents_total",
    "n_parents_kept",
    "slide_quickhash",
    "native_magnification",
    "upsampling",
)


# --------------------------------------------------------------------------- the plan


def depths_of(plan: Lattice) -> list[int]:
    """Quadtree depth of each magnification below the lowest one (e.g. 0, 1, 3)."""
    return mag_depths(plan.mags)


# --------------------------------------------------------------------------- pixels


def plan_offsets(plan: Lattice) -> list[np.ndarray]:
    """Per magnification, the (row, col) grid offsets of each parent's patches inside it,
    [n_parents, 4^d, 2], taken from the coords file (so any row order it uses is honoured)."""
    out = []
    for k, d in enumerate(depths_of(plan)):
        rel = plan.xy[k] - np.repeat(plan.xy[0], 4**d, axis=0)
        grid = (rel // plan.sides[k])[:, ::-1]  # (x, y) -> (row, col)
        out.append(grid.reshape(-1, 4**d, 2) if len(grid) else grid.reshape(0, 1, 2))
    return out


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
    """Small batches are fastest on CPU (cache-bound: bs 4 beats 16 by ~1.2-1.3x); large on GPU."""
    return 64 if device.type == "cuda" else 4


def default_workers(device: torch.device, threads: int | None = None) -> int:
    """Reader processes: one hides reading behind a CPU encoder; a GPU needs several, one CPU
    kept for the encoding process, at most 8. Their CPUs: ``threads`` when above 1 (the cores
    a scheduler gave the job, e.g. `set-threads: features=8`), else those this process may use."""
    if device.type != "cuda":
        return 1
    return gpu_readers(threads if threads is not None and threads > 1 else usable_cpus())


@dataclass
class StreamStats:
    """Where the consumer's time went: waiting for readers vs encoding (device busy)."""

    read_wait: float = 0.0
    #: the part of ``read_wait`` spent on the stream's first chunk: the readers' start-up
    #: (in predict, a zoom step's refill), paid once per stream however long it runs
    first_read_wait: float = 0.0
    encode: float = 0.0
    patches: int = 0
    batches: int = 0
    #: the seconds clock `encode_stream` times with; a test passes a fake one, so it checks
    #: the accounting exactly instead of sleeping
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False, compare=False)

    def as_dict(self) -> dict[str, float]:
        return {
            "reader_wait_seconds": self.read_wait,
            "first_read_wait_seconds": self.first_read_wait,
            "encode_seconds": self.encode,
            "patches": self.patches,
            "batches": self.batches,
        }


def encode_stream(
    encoder: PatchEncoder | EncoderPool,
    chunks: Iterable[np.ndarray],
    batch_size: int,
    stats: StreamStats | None = None,
) -> Iterator[np.ndarray]:
    """Features of the patches of ``chunks`` (uint8 [n, P, P, 3] each), in order, one
    ``batch_size`` batch at a time: only a few batches and the readers' window are ever held.

    ``encoder`` is a `PatchEncoder` (this process) or an `EncoderPool` (single-threaded
    encoder processes, and this process, each batch to the next free one; same batches, same
    order). On a GPU the batch is pinned so the copy is asynchronous
    (`PatchEncoder.preprocess` copies with ``non_blocking``); the encode time includes waiting
    for the device's result (with a pool: waiting for the encoder processes).
    """
    stats = stats if stats is not None else StreamStats()
    batches = _batches(chunks, batch_size, stats)
    if isinstance(encoder, EncoderPool):
        results = encoder.imap(batches)
        while True:
            tic = stats.clock()
            read_before = stats.read_wait
            out = next(results, None)
            # the pool pulls batches (reader waits) while it waits for results
            stats.encode += stats.clock() - tic - (stats.read_wait - read_before)
            if out is None:
                return
            stats.patches += len(out)
            stats.batches += 1
            yield out
    pin = encoder.device.type == "cuda"
    for batch in batches:
        tic = stats.clock()
        tensor = torch.from_numpy(batch)
        if pin:
            tensor = tensor.pin_memory()
        out = encoder.encode(tensor)
        stats.encode += stats.clock() - tic
        stats.patches += len(batch)
        stats.batches += 1
        yield out


def _batches(
    chunks: Iterable[np.ndarray], batch_size: int, stats: StreamStats
) -> Iterator[np.ndarray]:
    """The patches of ``chunks`` regrouped into ``batch_size`` batches (the last may be
    smaller); the time spent waiting for the next chunk is added to ``stats.read_wait``."""
    pending: list[np.ndarray] = []
    held = 0
    iterator = iter(chunks)
    first = True
    while True:
        tic = stats.clock()
        chunk = next(iterator, None)
        waited = stats.clock() - tic
        stats.read_wait += waited
        if first:
            stats.first_read_wait += waited
            first = False
        if chunk is None:
            break
        pending.append(chunk)
        held += len(chunk)
        if held < batch_size:
            continue
        stack = np.concatenate(pending) if len(pending) > 1 else pending[0]
        n = len(stack) // batch_size * batch_size
        for i in range(0, n, batch_size):
            yield stack[i : i + batch_size]
        pending = [stack[n:]] if n < len(stack) else []
        held = len(stack) - n
    if held:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]


def regions_per_task(patches_per_region: int, batch_size: int) -> int:
    """Regions per reader task: at least a batch of patches, so messages are few and large."""
    return max(1, -(-max(batch_size, 16) // patches_per_region))


def first_task_regions(patches_per_region: int, batch_size: int) -> int:
    """Regions of a stream's first reader task: one batch, so the encoder starts early (see
    `chunk_tasks`)."""
    return max(1, -(-batch_size // patches_per_region))


def encode_plan(
    slide_path: str | Path,
    plan: Lattice,
    encoder: PatchEncoder | EncoderPool,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    sink: Callable[[int, int, np.ndarray], None] | None = None,
    reader: ReaderPool | None = None,
    stats: StreamStats | None = None,
    mags: Sequence[float] | None = None,
) -> list[np.ndarray] | None:
    """Features of every patch of the plan, per magnification, rows in the plan's order.

    With ``sink`` the rows go to ``sink(k, first_row, rows)`` as they are computed (in order per
    magnification) and nothing is returned: memory stays at a few batches. ``reader`` reuses a
    running `ReaderPool` (else one with ``workers`` processes is started and closed here).
    ``mags``: only these of the plan's magnifications (``k`` counts them), read as the whole
    plan reads them (`read_parent_patches`' ``keep``), so a model that reads some of a feature
    file's magnifications gets the pixels of the file's rows.
    """
    all_depths = depths_of(plan)
    wanted = plan.mags if mags is None else [float(m) for m in mags]
    unknown = [m for m in wanted if m not in plan.mags]
    if unknown or not wanted or wanted != sorted(wanted):
        raise ValueError(f"magnifications {wanted} are not an ordered subset of {plan.mags}")
    keep = [m in wanted for m in plan.mags]
    depths = [d for d, k in zip(all_depths, keep, strict=True) if k]
    n_parents = len(plan.xy[0])
    feats: list[np.ndarray] | None = None
    if sink is None:
        feats = [np.zeros((n_parents * 4**d, encoder.dim), dtype=np.float32) for d in depths]

        def sink(k: int, start: int, rows: np.ndarray) -> None:
            feats[k][start : start + len(rows)] = rows

    if n_parents == 0:
        return feats
    if workers is None:
        workers = default_workers(encoder.device)
    if batch_size is None:
        batch_size = default_batch_size(encoder.device)
    # where stacked patch w of a parent goes: magnification layout_k[w], row parent * 4^d + j
    layout_k = np.asarray([k for k, d in enumerate(depths) for _ in range(4**d)])
    layout_j = np.asarray([j for d in depths for j in range(4**d)])
    scale = np.asarray([4**d for d in depths])
    per_parent = sum(4**d for d in depths)
    tasks = chunk_tasks(
        str(slide_path),
        plan.xy[0],
        plan.sides[0],
        all_depths,
        plan.patch_size,
        regions_per_task(per_parent, batch_size),
        plan_offsets(plan),
        first_task_regions(per_parent, batch_size),
        keep=None if all(keep) else keep,
    )
    own_reader = reader is None
    reader = reader if reader is not None else ReaderPool(workers)
    done = 0
    total = n_parents * per_parent
    try:
        with tqdm(total=total, unit="patch", desc="features", disable=not progress) as bar:
            for out in encode_stream(encoder, reader.imap(tasks), batch_size, stats):
                q = np.arange(done, done + len(out))
                parent, w = q // per_parent, q % per_parent
                ks = layout_k[w]
                rows = parent * scale[ks] + layout_j[w]
                for k in np.unique(ks):
                    mask = ks == k
                    sink(int(k), int(rows[mask][0]), out[mask])
                done += len(out)
                if on_batch is not None:
                    on_batch(len(out))
                bar.update(len(out))
    finally:
        if own_reader:
            reader.close()
    return feats


def _check_slide_against_plan(
    slide_path: str | Path, plan: Lattice, mpp: float | None
) -> tuple[float, str]:
    """Open the slide (test read included), check it against the coords file and close it:
    the handle, and the coarsest level its test read decoded, end here, not with the run."""
    from zoommil.wsi.slide import open_slide

    slide = open_slide(slide_path)
    try:
        return check_plan_matches_slide(slide, slide_path, plan, mpp)
    finally:
        slide.close()


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
    from zoommil.wsi.resolution import resolve_mpp
    from zoommil.wsi.slide import quickhash

    made_for = plan.attrs.get("slide_quickhash") or None
    this = quickhash(slide)
    made_path = plan.attrs.get("slide_path") or None
    if made_for and this and made_for != this:
        raise SlideError(
            slide_path,
            f"the coords file was made for another slide ({made_path or 'unknown path'}, "
            f"quickhash {made_for[:12]}..., this slide's is {this[:12]}...)",
        )
    if made_path and not (made_for and this) and Path(made_path) != Path(slide_path).resolve():
        raise SlideError(slide_path, f"the coords file was made for another slide ({made_path})")
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
        return resolve_mpp(slide, slide_path, mpp_override)
    coords_mpp = float(coords_mpp)
    if mpp_override is not None:
        mpp, source = resolve_mpp(slide, slide_path, mpp_override)
    elif coords_source in ("override", "default"):
        return coords_mpp, coords_source
    else:
        mpp, source = resolve_mpp(slide, slide_path)
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
    encoder_name: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    slide_id: str | None = None,
) -> ExtractResult:
    """Encode every patch of a coords file and write the feature file (atomically).

    ``encoder_name``: a registered encoder (`zoommil.features.encoders`); its transform turns
    the lattice's patches into its input, and the file records its name, dimension, input size,
    weights hash and precision. The feature file records the coords file's tiling recipe plus
    the encoder part (encoder, weights, seed, precision actually used), which training copies
    into the checkpoint. ``encoder_name``, ``weights``, ``seed`` and ``precision`` default to
    the recipe's defaults. ``slide_id``: the ``slide_id`` attribute (default: the file stem;
    the workflow passes the sheet's, which may differ from the file name).
    """
    encoder_name = recipe_default("encoder") if encoder_name is None else encoder_name
    weights = default_weights(encoder_name) if weights is None else weights
    seed = recipe_default("weights_seed") if seed is None else seed
    precision = recipe_default("precision") if precision is None else precision

    if batch_size is not None and batch_size < 1:
        raise ZoomMILError(f"--batch-size must be >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise ZoomMILError(f"--workers must be >= 0, got {workers}")
    if threads is not None and threads < 1:
        raise ZoomMILError(f"--threads must be >= 1, got {threads}")
    torch_device = resolve_device(device)  # fail fast on --device cuda without a GPU
    set_encoder_threads(torch_device, threads)
    plan = load_coords(coords_path, check=True)
    mpp0, mpp_source = _check_slide_against_plan(slide_path, plan, mpp)
    if len(plan.xy[0]) == 0:
        log.warning(
            "%s: no tissue parents in %s: writing an empty feature file", slide_path, coords_path
        )
    with ReaderPool(
        default_workers(torch_device, threads) if workers is None else workers
    ) as reader:
        if len(plan.xy[0]):
            reader.start()  # its start-up overlaps building the encoder
        model, weights_info = build_encoder(weights, seed=seed, encoder=encoder_name)
        encoder = PatchEncoder(model, device=torch_device, precision=precision)
        if batch_size is None:
            batch_size = default_batch_size(encoder.device)
        depths = depths_of(plan)
        sizes = [len(plan.xy[0]) * 4**d for d in depths]
        # before encoding: the feature rows plus coords and xy, with room for HDF5's overhead
        check_free_space(out_path, int(sum(sizes) * (encoder.dim * 4 + 32) * 1.05) + (1 << 20))
        stats = StreamStats()
        pool_recipe = EncoderRecipe(encoder_name, str(weights), seed, encoder.precision)
        pooled = wants_pool(encoder.device, threads) and len(plan.xy[0]) > 0
        with (
            cpu_encoder(encoder, pool_recipe, threads if pooled else None) as runner,
            atomic_path(out_path) as tmp,
            FeatureFileWriter(tmp, plan.mags, sizes, encoder.dim, slide_path) as writer,
        ):
            start = time.perf_counter()
            encode_plan(
                slide_path, plan, runner, batch_size, progress=progress, sink=writer.write,
                reader=reader, stats=stats,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            attrs = _provenance(
                slide_path, coords_path, plan, mpp0, mpp_source, weights_info, encoder, slide_id
            )
            attrs.update(
                batch_size=batch_size,
                threads=threads if pooled else torch.get_num_threads(),
                encoder_processes=threads if pooled else 1,
            )
            recipe = PreprocessingRecipe.from_attrs(
                {"mags": plan.mags}, encoder=weights_info.get("encoder", encoder_name),
                weights=str(weights), weights_seed=seed, precision=encoder.precision,
            )  # fmt: skip
            attrs.update(recipe.to_attrs(ENCODER_FIELDS))
            writer.finish(
                plan.coords,
                plan.xy,
                attrs,
                datasets={"tissue_fraction": np.asarray(plan.tissue_fraction, dtype=np.float32)},
            )
    path = Path(out_path)
    attrs["stream"] = stats.as_dict()
    return ExtractResult(path, sizes, seconds, attrs)


def _provenance(
    slide_path: str | Path,
    coords_path: str | Path,
    plan: Lattice,
    mpp: float,
    mpp_source: str,
    weights_info: dict[str, Any],
    encoder: PatchEncoder | EncoderPool,
    slide_id: str | None = None,
) -> dict[str, Any]:
    device = encoder.device
    # the CPU's model, not "cpu": fp32 features differ in their last bits between CPUs
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    attrs: dict[str, Any] = {
        "slide": str(slide_path),
        "slide_id": Path(slide_path).stem if slide_id is None else slide_id,
        "coords_file": str(coords_path),
        "mags": [float(m) for m in plan.mags],
        "patch_size": int(plan.patch_size),
        "side0": [int(s) for s in plan.sides],
        "mpp": float(mpp),
        "mpp_source": str(mpp_source),
        **weights_info,
        "feature_dim": encoder.dim,
        "encoder_input_size": encoder.spec.input_size,
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

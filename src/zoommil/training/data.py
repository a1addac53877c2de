"""Slide sheet, QC exclusions and bags of features for training and evaluation.

Bags are kept in memory when they fit (``cache: memory``, or ``auto`` under ``cache_max_gb``:
the demo's few dozen small slides load once, which makes epochs fast and reads the files only
once); otherwise (``disk``) each bag is read from its HDF5 file at every step, the next one
in a thread while the model works on this one, so memory stays at a few bags whatever the
dataset size (`benchmarks/train_scale.py` measures both at cohort size).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from zoommil.errors import SlideError, ZoomMILError
from zoommil.io.featurefile import (
    FEATURE_LIMIT,
    layout_problem,
    listed_mags,
    mag_key,
    patch_mags,
    read_attrs,
    read_feature_file,
    row_peaks,
)
from zoommil.io.sheet import check_label_case, read_table
from zoommil.training.normalize import FeatureNorm

log = logging.getLogger(__name__)

# Attributes that describe one slide, not the preprocessing recipe shared by all slides.
PER_SLIDE_ATTRS = (
    "mpp",
    "mpp_source",
    "side0",
    "dimensions",
    "slide",
    "slide_id",
    "slide_path",
    "path",
    "coords_file",
    "created",
    "empty",
    "tissue_fraction",
    "device",
    "device_name",
    "threads",
    "encoder_processes",
    "batch_size",
    "n_parents_kept",
    "n_parents_total",
    "no_tissue_applied",
    "slide_quickhash",
    "native_magnification",
    "upsampling",
)


@dataclass
class SlideRecord:
    """One usable slide of a split."""

    slide_id: str
    label: int
    path: Path
    #: Patches per magnification, lowest first (`drop_empty` reads them from the header).
    patches: tuple[int, ...] = ()


@dataclass
class Bag:
    """One slide's features as tensors: lists over magnifications, lowest first."""

    slide_id: str
    label: int
    feats: list[torch.Tensor]  # each [1, N_m, D] float32
    coords: list[torch.Tensor]  # each [N_m, 2] int64 (row, col)


def read_exclusions(path: str | Path | None) -> dict[str, str]:
    """Slides to skip from a QC TSV (slide_id, status [, reason]): status other than ok."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise ZoomMILError(f"{path}: exclusion (QC) table not found")
    table = read_table(path, "exclusion (QC) table")
    for column in ("slide_id", "status"):
        if column not in table.columns:
            raise ZoomMILError(f"{path}: exclusion table lacks column '{column}'")
    excluded = {}
    for row in table.itertuples(index=False):
        status = str(row.status).strip()
        if status.lower() != "ok":
            reason = str(getattr(row, "reason", "") or "").strip()
            excluded[str(row.slide_id).strip()] = f"{status}: {reason}" if reason else status
    return excluded


def resolve_classes(sheet: pd.DataFrame, classes: Sequence[str] | None, where: str) -> list[str]:
    """The class list: the configured one, else the sorted labels of the whole sheet.

    Labels come from every row, excluded slides included, so that QC never changes the class
    indices of a dataset. Any label outside a configured list is an error naming the slide.
    """
    if classes is None:
        classes = sorted(set(sheet["label"]))
        check_label_case(classes, where)
        if len(classes) < 2:
            raise ZoomMILError(f"{where}: the sheet has fewer than two labels ({classes})")
        return classes
    unknown = sheet.loc[~sheet["label"].isin(classes)]
    if len(unknown):
        row = unknown.iloc[0]
        raise ZoomMILError(
            f"{where}: slide {row['slide_id']} has unknown label {row['label']!r} "
            f"(classes: {', '.join(classes)})"
        )
    return list(classes)


def split_records(
    sheet: pd.DataFrame,
    split: str,
    features_dir: str | Path,
    classes: Sequence[str],
    excluded: Mapping[str, str],
) -> tuple[list[SlideRecord], list[dict[str, str]]]:
    """Usable slides of one split, and the skipped ones with their reasons.

    A slide that is not excluded must have ``{features_dir}/{slide_id}.h5``; a missing file is
    an error naming the slide, because silently training on fewer slides would bias a benchmark.
    Records come sorted by slide_id, not in the sheet's row order: the seeded sampler draws
    indices into this list, so a sheet regenerated from a glob or re-sorted would otherwise
    train a different model from the same slides, labels and seed.
    """
    features_dir = Path(features_dir)
    index = {name: i for i, name in enumerate(classes)}
    records, skipped = [], []
    rows = sheet.loc[sheet["split"] == split].sort_values("slide_id", kind="stable")
    for row in rows.itertuples(index=False):
        if row.slide_id in excluded:
            skipped.append({"slide_id": row.slide_id, "reason": excluded[row.slide_id]})
            continue
        if row.label not in index:
            raise SlideError(
                row.slide_id, f"unknown label {row.label!r} (classes: {', '.join(classes)})"
            )
        path = features_dir / f"{row.slide_id}.h5"
        if not path.exists():
            raise SlideError(row.slide_id, f"feature file {path} not found (and not excluded)")
        records.append(SlideRecord(row.slide_id, index[row.label], path))
    return records, skipped


def bag_shapes(path: Path, mags: Sequence[float]) -> list[tuple[int, int]]:
    """(N_m, D) per magnification, read from the HDF5 header without loading the data.

    Why it checks the file's datasets, row order (`layout_problem`: coords only) and ``mags``
    attribute as `read_feature_file` does: this runs on every file before training, while bags
    read from disk are read at their step, so a broken file stops the run before the first
    epoch, not in the middle of it. The layout is checked over every magnification the file
    has, not only ``mags``: the order of a single-magnification bag is defined by its parents
    (TransMIL's and SparseConvMIL's layouts follow it, and `zoommil predict` builds it so)."""
    try:
        listed_mags(read_attrs(path).get("mags"), path)
        with h5py.File(path, "r") as h5:
            missing = [mag_key(m) for m in mags if f"{mag_key(m)}_patches" not in h5]
            if missing:  # its datasets, not its `mags` attribute: a dataset may be gone
                raise ZoomMILError(
                    f"{path}: lacks magnification(s) {', '.join(missing)} (it has "
                    f"{', '.join(patch_mags(h5)) or 'none'})"
                )
            every = {float(m) for m in mags} | {float(m[:-1]) for m in patch_mags(h5)}
            problem = layout_problem(h5, sorted(every))
            if problem is not None:
                raise ZoomMILError(f"{path}: {problem}")
            return [tuple(h5[f"{mag_key(m)}_patches"].shape) for m in mags]
    except OSError as error:
        raise ZoomMILError(f"{path}: cannot read feature file ({error})") from error


def drop_empty(
    records: list[SlideRecord], mags: Sequence[float]
) -> tuple[list[SlideRecord], list[dict[str, str]], int, int]:
    """Remove bags without patches (slides with no tissue) and return the feature dimension.

    Returns (kept records, skipped with reason, feature dimension D, total bytes of the kept
    bags); every file must have the same D.
    """
    kept, skipped, total = [], [], 0
    dims: dict[int, Path] = {}
    for record in records:
        shapes = bag_shapes(record.path, mags)
        if any(n == 0 for n, _ in shapes):
            log.warning("%s: no patches in the feature file, skipped", record.slide_id)
            skipped.append({"slide_id": record.slide_id, "reason": "no patches (no tissue)"})
            continue
        own = {d for _, d in shapes}
        if len(own) > 1:  # check_same_dim would name this file twice
            found = ", ".join(
                f"{d} at {mag_key(m)}" for m, (_, d) in zip(mags, shapes, strict=True)
            )
            raise ZoomMILError(
                f"{record.path}: features of dimension {found}: every magnification of a "
                "feature file must come from one encoder"
            )
        dims.setdefault(own.pop(), Path(record.path))
        check_same_dim(dims)
        total += sum(n * d * 4 for n, d in shapes)
        kept.append(replace(record, patches=tuple(n for n, _ in shapes)))
    return kept, skipped, (next(iter(dims)) if dims else 0), total


def check_same_dim(dims: dict[int, Path]) -> None:
    """Every feature file has one dimension; else an error naming a file of each."""
    if len(dims) > 1:
        (d1, f1), (d2, f2) = list(dims.items())[:2]
        raise ZoomMILError(
            f"{f2}: features of dimension {d2}, but {f1} has dimension {d1}: all feature "
            "files must come from the same encoder"
        )


# What the feature files of one run (and a checkpoint and the features it is evaluated on)
# must share, as feature-file attributes: (attribute, how an error names it).
ENCODER_IDENTITY = (
    ("encoder", "encoder"),
    ("weights_sha256", "encoder weights (sha256)"),
    ("precision", "precision"),
)


def encoder_identity(attrs: Mapping[str, Any]) -> dict[str, str]:
    """The `ENCODER_IDENTITY` values a feature file (or a checkpoint's recipe) records, the
    encoder's name canonical (an alias names the same encoder)."""
    from zoommil.features.encoders.registry import canonical_name

    out = {}
    for key, _ in ENCODER_IDENTITY:
        value = attrs.get(key)
        if value is not None:
            out[key] = canonical_name(value) if key == "encoder" else str(value)
    return out


def check_one_encoder(paths: Sequence[Path]) -> str | None:
    """The encoder every feature file was made with; a file made with another encoder, other
    weights or at another precision is a user error naming it and a file of the other kind.

    Why all three: features of two encoders, or of one architecture with two sets of weights,
    cannot share a model even at equal dimension; bf16 and fp32 features of one encoder differ
    by ~3% of their spread, and ``--precision auto`` gives one or the other by CPU, so a
    cluster whose nodes differ would otherwise mix them silently. Attributes a file does not
    record (hand-made files) are not compared.
    """
    first: dict[str, tuple[str, Path]] = {}
    for path in paths:
        for key, value in encoder_identity(read_attrs(path)).items():
            if key not in first:
                first[key] = (value, path)
                continue
            want, other = first[key]
            if value == want:
                continue
            if key == "encoder":
                raise ZoomMILError(
                    f"{path}: features made with encoder {value}, but {other} with {want}: one "
                    "run needs feature files of one encoder (re-extract, or point features_dir "
                    "at one encoder's files)"
                )
            if key == "precision":
                raise ZoomMILError(
                    f"{path}: features computed at {value}, but {other} at {want}: one run needs "
                    "feature files of one precision (re-extract them with one --precision; "
                    "`auto` gives bf16 only on CPUs with native bf16, so nodes that differ give "
                    "different precisions)"
                )
            raise ZoomMILError(
                f"{path}: features made with other encoder weights (sha256 {value[:12]}...) than "
                f"{other} ({want[:12]}...): one run needs feature files of one set of weights "
                "(re-extract, or point features_dir at one run's files)"
            )
    return first["encoder"][0] if "encoder" in first else None


def check_matches_checkpoint(path: Path, recipe: Mapping[str, Any], checkpoint: str | Path) -> None:
    """A feature file evaluated with a checkpoint has the encoder, weights and precision the
    checkpoint was trained on (its recorded preprocessing recipe); else an error naming both.

    Why: features of another encoder or weights with the same dimension load without complaint
    and give meaningless predictions."""
    got = encoder_identity(read_attrs(path))
    want = encoder_identity(recipe)
    for key, label in ENCODER_IDENTITY:
        if key in got and key in want and got[key] != want[key]:
            short = 12 if key == "weights_sha256" else None
            raise ZoomMILError(
                f"{path}: features made with {label} {got[key][:short]}, but {checkpoint} was "
                f"trained on features made with {want[key][:short]} (evaluate it on features "
                "of the encoder, weights and precision it was trained on)"
            )


def check_finite_bag(path: Path, mags: Sequence[float], feats: Sequence[np.ndarray]) -> None:
    """A bag with NaN, inf or finite values too large for float32 arithmetic is an error
    naming its file, before any training.

    Why here: `zoommil features` refuses such values, but a file written elsewhere (or by an
    older version) would otherwise end as a NaN loss blamed on divergence ("training
    diverged"), or as NaN probabilities in the metrics. The bag is in memory already, so the
    check is cheap: a row-wise max and min (NaN propagates through both), no temporary the
    size of the bag.
    """
    for mag, f in zip(mags, feats, strict=True):
        if f.size == 0:
            continue
        peak = row_peaks(f)
        bad = ~np.isfinite(peak)
        if bad.any():
            raise ZoomMILError(
                f"{path}: {int(bad.sum())} of {len(f)} feature rows at {mag_key(mag)} contain "
                "NaN or inf (re-extract this slide's features, or exclude it)"
            )
        row = int(np.argmax(peak))
        if peak[row] > FEATURE_LIMIT:
            raise ZoomMILError(
                f"{path}: values too large to be features at {mag_key(mag)} (max |x| = "
                f"{float(peak[row]):.3g}, row {row}; above {FEATURE_LIMIT:.2g} their squares "
                "overflow float32 and the loss turns NaN): re-extract this slide's features, "
                "or exclude it"
            )


def feature_tensors(
    feats: Sequence[np.ndarray], coords: Sequence[np.ndarray]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A feature file's rows as the models take them: float32 [1, N, D] features and int64
    [N, 2] (row, col) coords per magnification (training, evaluation, FLOPs, the Python API)."""
    return (
        [torch.from_numpy(np.ascontiguousarray(f, np.float32))[None] for f in feats],
        [torch.from_numpy(np.asarray(c, np.int64).reshape(-1, 2)) for c in coords],
    )


def check_feature_dim(path: str | Path, dim: int, checkpoint: str | Path, expected: int) -> None:
    """Features of another width than the checkpoint's model are an error naming both files."""
    if int(dim) != int(expected):
        raise ZoomMILError(
            f"{path}: features have dimension {dim}, the checkpoint {checkpoint} expects {expected}"
        )


def _pinned(bag: Bag) -> Bag:
    return replace(
        bag,
        feats=[f.pin_memory() for f in bag.feats],
        coords=[c.pin_memory() for c in bag.coords],
    )


class BagStore:
    """Indexable bags of one split; in memory (loaded once) or read from disk at each access."""

    def __init__(
        self, records: Sequence[SlideRecord], mags: Sequence[float], in_memory: bool
    ) -> None:
        self.records = list(records)
        self.mags = [float(m) for m in mags]
        self.in_memory = in_memory
        self.norm: FeatureNorm | None = None
        self.device: torch.device | None = None
        self._cache = [self._load(r) for r in self.records] if in_memory else None

    def to_device(self, device: torch.device) -> None:
        """Bags come out on ``device`` from now on. For CUDA the cached bags are pinned once
        (bags read from disk by `iterate`'s reader thread), so that each step's copy is
        asynchronous (``non_blocking``) and the standardisation runs on the GPU; on CPU
        nothing changes."""
        if device.type != "cuda":
            return
        self.device = device
        if self._cache is not None:
            self._cache = [_pinned(bag) for bag in self._cache]

    def set_norm(self, norm: FeatureNorm | None) -> None:
        """Standardise every bag this store returns from now on (see `training.normalize`).

        Applied at access, so the cache keeps the file's features and nothing is read again.
        """
        self.norm = norm

    def _load(self, record: SlideRecord) -> Bag:
        bag = read_feature_file(record.path, self.mags)
        check_finite_bag(record.path, bag.mags, bag.feats)
        feats, coords = feature_tensors(bag.feats, bag.coords)
        return Bag(slide_id=record.slide_id, label=record.label, feats=feats, coords=coords)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Bag:
        return self._ready(
            self._cache[i] if self._cache is not None else self._load(self.records[i])
        )

    def iterate(self, order: Sequence[int]) -> Iterator[tuple[int, Bag]]:
        """(index, bag) in ``order``. From disk, one thread reads the next bag while the caller
        trains or predicts on this one.

        Why: at cohort size a bag is ~100 MB (10^4 patches x 2048 float32) and its read, the
        finiteness check and the fresh memory cost ~25% of a CPU step (more on a GPU, where the
        step is fast); torch releases the GIL while it computes, so the read hides behind the
        step. Bags and their order are those of ``self[i]``; a bag's read error is raised when
        the caller reaches that bag, as before. At most three bags are in memory (the
        caller's, the next one and the one being read).
        """
        if self._cache is not None or len(order) < 2:
            for i in order:
                yield i, self[i]
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bag-reader") as pool:
            pending = pool.submit(self._prefetch, order[0])
            for position, i in enumerate(order):
                bag = pending.result()
                if position + 1 < len(order):
                    pending = pool.submit(self._prefetch, order[position + 1])
                yield i, self._ready(bag)

    def _prefetch(self, i: int) -> Bag:
        """Bag ``i`` read from disk; pinned for a CUDA device, so its copy is asynchronous."""
        bag = self._load(self.records[i])
        return _pinned(bag) if self.device is not None else bag

    def _ready(self, bag: Bag) -> Bag:
        """The bag on the store's device, standardised when a norm is set."""
        if self.device is not None:
            bag = replace(
                bag,
                feats=[f.to(self.device, non_blocking=True) for f in bag.feats],
                coords=[c.to(self.device, non_blocking=True) for c in bag.coords],
            )
        if self.norm is None:
            return bag
        return replace(bag, feats=[self.norm(f) for f in bag.feats])

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]


def shared_attrs(paths: Sequence[Path]) -> dict[str, Any]:
    """Preprocessing attributes common to all feature files (same value everywhere).

    Per-slide values (mpp, creation time, tissue fractions, ...) differ between files or are
    listed in ``PER_SLIDE_ATTRS`` and are dropped; what is left is the recipe `zoommil predict`
    needs to redo the preprocessing on a new slide (patch size, mags, tissue method, encoder).
    """
    common: dict[str, Any] | None = None
    for path in paths:
        attrs = read_attrs(path)
        if common is None:
            common = dict(attrs)
        else:
            common = {k: v for k, v in common.items() if k in attrs and attrs[k] == v}
    return {
        k: v
        for k, v in (common or {}).items()
        if k not in PER_SLIDE_ATTRS and not k.startswith(("created", "creation", "tissue_frac"))
    }

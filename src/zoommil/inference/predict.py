"""Classify a slide from its file: ZoomMIL reads only the regions it zooms into.

ZoomMIL (``zoom_predict``): encode every tissue patch at the lowest magnification, select K,
read and encode only the descendants of the selected patches at the next magnification, and so
on. The patches encoded are ``N_low + K * 4^d1 + K * 4^d2 + ...`` (fewer when a step has fewer
than K rows). Every other model (``all_patch_predict``) encodes every tissue patch at the
magnifications it reads, exactly as `zoommil features` does (tiled at every magnification of
the recipe and filtered by tissue at the lowest, so a 10x-only model gets the 10x rows it was
trained on), then runs the MIL head: this is the baseline the paper's Figure 3 compares against.

Both start from the slide file and redo the preprocessing recorded in the checkpoint (patch
size, magnifications, tissue detector, encoder weights), so their times are end to end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoommil.device import resolve_device, synchronize
from zoommil.errors import SlideError, ZoomMILError
from zoommil.features.encoder import PatchEncoder, build_encoder
from zoommil.features.encoder_pool import AnyEncoder, EncoderRecipe, cpu_encoder
from zoommil.features.encoders.weight_files import DEMO_ALTERNATIVE
from zoommil.features.encoders.weights import sha256_file
from zoommil.features.extraction import (
    StreamStats,
    default_batch_size,
    default_workers,
    encode_plan,
    encode_stream,
    first_task_regions,
    regions_per_task,
)
from zoommil.features.weight_keywords import WEIGHT_KEYWORDS
from zoommil.inference.tiling_ahead import tile_for_inference
from zoommil.recipe import WITHOUT_ATTENTION, PreprocessingRecipe, format_mags, mag_key
from zoommil.training.checkpoint import model_from_checkpoint
from zoommil.training.normalize import FeatureNorm
from zoommil.wsi.lattice import Lattice, descendant_rows, steps_between
from zoommil.wsi.patches import ReaderPool, chunk_tasks
from zoommil.wsi.tissue import DETECTOR_VERSIONS

log = logging.getLogger(__name__)


@dataclass
class Predictor:
    """A trained model plus the preprocessing recipe its features were made with.

    The recipe's magnifications are the feature files' (``config_mags``: what is tiled, and
    where the tissue filter applies, at the lowest); ``model_mags`` are the ones the model
    reads, a subset (a single-scale model reads the 10x rows of a 1.25/2.5/10x lattice).
    """

    model: nn.Module
    arch: str
    classes: list[str]
    recipe: PreprocessingRecipe
    method: str = ""
    norm: FeatureNorm | None = None
    in_dim: int | None = None
    model_mags: list[float] | None = None  # None: all of the recipe's
    #: sha256 of the checkpoint file, recorded in every prediction (what `--resume` matches)
    checkpoint_sha256: str = ""
    #: the checkpoint file, named in errors ("": a predictor built in code)
    checkpoint: str = ""
    #: sha256 of the encoder weights the training features were made with, as the checkpoint
    #: records it; `make_encoder` refuses other weights ("": an older checkpoint, not checked)
    weights_sha256: str = ""
    #: sha256 of the weights `make_encoder` built for this predictor, recorded in every
    #: prediction ("" until then)
    encoder_weights_sha256: str = ""
    #: whether the recipe's weights are the ones the checkpoint records (no --weights given)
    weights_from_checkpoint: bool = False

    @property
    def mags(self) -> list[float]:
        """The magnifications the model reads."""
        return list(self.model_mags if self.model_mags is not None else self.recipe.mags)

    @property
    def patch_size(self) -> int:
        """The patch side in pixels at each magnification, the recipe's (the checkpoint's
        training features): a slide tiled at another size would give other features."""
        return self.recipe.patch_size

    @property
    def has_attention(self) -> bool:
        """Whether its predictions carry per-patch attention to draw: ZoomMIL's zoom steps, or
        a baseline's `attention_scores` (all but `WITHOUT_ATTENTION`)."""
        return self.arch not in WITHOUT_ATTENTION

    @property
    def tissue_version(self) -> int | None:
        """The version of the tissue detector this zoommil tiles with (`DETECTOR_VERSIONS`),
        recorded in each prediction: `--resume` keeps only predictions of the same masks."""
        return DETECTOR_VERSIONS.get(self.recipe.tissue_method)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        weights: str | None = None,
        device: str | torch.device = "cpu",
    ) -> Predictor:
        """The predictor of a `zoommil train` checkpoint, with the preprocessing its training
        features were made with (magnifications, patch size, tissue detector, encoder and
        its weights), so that a new slide is read as training read its slides. ``weights``
        (imagenet, hf, random or a path): where this machine has the encoder weights, when not
        where the checkpoint records them; weights of another sha256 than its training
        features' are refused when the encoder is made. ``device``: ``auto``, ``cpu``,
        ``cuda``."""
        model, config = model_from_checkpoint(checkpoint)
        model.to(resolve_device(device))  # "auto", and CUDA without a GPU as one line
        recorded: Mapping[str, Any] = config.get("preprocessing") or {}
        from_checkpoint = not weights and recorded.get("weights") is not None
        weights = weights or recorded_weights(recorded)
        # the feature files' magnifications (a method's own `mags` override is config_mags;
        # checkpoints without either: the model's own)
        tiled = recorded.get("mags") or config.get("config_mags") or config["mags"]
        recipe = PreprocessingRecipe.from_attrs(recorded, mags=tiled, weights=weights)
        warn_if_other_detector(
            checkpoint,
            recipe.tissue_method,
            recorded.get("tissue_version"),
            recorded.get("tissue_method"),
        )
        return cls(
            model=model,
            arch=str(config["arch"]),
            classes=[str(c) for c in config["classes"]],
            recipe=recipe,
            method=str(config.get("method", config["arch"])),
            norm=FeatureNorm.from_config(config.get("feature_norm")),
            in_dim=int(config["in_dim"]) if config.get("in_dim") else None,
            model_mags=[float(m) for m in config["mags"]],
            checkpoint_sha256=sha256_file(checkpoint),
            checkpoint=str(checkpoint),
            weights_sha256=str(recorded.get("weights_sha256") or ""),
            weights_from_checkpoint=from_checkpoint,
        )


def warn_if_other_detector(
    checkpoint: str | Path, method: str, trained_on: Any, trained_method: Any = None
) -> bool:
    """Warn (and say so) when this version's ``method`` detector is not the version whose
    masks the checkpoint's training features were made with (its recorded
    ``tissue_version``): after an upgrade that changed the masks, predict reads other patches
    than training did, without another sign.

    A checkpoint that records the detector (``trained_method``) but no version was trained on
    features of a zoommil from before versions were recorded, or of several versions: every
    version but the first is a change of the masks, so unless this one is still the first, its
    masks may differ too (an upgraded Gaussian detector kept 6 of a slide's 9 parents). One
    that records neither (a checkpoint built in code, a mask of another tool) is not checked."""
    current = DETECTOR_VERSIONS.get(method)
    if trained_on is None and trained_method == method and current is not None and current > 1:
        log.warning(
            "%s: trained on features that record no %s detector version (made by a zoommil "
            "from before the version was recorded, or by several versions); this zoommil's "
            "is version %s, whose masks differ from the earlier ones, so predict may keep "
            "other patches than training did (retrain on features made with this version, or "
            "predict with the zoommil it was trained with)",
            checkpoint,
            method,
            current,
        )
        return True
    if trained_on is None or current is None or int(trained_on) == current:
        return False
    log.warning(
        "%s: trained on features whose tissue masks came from the %s detector version %s; "
        "this zoommil's is version %s, so predict keeps other patches than training did "
        "(retrain on features made with this version, or predict with the zoommil it was "
        "trained with)",
        checkpoint,
        method,
        trained_on,
        current,
    )
    return True


def _encode_regions(
    encoder: AnyEncoder,
    reader: ReaderPool,
    slide_path: Path,
    xy: np.ndarray,
    side0: int,
    chain: Sequence[int],
    patch_size: int,
    batch_size: int,
    norm: FeatureNorm | None,
    timer: _Timer,
) -> torch.Tensor:
    """Read and encode the 4^d patches (d = ``chain[-1]``) of each region streaming (readers
    ahead of the encoder, only features kept): [1, n * 4^d, D], standardised as in training.
    ``chain``: the depths below the region that the feature file's reads went through (only
    the last is read; the one before it sets the reads' size, as in `read_parent_patches`)."""
    per_region = 4 ** chain[-1]
    tasks = chunk_tasks(
        str(slide_path),
        xy,
        side0,
        list(chain),
        patch_size,
        regions_per_task(per_region, batch_size),
        first_regions=first_task_regions(per_region, batch_size),
        keep=[False] * (len(chain) - 1) + [True] if len(chain) > 1 else None,
    )
    stats = StreamStats()
    chunks = list(encode_stream(encoder, reader.imap(tasks), batch_size, stats))
    timer.record(stats)
    feats = np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), dtype=np.float32)
    out = torch.from_numpy(feats).unsqueeze(0)
    return norm(out) if norm is not None else out


def recorded_weights(recorded: Mapping[str, Any]) -> str | None:
    """The weights a checkpoint's features were made with, to use by default: the recorded
    ``weights`` (a keyword, or a path as the features command was given it), or, where that
    path is relative and not found from this folder, the absolute ``weights_file`` recorded
    beside it. Why: ``--weights r50.pt`` in a project folder made `zoommil predict` from any
    other folder fail with "r50.pt: weights file not found" (review W); the sha256 check
    (`make_encoder`) still decides whether the file found is the right one. None: unrecorded
    (the recipe's default)."""
    if recorded.get("weights") is None:
        return None
    weights, fallback = str(recorded["weights"]), recorded.get("weights_file")
    if weights in WEIGHT_KEYWORDS or not fallback or Path(weights).expanduser().exists():
        return weights
    return str(fallback) if Path(str(fallback)).exists() else weights


def zoom_chain(tiled: Sequence[float], low: float, high: float) -> list[int]:
    """The depths below a selected patch at ``low`` that a zoom to ``high`` reads through: the
    feature file read ``high`` in regions of the magnification before it in ``tiled`` (the
    recipe's), which is ``low`` itself unless the model skips some of the file's
    magnifications; e.g. 1.25 -> 10 in a 1.25/2.5/10x file: [1, 3] (10x read per 2.5x
    patch), 5 -> 10 in a 5/10x file: [1] (the selected patch read whole at 10x)."""
    mags = [float(m) for m in tiled]
    before = mags[mags.index(float(high)) - 1]
    depth = steps_between(low, high)
    return [depth] if before == float(low) else [steps_between(low, before), depth]


class _Timer:
    """Wall time from the start: tissue detection and tiling, then per phase: ``read`` is the
    time spent waiting for the reader processes (reading not hidden behind encoding),
    ``encode`` the encoder's (on a GPU: busy) time, ``head`` the MIL head's."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.tiled = self.start
        self.seconds: dict[str, float] = {"read": 0.0, "encode": 0.0, "head": 0.0}

    def end_tiling(self) -> None:
        self.tiled = time.perf_counter()

    def record(self, stats: StreamStats) -> None:
        """Streaming phases: waiting for the readers, and encoding (device busy)."""
        self.seconds["read"] += stats.read_wait
        self.seconds["encode"] += stats.encode

    def add(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[phase] += now - since
        return now

    def summary(self) -> dict[str, float]:
        return {
            "total": time.perf_counter() - self.start,
            "tissue_and_tiling": self.tiled - self.start,
            **self.seconds,
        }


def zoom_predict(
    predictor: Predictor,
    slide_path: str | Path,
    encoder: AnyEncoder,
    mpp: float | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    reader: ReaderPool | None = None,
    tiled: Lattice | None = None,
    default_mpp: float | None = None,
) -> dict[str, Any]:
    """ZoomMIL inference reading only the selected regions; see the module docstring.
    ``tiled``: the slide's lattice if it was made ahead (`TilingAhead`), else it is made here."""
    with _reader_for(reader, encoder) as reader:
        return _zoom_predict(
            predictor, Path(slide_path), encoder, mpp, batch_size, reader, tiled, default_mpp
        )


def _zoom_predict(
    predictor: Predictor,
    slide_path: Path,
    encoder: AnyEncoder,
    mpp: float | None,
    batch_size: int | None,
    reader: ReaderPool,
    tiled: Lattice | None,
    default_mpp: float | None,
) -> dict[str, Any]:
    timer = _Timer()
    model = predictor.model
    p = predictor.patch_size
    bs = batch_size or default_batch_size(encoder.device)
    pooled, attention, selected = [], [], []
    encoded = {}
    full = tiled or tile_for_inference(predictor.recipe, slide_path, mpp, default_mpp)
    lattice = full.restricted_to(predictor.mags)
    timer.end_tiling()
    rows = np.arange(len(lattice.xy[0]))  # rows kept at the current magnification
    stats = StreamStats()
    # read as the feature file's rows were (`encode_plan`), also when the model's lowest
    # magnification is not the file's
    (first,) = encode_plan(
        slide_path,
        full,
        encoder,
        bs,
        progress=False,
        reader=reader,
        stats=stats,
        mags=lattice.mags[:1],
    )
    timer.record(stats)
    feats = torch.from_numpy(first).unsqueeze(0)
    feats = predictor.norm(feats) if predictor.norm is not None else feats
    tic = time.perf_counter()
    encoded[mag_key(lattice.mags[0])] = len(rows)
    for m in range(len(lattice.mags)):
        with torch.inference_mode():
            step = model.zoom_step(m, feats.to(encoder.device))
        pooled.append(step.pooled)
        entry = {
            "mag": lattice.mags[m],
            "side0": lattice.sides[m],
            "xy": lattice.xy[m][rows].tolist(),
            "weights": step.attention.float().cpu().tolist(),
        }
        if step.scores is not None and model.selected_by == "selection attention":
            entry["selection_scores"] = step.scores.float().cpu().tolist()  # what chose
        attention.append(entry)
        tic = timer.add("head", tic)
        if step.selected is None:
            break
        chosen = rows[step.selected.cpu().numpy()]
        selected.append(
            {
                "mag": lattice.mags[m],
                "side0": lattice.sides[m],
                "xy": lattice.xy[m][chosen].tolist(),
            }
        )
        depth = steps_between(lattice.mags[m], lattice.mags[m + 1])
        rows = descendant_rows(chosen, 4**depth)
        feats = _encode_regions(
            encoder,
            reader,
            slide_path,
            lattice.xy[m][chosen],
            lattice.sides[m],
            zoom_chain(full.mags, lattice.mags[m], lattice.mags[m + 1]),
            p,
            bs,
            predictor.norm,
            timer,
        )
        tic = time.perf_counter()
        encoded[mag_key(lattice.mags[m + 1])] = len(rows)
    with torch.inference_mode():
        logits = model.classify_pooled(pooled)
    synchronize(encoder.device)
    timer.add("head", tic)
    result = _result(predictor, slide_path, lattice, logits, encoded, selected, attention, timer)
    result["selected_by"] = model.selected_by  # what the heatmap's legend says of the boxes
    return result


def all_patch_predict(
    predictor: Predictor,
    slide_path: str | Path,
    encoder: AnyEncoder,
    mpp: float | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    reader: ReaderPool | None = None,
    tiled: Lattice | None = None,
    default_mpp: float | None = None,
    attention: bool = True,
) -> dict[str, Any]:
    """Encode every tissue patch at the model's magnifications, then run the MIL head; the
    record carries the model's attention over the patches where it has one (``attention``:
    False leaves out that second pass of the head, for timing).

    Streams like `zoommil features`: the same reads per parent, readers ahead of the encoder, and
    only the features are kept (memory does not grow with the slide's pixels).
    """
    args = (mpp, batch_size, progress, reader, tiled, default_mpp, attention)
    return all_patch_predict_shared([predictor], slide_path, encoder, *args)[0]


def all_patch_predict_shared(
    predictors: Sequence[Predictor],
    slide_path: str | Path,
    encoder: AnyEncoder,
    mpp: float | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    reader: ReaderPool | None = None,
    tiled: Lattice | None = None,
    default_mpp: float | None = None,
    attention: bool = False,
) -> list[dict[str, Any]]:
    """`all_patch_predict` for several models that read the same patches: one tiling, reading
    and encoding pass, then each model's head. Each record's times are that pass plus its own
    head (``seconds.total``), i.e. what the model alone would have taken. ``attention``: also
    record each model's attention over its patches (`attention_entries`), after the timed
    head (timing runs leave it out: it is a second pass of the head)."""
    lead = check_shared_pass(predictors)
    timer = _Timer()
    slide_path = Path(slide_path)
    full = tiled or tile_for_inference(lead.recipe, slide_path, mpp, default_mpp)
    lattice = full.restricted_to(lead.mags)
    timer.end_tiling()
    stats = StreamStats()
    with _reader_for(reader, encoder) as reader:
        per_mag = encode_plan(  # read as the file's rows were, though only lead.mags are kept
            slide_path,
            full,
            encoder,
            batch_size or default_batch_size(encoder.device),
            progress=progress,
            reader=reader,
            stats=stats,
            mags=lattice.mags,
        )
    timer.record(stats)
    shared = timer.summary()
    coords = [torch.as_tensor(c) for c in lattice.coords]
    results = []
    for predictor in predictors:
        own = _Timer()
        tic = time.perf_counter()
        feats = []
        for f in per_mag or []:
            t = torch.from_numpy(f).unsqueeze(0)
            feats.append(
                (predictor.norm(t) if predictor.norm is not None else t).to(encoder.device)
            )
        with torch.inference_mode():
            logits = predictor.model(feats, coords)
        synchronize(encoder.device)
        own.add("head", tic)
        encoded = {mag_key(m): int(f.shape[1]) for m, f in zip(lattice.mags, feats, strict=True)}
        scores = []
        if attention:
            scores = attention_entries(predictor.model, feats, coords, lattice)
            named = getattr(predictor.model, "attention_class", None)
            for entry in scores if named else []:  # MaxMIL's and DSMIL's are of one class
                entry["class"] = predictor.classes[named(logits)]
        result = _result(predictor, slide_path, lattice, logits, encoded, [], scores, own)
        head = result["seconds"]["head"]
        result["seconds"] = {**shared, "head": head, "total": shared["total"] + head}
        results.append(result)
    return results


def attention_entries(
    model: nn.Module,
    feats: Sequence[torch.Tensor],
    coords: Sequence[torch.Tensor],
    lattice: Lattice,
) -> list[dict[str, Any]]:
    """A baseline's per-patch attention (``model.attention_scores``; MaxMIL: each patch's
    probability of one class), one entry per magnification as ZoomMIL's are recorded (mag,
    side0, level-0 xy, weights); none for a model without it.

    The scores cover every magnification's rows, lowest first (MS-MIL's softmax over all of
    them), or only the highest's (DSMIL's critical-instance attention)."""
    scores_of = getattr(model, "attention_scores", None)
    if scores_of is None:
        return []
    with torch.inference_mode():
        scores = scores_of(list(feats), list(coords)).float().cpu().numpy()
    counts = [len(xy) for xy in lattice.xy]
    if len(scores) == sum(counts):
        mags = range(len(counts))
    elif len(scores) == counts[-1]:
        mags = range(len(counts) - 1, len(counts))
    else:
        raise ZoomMILError(
            f"{type(model).__name__}.attention_scores gave {len(scores)} weights for "
            f"{counts} patches per magnification"
        )
    entries, start = [], 0
    for m in mags:
        stop = start + counts[m]
        entries.append(
            {
                "mag": lattice.mags[m],
                "side0": lattice.sides[m],
                "xy": lattice.xy[m].tolist(),
                "weights": scores[start:stop].tolist(),
            }
        )
        start = stop
    return entries


def shared_pass_groups(predictors: Sequence[Predictor]) -> list[list[int]]:
    """Indices of ``predictors`` grouped by what one pass over a slide can serve: each
    ZoomMIL model alone (it reads what it selects), the other models by preprocessing recipe
    and the magnifications they read (same tiling, encoder and rows: the same patches). First
    appearance order."""
    groups: list[list[int]] = []
    reads: list[tuple[PreprocessingRecipe, list[float]] | None] = []
    for i, predictor in enumerate(predictors):
        key = (predictor.recipe, predictor.mags)
        if predictor.arch != "zoommil" and key in reads:
            groups[reads.index(key)].append(i)
            continue
        groups.append([i])
        reads.append(None if predictor.arch == "zoommil" else key)
    return groups


def check_shared_pass(predictors: Sequence[Predictor]) -> Predictor:
    """The first of ``predictors`` if they can share one all-patch pass (same preprocessing
    recipe, no zoom model), else a `ZoomMILError` naming the two that differ."""
    if not predictors:
        raise ZoomMILError("no model given")
    lead = predictors[0]
    for other in predictors:
        if other.arch == "zoommil":
            raise ZoomMILError(
                f"{other.method}: ZoomMIL reads only the regions it selects; it cannot share "
                "an all-patch pass with other models (time it on its own)"
            )
        if other.recipe != lead.recipe or other.mags != lead.mags:
            raise ZoomMILError(
                f"{other.method} and {lead.method} read different patches "
                f"({format_mags(other.mags)} vs {format_mags(lead.mags)}, or another tiling "
                "or encoder): time them in separate runs"
            )
    return lead


@contextmanager
def _reader_for(reader: ReaderPool | None, encoder: AnyEncoder) -> Iterator[ReaderPool]:
    """The caller's reader pool, or one for this call (closed after it)."""
    if reader is not None:
        yield reader
        return
    with ReaderPool(default_workers(encoder.device)) as own:
        own.start()  # its start-up overlaps tissue detection
        yield own


def _result(
    predictor: Predictor,
    slide_path: Path,
    lattice: Lattice,
    logits: torch.Tensor,
    encoded: dict[str, int],
    selected: list[dict[str, Any]],
    attention: list[dict[str, Any]],
    timer: _Timer,
) -> dict[str, Any]:
    """The prediction record both inference paths return (see `zoommil predict --json`).

    It names the slide by its resolved path and OpenSlide quickhash (the lattice's, from the
    open file) as well as by the path given: `--resume` keeps a JSON only for the slide it
    describes, not for another file of the same name (`cohort.finished_rows`)."""
    probs = torch.softmax(logits.float(), dim=-1)[0].cpu().numpy()
    return {
        "slide": str(slide_path),
        "slide_id": slide_path.stem,
        "slide_path": str(lattice.attrs.get("slide_path") or Path(slide_path).resolve()),
        "slide_quickhash": str(lattice.attrs.get("slide_quickhash") or ""),
        "method": predictor.method,
        "arch": predictor.arch,
        "classes": predictor.classes,
        "probabilities": {c: float(v) for c, v in zip(predictor.classes, probs, strict=True)},
        "predicted": predictor.classes[int(np.argmax(probs))],
        "patches_encoded": int(sum(encoded.values())),
        "patches_per_mag": encoded,
        "mpp": float(lattice.attrs["mpp"]),
        "mpp_source": lattice.attrs["mpp_source"],
        "tissue_note": lattice.attrs.get("tissue_note"),
        "tissue_version": lattice.attrs.get("tissue_version"),
        "encoder": predictor.recipe.encoder,
        "weights": predictor.recipe.weights,
        "checkpoint_sha256": predictor.checkpoint_sha256,
        "weights_sha256": predictor.encoder_weights_sha256 or None,
        "selected": selected,
        "attention": attention,
        "seconds": timer.summary(),
    }


def make_encoder(
    predictor: Predictor,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    check_weights: bool = True,
) -> tuple[PatchEncoder, dict[str, Any]]:
    """The encoder the checkpoint's features were made with (same encoder, weights, seed and,
    unless ``precision`` overrides it, precision).

    The weights built must be those the checkpoint records (their sha256), else a
    `ZoomMILError`: another file, ``--weights random`` or a file overwritten since training
    gives features of the same dimension and, without a word, other probabilities.
    ``check_weights=False`` is for timing only (`zoommil profile`: the cost does not depend on
    the weights' values, so e.g. random weights can time a checkpoint of gated weights)."""
    recipe = predictor.recipe
    try:
        model, info = build_encoder(
            recipe.weights, seed=recipe.weights_seed, encoder=recipe.encoder
        )
    except ZoomMILError as error:
        recorded = _recorded_weights_error(predictor, error, check_weights)
        if recorded is None:
            raise
        raise recorded from error
    if predictor.in_dim is not None and int(info["feature_dim"]) != predictor.in_dim:
        raise ZoomMILError(
            f"encoder {recipe.encoder} gives {info['feature_dim']}-d features but the "
            f"checkpoint was trained on {predictor.in_dim}-d features"
        )
    built = str(info.get("weights_sha256") or "")
    want = predictor.weights_sha256
    if check_weights and want and built != want:
        source = recipe.weights
        if source == "random":
            source = f"random (seed {recipe.weights_seed})"
        raise ZoomMILError(
            f"{predictor.checkpoint or 'the checkpoint'}: trained on features made with encoder "
            f"weights sha256 {want[:12]}, but weights {source} are sha256 {built[:12]} "
            f"({_other_weights_hint(predictor)})"
        )
    predictor.encoder_weights_sha256 = built
    precision = precision or recipe.precision
    return PatchEncoder(model, device=device, precision=precision), info


def _other_weights_hint(predictor: Predictor) -> str:
    """What to do when the weights built are not the training features' (their sha256).

    Why two: the checkpoint's own random weights of its seed are rebuilt, not read from a
    file, so a mismatch there means another zoommil (or torch) initialised them otherwise, as
    after an upgrade (a 2026-11-25 zoommil's seed 0 differs from today's); no --weights file
    can match them."""
    if predictor.recipe.weights == "random" and predictor.weights_from_checkpoint:
        return (
            "random weights are rebuilt from their seed, and the zoommil or torch that made "
            "the training features initialised them otherwise: retrain on features made with "
            "this one"
        )
    return "pass --weights with the file the training features were made with"


def _recorded_weights_error(
    predictor: Predictor, error: ZoomMILError, check_weights: bool
) -> ZoomMILError | None:
    """For weights the checkpoint records (no --weights given) that are not on this machine,
    ``error`` said as the checkpoint's, without its "use --weights random": the sha256 check
    then refuses random weights (reviews V, N). None where ``error`` stands as it is."""
    weights = predictor.recipe.weights
    if not predictor.weights_from_checkpoint or weights == "random":
        return None
    if weights not in WEIGHT_KEYWORDS and Path(weights).expanduser().exists():
        return None  # a file that is there but cannot be loaded: its own message says why
    head = f"{predictor.checkpoint or 'the checkpoint'}: its training features were made with "
    want = f" (sha256 {predictor.weights_sha256[:12]})" if predictor.weights_sha256 else ""
    timing = "" if check_weights else ", or, for timing only, --weights random"
    if weights in WEIGHT_KEYWORDS:  # imagenet, hf: the cache's own message, less random
        reason = str(error).removesuffix(DEMO_ALTERNATIVE)
        return ZoomMILError(f"{head}the encoder weights {weights}{want}: {reason}{timing}")
    return ZoomMILError(
        f"{head}the encoder weights {weights}{want}, not found here: pass --weights with that "
        f"file (a copy of it anywhere){timing}"
    )


@contextmanager
def local_encoder(
    predictor: Predictor, device: str | torch.device, precision: str | None, threads: int | None
) -> Iterator[AnyEncoder]:
    """The checkpoint's encoder in this process plus, for ``threads`` > 1 on CPU, encoder
    processes that share its batches (`cpu_encoder`), closed on exit."""
    encoder, _ = make_encoder(predictor, device=device, precision=precision)
    r = predictor.recipe
    recipe = EncoderRecipe(r.encoder, r.weights, r.weights_seed)
    with cpu_encoder(encoder, recipe, threads) as runner:
        yield runner


def predict_slide(
    predictor: Predictor,
    slide_path: str | Path,
    encoder: AnyEncoder,
    mpp: float | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    reader: ReaderPool | None = None,
    tiled: Lattice | None = None,
    default_mpp: float | None = None,
    attention: bool = True,
) -> dict[str, Any]:
    """Zoom inference for ZoomMIL, all-patch inference for every other architecture.

    ``mpp`` (level-0 um/px) replaces the slide's metadata; ``default_mpp`` is used only for a
    slide whose metadata has none. ``batch_size`` defaults to the measured best for the device
    (4 on CPU, 64 on GPU); ``reader`` is a running `ReaderPool` to reuse across slides (else
    one per call); ``tiled`` is the slide's lattice when it was made ahead (`TilingAhead`).
    A read error is retried once with a fresh handle, then is a `SlideError`. ``attention``:
    False leaves a baseline's attention out (a second pass of its head; timing runs), ZoomMIL
    records its own in any case.
    """
    args = (mpp, batch_size, progress, reader, tiled, default_mpp)
    if predictor.arch == "zoommil":
        return _retrying(zoom_predict, predictor, slide_path, encoder, *args)
    return _retrying(all_patch_predict, predictor, slide_path, encoder, *args, attention)


def predict_slide_shared(
    predictors: Sequence[Predictor],
    slide_path: str | Path,
    encoder: AnyEncoder,
    mpp: float | None = None,
    batch_size: int | None = None,
    reader: ReaderPool | None = None,
    default_mpp: float | None = None,
) -> list[dict[str, Any]]:
    """`predict_slide` for models that read the same patches (`check_shared_pass`): one pass
    over the slide, one record per model; a single ZoomMIL model goes through zoom inference."""
    args = (mpp, batch_size, False, reader, None, default_mpp)
    if len(predictors) == 1 and predictors[0].arch == "zoommil":
        return [predict_slide(predictors[0], slide_path, encoder, *args)]
    return _retrying(all_patch_predict_shared, predictors, slide_path, encoder, *args)


def _retrying(run: Any, model: Any, slide_path: str | Path, *args: Any) -> Any:
    """``run(model, slide_path, *args)``, retried once on a read error, which is then a
    `SlideError`; a missing file is one at once."""
    import openslide

    if not Path(slide_path).exists():
        raise SlideError(slide_path, f"slide file not found: {Path(slide_path).resolve()}")
    for attempt in range(2):
        try:
            return run(model, slide_path, *args)
        except openslide.OpenSlideError as error:
            if attempt:
                raise SlideError(slide_path, f"cannot read the slide ({error})") from None
            log.warning("%s: read error (%s); retrying once", slide_path, error)
    raise AssertionError("unreachable")

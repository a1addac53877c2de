"""Seed ensembles: several checkpoints of one method classify a slide read once.

Why: the benchmark trains each method with several seeds, and a deployed model that is one
seed picked arbitrarily says nothing of how much the seeds disagree on a slide. The ensemble's
prediction is the mean of its checkpoints' probabilities; the record keeps each checkpoint's
and their spread.

Cost: the slide is tiled once and the encoder (shared: same recipe) built once. All-patch
models share one pass (`all_patch_predict_shared`). ZoomMIL checkpoints zoom side by side:
the lowest magnification's patches are encoded once, and at each zoom step the union of the
regions the checkpoints selected is read and encoded once, each checkpoint taking its own
regions' features from it (`zoom_predict_members`).

Only checkpoints of one method with the same classes (in order), model magnifications and
preprocessing recipe combine (`check_combinable`): different methods are refused, because their
spread would measure how methods differ rather than seed noise, and a ZoomMIL beside an
all-patch model would cost the all-patch pass anyway.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoommil.device import synchronize
from zoommil.errors import ZoomMILError
from zoommil.features.encoder_pool import AnyEncoder
from zoommil.features.extraction import StreamStats, default_batch_size, encode_plan
from zoommil.inference.predict import (
    Predictor,
    _encode_regions,
    _reader_for,
    _result,
    _Timer,
    all_patch_predict_shared,
    zoom_chain,
)
from zoommil.inference.tiling_ahead import tile_for_inference
from zoommil.recipe import format_mags, mag_key
from zoommil.wsi.lattice import Lattice, descendant_rows, steps_between
from zoommil.wsi.patches import ReaderPool


def check_combinable(predictors: Sequence[Predictor]) -> None:
    """Refuse checkpoints whose probabilities cannot be averaged or whose slides are not read
    alike: one line naming both files and what differs."""
    lead = predictors[0]
    seen: dict[str, str] = {}
    for other in predictors:
        if other.checkpoint_sha256 in seen:
            raise ZoomMILError(
                f"{other.checkpoint} and {seen[other.checkpoint_sha256]} are the same "
                "checkpoint (same sha256): give each seed once"
            )
        seen[other.checkpoint_sha256] = other.checkpoint
        if other is lead:
            continue
        why = _difference(lead, other)
        if why:
            raise ZoomMILError(
                f"{lead.checkpoint} and {other.checkpoint} cannot be combined: {why}"
            )


def _difference(a: Predictor, b: Predictor) -> str:
    """What makes ``b`` not combinable with ``a`` ("" if nothing)."""
    if a.method != b.method or a.arch != b.arch:
        return (
            f"method {a.method} vs {b.method} (an ensemble is one method's seeds: the spread "
            "of several methods would be their difference, not seed noise)"
        )
    if a.classes != b.classes:
        return f"classes {a.classes} vs {b.classes} (same classes, same order)"
    if a.mags != b.mags:
        return f"model magnifications {format_mags(a.mags)} vs {format_mags(b.mags)}"
    if a.in_dim != b.in_dim:
        return f"feature dimension {a.in_dim} vs {b.in_dim}"
    if a.weights_sha256 and b.weights_sha256 and a.weights_sha256 != b.weights_sha256:
        return (
            f"encoder weights sha256 {a.weights_sha256[:12]} vs {b.weights_sha256[:12]} "
            "(trained on other features)"
        )
    for field in dataclasses.fields(a.recipe):
        mine, theirs = getattr(a.recipe, field.name), getattr(b.recipe, field.name)
        if mine != theirs:
            what = "magnifications" if field.name == "mags" else field.name.replace("_", " ")
            return f"preprocessing {what} {mine!r} vs {theirs!r} (trained on other features)"
    return ""


def ensemble_id(predictors: Sequence[Predictor]) -> str:
    """The checkpoint set's identity, recorded as the prediction's ``checkpoint_sha256``: the
    sha256 of its members' sha256s, sorted (order does not matter). `--resume` keeps only a
    record of the same set, never one of a single checkpoint or of another set."""
    members = "\n".join(sorted(p.checkpoint_sha256 for p in predictors))
    return "ensemble-" + hashlib.sha256(members.encode()).hexdigest()


def predict_members(
    predictors: Sequence[Predictor],
    slide_path: str | Path,
    encoder: AnyEncoder,
    mpp: float | None = None,
    batch_size: int | None = None,
    reader: ReaderPool | None = None,
    default_mpp: float | None = None,
    tiled: Lattice | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Each checkpoint's prediction record (as `predict_slide` makes it) from one reading of
    the slide, and the patches encoded per magnification for them all. ``tiled``: the
    slide's lattice if it was made ahead (`TilingAhead`), else it is made here."""
    if predictors[0].arch == "zoommil":
        with _reader_for(reader, encoder) as pool:
            return zoom_predict_members(
                predictors, Path(slide_path), encoder, mpp, batch_size, pool, default_mpp, tiled
            )
    args = (mpp, batch_size, False, reader, tiled, default_mpp, True)
    results = all_patch_predict_shared(predictors, slide_path, encoder, *args)
    return results, dict(results[0]["patches_per_mag"])


@dataclasses.dataclass
class _Zoom:
    """One checkpoint's state along the zoom: its rows at the current magnification, their
    (standardised) features, and what its record collects."""

    rows: np.ndarray
    feats: torch.Tensor
    pooled: list = dataclasses.field(default_factory=list)
    attention: list = dataclasses.field(default_factory=list)
    selected: list = dataclasses.field(default_factory=list)
    encoded: dict = dataclasses.field(default_factory=dict)
    chosen: np.ndarray | None = None


def zoom_predict_members(
    predictors: Sequence[Predictor],
    slide_path: Path,
    encoder: AnyEncoder,
    mpp: float | None,
    batch_size: int | None,
    reader: ReaderPool,
    default_mpp: float | None,
    tiled: Lattice | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """`zoom_predict` of several ZoomMIL checkpoints in lock step: the lowest magnification
    encoded once; at each step the union of their selected regions read and encoded once."""
    lead = predictors[0]
    timer = _Timer()
    bs = batch_size or default_batch_size(encoder.device)
    full = tiled or tile_for_inference(lead.recipe, slide_path, mpp, default_mpp)
    lattice = full.restricted_to(lead.mags)
    timer.end_tiling()
    stats = StreamStats()
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
    raw = torch.from_numpy(first).unsqueeze(0)
    n_low = len(lattice.xy[0])
    zooms = [_Zoom(np.arange(n_low), _normed(p, raw)) for p in predictors]
    union_encoded = {mag_key(lattice.mags[0]): n_low}
    for zoom in zooms:
        zoom.encoded[mag_key(lattice.mags[0])] = n_low
    for m in range(len(lattice.mags)):
        tic = time.perf_counter()
        going = [
            (p, z)
            for p, z in zip(predictors, zooms, strict=True)
            if (m == 0 or z.chosen is not None) and _step(p, z, m, lattice, encoder.device)
        ]
        timer.add("head", tic)
        if not going:
            break
        union = np.unique(np.concatenate([z.chosen for _, z in going]))
        depth = steps_between(lattice.mags[m], lattice.mags[m + 1])
        per = 4**depth
        block = _encode_regions(
            encoder,
            reader,
            slide_path,
            lattice.xy[m][union],
            lattice.sides[m],
            zoom_chain(full.mags, lattice.mags[m], lattice.mags[m + 1]),
            lead.patch_size,
            bs,
            None,
            timer,
        )
        union_encoded[mag_key(lattice.mags[m + 1])] = len(union) * per
        for predictor, zoom in going:
            at = np.searchsorted(union, zoom.chosen)
            take = (at[:, None] * per + np.arange(per)[None, :]).reshape(-1)
            zoom.feats = _normed(predictor, block[:, torch.from_numpy(take)])
            zoom.rows = descendant_rows(zoom.chosen, per)
            zoom.encoded[mag_key(lattice.mags[m + 1])] = len(zoom.rows)
    results = []
    for predictor, zoom in zip(predictors, zooms, strict=True):
        tic = time.perf_counter()
        with torch.inference_mode():
            logits = predictor.model.classify_pooled(zoom.pooled)
        synchronize(encoder.device)
        timer.add("head", tic)
        result = _result(
            predictor,
            slide_path,
            lattice,
            logits,
            zoom.encoded,
            zoom.selected,
            zoom.attention,
            timer,
        )
        result["selected_by"] = predictor.model.selected_by
        results.append(result)
    return results, union_encoded


def _normed(predictor: Predictor, feats: torch.Tensor) -> torch.Tensor:
    return predictor.norm(feats) if predictor.norm is not None else feats


def _step(predictor: Predictor, zoom: _Zoom, m: int, lattice: Any, device: torch.device) -> bool:
    """One checkpoint's zoom step ``m`` as `zoom_predict` takes it; True if it selected
    regions to read at the next magnification (``zoom.chosen``)."""
    model = predictor.model
    with torch.inference_mode():
        step = model.zoom_step(m, zoom.feats.to(device))
    zoom.pooled.append(step.pooled)
    entry = {
        "mag": lattice.mags[m],
        "side0": lattice.sides[m],
        "xy": lattice.xy[m][zoom.rows].tolist(),
        "weights": step.attention.float().cpu().tolist(),
    }
    if step.scores is not None and model.selected_by == "selection attention":
        entry["selection_scores"] = step.scores.float().cpu().tolist()
    zoom.attention.append(entry)
    if step.selected is None:
        zoom.chosen = None
        return False
    zoom.chosen = zoom.rows[step.selected.cpu().numpy()]
    zoom.selected.append(
        {
            "mag": lattice.mags[m],
            "side0": lattice.sides[m],
            "xy": lattice.xy[m][zoom.chosen].tolist(),
        }
    )
    return True


def combine(
    predictors: Sequence[Predictor],
    results: Sequence[dict[str, Any]],
    encoded: dict[str, int],
    seeds: Sequence[int | None],
) -> dict[str, Any]:
    """The ensemble's record: the first checkpoint's record of the slide with the mean of the
    probabilities, the patches the ensemble encoded, ``checkpoint_sha256`` the set's
    (`ensemble_id`), no attention of its own, each checkpoint's record (``checkpoints``) and
    their spread (``ensemble``)."""
    classes = predictors[0].classes
    table = np.array([[r["probabilities"][c] for c in classes] for r in results], dtype=float)
    mean = table.mean(axis=0)
    top = int(np.argmax(mean))
    column = table[:, top]
    votes = [r["predicted"] for r in results]
    record = dict(results[0])
    record.update(
        probabilities={c: float(v) for c, v in zip(classes, mean, strict=True)},
        predicted=classes[top],
        patches_encoded=int(sum(encoded.values())),
        patches_per_mag=encoded,
        checkpoint_sha256=ensemble_id(predictors),
        selected=[],
        attention=[],
        seconds=_seconds(predictors[0].arch, results),
    )
    record.pop("selected_by", None)
    record["checkpoints"] = [
        {
            "checkpoint": p.checkpoint,
            "checkpoint_sha256": p.checkpoint_sha256,
            "seed": seed,
            "probabilities": r["probabilities"],
            "predicted": r["predicted"],
            "patches_encoded": r["patches_encoded"],
            "patches_per_mag": r["patches_per_mag"],
            "selected": r["selected"],
            "attention": r["attention"],
            **({"selected_by": r["selected_by"]} if "selected_by" in r else {}),
        }
        for p, r, seed in zip(predictors, results, seeds, strict=True)
    ]
    record["ensemble"] = {
        "checkpoints": len(results),
        "mean_of": "probabilities",
        "argmax_agree": len(set(votes)) == 1,
        "votes": {c: votes.count(c) for c in classes},
        # the spread of the ensemble's predicted class's probability over the checkpoints
        # (sd: sample standard deviation, n-1)
        "p_predicted_sd": float(column.std(ddof=1)),
        "p_predicted_min": float(column.min()),
        "p_predicted_max": float(column.max()),
    }
    return record


def _seconds(arch: str, results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The ensemble's time: ZoomMIL's checkpoints share one timer (the last record made has
    it all); an all-patch record is the shared pass plus its own head, so the ensemble's is
    the pass plus every head."""
    if arch == "zoommil":
        return dict(results[-1]["seconds"])
    first = results[0]["seconds"]
    heads = sum(r["seconds"]["head"] for r in results)
    return {**first, "head": heads, "total": first["total"] - first["head"] + heads}


def spread_text(record: dict[str, Any]) -> str:
    """The printed line's tail: how much the checkpoints agree on the predicted class."""
    e = record["ensemble"]
    votes = ", ".join(f"{c} {n}" for c, n in e["votes"].items() if n)
    agree = "argmax agree" if e["argmax_agree"] else f"argmax disagree ({votes})"
    return (
        f"; {e['checkpoints']} checkpoints: p({record['predicted']}) sd "
        f"{e['p_predicted_sd']:.3f}, min-max {e['p_predicted_min']:.3f}-"
        f"{e['p_predicted_max']:.3f}, {agree}"
    )

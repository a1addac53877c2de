"""FLOPs per slide: encoder FLOPs x patches encoded + the MIL head on that bag.

Counted with fvcore (one multiply-add = one flop, i.e. what timm and most model cards call
GMACs and the paper calls FLOPs; its TFLOPs columns read "TFLOPs" as 2^40 flops; see
../shared/notes/cpu_throughput.md) and cross-checked with ``torch.utils.flop_counter`` (which
counts a multiply-add as two flops, so it is halved). Attention's two batched products inside
``scaled_dot_product_attention`` are counted too (fvcore has no handle for it by default).
The encoder cost is per patch at the encoder's own input size (224 px for the ViTs, whose
transform resizes the lattice's 256 px patches; 256 px for the paper's ResNet-50).
ZoomMIL encodes only what it zooms into: ``N_low + K * 4^d1 + ...`` patches, the rows its
eval-mode forward keeps; every other model encodes all rows of the magnifications it reads.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from zoommil.errors import ZoomMILError, first_few
from zoommil.features.encoder import PATCH_SIZE
from zoommil.features.encoders.registry import (
    DEFAULT_ENCODER,
    EncoderSpec,
    canonical_name,
    get_spec,
)
from zoommil.inference.checkpoint_recipe import counting_recipe
from zoommil.io.featurefile import read_feature_file
from zoommil.io.sheet import read_sheet
from zoommil.recipe import encoder_provenance
from zoommil.training.checkpoint import model_from_checkpoint, recorded_path
from zoommil.training.data import check_feature_dim, feature_tensors, read_exclusions

with warnings.catch_warnings():
    # fvcore.nn scripts its focal loss with torch.jit.script at import, which torch deprecates:
    # a FutureWarning in every FLOPs log about code this module never runs
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    from fvcore.nn import FlopCountAnalysis

log = logging.getLogger(__name__)

TFLOP = 2.0**40


def _sdpa_flop_jit(inputs: list, outputs: list) -> float:
    """Multiply-adds of ``scaled_dot_product_attention``: Q K^T and the weighted sum of V."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    return float(batch * q[-2] * k[-2] * (q[-1] + v[-1]))


def fvcore_flops(model: nn.Module, inputs: tuple) -> float:
    """fvcore flop count (multiply-adds) of ``model(*inputs)``; unsupported ops are ignored."""
    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop_jit)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return float(analysis.total())


def torch_flops(model: nn.Module, inputs: tuple) -> float:
    """torch.utils.flop_counter count, halved to multiply-adds to compare with fvcore."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(*inputs)
    return counter.get_total_flops() / 2.0


def _count(spec: EncoderSpec, side: int) -> dict[str, float]:
    from zoommil.features.encoders.weights import family

    with torch.random.fork_rng(devices=[]):
        model = family(spec).build(spec).eval()
    x = torch.zeros(1, 3, side, side)
    with torch.no_grad():
        return {"fvcore": fvcore_flops(model, (x,)), "torch": torch_flops(model, (x,))}


@lru_cache(maxsize=16)
def encoder_flops_per_patch(
    encoder: str = DEFAULT_ENCODER, patch_size: int = PATCH_SIZE
) -> dict[str, float]:
    """FLOPs of one patch through ``encoder`` (fvcore and torch counters), at its input size.

    The paper's ResNet-50 takes the lattice patch as it is (``patch_size``); the ViTs take
    their card's input (the transform resizes). A ViT is counted exactly without building it
    whole: its blocks are identical, so the count is affine in depth and two shallow copies
    (depth 1 and 2) give it, which keeps a ViT-g (1.1B parameters) out of memory.
    """
    spec = get_spec(encoder)
    side = patch_size if spec.resize is None else spec.input_size
    depth = int(spec.kwargs.get("depth", 0))
    if spec.family != "vit" or depth <= 2:
        return {**_count(spec, side), "input_size": float(side)}
    one, two = _count(spec.with_kwargs(depth=1), side), _count(spec.with_kwargs(depth=2), side)
    out = {k: one[k] + (depth - 1) * (two[k] - one[k]) for k in one}
    return {**out, "input_size": float(side)}


def zoom_rows(model: nn.Module, feats: Sequence[torch.Tensor]) -> list[int]:
    """Rows ZoomMIL keeps (= patches it encodes) per magnification in eval mode."""
    with torch.no_grad():
        details = model.forward_with_details(feats)
    return [len(w) for w in details["attention"]]


class _Head(nn.Module):
    """Wraps a MIL model so tracers see a tuple of tensors, not a list argument; the bag's
    grid coordinates ride along as constants (SparseConvMIL's map is laid out from them)."""

    def __init__(self, model: nn.Module, coords: Sequence[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.model = model
        self.coords = list(coords) if coords is not None else None

    def forward(self, *feats: torch.Tensor) -> torch.Tensor:
        return self.model(list(feats), self.coords)


def head_flops(
    model: nn.Module,
    feats: Sequence[torch.Tensor],
    coords: Sequence[torch.Tensor] | None = None,
) -> dict[str, float]:
    """FLOPs of the MIL head on one bag (eval mode), by fvcore and by torch's counter.

    ``coords`` (per magnification, [N, 2] grid positions) as `predict` passes them: without
    them SparseConvMIL lays the instances out on a square, whose convolutions cost other
    FLOPs than the slide's own grid."""
    model.eval()
    wrapped = _Head(model, coords).eval()
    with torch.no_grad():
        return {
            "fvcore": fvcore_flops(wrapped, tuple(feats)),
            "torch": torch_flops(wrapped, tuple(feats)),
        }


def slide_flops(
    model: nn.Module,
    arch: str,
    feats: Sequence[torch.Tensor],
    patch_size: int = PATCH_SIZE,
    encoder: str = DEFAULT_ENCODER,
    coords: Sequence[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Encoder + head FLOPs of one slide (``coords``: its grid, see `head_flops`), and the
    number of patches encoded (``patches_encoded``, and ``patches_per_mag``, a list)."""
    rows = zoom_rows(model, feats) if arch == "zoommil" else [int(f.shape[1]) for f in feats]
    per_patch = encoder_flops_per_patch(encoder, patch_size)
    head = head_flops(model, feats, coords)
    patches = int(sum(rows))
    encoder_flops = per_patch["fvcore"] * patches
    return {
        "patches_encoded": patches,
        "patches_per_mag": rows,
        "encoder_flops": encoder_flops,
        "head_flops": head["fvcore"],
        "head_flops_torch_counter": head["torch"],
        "total_flops": encoder_flops + head["fvcore"],
    }


def checkpoint_flops(
    checkpoint: str | Path,
    features_dir: str | Path,
    sheet: str | Path | None = None,
    split: str = "test",
    max_slides: int | None = None,
    method: str | None = None,
    progress: bool = True,
    exclude: str | Path | None = None,
) -> dict[str, Any]:
    """FLOPs per slide of a trained method over one split's feature files (`zoommil flops`).

    The patch size is the checkpoint's recipe; ``sheet`` defaults to the checkpoint's and,
    with it, ``exclude`` to its QC table: the slides QC left out are not counted (a blank
    slide's glass-only feature file was, run by hand, review E). Slides left out, by QC or
    for want of a feature file, are listed in ``excluded`` and logged.
    """
    if max_slides is not None and max_slides < 1:  # None: every slide of the split
        raise ZoomMILError(f"--max-slides must be at least 1, got {max_slides}")
    features_dir = Path(features_dir)
    model, config = model_from_checkpoint(checkpoint)
    recorded = config.get("preprocessing") or {}
    recipe = counting_recipe(recorded, mags=config["mags"])
    encoder = canonical_name(recipe.encoder)
    if sheet is None:
        sheet = recorded_path(config, "sheet", "slide sheet", "--sheet", checkpoint, required=True)
        if exclude is None:
            exclude = recorded_path(
                config, "exclude", "exclusion (QC) table", "--exclude", checkpoint
            )
    frame = read_sheet(sheet)
    qc = read_exclusions(exclude)
    ids, excluded = [], []
    for slide_id in (str(s) for s in frame.loc[frame["split"] == split, "slide_id"]):
        if slide_id in qc:
            excluded.append({"slide_id": slide_id, "reason": qc[slide_id]})
        elif not (features_dir / f"{slide_id}.h5").exists():
            excluded.append({"slide_id": slide_id, "reason": "no feature file"})
        else:
            ids.append(slide_id)
    ids = ids[:max_slides]
    if not ids:
        raise ZoomMILError(f"{features_dir}: no feature files for the '{split}' split")
    rows = []
    for slide_id in tqdm(ids, desc="flops", unit="slide", disable=not progress):
        bag = read_feature_file(features_dir / f"{slide_id}.h5", config["mags"])
        if min(len(f) for f in bag.feats) == 0:  # left out as evaluation leaves it out
            excluded.append({"slide_id": slide_id, "reason": "no patches (no tissue)"})
            continue
        path = features_dir / f"{slide_id}.h5"
        check_feature_dim(path, bag.feats[0].shape[1], checkpoint, config["in_dim"])
        feats, coords = feature_tensors(bag.feats, bag.coords)
        flops = slide_flops(model, config["arch"], feats, recipe.patch_size, encoder, coords)
        rows.append({"slide_id": slide_id, **flops})
    if excluded:
        log.warning(
            "%s: %d '%s' slide(s) not counted: %s",
            checkpoint,
            len(excluded),
            split,
            first_few([f"{e['slide_id']} ({e['reason']})" for e in excluded], sep="; "),
        )
    if not rows:
        raise ZoomMILError(f"{features_dir}: every '{split}' slide has zero patches")
    per_patch = encoder_flops_per_patch(encoder, recipe.patch_size)
    mean_total = float(np.mean([r["total_flops"] for r in rows]))
    return {
        "method": method or config.get("method", config["arch"]),
        "arch": config["arch"],
        "mags": config["mags"],
        "kwargs": config.get("kwargs") or {},
        # the weights as recorded (random ones say so); the encoder as counted
        **{**encoder_provenance(recorded), "encoder": encoder},
        "encoder_input_size": int(per_patch["input_size"]),
        "encoder_flops_per_patch": per_patch["fvcore"],
        "encoder_flops_per_patch_torch_counter": per_patch["torch"],
        "per_slide": rows,
        "excluded": excluded,
        "mean_patches_encoded": float(np.mean([r["patches_encoded"] for r in rows])),
        "mean_head_flops": float(np.mean([r["head_flops"] for r in rows])),
        "mean_total_flops": mean_total,
        "mean_tflops": mean_total / TFLOP,
        "tflops_unit": "2^40 flops (fvcore: one multiply-add = one flop)",
    }

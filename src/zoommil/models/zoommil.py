"""ZoomMIL (Thandiackal et al., ECCV 2022): attention MIL that zooms from low to high magnification.

At every magnification m the kept rows go through ``fc_m`` (Linear+ReLU+Dropout) and a gated
attention that pools them into one vector ``v_m``. At every magnification but the last, a second
(auxiliary) gated attention scores the rows; the K best are "zoomed into": the next
magnification keeps only their descendants. The class logits come from ``sum_m v_m``.

Rows follow the feature-file contract: the ``r = 4^d`` descendants of row i at the next
magnification are rows ``i*r .. (i+1)*r - 1`` there. So the next magnification, viewed as
[N, r, D], is gathered by parent row:

- training (``selection="diff_topk"``): the soft indicator [K, N] of :class:`PerturbedTopK`
  mixes the parent rows, ``rows[k] = sum_i P[k, i] view[i]``, computed only over the non-zero
  entries of ``P`` (at most S*K of them), never as a dense Kronecker product;
- evaluation (and ``nondiff_topk`` / ``random``): hard indices, ``view[idx]`` (an index_select),
  so rows that are not descendants of a selected parent cannot affect the output.

Step-by-step inference (``zoommil predict`` reads only the regions it selects)::

    model.eval()
    feats = features of all rows at mags[0]                   # [1, N_0, D]
    steps = []
    for m in range(len(model.mags)):
        step = model.zoom_step(m, feats)                      # pooled vector, attention, selection
        steps.append(step)
        if step.selected is not None:                         # indices into this step's rows
            feats = encode(descendants of rows step.selected)  # [1, K*r, D], contract order
    logits = model.classify_pooled([s.pooled for s in steps])

``select(step, feats)`` and ``classify(gathered_feats)`` are shortcuts over the same functions.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zoommil.errors import ZoomMILError
from zoommil.models.attention import GatedAttention, attention_pool
from zoommil.models.bag import Coords, Feats, as_bag, as_list, check_bag
from zoommil.models.topk import GRAD_MODES, PerturbedTopK
from zoommil.wsi.lattice import descendant_ratios

SELECTIONS = ("diff_topk", "nondiff_topk", "random", "random_4k")
ATTENTIONS = ("dual", "single")
AGGREGATIONS = ("sum", "concat", "last")


def gather_descendants(x: torch.Tensor, index: torch.Tensor, r: int) -> torch.Tensor:
    """Rows of the selected parents' descendants: x [N*r, D], index [K] -> [K*r, D]."""
    d = x.shape[-1]
    return x.reshape(-1, r, d).index_select(0, index).reshape(-1, d)


def _csr(k_idx: torch.Tensor, n_idx: torch.Tensor, w: torch.Tensor, shape) -> torch.Tensor:
    """CSR matrix from row-major sorted edges (as ``nonzero`` returns them)."""
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=w.device)
    crow[1:] = torch.bincount(k_idx, minlength=shape[0]).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, n_idx, w, shape)


class _SparseRowMix(torch.autograd.Function):
    """``out = P @ view`` for a sparse P [K, N] given by its non-zero entries (row-major).

    Forward is a CSR x dense product (cost nnz * r * D, no [nnz, r * D] gather); backward gives
    the gradient of the non-zero entries only, ``(G @ view^T)`` sampled at them (sampled_addmm).
    """

    @staticmethod
    def forward(ctx, w, k_idx, n_idx, view, k):
        csr = _csr(k_idx, n_idx, w.detach(), (k, view.shape[0]))
        ctx.save_for_backward(w, k_idx, n_idx, view)
        ctx.k = k
        return csr @ view

    @staticmethod
    def backward(ctx, grad_out):
        w, k_idx, n_idx, view = ctx.saved_tensors
        grad_w = grad_view = None
        grad_out = grad_out.contiguous()
        if ctx.needs_input_grad[0]:
            pattern = _csr(k_idx, n_idx, torch.zeros_like(w), (ctx.k, view.shape[0]))
            grad_w = torch.sparse.sampled_addmm(pattern, grad_out, view.T, beta=0.0).values()
        if ctx.needs_input_grad[3]:
            order = torch.argsort(n_idx, stable=True)  # transpose: sort edges by column
            t = _csr(n_idx[order], k_idx[order], w.detach()[order], (view.shape[0], ctx.k))
            grad_view = t @ grad_out
        return grad_w, None, None, grad_view, None


def mix_descendants(x: torch.Tensor, indicator: torch.Tensor, r: int) -> torch.Tensor:
    """Soft zoom: x [N*r, D], indicator [K, N] -> [K*r, D], ``einsum('kn,nrd->krd')``.

    Only the non-zero entries of the indicator (at most S*K) are used. Its gradient is
    therefore exact where the indicator is non-zero and zero elsewhere, which is all
    PerturbedTopK's backward reads (it gathers the upstream gradient at the sampled indices).
    """
    k, n = indicator.shape
    d = x.shape[-1]
    view = x.reshape(n, r * d).contiguous()
    k_idx, n_idx = indicator.detach().nonzero(as_tuple=True)
    w = indicator[k_idx, n_idx]
    return _SparseRowMix.apply(w, k_idx, n_idx, view, k).reshape(k * r, d)


@dataclass
class ZoomStep:
    """One magnification of zoom inference.

    pooled: [1, hidden] attention-pooled vector; attention: [n] pooling weights over this step's
    rows; scores: [n] selection scores (None at the last magnification); selected: sorted indices
    into this step's rows whose descendants the next magnification keeps (None at the last).
    """

    pooled: torch.Tensor
    attention: torch.Tensor
    scores: torch.Tensor | None
    selected: torch.Tensor | None


class ZoomMIL(nn.Module):
    """ZoomMIL over M >= 2 magnifications (lowest first); see the module docstring.

    Args:
        in_dim: feature size (1024 for ResNet-50 layer3).
        n_classes: number of classes.
        mags: magnifications, increasing, power-of-two multiples (e.g. [1.25, 2.5, 10]).
        k: parents zoomed into per step: one int or one per step (len(mags) - 1). When a step
            has fewer rows than k, all are kept.
        hidden, attn_hidden, dropout: Linear(in_dim, hidden)+ReLU+Dropout; gated attention
            (hidden, attn_hidden) with dropout, as in the paper.
        num_samples, sigma, topk_grad: PerturbedTopK settings (S, noise scale on the softmax of
            the selection scores, "exact" or the official "diagonal" backward).
        selection: "diff_topk" (paper), "nondiff_topk" (hard top-K in training too), "random"
            (K random parents per step), "random_4k" (4K random parents per step).
        attention: "dual" (an auxiliary gated attention scores for selection) or "single"
            (the pooling attention's scores select).
        aggregation: "sum" (paper), "concat" of the per-magnification vectors, or "last" only.
        seed: seeds the random selection at evaluation, so that evaluation is repeatable.
    """

    def __init__(
        self,
        in_dim: int = 1024,
        n_classes: int = 2,
        mags: Sequence[float] = (1.25, 2.5, 10.0),
        k: int | Sequence[int] = 12,
        hidden: int = 512,
        attn_hidden: int = 256,
        dropout: float = 0.25,
        num_samples: int = 100,
        sigma: float = 0.002,
        topk_grad: str = "exact",
        selection: str = "diff_topk",
        attention: str = "dual",
        aggregation: str = "sum",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if len(mags) < 2:
            raise ZoomMILError(f"ZoomMIL needs at least 2 magnifications, got {list(mags)}")
        self.ratios = descendant_ratios(mags)
        self.mags = [float(m) for m in mags]
        n_steps = len(self.mags) - 1
        ks = [int(k)] * n_steps if isinstance(k, int) else [int(v) for v in k]
        if len(ks) != n_steps or min(ks) < 1:
            raise ZoomMILError(f"k must be a positive int or {n_steps} positive ints, got {k}")
        for name, value, allowed in (
            ("selection", selection, SELECTIONS),
            ("attention", attention, ATTENTIONS),
            ("aggregation", aggregation, AGGREGATIONS),
            ("topk_grad", topk_grad, GRAD_MODES),
        ):
            if value not in allowed:
                raise ZoomMILError(f"ZoomMIL {name} must be one of {allowed}, got {value!r}")
        self.in_dim = in_dim
        self.ks = ks
        self.selection = selection
        self.aggregation = aggregation
        self.seed = seed
        n_mags = len(self.mags)

        self.fc = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
            for _ in range(n_mags)
        )
        self.attention = nn.ModuleList(
            GatedAttention(hidden, attn_hidden, dropout=dropout) for _ in range(n_mags)
        )
        self.selection_attention = (
            nn.ModuleList(GatedAttention(hidden, attn_hidden, dropout=dropout) for _ in ks)
            if attention == "dual"
            else None
        )
        self.topk = nn.ModuleList(
            PerturbedTopK(kk, num_samples=num_samples, sigma=sigma, grad=topk_grad) for kk in ks
        )
        head_in = hidden * n_mags if aggregation == "concat" else hidden
        self.classifier = nn.Linear(head_in, n_classes)

    # ------------------------------------------------------------------ building blocks
    def _check(self, feats: Feats) -> list[torch.Tensor]:
        """The bag as [1, N_m, D] tensors (`bag.as_list`), checked against the model: one per
        magnification, ``in_dim`` wide, rows in the descendant layout of ``mags``."""
        feats = as_list(feats, self)
        if len(feats) != len(self.mags):
            raise ZoomMILError(
                f"ZoomMIL expects {len(self.mags)} magnifications {self.mags}, got {len(feats)}"
            )
        check_bag(feats[0], self.in_dim)
        n_prev = feats[0].shape[1]
        for m, (x, r) in enumerate(zip(feats[1:], self.ratios, strict=True), start=1):
            if x.shape[-1] != self.in_dim:
                check_bag(x, self.in_dim)
            if x.shape[1] != r * n_prev:
                raise ZoomMILError(
                    f"{self.mags[m]}x has {x.shape[1]} rows, expected {r} x {n_prev} "
                    f"(rows of {self.mags[m - 1]}x): features break the descendant layout"
                )
            n_prev = x.shape[1]
        return feats

    def _embed(self, step: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """fc + pooling attention: x [n, D] -> (h [n, hidden], pooled [1, hidden], weights [n])."""
        h = self.fc[step](x)
        pooled, weights = attention_pool(h.unsqueeze(0), self.attention[step](h).unsqueeze(0))
        return h, pooled, weights.reshape(-1)

    @property
    def selected_by(self) -> str:
        """What picks the regions at inference: "selection attention" (``attention="dual"``,
        the paper's), "pooling attention" (``"single"``: the top K of the pooling weights) or
        "random" (the random-selection ablations)."""
        if self.selection in ("random", "random_4k"):
            return "random"
        return "pooling attention" if self.selection_attention is None else "selection attention"

    def _selection_scores(self, step: int, h: torch.Tensor) -> torch.Tensor:
        """Softmax over rows of the selection attention (the official top-K input): [n]."""
        nets = self.attention if self.selection_attention is None else self.selection_attention
        net = nets[step]
        return torch.softmax(net(h).reshape(-1), dim=0)

    def _n_select(self, step: int) -> int:
        return self.ks[step] * (4 if self.selection == "random_4k" else 1)

    def _hard_select(self, step: int, scores: torch.Tensor) -> torch.Tensor:
        """Sorted indices of the kept parents (hard top-K, or random for the random ablations)."""
        n = scores.shape[0]
        k = min(self._n_select(step), n)
        if self.selection in ("random", "random_4k"):
            if self.training:
                perm = torch.randperm(n, device=scores.device)
            else:
                gen = torch.Generator().manual_seed(self.seed * 1009 + step)
                perm = torch.randperm(n, generator=gen).to(scores.device)
            idx = perm[:k]
        else:
            idx = torch.topk(scores.detach(), k=k, sorted=False).indices
        return torch.sort(idx).values

    def _soft(self) -> bool:
        return self.training and self.selection == "diff_topk"

    # ------------------------------------------------------------------ public API
    def zoom_step(self, step: int, feats: torch.Tensor) -> ZoomStep:
        """Hard-selection zoom step on this step's kept rows feats [1, n, D] (for inference)."""
        h, pooled, weights = self._embed(step, as_bag(feats, like=self)[0])
        if step == len(self.mags) - 1:
            return ZoomStep(pooled, weights, None, None)
        scores = self._selection_scores(step, h)
        return ZoomStep(pooled, weights, scores, self._hard_select(step, scores))

    def select(self, step: int, feats: torch.Tensor) -> torch.Tensor:
        """Sorted indices into feats' rows [1, n, D] whose descendants step + 1 keeps."""
        if step >= len(self.mags) - 1:
            raise ZoomMILError(f"step {step} is the last magnification: nothing to select")
        return self.zoom_step(step, feats).selected

    def classify_pooled(self, pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        """Head on the per-magnification pooled vectors [1, hidden] (lowest first) -> [1, C]."""
        if self.aggregation == "sum":
            z = torch.stack(list(pooled), 0).sum(0)
        elif self.aggregation == "concat":
            z = torch.cat(list(pooled), dim=-1)
        else:
            z = pooled[-1]
        return self.classifier(z)

    def classify(self, gathered: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits [1, C] from the rows that zooming kept: gathered[m] [1, n_m, D] holds all rows
        of the lowest magnification, then the descendants (in contract order) of the rows
        selected at step m - 1. No selection is done here."""
        bags = [as_bag(x, like=self) for x in gathered]
        return self.classify_pooled([self._embed(m, x[0])[1] for m, x in enumerate(bags)])

    def forward(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        """feats: one [1, N_m, D] tensor per magnification (lowest first) -> logits [1, C]."""
        return self.forward_with_details(feats)["logits"]

    def forward_with_details(self, feats: Feats, coords: Coords = None) -> dict[str, Any]:
        """Logits plus, per magnification, what zooming kept.

        Returns dict(logits [1, C], attention: list of [n_m] pooling weights over the kept rows,
        rows: list of [n_m] indices of the kept rows into that magnification's full rows,
        selected: list (one per step) of indices into mags[step]'s full rows whose descendants
        were kept, selection_scores: list (one per step) of the [n_m] scores the selection
        ranks: a network of its own unless ``attention="single"``, so ``selected`` is their
        top K, not attention's; random in the random-selection ablations).
        With soft selection (training, diff_topk) kept rows are mixtures, so ``rows`` and
        ``selected`` are None after the first magnification and ``indicators`` holds the soft
        [K, n] matrices instead (None per step in eval mode).
        """
        current = [x[0] for x in self._check(feats)]
        rows: list[torch.Tensor | None] = [
            torch.arange(x.shape[0], device=x.device) for x in current
        ]
        pooled, attention, selected, indicators, ranked = [], [], [], [], []
        for m in range(len(self.mags)):
            h, v, w = self._embed(m, current[m])
            pooled.append(v)
            attention.append(w)
            if m == len(self.mags) - 1:
                break
            scores = self._selection_scores(m, h)
            ranked.append(scores)
            n = current[m].shape[0]
            if self._soft():
                ind = self.topk[m](scores.unsqueeze(0))[0]
                indicators.append(ind)
                selected.append(None)
                for j in range(m + 1, len(self.mags)):
                    r = current[j].shape[0] // n
                    current[j] = mix_descendants(current[j], ind, r)
                    rows[j] = None
            else:
                idx = self._hard_select(m, scores)
                selected.append(rows[m][idx] if rows[m] is not None else None)
                indicators.append(None)
                for j in range(m + 1, len(self.mags)):
                    r = current[j].shape[0] // n
                    current[j] = gather_descendants(current[j], idx, r)
                    if rows[j] is not None:
                        rows[j] = rows[j].reshape(n, r).index_select(0, idx).reshape(-1)
        return {
            "logits": self.classify_pooled(pooled),
            "attention": attention,
            "rows": rows,
            "selected": selected,
            "selection_scores": ranked,
            "indicators": indicators,
        }

    # ------------------------------------------------------------------ official weights
    @classmethod
    def from_official_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        k: int | Sequence[int] = 12,
        n_classes: int | None = None,
        mags: Sequence[float] = (1.25, 2.5, 10.0),
        **kwargs: Any,
    ) -> ZoomMIL:
        """A 3-magnification ZoomMIL with the weights of the official implementation
        (histocartography/zoommil ``zoommil/models/zoommil.py``); eval outputs match it.

        ``mags`` only sets the descendant ratios (the official code infers them from row counts);
        the default is the BRIGHT setting 1.25/2.5/10x.
        """
        sd = {key.removeprefix("module."): v for key, v in state_dict.items()}
        if "classify_head.weight" not in sd or "fc_low_mag.0.weight" not in sd:
            raise ZoomMILError("not an official ZoomMIL state dict (no classify_head/fc_low_mag)")
        hidden, in_dim = sd["fc_low_mag.0.weight"].shape
        attn_hidden = sd["ga_low_mag.attention_a.0.weight"].shape[0]
        n_cls = sd["classify_head.weight"].shape[0]
        if n_classes is not None and n_classes != n_cls:
            raise ZoomMILError(f"n_classes={n_classes} but the state dict has {n_cls} classes")
        if len(mags) != 3:
            raise ZoomMILError(f"the official model has 3 magnifications, got mags={list(mags)}")
        model = cls(
            in_dim=in_dim,
            n_classes=n_cls,
            mags=mags,
            k=k,
            hidden=hidden,
            attn_hidden=attn_hidden,
            **kwargs,
        )
        mapping = {"classify_head.": "classifier."}
        for i, name in enumerate(("low", "mid", "high")):
            mapping[f"fc_{name}_mag.0."] = f"fc.{i}.0."
            for dst, src in ((f"attention.{i}.", f"ga_{name}_mag."),) + (
                ((f"selection_attention.{i}.", f"aux_ga_{name}_mag."),) if i < 2 else ()
            ):
                mapping[src + "attention_a.0."] = dst + "tanh_branch.0."
                mapping[src + "attention_b.0."] = dst + "sigmoid_branch.0."
                mapping[src + "attention_c."] = dst + "score."
        ours = {}
        for key, value in sd.items():
            prefix = next((p for p in mapping if key.startswith(p)), None)
            if prefix is None:
                raise ZoomMILError(f"unexpected key in the official state dict: {key}")
            ours[mapping[prefix] + key[len(prefix) :]] = value
        model.load_state_dict(ours, strict=True)
        return model

"""Differentiable top-K by perturbed maximum (Berthet et al. 2020; Cordonnier et al. 2021).

Forward: the mean over ``S`` Gaussian perturbations of the top-K one-hot indicators, each
sorted by index position, ``Ybar = 1/S sum_s Y(x + sigma Z_s)`` with shape [B, K, N].

Backward (``grad="exact"``): the vector-Jacobian product of that Monte-Carlo estimator,
``g = E[<G, Y(x + sigma Z)> Z] / sigma``, with a leave-one-out baseline over the samples
(unbiased, and its variance does not grow with ``<G, Y>``). ``grad="diagonal"`` reproduces the
official ZoomMIL / JAX code, which keeps only the ``j = i`` terms of the Jacobian
(``g_i = sum_k G[k, i] E[Y[k, i] Z_i] / sigma``); it is kept for ablations only.

Memory is O(S (K + N)) per bag: the forward stores the sampled indices [B, S, K] and the noise
[B, S, N]; the dense [B, S, K, N] one-hot tensor of the reference code is never built. The mean
indicator is made by a scatter-add of counts into [B, K, N]; ``<G, Y_s>`` is a gather of ``G``
at the sampled (position, index) pairs.
"""

from __future__ import annotations

import torch
from torch import nn

GRAD_MODES = ("exact", "diagonal")


def sample_topk_indices(
    x: torch.Tensor, k: int, num_samples: int, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws ``noise = randn(B, S, N)`` and returns (top-K indices of x + sigma noise, sorted
    ascending [B, S, K], noise [B, S, N]).

    The draw order is part of the contract: tests recompute the same noise after re-seeding.
    """
    b, n = x.shape
    noise = torch.randn(b, num_samples, n, dtype=x.dtype, device=x.device)
    perturbed = x.detach().unsqueeze(1) + sigma * noise
    indices = torch.topk(perturbed, k=k, dim=-1, sorted=False).indices
    return torch.sort(indices, dim=-1).values, noise


def _flat_positions(indices: torch.Tensor, n: int) -> torch.Tensor:
    """Index into a flattened [K, N] matrix for each sampled (position k, index i): k*N + i."""
    k = indices.shape[-1]
    offsets = torch.arange(k, device=indices.device) * n
    return (indices + offsets).reshape(indices.shape[0], -1)  # [B, S*K]


def mean_indicators(indices: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Scatter-adds the sampled one-hots into the mean indicator [B, K, N] (exact counts / S)."""
    b, s, k = indices.shape
    counts = torch.zeros(b, k * n, dtype=dtype, device=indices.device)
    ones = torch.ones(b, s * k, dtype=dtype, device=indices.device)
    counts.scatter_add_(1, _flat_positions(indices, n), ones)
    return (counts / s).view(b, k, n)


class PerturbedTopKFunction(torch.autograd.Function):
    """Autograd function behind :class:`PerturbedTopK` (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int, num_samples: int, sigma: float, grad: str):
        indices, noise = sample_topk_indices(x, k, num_samples, sigma)
        ctx.save_for_backward(indices, noise)
        ctx.sigma = sigma
        ctx.grad_mode = grad
        return mean_indicators(indices, x.shape[1], x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        indices, noise = ctx.saved_tensors
        b, s, k = indices.shape
        n = noise.shape[-1]
        flat = _flat_positions(indices, n)  # [B, S*K]
        g_at = grad_output.reshape(b, k * n).gather(1, flat)  # G[k, i_sk]  [B, S*K]
        if ctx.grad_mode == "exact":
            w = g_at.view(b, s, k).sum(-1)  # <G, Y_s>  [B, S]
            if s > 1:
                w = w - (w.sum(1, keepdim=True) - w) / (s - 1)  # leave-one-out baseline
            grad_x = torch.einsum("bs,bsn->bn", w, noise) / (s * ctx.sigma)
        else:
            # official code: g_i = 1/(S sigma) sum_s sum_k G[k, i] Y_s[k, i] Z_s[i]
            z_at = noise.gather(2, indices).reshape(b, s * k)
            grad_x = torch.zeros(b, n, dtype=grad_output.dtype, device=grad_output.device)
            grad_x.scatter_add_(1, indices.reshape(b, s * k), g_at * z_at)
            grad_x = grad_x / (s * ctx.sigma)
        return grad_x, None, None, None, None


class PerturbedTopK(nn.Module):
    """Soft top-K indicators [B, K', N] from scores [B, N], with K' = min(k, N).

    When ``k >= N`` every instance is selected: the output is the identity [N, N] for each bag
    (sorted by position), with no noise drawn and no gradient (the selection cannot change).
    """

    def __init__(
        self, k: int, num_samples: int = 100, sigma: float = 0.002, grad: str = "exact"
    ) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
        self.k = k
        self.num_samples = num_samples
        self.sigma = sigma
        self.grad = grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"expected scores [B, N], got shape {tuple(x.shape)}")
        b, n = x.shape
        if self.k >= n:
            eye = torch.eye(n, dtype=x.dtype, device=x.device)
            return eye.unsqueeze(0).expand(b, n, n).contiguous()
        return PerturbedTopKFunction.apply(x, self.k, self.num_samples, self.sigma, self.grad)

    def extra_repr(self) -> str:
        return f"k={self.k}, num_samples={self.num_samples}, sigma={self.sigma}, grad={self.grad!r}"

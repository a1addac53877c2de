"""Nystrom self-attention (Xiong et al. 2021), as used by TransMIL.

Softmax attention ``softmax(Q K^T) V`` costs O(n^2); Nystromformer approximates it with m
landmarks (segment means of Q and K):

    softmax(Q Kl^T) pinv(softmax(Ql Kl^T)) softmax(Ql K^T) V

where the pseudo-inverse is the iterative Moore-Penrose scheme of the paper (6 iterations).
Landmarks are means of m contiguous, nearly equal segments of the sequence (no padding
tokens, so nothing but the real tokens enters the softmax normalisation). When the sequence
has no more tokens than landmarks, exact attention is used: with one landmark per token the
approximation would be exact anyway, only slower. An optional depthwise convolution over the
sequence axis of V (kernel 33) is added as a residual, as in the reference implementation.
"""

from __future__ import annotations

import torch
from torch import nn


def iterative_pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of a batch of square matrices [..., m, m] (Razavi et al.).

    Initialised with ``x^T / (max row sum * max column sum)`` per matrix, which guarantees
    convergence for the row-stochastic matrices attention produces.
    """
    abs_x = x.abs()
    scale = abs_x.sum(dim=-1).amax(dim=-1) * abs_x.sum(dim=-2).amax(dim=-1)
    z = x.transpose(-1, -2) / scale[..., None, None]
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


def segment_means(x: torch.Tensor, m: int) -> torch.Tensor:
    """Means of m contiguous, nearly equal segments along dim -2: [..., n, d] -> [..., m, d]."""
    n = x.shape[-2]
    segment = torch.arange(n, device=x.device) * m // n
    sums = x.new_zeros(*x.shape[:-2], m, x.shape[-1]).index_add_(-2, segment, x)
    counts = torch.bincount(segment, minlength=m).to(x.dtype)
    return sums / counts[:, None]


class NystromAttention(nn.Module):
    """Multi-head Nystrom attention: [B, n, dim] -> [B, n, dim]."""

    def __init__(
        self,
        dim: int = 512,
        heads: int = 8,
        dim_head: int = 64,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual: bool = True,
        residual_conv_kernel: int = 33,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.scale = dim_head**-0.5
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.res_conv = None
        if residual:
            k = residual_conv_kernel
            self.res_conv = nn.Conv2d(
                heads, heads, (k, 1), padding=(k // 2, 0), groups=heads, bias=False
            )

    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, n, _ = x.shape
        qkv = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        return qkv[0] * self.scale, qkv[1], qkv[2]  # each [B, h, n, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self._split_heads(x)
        if n <= self.num_landmarks:
            out = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        else:
            q_l = segment_means(q, self.num_landmarks)
            k_l = segment_means(k, self.num_landmarks)
            kernel_1 = torch.softmax(q @ k_l.transpose(-1, -2), dim=-1)
            kernel_2 = torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1)
            kernel_3 = torch.softmax(q_l @ k.transpose(-1, -2), dim=-1)
            pinv = iterative_pinv(kernel_2, self.pinv_iterations)
            out = kernel_1 @ (pinv @ (kernel_3 @ v))  # never forms an n x m x m product
        if self.res_conv is not None:
            out = out + self.res_conv(v)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return self.to_out(out)

    def attention_row(self, x: torch.Tensor, row: int = 0) -> torch.Tensor:
        """Attention weights of one query token over all tokens, averaged over heads: [B, n].

        Used for TransMIL heatmaps (the CLS token's attention); the same approximation as
        `forward`, without materialising the n x n matrix.
        """
        q, k, _ = self._split_heads(x)
        n = x.shape[1]
        if n <= self.num_landmarks:
            attn = torch.softmax(q[:, :, row : row + 1] @ k.transpose(-1, -2), dim=-1)
        else:
            q_l = segment_means(q, self.num_landmarks)
            k_l = segment_means(k, self.num_landmarks)
            kernel_1 = torch.softmax(q[:, :, row : row + 1] @ k_l.transpose(-1, -2), dim=-1)
            kernel_2 = torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1)
            kernel_3 = torch.softmax(q_l @ k.transpose(-1, -2), dim=-1)
            attn = (kernel_1 @ iterative_pinv(kernel_2, self.pinv_iterations)) @ kernel_3
        return attn[:, :, 0].mean(dim=1)

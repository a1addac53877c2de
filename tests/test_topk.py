"""PerturbedTopK: forward = mean of sampled one-hots, exact vs diagonal backward, memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from zoommil.models.topk import PerturbedTopK, mean_indicators


def _dense_samples(x: torch.Tensor, k: int, s: int, sigma: float):
    """Reference: the official forward with dense [B, S, K, N] one-hots (same noise draw)."""
    noise = torch.randn(x.shape[0], s, x.shape[1], dtype=x.dtype)
    idx = torch.topk(x[:, None, :] + sigma * noise, k=k, dim=-1).indices.sort(-1).values
    return F.one_hot(idx, x.shape[1]).to(x.dtype), noise  # [B, S, K, N]


def test_forward_is_mean_of_sampled_one_hots():
    x = torch.softmax(torch.randn(2, 50), -1)
    torch.manual_seed(3)
    y = PerturbedTopK(k=7, num_samples=40, sigma=0.01)(x)
    torch.manual_seed(3)
    onehots, _ = _dense_samples(x, 7, 40, 0.01)
    assert y.shape == (2, 7, 50)
    torch.testing.assert_close(y, onehots.mean(1), rtol=0, atol=1e-7)
    torch.testing.assert_close(y.sum(-1), torch.ones(2, 7))  # each row is a distribution
    # sorted by position: the expected position of slot k increases with k
    pos = (y * torch.arange(50.0)).sum(-1)
    assert bool((pos[:, 1:] > pos[:, :-1]).all())


def test_backward_matches_dense_reference_formulas():
    """Exact = E[<G,Y>Z]/sigma with leave-one-out; diagonal = the official einsum formula."""
    x0 = torch.softmax(torch.randn(2, 30, dtype=torch.float64), -1)
    g = torch.randn(2, 5, 30, dtype=torch.float64)
    s, sigma = 64, 0.01
    torch.manual_seed(5)
    y1, z = _dense_samples(x0, 5, s, sigma)
    w = torch.einsum("bskn,bkn->bs", y1, g)
    w = w - (w.sum(1, keepdim=True) - w) / (s - 1)
    ref_exact = torch.einsum("bs,bsn->bn", w, z) / (s * sigma)
    ref_diag = torch.einsum("bkn,bkn->bn", g, torch.einsum("bskn,bsn->bkn", y1, z) / s / sigma)
    for mode, ref in (("exact", ref_exact), ("diagonal", ref_diag)):
        x = x0.clone().requires_grad_(True)
        torch.manual_seed(5)
        (PerturbedTopK(5, s, sigma, grad=mode)(x) * g).sum().backward()
        torch.testing.assert_close(x.grad, ref)
    assert not torch.allclose(ref_exact, ref_diag, atol=1e-3)


def _smoothed(x: torch.Tensor, noise: torch.Tensor, g: torch.Tensor, sigma: float) -> float:
    k, n = g.shape
    idx = torch.topk(x[None, None] + sigma * noise, k, dim=-1).indices.sort(-1).values
    return float((mean_indicators(idx, n, x.dtype)[0] * g).sum())


def test_exact_backward_agrees_with_finite_differences_and_diagonal_does_not():
    n, k, sigma, s = 64, 12, 0.002, 20000
    gen = torch.Generator().manual_seed(1)
    x = torch.softmax(torch.randn(n, generator=gen, dtype=torch.float64), 0)
    g = torch.randn(k, n, generator=gen, dtype=torch.float64)
    noise = torch.randn(1, s, n, generator=gen, dtype=torch.float64)  # common random numbers
    h = sigma / 4
    eye = torch.eye(n, dtype=torch.float64)
    fd = torch.tensor(
        [
            (_smoothed(x + h * e, noise, g, sigma) - _smoothed(x - h * e, noise, g, sigma))
            / (2 * h)
            for e in eye
        ],
        dtype=torch.float64,
    )
    cos = {}
    for mode in ("exact", "diagonal"):
        xr = x[None].clone().requires_grad_(True)
        torch.manual_seed(0)
        (PerturbedTopK(k, s, sigma, grad=mode)(xr)[0] * g).sum().backward()
        cos[mode] = float(F.cosine_similarity(xr.grad[0], fd, dim=0))
    assert cos["exact"] >= 0.95, cos
    assert cos["diagonal"] < 0.6, cos


class _MaxNumel(TorchDispatchMode):
    """Records the largest tensor any aten op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize("mode", ["exact", "diagonal"])
def test_never_allocates_s_k_n(mode):
    n, k, s = 20000, 300, 100
    torch.manual_seed(0)
    x = torch.softmax(torch.randn(1, n), -1).requires_grad_(True)
    g = torch.randn(1, k, n)
    with _MaxNumel() as rec:
        y = PerturbedTopK(k, s, grad=mode)(x)
        (y * g).sum().backward()
    assert rec.max_numel <= k * n  # the mean indicator itself; S*K*N would be 100x that
    assert rec.max_numel < s * k * n // 50
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_deterministic_under_manual_seed():
    x0 = torch.softmax(torch.randn(1, 200), -1)
    outs = []
    for _ in range(2):
        torch.manual_seed(11)
        x = x0.clone().requires_grad_(True)
        y = PerturbedTopK(10, 50)(x)
        (y * torch.arange(200.0)).sum().backward()
        outs.append((y, x.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 5, 12])
def test_k_at_least_n_selects_everything(n):
    x = torch.randn(2, n, requires_grad=True)
    y = PerturbedTopK(12, 10)(x)
    assert y.shape == (2, n, n)
    torch.testing.assert_close(y, torch.eye(n).expand(2, n, n))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="grad"):
        PerturbedTopK(3, grad="full")
    with pytest.raises(ValueError, match="k must be"):
        PerturbedTopK(0)
    with pytest.raises(ValueError, match="scores"):
        PerturbedTopK(3)(torch.randn(4))


def test_topk_gradient_benchmark_reports_both_backwards(tmp_path):
    """benchmarks/topk_gradient.py at toy size: per draw, each backward's cosine to the
    finite difference, and the table of medians and ranges the README quotes."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "topk_gradient.py"
    spec = importlib.util.spec_from_file_location("topk_gradient", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--draws", "2", "--samples", "5000"]  # N = 64, K = 12: the README's setting
    bench.main([*argv, "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "topk_gradient.json").read_text())["rows"]
    assert [r["seed"] for r in rows] == [0, 1]
    assert all(r["exact"] > 0.9 and -1 <= r["diagonal"] <= 1 for r in rows), rows
    assert "| exact | " in (tmp_path / "topk_gradient.md").read_text()

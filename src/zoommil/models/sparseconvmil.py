"""SparseConvMIL (Lerousseau et al. 2021) on frozen features.

Instances are embedded (``Linear(D, 128)+ReLU``) and placed on a 2-D map at their grid
coordinates divided by ``downsample`` (instances landing in one cell are averaged). Two 3x3
convolutions (32 channels, ReLU) act on that map as submanifold convolutions: emulated by a
dense convolution on the zero-filled grid, re-masked to the active cells after each layer
(identical to a submanifold convolution, and the downsampled grids are small). A mean over
the active cells and ``Linear(32, 32)+ReLU+Linear(32, C)`` give the logits.

Training (``model.train()``) follows the paper: each step uses ``n_tiles`` instances drawn at
random (with replacement by default; ``n_tiles=0`` uses all), and the map is augmented as the
reference augments it: the downsampled positions are rotated by a uniform random angle,
flipped per axis, stretched per axis by a random factor in [0.7, 1.3] and shifted by a random
fraction of a cell before they are binned (`augmented_cells`), so which instances share a
cell and which are neighbours changes from step to step. Evaluation uses every instance and
the positions as they are (the reference augments at inference too; we do not).
``coords`` should be given (the highest magnification's (row, col) grid); without them the
instances are laid out row by row on a ceil(sqrt N) square, which keeps the model usable but
makes the convolutions see arbitrary neighbours.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from zoommil.errors import ZoomMILError
from zoommil.models.bag import Coords, Feats, coords_list, highest

MAX_GRID_VALUES = 2**28  # embedding floats on the dense map (1 GiB): beyond that, downsample more


def square_layout(n: int, device: torch.device | None = None) -> torch.Tensor:
    """(row, col) of n instances laid out row by row on a ceil(sqrt n) square: [n, 2]."""
    side = max(1, math.ceil(math.sqrt(n)))
    i = torch.arange(n, device=device)
    return torch.stack([i // side, i % side], dim=1)


def grid_cells(pos: torch.Tensor, downsample: int) -> torch.Tensor:
    """Cells of the sparse map: grid positions [n, 2] // downsample, the first cell at 0."""
    return torch.div(pos - pos.min(dim=0).values, downsample, rounding_mode="floor")


def augmented_cells(pos: torch.Tensor, downsample: int) -> torch.Tensor:
    """Cells of a randomly rotated, flipped, stretched and shifted sparse map (training).

    Positions / downsample as row vectors times rotation(theta) @ diag(flips * stretch), theta
    uniform in [0, 2 pi), flips +-1, stretch uniform in [0.7, 1.3] per axis (the reference's
    order and ranges), plus a uniform shift in [0, 1) cell per axis; then floored, the first
    cell at 0. Draws from torch's global generator, so a seeded run repeats."""
    theta, flip_u, stretch_u, shift = torch.rand(()), torch.rand(2), torch.rand(2), torch.rand(2)
    angle = float(theta) * 2 * math.pi
    f64 = {"dtype": torch.float64, "device": pos.device}
    rotation = torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], **f64
    )
    scale = torch.where(flip_u < 0.5, -1.0, 1.0).double() * (0.7 + 0.6 * stretch_u.double())
    x = (pos.to(torch.float64) / downsample) @ (rotation * scale.to(pos.device)[None, :])
    cells = torch.floor(x + shift.double().to(pos.device)).long()
    return cells - cells.min(dim=0).values


class SparseConvMIL(nn.Module):
    def __init__(
        self,
        in_dim: int = 1024,
        n_classes: int = 2,
        embed_dim: int = 128,
        channels: int = 32,
        n_tiles: int = 64,
        replacement: bool = True,
        downsample: int = 10,
        augment: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if downsample < 1:
            raise ZoomMILError(f"SparseConvMIL downsample must be >= 1, got {downsample}")
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.n_tiles = n_tiles
        self.replacement = replacement
        self.downsample = downsample
        self.augment = augment
        self.embed = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.ReLU(), nn.Dropout(dropout))
        self.conv1 = nn.Conv2d(embed_dim, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, n_classes)
        )

    def _sample(self, n: int, device: torch.device) -> torch.Tensor | None:
        """Indices of the instances used this step (None: all of them)."""
        if not self.training or self.n_tiles <= 0:
            return None
        if self.replacement:
            return torch.randint(n, (self.n_tiles,)).to(device)
        if self.n_tiles >= n:
            return None
        return torch.randperm(n)[: self.n_tiles].to(device)

    def sparse_map(
        self, emb: torch.Tensor, cells: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Average embeddings [n, E] into their cells [n, 2] (>= 0; `grid_cells`): dense grid
        [1, E, H, W] and mask [1, 1, H, W]."""
        height, width = (int(v) + 1 for v in cells.max(dim=0).values)
        if height * width * emb.shape[1] > MAX_GRID_VALUES:
            raise ZoomMILError(
                f"SparseConvMIL grid of {height}x{width} cells is too large; "
                f"increase downsample (now {self.downsample}) or check the coordinates"
            )
        flat = cells[:, 0] * width + cells[:, 1]
        sums = emb.new_zeros(height * width, emb.shape[1]).index_add_(0, flat, emb)
        counts = torch.bincount(flat, minlength=height * width).to(emb.dtype)
        grid = sums / counts.clamp(min=1).unsqueeze(1)
        grid = grid.T.reshape(1, -1, height, width)
        mask = (counts > 0).to(emb.dtype).view(1, 1, height, width)
        return grid, mask

    def forward(self, feats: Feats, coords: Coords = None) -> torch.Tensor:
        x = highest(feats, self.in_dim, self)[0]
        coord_list = coords_list(coords)
        if coord_list is None:
            warnings.warn(
                "SparseConvMIL called without coords: the instances are laid out row by row on "
                "a square, so its convolutions see arbitrary neighbours; pass the feature "
                "file's (row, col) coords, as `zoommil.Classifier.inputs` returns them",
                stacklevel=2,
            )
            pos = square_layout(x.shape[0], x.device)
        else:
            pos = coord_list[-1].to(x.device).long()
            if pos.shape[0] != x.shape[0]:
                raise ZoomMILError(
                    f"{pos.shape[0]} coordinates for {x.shape[0]} instances (SparseConvMIL)"
                )
        idx = self._sample(x.shape[0], x.device)
        if idx is not None:
            x, pos = x[idx], pos[idx]
        if self.training and self.augment:
            cells = augmented_cells(pos, self.downsample)
        else:
            cells = grid_cells(pos, self.downsample)
        grid, mask = self.sparse_map(self.embed(x), cells)
        h = F.relu(self.conv1(grid)) * mask
        h = F.relu(self.conv2(h)) * mask
        pooled = h.sum(dim=(2, 3)) / mask.sum()
        return self.mlp(pooled)

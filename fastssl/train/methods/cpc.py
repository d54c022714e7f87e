"""Contrastive predictive coding over a patch grid (van den Oord, Li & Vinyals 2018, section 3.1;
Henaff et al. 2019): the backbone embeds every patch of an overlapping grid, a causal context
network summarises the rows above each position, and each position's context predicts the
embeddings of the patches 1..`steps` rows below it, scored by InfoNCE against every other patch
embedding of the batch."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.recipes import PatchGrid, Recipe
from fastssl.train.methods.base import Method, require_recipe, valid_mask


class CausalRows(nn.Module):
    """A context network in which output row r sees input rows <= r only: `layers` residual
    convolutions with (2, 3) kernels padded by one row above and none below (a column-causal
    PixelCNN stack, as CPC's context network is autoregressive over rows); receptive field
    `layers` + 1 rows up and `layers` columns either side."""

    def __init__(self, dim: int, layers: int = 3) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, (2, 3)) for _ in range(layers))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:  # (B, d, rows, cols)
        x = grid
        for conv in self.convs:
            x = x + conv(F.pad(F.relu(x), (1, 1, 1, 0)))  # left, right, top, bottom
        return x


class CPC(Method):
    """Pairing: for each k in 1..`steps` (the recipe's grid must have more rows) and each position (r, c)
    with r + k inside the grid, the prediction W_k context[r, c] scores the embedding of patch
    (r + k, c) of the same image against the embeddings of every patch of every image in this
    rank's batch (the positive among them); the loss is the cross-entropy of those scores
    divided by `temperature`, averaged over positions and then over k. Embeddings are the
    backbone's features of each patch, layer-normed (`layer_norm`; CPC v2 also replaced batch
    norm inside the encoder by layer norm, which this does not: a batch-norm backbone shares
    statistics across an image's patches).
    Memory: the scores are (B R C) x (B R C) per k for a B-image batch of an R x C grid, which is
    why the paper used batches of 32 per GPU; lower `batch_size` for large grids."""

    name: ClassVar[str] = "cpc"

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        steps: int = 5,
        context_layers: int = 3,
        temperature: float = 1.0,
        layer_norm: bool = True,
    ) -> None:
        super().__init__(backbone, feature_dim)
        if steps < 1:
            raise ValueError(f"cpc predicts at least one row ahead; got steps={steps}")
        self.norm = nn.LayerNorm(feature_dim) if layer_norm else nn.Identity()
        self.context = CausalRows(feature_dim, context_layers)
        self.predictors = nn.ModuleList(nn.Linear(feature_dim, feature_dim) for _ in range(steps))
        self.temperature = temperature
        self.grid: tuple[int, int] | None = None  # the recipe's (rows, cols); None: a square grid

    def default_recipe(self, size: int) -> Recipe:
        return PatchGrid()

    def check_recipe(self, recipe: Recipe) -> None:
        require_recipe(self.name, recipe, PatchGrid)
        if recipe.grid[0] < 2:
            raise ValueError(
                f"cpc predicts rows below: the patch grid needs at least 2 rows, got {recipe.grid}"
            )
        if len(self.predictors) > recipe.grid[0] - 1:  # unused predictors would stall DDP's reduction
            raise ValueError(
                f"cpc predicts steps={len(self.predictors)} rows ahead; a {recipe.grid[0]}-row grid "
                f"has {recipe.grid[0] - 1} below its first row: use steps <= {recipe.grid[0] - 1}"
            )
        self.grid = tuple(recipe.grid)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        patches = batch["views"][0]  # (B, R C, channels, t, t)
        b, cells = patches.shape[:2]
        valid = valid_mask(batch, b, patches.device)
        rows, cols = self.grid or (_square_rows(cells),) * 2
        z = self.norm(self.backbone(patches.flatten(0, 1))).view(b, rows, cols, -1)[valid]
        context = self.context(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (b, R, C, d)
        everyone = z.reshape(-1, z.shape[-1])  # every patch of the batch: positives and negatives
        index = torch.arange(len(everyone), device=z.device).view(z.shape[:3])
        losses = []
        for k, predictor in enumerate(self.predictors[: rows - 1], start=1):
            prediction = predictor(context[:, : rows - k]).reshape(-1, z.shape[-1])
            scores = prediction @ everyone.T / self.temperature
            losses.append(F.cross_entropy(scores, index[:, k:].reshape(-1)))
        return torch.stack(losses).mean()


def _square_rows(cells: int) -> int:
    rows = round(cells**0.5)
    if rows * rows != cells:
        raise ValueError(f"a batch of {cells} patches per image is not a square grid")
    return rows

"""SimCLR (Chen et al. 2020): two views, an MLP projection head, NT-Xent with temperature over the
negatives of every rank (gathered with gradient)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from fastssl.recipes import Recipe
from fastssl.recipes import SimCLR as SimCLRViews
from fastssl.train.heads import mlp
from fastssl.train.losses import nt_xent
from fastssl.train.methods.base import Method, valid_mask


class SimCLR(Method):
    """Projection head: 2-layer MLP (hidden = backbone width, output 128), temperature 0.5."""

    name: ClassVar[str] = "simclr"

    def __init__(
        self, backbone: nn.Module, feature_dim: int, *, out_dim: int = 128, temperature: float = 0.5
    ) -> None:
        super().__init__(backbone, feature_dim)
        self.projector = mlp(feature_dim, feature_dim, out_dim)
        self.temperature = temperature

    def default_recipe(self, size: int) -> Recipe:
        return SimCLRViews(size=size)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        one, two = batch["views"][:2]
        z1, z2 = self.projector(self.backbone(one)), self.projector(self.backbone(two))
        return nt_xent(z1, z2, self.temperature, valid_mask(batch, len(one), one.device))

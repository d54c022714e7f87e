"""BYOL (Grill et al. 2020): online projector and predictor, an EMA target (0.996 to 1 on a cosine
schedule) that gives the regression targets, the symmetric loss, BYOL's asymmetric views."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from fastssl.recipes import BYOL as BYOLViews
from fastssl.recipes import Recipe
from fastssl.train.heads import mlp
from fastssl.train.losses import byol_regression
from fastssl.train.methods.base import Method, ema_update, momentum_copy, valid_mask
from fastssl.train.optim import cosine_momentum


class BYOL(Method):
    name: ClassVar[str] = "byol"

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        out_dim: int = 256,
        hidden: int | None = None,
        momentum: float = 0.996,
    ) -> None:
        super().__init__(backbone, feature_dim)
        hidden = hidden or 2 * feature_dim
        self.projector = mlp(feature_dim, hidden, out_dim)
        self.predictor = mlp(out_dim, hidden, out_dim)
        self.target_backbone, self.target_projector = momentum_copy(backbone), momentum_copy(self.projector)
        self.base_momentum = momentum

    def default_recipe(self, size: int) -> Recipe:
        return BYOLViews(size=size)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        one, two = batch["views"][:2]
        valid = valid_mask(batch, len(one), one.device)
        p1 = self.predictor(self.projector(self.backbone(one)))
        p2 = self.predictor(self.projector(self.backbone(two)))
        with torch.no_grad():
            z1 = self.target_projector(self.target_backbone(one))
            z2 = self.target_projector(self.target_backbone(two))
        return byol_regression(p1[valid], z2[valid]) + byol_regression(p2[valid], z1[valid])

    def on_step(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(self.base_momentum, step, total_steps)
        ema_update(self.target_backbone, self.backbone, momentum)
        ema_update(self.target_projector, self.projector, momentum)

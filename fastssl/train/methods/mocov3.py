"""MoCo v3 (Chen, Xie & He 2021): a 3-layer projector and a 2-layer predictor, a symmetric
contrastive loss against the momentum keys of every rank, and the key encoder's momentum following
a cosine schedule from 0.99 to 1; BYOL's asymmetric views."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from fastssl.recipes import BYOL as BYOLViews
from fastssl.recipes import Recipe
from fastssl.train.heads import mlp
from fastssl.train.losses import contrastive_across_ranks
from fastssl.train.methods.base import Method, ema_update, momentum_copy
from fastssl.train.optim import cosine_momentum


class MoCoV3(Method):
    name: ClassVar[str] = "mocov3"

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        out_dim: int = 256,
        hidden: int | None = None,
        momentum: float = 0.99,
        temperature: float = 1.0,
    ) -> None:
        super().__init__(backbone, feature_dim)
        hidden = hidden or 2 * feature_dim
        self.projector = mlp(feature_dim, hidden, out_dim, layers=3, last_bn=True)
        self.predictor = mlp(out_dim, hidden, out_dim, layers=2, last_bn=True)
        self.key_backbone, self.key_projector = momentum_copy(backbone), momentum_copy(self.projector)
        self.base_momentum, self.temperature = momentum, temperature

    def default_recipe(self, size: int) -> Recipe:
        return BYOLViews(size=size)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        one, two = batch["views"][:2]  # padding rows stay: keys must line up across ranks
        q1 = self.predictor(self.projector(self.backbone(one)))
        q2 = self.predictor(self.projector(self.backbone(two)))
        with torch.no_grad():
            k1, k2 = self.key_projector(self.key_backbone(one)), self.key_projector(self.key_backbone(two))
        return contrastive_across_ranks(q1, k2, self.temperature) + contrastive_across_ranks(
            q2, k1, self.temperature
        )

    def on_step(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(self.base_momentum, step, total_steps)
        ema_update(self.key_backbone, self.backbone, momentum)
        ema_update(self.key_projector, self.projector, momentum)

"""MoCo v3 (Chen, Xie & He 2021): a 3-layer projector and a 2-layer predictor, a symmetric
contrastive loss against the momentum keys of every rank, and the key encoder's momentum following
a cosine schedule from 0.99 to 1; BYOL's asymmetric views; with a multi-crop recipe every crop is
a query against the keys of each global crop other than itself."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from fastssl.recipes import BYOL as BYOLViews
from fastssl.recipes import Recipe
from fastssl.train.heads import mlp
from fastssl.train.losses import contrastive_across_ranks
from fastssl.train.methods.base import Method, crop_pairs, ema_update, global_crops, momentum_copy
from fastssl.train.optim import cosine_momentum


class MoCoV3(Method):
    """Pairing: each crop's query (online encoder, projector, predictor) against the momentum
    keys of each global crop other than itself, the keys of that crop on every rank as the
    dictionary; the momentum encoder sees the global crops only. Two views give the paper's
    symmetric loss ctr(q1, k2) + ctr(q2, k1); with 2 global + N local crops the 2 + 2N terms are
    averaged and multiplied by 2 (the two-view loss's scale)."""

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
        views = batch["views"]  # padding rows stay: keys must line up across ranks
        q = [self.predictor(self.projector(self.backbone(view))) for view in views]
        with torch.no_grad():
            k = [self.key_projector(self.key_backbone(view)) for view in views[: global_crops(views)]]
        pairs = crop_pairs(views)
        return 2 * sum(contrastive_across_ranks(q[i], k[j], self.temperature) for i, j in pairs) / len(pairs)

    def on_step(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(self.base_momentum, step, total_steps)
        ema_update(self.key_backbone, self.backbone, momentum)
        ema_update(self.key_projector, self.projector, momentum)

"""BYOL (Grill et al. 2020): online projector and predictor, an EMA target (0.996 to 1 on a cosine
schedule) that gives the regression targets, the symmetric loss, BYOL's asymmetric views; with a
multi-crop recipe every crop regresses the target of each global crop other than itself."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from fastssl.recipes import BYOL as BYOLViews
from fastssl.recipes import Recipe
from fastssl.train.heads import mlp
from fastssl.train.losses import byol_regression
from fastssl.train.methods.base import Method, crop_pairs, ema_update, global_crops, momentum_copy, valid_mask
from fastssl.train.optim import cosine_momentum


class BYOL(Method):
    """Pairing: each crop's online prediction regresses the target network's projection of each
    global crop other than itself; the target network sees the global crops only. Two views give
    BYOL's symmetric loss (p1 -> z2, p2 -> z1); 2 global + N local crops give 2 + 2N terms, and
    the loss is their mean times 2, so that it stays on the two-view loss's scale (solo-learn
    sums the terms)."""

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
        views = batch["views"]
        valid = valid_mask(batch, len(views[0]), views[0].device)
        p = [self.predictor(self.projector(self.backbone(view))) for view in views]
        with torch.no_grad():
            z = [self.target_projector(self.target_backbone(view)) for view in views[: global_crops(views)]]
        pairs = crop_pairs(views)
        return 2 * sum(byol_regression(p[i][valid], z[j][valid]) for i, j in pairs) / len(pairs)

    def on_step(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(self.base_momentum, step, total_steps)
        ema_update(self.target_backbone, self.backbone, momentum)
        ema_update(self.target_projector, self.projector, momentum)

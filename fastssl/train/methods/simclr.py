"""SimCLR (Chen et al. 2020): two views, an MLP projection head, NT-Xent with temperature over the
negatives of every rank (gathered with gradient); with a multi-crop recipe, every crop of an image
is a positive of every other (SupCon's multi-positive form)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from fastssl.recipes import Recipe
from fastssl.recipes import SimCLR as SimCLRViews
from fastssl.train.heads import mlp
from fastssl.train.losses import multi_positive_nt_xent
from fastssl.train.methods.base import Method, valid_mask


class SimCLR(Method):
    """Projection head: 2-layer MLP (hidden = backbone width, output 128), temperature 0.5.

    Pairing: with two views, each view's positive is the other view of its image and its
    negatives all other views on every rank (NT-Xent). With a multi-crop recipe (2 global + N
    local crops) every crop, local ones included, is an anchor whose positives are all other
    crops of its image (local-local pairs too) and whose negatives are all crops of other images
    on every rank; an anchor's loss is the mean of -log softmax over its positives (SupCon's
    multi-positive loss with the image as the label; solo-learn sums inside the log instead)."""

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
        views = batch["views"]
        z = [self.projector(self.backbone(view)) for view in views]  # one forward per crop (its BN batch)
        return multi_positive_nt_xent(z, self.temperature, valid_mask(batch, len(views[0]), views[0].device))

"""RotNet (Gidaris et al. 2018): classify which of four quarter turns each view was given."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.recipes import Recipe, Rotation
from fastssl.train.methods.base import Method, refuse_multi_crop, valid_mask


class RotNet(Method):
    name: ClassVar[str] = "rotnet"

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__(backbone, feature_dim)
        self.classifier = nn.Linear(feature_dim, 4)

    def default_recipe(self, size: int) -> Recipe:
        return Rotation(size=size, resize=max(size, round(size * 256 / 224)))

    def check_recipe(self, recipe: Recipe) -> None:
        refuse_multi_crop(self.name, recipe)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        views = torch.cat(batch["views"])  # view k of every sample, k = 0..3
        labels = batch["rotation"].T.reshape(-1).to(views.device)
        valid = valid_mask(batch, len(batch["views"][0]), views.device).repeat(len(batch["views"]))
        return F.cross_entropy(self.classifier(self.backbone(views))[valid], labels[valid])

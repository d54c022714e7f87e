"""Jigsaw (Noroozi & Favaro 2016): shared-weight towers embed the 9 tiles, their features are
concatenated in tile order and classified over the permutation set."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.recipes import Jigsaw as JigsawViews
from fastssl.recipes import Recipe
from fastssl.train.methods.base import Method, refuse_multi_crop, valid_mask


class Jigsaw(Method):
    name: ClassVar[str] = "jigsaw"

    def __init__(self, backbone: nn.Module, feature_dim: int, *, tiles: int = 9, classes: int = 1000) -> None:
        super().__init__(backbone, feature_dim)
        self.classifier = nn.Sequential(
            nn.Linear(tiles * feature_dim, 1024), nn.ReLU(inplace=True), nn.Linear(1024, classes)
        )

    def default_recipe(self, size: int) -> Recipe:
        return JigsawViews()

    def check_recipe(self, recipe: Recipe) -> None:
        refuse_multi_crop(self.name, recipe)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        tiles = batch["views"][0]  # (B, 9, C, t, t)
        b, n = tiles.shape[:2]
        features = self.backbone(tiles.flatten(0, 1)).view(b, n * self.feature_dim)
        valid = valid_mask(batch, b, tiles.device)
        return F.cross_entropy(self.classifier(features)[valid], batch["perm_index"].to(tiles.device)[valid])

"""Context prediction (Doersch, Gupta & Efros 2015, "Unsupervised Visual Representation Learning by
Context Prediction"): one tower embeds the centre patch and one of its 8 neighbours, and a
classifier over the two embeddings says where the neighbour was."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.recipes import ContextPrediction as ContextViews
from fastssl.recipes import Recipe
from fastssl.train.methods.base import Method, require_recipe, valid_mask


class ContextPrediction(Method):
    """The backbone (shared weights, the paper's "late fusion") embeds both patches; their
    features, concatenated in (centre, neighbour) order, go through a hidden layer (the paper's
    fc7 of 4096 units, with batch norm and ReLU) to the 8-way position classifier (fc8), trained
    with cross-entropy against the recipe's `neighbor` label. The views, gap, jitter and
    colour dropping are `recipes.ContextPrediction`'s."""

    name: ClassVar[str] = "context"

    def __init__(self, backbone: nn.Module, feature_dim: int, *, hidden: int = 4096) -> None:
        super().__init__(backbone, feature_dim)
        self.classifier = nn.Sequential(
            nn.Linear(2 * feature_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, 8),
        )  # fmt: skip

    def default_recipe(self, size: int) -> Recipe:
        return ContextViews()

    def check_recipe(self, recipe: Recipe) -> None:
        require_recipe(self.name, recipe, ContextViews)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        centre, neighbour = batch["views"]
        features = self.backbone(torch.cat([centre, neighbour]))  # one pass: one batch-norm batch
        b = len(centre)
        logits = self.classifier(torch.cat([features[:b], features[b:]], dim=1))
        valid = valid_mask(batch, b, centre.device)
        return F.cross_entropy(logits[valid], batch["neighbor"].to(centre.device)[valid])

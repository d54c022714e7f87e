"""Supervised training on class labels: the shards' own `.cls`, or a label sidecar such as the
pseudo-labels of knowledge transfer by clustering (Noroozi et al. 2018: a new model trained from
scratch with cross-entropy on a pretext model's clusters). Also the teacher of distillation."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.recipes import Crop, Recipe
from fastssl.train.methods.base import Method, labelled_mask, refuse_multi_crop


class Supervised(Method):
    """A linear classifier on the backbone's features, cross-entropy over every view of every
    valid sample (label smoothing off by default); `num_classes` comes from the labels."""

    name: ClassVar[str] = "supervised"

    def __init__(
        self, backbone: nn.Module, feature_dim: int, *, num_classes: int, label_smoothing: float = 0.0
    ) -> None:
        super().__init__(backbone, feature_dim)
        if num_classes < 2:
            raise ValueError(f"supervised training needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.classifier = nn.Linear(feature_dim, num_classes)

    def default_recipe(self, size: int) -> Recipe:
        """Random resized crop (8-100% of the image) and flip, torchvision's ImageNet training views."""
        return Crop(size=size)

    def check_recipe(self, recipe: Recipe) -> None:
        refuse_multi_crop(self.name, recipe)

    def logits(self, views: torch.Tensor) -> torch.Tensor:
        """Class scores (B, num_classes) of a batch of views."""
        return self.classifier(self.backbone(views))

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        labels = batch.get("label")
        if labels is None:
            raise ValueError(
                "supervised training needs labels: labelled shards, or a label sidecar "
                "(--labels, as fastssl pseudo-label writes)"
            )
        views = batch["views"]
        valid = labelled_mask(batch, labels, len(views[0]), views[0].device)
        targets = labels.to(views[0].device).repeat(len(views))
        scores = self.logits(torch.cat(views))
        return F.cross_entropy(
            scores[valid.repeat(len(views))], targets[valid.repeat(len(views))],
            label_smoothing=self.label_smoothing,
        )  # fmt: skip

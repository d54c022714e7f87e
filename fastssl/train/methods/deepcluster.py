"""DeepCluster (Caron et al. 2018): at every clustering the backbone's features are clustered by
k-means into pseudo-labels (`fastssl.train.deepcluster`, run by the training loop), a freshly
initialised classifier learns them with cross-entropy, and each epoch reads a draw uniform over
the clusters. Defaults are the paper's: k = 10,000 (ImageNet; give fewer for smaller sets), PCA
to 256 dimensions, 20 k-means iterations, the classifier N(0, 0.01) with zero bias, reset with
its optimiser state at each clustering, every `reassign` epochs (1; the official code's
`--reassign`: on a small set an epoch is a few steps, too few for a fresh classifier). The
paper's AlexNet clusters fc7 and trains fc6-fc7 with the head; here the backbone's pooled
features are clustered and the head is the classifier alone."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.recipes import Crop, Recipe
from fastssl.train.methods.base import Method, labelled_mask, refuse_multi_crop


class DeepCluster(Method):
    name: ClassVar[str] = "deepcluster"
    reclusters: ClassVar[bool] = True  # the loop clusters before every epoch (`recluster_options`)

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        clusters: int = 10_000,
        pca_dim: int = 256,
        niter: int = 20,
        kmeans: str = "auto",
        reassign: int = 1,
    ) -> None:
        super().__init__(backbone, feature_dim)
        if clusters < 2:
            raise ValueError(f"DeepCluster needs at least 2 clusters, got {clusters}")
        if kmeans not in ("auto", "faiss", "torch"):
            raise ValueError(f"kmeans must be 'auto', 'faiss' or 'torch', got {kmeans!r}")
        if reassign < 1:
            raise ValueError(f"reassign must be at least 1 epoch, got {reassign}")
        self.clusters, self.pca_dim, self.niter, self.kmeans = clusters, pca_dim, niter, kmeans
        self.reassign = reassign  # epochs between clusterings (deepcluster's --reassign, 1)
        self.classifier = nn.Linear(feature_dim, clusters)
        self.reset_classifier(seed=0, epoch=0)

    def default_recipe(self, size: int) -> Recipe:
        """RandomResizedCrop and flip, as DeepCluster's training set (`main.py`)."""
        return Crop(size=size)

    def check_recipe(self, recipe: Recipe) -> None:
        refuse_multi_crop(self.name, recipe)

    @torch.no_grad()
    def reset_classifier(self, *, seed: int, epoch: int) -> None:
        """A fresh top layer: weights N(0, 0.01), bias 0, drawn from (seed, epoch) so that every
        rank makes the same one."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        weight = torch.empty(self.classifier.weight.shape).normal_(0.0, 0.01, generator=generator)
        self.classifier.weight.copy_(weight)
        self.classifier.bias.zero_()

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        labels = batch.get("label")
        if labels is None:
            raise ValueError(
                "DeepCluster's batches carry no pseudo-labels: the loop clusters before each epoch"
            )
        views = batch["views"][0]
        valid = labelled_mask(batch, labels, len(views), views.device)
        scores = self.classifier(self.backbone(views))
        return F.cross_entropy(scores[valid], labels.to(views.device)[valid])

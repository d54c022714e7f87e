"""MoCo v2 (Chen et al. 2020): a momentum key encoder (0.999), a queue of 65,536 keys as the
dictionary, an MLP head, temperature 0.2; keys are gathered from every rank before they are
enqueued, and the key encoder sees the batch shuffled across ranks (shuffled BN) so that batch
statistics cannot give the positive away. With a multi-crop recipe every crop is a query against
the keys of each global crop other than itself, and only global crops' keys are enqueued."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastssl.recipes import MoCoV2 as MoCoV2Views
from fastssl.recipes import Recipe
from fastssl.train.distributed import gather, world
from fastssl.train.heads import mlp
from fastssl.train.losses import moco_infonce
from fastssl.train.methods.base import Method, crop_pairs, ema_update, global_crops, momentum_copy, valid_mask


class MoCoV2(Method):
    """Pairing: with two views, the paper's asymmetric form: view 0 is the query, view 1 the key,
    the key enqueued. With a multi-crop recipe (2 global + N local crops) every crop's query is
    matched with the momentum key of each global crop other than itself (2 + 2N InfoNCE terms
    against the same queue, averaged), and the keys of the global crops, only they, are enqueued
    (CLSA enqueues only its key crop too)."""

    name: ClassVar[str] = "mocov2"

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        out_dim: int = 128,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
    ) -> None:
        super().__init__(backbone, feature_dim)
        self.projector = mlp(feature_dim, feature_dim, out_dim)
        self.key_backbone, self.key_projector = momentum_copy(backbone), momentum_copy(self.projector)
        self.momentum, self.temperature = momentum, temperature
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, out_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def default_recipe(self, size: int) -> Recipe:
        return MoCoV2Views(size=size)

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        """Keys from the momentum encoder, computed on a batch shuffled across ranks (one
        process: no shuffle can separate BN statistics; use several ranks or SyncBN)."""
        rank, size = world()
        if size == 1:
            return self.key_projector(self.key_backbone(x))
        everyone = gather(x)
        order = torch.randperm(len(everyone), device=x.device)
        dist.broadcast(order, src=0)
        mine = order.view(size, -1)[rank]
        keys = self.key_projector(self.key_backbone(everyone[mine]))
        restore = torch.argsort(order)
        return gather(keys)[restore].view(size, len(x), -1)[rank]

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor, valid: torch.Tensor) -> None:
        keys = F.normalize(gather(keys)[gather(valid)], dim=1)
        size = len(self.queue)
        keys = keys[-size:]  # more keys than the queue holds: the newest fill it
        index = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[index] = keys
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        views = batch["views"]
        valid = valid_mask(batch, len(views[0]), views[0].device)
        queue = self.queue.clone().detach()
        if len(views) == 2:  # the paper's pair
            q, k = self.projector(self.backbone(views[0])), self._keys(views[1])
            loss = moco_infonce(q[valid], k[valid], queue, self.temperature)
            self._enqueue(k, valid)
            return loss
        queries = [self.projector(self.backbone(view)) for view in views]
        keys = [self._keys(view) for view in views[: global_crops(views)]]
        pairs = crop_pairs(views)
        loss = sum(moco_infonce(queries[i][valid], keys[j][valid], queue, self.temperature) for i, j in pairs)
        for k in keys:
            self._enqueue(k, valid)
        return loss / len(pairs)

    def on_step(self, step: int, total_steps: int) -> None:
        ema_update(self.key_backbone, self.backbone, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)

"""MoCo v2 (Chen et al. 2020): a momentum key encoder (0.999), a queue of 65,536 keys as the
dictionary, an MLP head, temperature 0.2; keys are gathered from every rank before they are
enqueued, and the key encoder sees the batch shuffled across ranks (shuffled BN) so that batch
statistics cannot give the positive away."""

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
from fastssl.train.methods.base import Method, ema_update, momentum_copy, valid_mask


class MoCoV2(Method):
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
        query_view, key_view = batch["views"][:2]
        valid = valid_mask(batch, len(query_view), query_view.device)
        q = self.projector(self.backbone(query_view))
        k = self._keys(key_view)
        loss = moco_infonce(q[valid], k[valid], self.queue.clone().detach(), self.temperature)
        self._enqueue(k, valid)
        return loss

    def on_step(self, step: int, total_steps: int) -> None:
        ema_update(self.key_backbone, self.backbone, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)

"""What every pretraining method provides to the training loop."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import nn

from fastssl.recipes import Recipe


class Method(nn.Module):
    """A pretraining method: an online `backbone` (what evaluation and users keep), its heads, and
    a loss over a loader batch. `on_step` runs after each optimiser step (momentum encoders)."""

    name: ClassVar[str] = "method"

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim

    def default_recipe(self, size: int) -> Recipe:
        raise NotImplementedError

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """The loss: DistributedDataParallel synchronises gradients through `forward`."""
        return self.loss(batch)

    def on_step(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step; nothing by default."""


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy for a momentum (EMA) encoder."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


def valid_mask(batch: dict[str, Any], n: int, device: torch.device) -> torch.Tensor:
    valid = batch.get("valid")
    return torch.ones(n, dtype=torch.bool, device=device) if valid is None else valid.to(device).bool()

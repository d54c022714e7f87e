"""Optimisers and schedules: SGD, LARS (You et al. 2017) for large batches, AdamW for ViTs; linear
warm-up followed by cosine decay of the learning rate, cosine schedules of momentum and weight
decay, all stepped per iteration."""

from __future__ import annotations

import math

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each weight matrix is scaled by the trust ratio
    eta * ||w|| / ||g + wd w|| (SimCLR's and BYOL's large-batch optimiser). Biases and norm
    parameters (1-D) are neither adapted nor decayed, as in both papers. torch has no LARS."""

    def __init__(
        self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6, eta: float = 0.001
    ):  # noqa: ANN001
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch optimiser API
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if p.ndim > 1:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm)
                    )
                    grad = grad.mul(trust)
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                buf = state["momentum"].mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])
        return loss


OPTIMIZERS = ("sgd", "lars", "adamw")


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """ "sgd" (momentum 0.9), "lars" or "adamw" over the parameters that require gradients.

    AdamW (the ViT methods' optimiser: DINO, MoCo v3) decays weight matrices only, not biases and
    norm parameters (1-D), as DINO's parameter groups do (position embedding and class token are
    decayed, as there; SGD and LARS keep decaying everything, so DINO's ResNet-50 recipe under SGD
    also decays biases and norms, which DINO does not); its second group is marked
    `decay=False` so a weight-decay schedule leaves it at 0."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "lars":
        return LARS(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        groups = [
            {"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "decay": False},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Set every decayed parameter group's weight decay (a schedule's value for this step)."""
    for group in optimizer.param_groups:
        if group.get("decay", True):
            group["weight_decay"] = weight_decay


def cosine_between(start: float, end: float, step: int, total: int) -> float:
    """From `start` at step 0 to `end` at `total` along a half cosine (DINO's weight decay and
    teacher momentum schedules)."""
    return end + (start - end) * (math.cos(math.pi * min(1.0, step / max(1, total))) + 1) / 2


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rate at `step` (0-based): linear from 1/warmup to 1 over
    `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def cosine_momentum(base: float, step: int, total: int) -> float:
    """BYOL / MoCo v3 / DINO target momentum: from `base` to 1 along a cosine over `total` steps."""
    return cosine_between(base, 1.0, step, total)

"""Losses of the pretraining methods, with cross-rank negatives where the method calls for them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastssl.train.distributed import gather, gather_with_grad, world


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """SimCLR's NT-Xent (InfoNCE over 2N views): each view's positive is its partner; negatives are
    every other view on every rank (gathered with gradient). Invalid samples (`valid` False: epoch
    padding, skipped data) are neither anchors nor negatives."""
    n = len(z1)
    rank, _ = world()
    local = F.normalize(torch.cat([z1, z2]), dim=1)  # (2n, d): this rank's views
    everyone = gather_with_grad(local)  # (W * 2n, d), rank r's block at [2n r, 2n (r + 1))
    keep = torch.ones(n, dtype=torch.bool, device=z1.device) if valid is None else valid.bool()
    keep2 = torch.cat([keep, keep])
    logits = local @ everyone.T / temperature
    own = torch.arange(2 * n, device=z1.device) + 2 * n * rank
    columns_ok = gather(keep2)[None, :].expand_as(logits).clone()
    columns_ok[torch.arange(2 * n, device=z1.device), own] = False  # a view is not its own negative
    logits = logits.masked_fill(~columns_ok, float("-inf"))
    positive = own + torch.where(torch.arange(2 * n, device=z1.device) < n, n, -n)
    loss = F.cross_entropy(logits[keep2], positive[keep2], reduction="sum")
    return loss / keep2.sum().clamp_min(1)


def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v2: the key of the same image against the queue's keys (K, d), label 0."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.T
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def contrastive_across_ranks(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's loss: queries against the momentum keys of every rank (no gradient to keys),
    scaled by 2 T as in the paper's pseudocode."""
    q, k = F.normalize(q, dim=1), F.normalize(gather(k), dim=1)
    logits = q @ k.T / temperature
    labels = torch.arange(len(q), device=q.device) + len(q) * world()[0]
    return F.cross_entropy(logits, labels) * (2 * temperature)


def byol_regression(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL: 2 - 2 cos(p, z) per sample, averaged; the target `z` carries no gradient."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()

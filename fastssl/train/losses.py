"""Losses of the pretraining methods, with cross-rank negatives where the method calls for them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fastssl.train.distributed import gather, gather_with_grad, world


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """SimCLR's NT-Xent (InfoNCE over 2N views): each view's positive is its partner; negatives are
    every other view on every rank (gathered with gradient). Invalid samples (`valid` False: epoch
    padding, skipped data) are neither anchors nor negatives."""
    return multi_positive_nt_xent([z1, z2], temperature, valid)


def multi_positive_nt_xent(
    views: Sequence[torch.Tensor], temperature: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """NT-Xent over V views of N images (SupCon's multi-positive form, Khosla et al. 2020, with
    the image as the label): every view is an anchor, its positives are the image's V - 1 other
    views, its negatives every other view on every rank (gathered with gradient); an anchor's loss
    is the mean over its positives of -log softmax (averaged outside the log, as SupCon), the loss
    the mean over anchors. With V = 2 it is SimCLR's NT-Xent exactly. Invalid samples are neither
    anchors nor negatives."""
    v, n = len(views), len(views[0])
    if v < 2:
        raise ValueError(f"a contrastive loss needs at least 2 views of each image, got {v}")
    rank, _ = world()
    device = views[0].device
    local = F.normalize(torch.cat(list(views)), dim=1)  # (v n, d): row j n + i is view j of image i
    everyone = gather_with_grad(local)  # (W v n, d), rank r's block at [v n r, v n (r + 1))
    keep = torch.ones(n, dtype=torch.bool, device=device) if valid is None else valid.bool()
    keep_rows = keep.repeat(v)
    rows = torch.arange(v * n, device=device)
    own = rows + v * n * rank
    logits = local @ everyone.T / temperature
    columns_ok = gather(keep_rows)[None, :].expand_as(logits).clone()
    columns_ok[rows, own] = False  # a view is not its own negative
    logits = logits.masked_fill(~columns_ok, float("-inf"))[keep_rows]  # invalid anchors out first
    image, view = (rows % n)[keep_rows], (rows // n)[keep_rows]
    partners = v * n * rank + torch.arange(v, device=device)[None, :] * n + image[:, None]  # (anchors, v)
    log_prob = logits.log_softmax(dim=1).gather(1, partners)
    others = torch.arange(v, device=device)[None, :] != view[:, None]  # the anchor itself is no positive
    per_anchor = -log_prob.masked_fill(~others, 0.0).sum(dim=1) / (v - 1)  # its own column is -inf
    return per_anchor.sum() / keep_rows.sum().clamp_min(1)


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

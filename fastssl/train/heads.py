"""Projection and prediction heads: MLPs with batch norm, as the methods' papers define them."""

from __future__ import annotations

from torch import nn


def mlp(dim_in: int, hidden: int, dim_out: int, *, layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """`layers` linear layers; BN + ReLU after each but the last; an affine-free BN after the last
    with `last_bn` (MoCo v3's projector)."""
    modules: list[nn.Module] = []
    width = dim_in
    for _ in range(layers - 1):
        modules += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    modules.append(nn.Linear(width, dim_out, bias=not last_bn))
    if last_bn:
        modules.append(nn.BatchNorm1d(dim_out, affine=False))
    return nn.Sequential(*modules)

"""CIE Lab and the quantised ab space of colorization (Zhang, Isola & Efros 2016, section 2).

Lab is Kornia's (`kornia.color.rgb_to_lab`: sRGB companding, D65 white, the CIE formula, as
scikit-image's `rgb2lab` that Zhang's code calls). The ab bins are the centres of a grid of 10
whose cell holds the ab of at least one 8-bit sRGB colour: every colour an image can hold falls in
a bin. This rule gives 261 bins; Zhang's 313 came from the ab values observed on ImageNet, which
reach beyond sRGB because their images were decoded through other colour profiles.
"""

from __future__ import annotations

import functools

import kornia
import numpy as np
import torch

GRID = 10.0  # ab bin spacing (Zhang et al. section 2.1)
_SPAN = 12  # grid cells either side of 0 that are checked: |ab| of sRGB stays below 120


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> Lab, L in [0, 100], a and b within about +-110."""
    return kornia.color.rgb_to_lab(rgb.float().clamp(0, 1))


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> sRGB in [0, 1] (out-of-gamut colours clipped)."""
    return kornia.color.lab_to_rgb(lab.float(), clip=True)


def lightness(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) L - 50 of sRGB in [0, 1]: the colorization network's input, as Zhang's."""
    return rgb_to_lab(rgb)[:, :1] - 50.0


@functools.lru_cache(maxsize=1)
def ab_bins() -> np.ndarray:
    """(Q, 2) float32 ab bin centres, in row order of a then b (computed once, under a second)."""
    levels = torch.arange(256, dtype=torch.float32) / 255
    green, blue = torch.meshgrid(levels, levels, indexing="ij")
    hit = torch.zeros(2 * _SPAN + 1, 2 * _SPAN + 1, dtype=torch.bool)
    for red in levels:  # all 2^24 colours, one red level at a time
        rgb = torch.stack([torch.full_like(green, float(red)), green, blue])[None]
        cells = torch.round(rgb_to_lab(rgb)[0, 1:] / GRID).long() + _SPAN
        hit[cells[0].flatten(), cells[1].flatten()] = True
    a, b = np.nonzero(hit.numpy())
    centres = np.stack([a - _SPAN, b - _SPAN], axis=1).astype(np.float32) * GRID
    centres.flags.writeable = False
    return centres


def nearest_bin(ab: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """(B, h, w) index of the nearest bin centre of each ab pixel (B, 2, h, w)."""
    flat = ab.permute(0, 2, 3, 1).reshape(-1, 2).float()
    return torch.cdist(flat, bins).argmin(1).reshape(ab.shape[0], *ab.shape[2:])


def soft_encode(
    ab: torch.Tensor, bins: torch.Tensor, neighbours: int = 5, sigma: float = 5.0
) -> torch.Tensor:
    """(B, Q, h, w) soft targets: a Gaussian (`sigma`) of the distance to the `neighbours` nearest
    bins, normalised to sum 1, zero on the others (Zhang et al. section 2.1: 5 neighbours, sigma 5)."""
    n, _, h, w = ab.shape
    flat = ab.permute(0, 2, 3, 1).reshape(-1, 2).float()
    distance = torch.cdist(flat, bins)
    near, index = distance.topk(neighbours, dim=1, largest=False)
    weight = torch.softmax(-near.square() / (2 * sigma**2), dim=1)
    target = torch.zeros(len(flat), len(bins), device=ab.device).scatter_(1, index, weight)
    return target.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def annealed_mean(logits: torch.Tensor, bins: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
    """(B, 2, h, w) ab decoded from (B, Q, h, w) logits: the mean of the distribution sharpened to
    `temperature` (Zhang et al. section 2.3; 0.38, between the mean's 1 and the mode's 0)."""
    probability = torch.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", probability, bins)


def smoothed_prior(counts: np.ndarray, sigma: float = 5.0) -> np.ndarray:
    """The empirical bin distribution `counts` (Q,) smoothed by a Gaussian of `sigma` over the
    ab plane (Zhang et al. section 2.2), normalised to sum 1."""
    centres = ab_bins().astype(np.float64)
    squared = ((centres[:, None] - centres[None]) ** 2).sum(-1)
    smoothed = np.exp(-squared / (2 * sigma**2)) @ np.asarray(counts, dtype=np.float64)
    total = smoothed.sum()
    if total <= 0:
        raise ValueError("the colour prior counted no colourful pixels")
    return smoothed / total


def rebalancing_weights(prior: np.ndarray, mix: float = 0.5) -> np.ndarray:
    """Per-bin loss weights w proportional to ((1 - mix) p + mix / Q)^-1 with E_p[w] = 1 (Zhang et
    al. equation 4, lambda 0.5): rare colours weigh more, common ones (the desaturated) less."""
    prior = np.asarray(prior, dtype=np.float64)
    weights = 1.0 / ((1 - mix) * prior + mix / len(prior))
    return weights / (prior * weights).sum()

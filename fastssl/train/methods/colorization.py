"""Colorization (Zhang, Isola & Efros 2016, "Colorful Image Colorization"): from the lightness of
an image, predict a distribution over quantised ab colours at every pixel of a quarter-resolution
grid, trained with a class-rebalanced cross-entropy against soft-encoded targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastssl.pipelines.lab import (
    ab_bins,
    annealed_mean,
    lab_to_rgb,
    nearest_bin,
    rebalancing_weights,
    soft_encode,
)
from fastssl.recipes import Colorization as ColorizationViews
from fastssl.recipes import Recipe
from fastssl.train.dense import FeatureMap, to_size, transposed_decoder
from fastssl.train.methods.base import Method, require_recipe, valid_mask


def lightness_input(light: torch.Tensor) -> torch.Tensor:
    """The backbone's input from L - 50 (B, 1, H, W): L scaled to [-1, 1], copied to the three
    channels an RGB backbone takes (so the same backbone can be probed on lightness later)."""
    return (light.float() / 50.0).expand(-1, 3, -1, -1)


def load_prior(path: str | Path) -> np.ndarray:
    """A colour prior written by `fastssl colour-prior`: (Q,) probabilities over `ab_bins()`."""
    prior = np.load(path)
    if prior.shape != (len(ab_bins()),) or not np.isclose(prior.sum(), 1.0) or prior.min() < 0:
        raise ValueError(
            f"{path} is not a colour prior over the {len(ab_bins())} ab bins "
            "(`fastssl colour-prior` writes one)"
        )
    return prior


class Colorization(Method):
    """The backbone's feature map (on L, scaled to [-1, 1] and copied to three channels), a
    transposed-conv decoder to the ab target's grid, and logits over the Q ab bins there.

    Loss: cross-entropy against the soft-encoded target (the `neighbours` (5) nearest bins,
    Gaussian `sigma` 5; Zhang's code uses 10 neighbours), each pixel weighted by the rebalancing
    weight of its nearest bin (lambda `mix` 0.5, from `prior`: the smoothed ab distribution of the
    data set written by `fastssl colour-prior`; without one every bin weighs 1), images without
    colour (no |a|, |b| above 5) weighing 0, averaged over the weighted images' pixels. Pictures
    decode the annealed mean at `temperature` 0.38.
    """

    name: ClassVar[str] = "colorization"
    probe_input: ClassVar[str] = "lightness"

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        prior: str | None = None,
        mix: float = 0.5,
        neighbours: int = 5,
        sigma: float = 5.0,
        temperature: float = 0.38,
        factor: int = 4,
    ) -> None:
        super().__init__(backbone, feature_dim)
        self.features = FeatureMap(backbone)
        channels, stride = self.features.geometry()
        self.factor, self.neighbours, self.sigma, self.temperature = factor, neighbours, sigma, temperature
        self.register_buffer("bins", torch.from_numpy(ab_bins().copy()), persistent=False)
        weights = rebalancing_weights(load_prior(prior), mix) if prior else np.ones(len(ab_bins()))
        self.register_buffer("bin_weights", torch.from_numpy(weights).float())
        self.decoder = transposed_decoder(channels, len(ab_bins()), max(1, stride // factor))

    def default_recipe(self, size: int) -> Recipe:
        return ColorizationViews(factor=self.factor).resized(size)

    def check_recipe(self, recipe: Recipe) -> None:
        require_recipe(self.name, recipe, ColorizationViews)
        if recipe.factor != self.factor:
            raise ValueError(
                f"the recipe's ab target is at 1/{recipe.factor}, the method's at 1/{self.factor}"
            )

    def logits(self, light: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, Q, *size) bin logits for L - 50 (B, 1, H, W)."""
        return to_size(self.decoder(self.features(lightness_input(light))), size).float()

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        light, ab = batch["views"][0], batch["ab"]
        logits = self.logits(light, ab.shape[-2:])
        target = soft_encode(ab, self.bins, self.neighbours, self.sigma)
        cross_entropy = -(target * F.log_softmax(logits, dim=1)).sum(1)  # (B, h, w)
        counted = valid_mask(batch, len(ab), ab.device) & batch["colourful"].to(ab.device)
        weight = self.bin_weights[nearest_bin(ab, self.bins)] * counted[:, None, None]
        pixels = counted.sum() * ab.shape[-2] * ab.shape[-1]
        return (cross_entropy * weight).sum() / pixels.clamp_min(1)  # 0 (with gradients) when none count

    @torch.no_grad()
    def pictures(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        light, ab = batch["views"][0].float(), batch["ab"]
        size = light.shape[-2:]
        predicted = annealed_mean(self.logits(light, ab.shape[-2:]), self.bins, self.temperature)

        def colour(ab_grid: torch.Tensor) -> torch.Tensor:
            up = F.interpolate(ab_grid.float(), size=size, mode="bilinear")
            return lab_to_rgb(torch.cat([light + 50, up], dim=1))

        return [(light + 50) / 100, colour(ab), colour(predicted)]

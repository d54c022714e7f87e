"""The prediction stage of the data-prediction recipes: from the backends' uint8 base views to the
input the network sees and the target it predicts (`fastssl.recipes.prediction`).

Both view backends (DALI and Kornia, CPU and GPU) deliver the base view; this stage is torch
arithmetic on the loader's device, shared, so that Lab, masks and bicubic reductions are the same
numbers after every backend. Masks are built from the draws of `fastssl.host.prediction_params`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fastssl.pipelines.lab import rgb_to_lab

from fastssl.host.prediction_params import noise_pattern
from fastssl.recipes.prediction import Colorization, Inpainting, PredictionRecipe, SuperResolution

COLOURFUL = 5.0  # an image counts for colorization when some |a| or |b| of its target exceeds this


def bicubic(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The one bicubic resize of super-resolution pairs and baselines: torch's, antialiased."""
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)


class PredictionViews:
    """Base views (B, 3, H, W) uint8 and the recipe's draws in; the task's views and targets out."""

    params_key = "prediction_params"

    def __init__(self, recipe: PredictionRecipe, device: torch.device | str = "cpu") -> None:
        self.recipe = recipe
        self.device = torch.device(device)
        self.mean = torch.tensor(recipe.mean, device=self.device)[:, None, None]
        self.std = torch.tensor(recipe.std, device=self.device)[:, None, None]
        self._pattern: torch.Tensor | None = None
        if isinstance(recipe, Inpainting):
            fill = torch.tensor(recipe.fill_colour(), device=self.device)[:, None, None]
            self.fill = (fill - self.mean) / self.std
            if recipe.mask == "central":
                self.central_mask, self.central_weight = central_mask(recipe, self.device)
            elif recipe.mask == "noise":
                pattern, _ = noise_pattern(
                    recipe.size, recipe.noise_resolution, recipe.noise_density, recipe.noise_seed
                )
                self._pattern = torch.from_numpy(np.array(pattern)).to(self.device)

    def __call__(
        self, base: torch.Tensor, draws: dict[str, np.ndarray] | None
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], dict[str, np.ndarray]]:
        """(views, targets, plan); the plan is empty (the draws say everything)."""
        pixels = base.to(self.device).float() / 255
        recipe = self.recipe
        if isinstance(recipe, Colorization):
            views, targets = self._colorization(pixels)
        elif isinstance(recipe, Inpainting):
            views, targets = self._inpainting(pixels, draws or {})
        elif isinstance(recipe, SuperResolution):
            height, width = pixels.shape[-2:]
            low = bicubic(pixels, (height // recipe.factor, width // recipe.factor)).clamp_(0, 1)
            views, targets = [self.normalise(low)], {"hr": pixels}
        else:
            raise TypeError(f"no prediction stage for recipe {recipe.name!r}")
        return views, targets, {}

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def _colorization(self, pixels: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, Any]]:
        factor = self.recipe.factor
        lab = rgb_to_lab(pixels)
        ab = lab[:, 1:, ::factor, ::factor].contiguous()  # every factor-th pixel, as their stride-4 layer
        colourful = (ab.abs() > COLOURFUL).flatten(1).any(1)
        return [lab[:, :1] - 50.0], {"ab": ab, "colourful": colourful}

    def _inpainting(self, pixels: torch.Tensor, draws: dict[str, np.ndarray]) -> tuple[list, dict]:
        recipe, n = self.recipe, len(pixels)
        size = pixels.shape[-1]
        if recipe.mask == "central":
            mask = self.central_mask.expand(n, -1, -1, -1)
            weight = self.central_weight.expand(n, -1, -1, -1)
        else:
            if recipe.mask == "blocks":
                mask = block_mask(torch.from_numpy(draws["blocks"]).to(self.device), size)
            else:
                window = torch.from_numpy(draws["window"].astype(np.int64)).to(self.device)
                steps = torch.arange(size, device=self.device)
                rows = (window[:, 0, None] + steps)[:, :, None]
                cols = (window[:, 1, None] + steps)[:, None, :]
                mask = self._pattern[rows, cols][:, None]
            weight = torch.ones(n, 1, size, size, device=self.device)  # train_random.lua: whole image
        target = self.normalise(pixels)
        masked = torch.where(mask, self.fill, target)
        return [masked], {"target": target, "mask": mask.contiguous(), "weight": weight.contiguous()}


def central_mask(recipe: Inpainting, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, weight) (1, 1, S, S): the central region shrunk by the overlap band is the hole;
    the L2 weighs the hole 1 and the band `border_weight`, the rest 0."""
    size, side, overlap = recipe.size, recipe.central_side(), recipe.overlap
    lo = (size - side) // 2
    region = torch.zeros(size, size, dtype=torch.bool, device=device)
    region[lo : lo + side, lo : lo + side] = True
    hole = torch.zeros_like(region)
    hole[lo + overlap : lo + side - overlap, lo + overlap : lo + side - overlap] = True
    weight = torch.where(hole, 1.0, torch.where(region, recipe.border_weight, 0.0))
    return hole[None, None], weight[None, None].float()


def block_mask(blocks: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, size, size) union of the (B, n, 3) (top, left, side) squares."""
    steps = torch.arange(size, device=blocks.device)
    top, left, side = (blocks[..., i, None] for i in range(3))
    rows = (steps >= top) & (steps < top + side)  # (B, n, size)
    cols = (steps >= left) & (steps < left + side)
    return (rows[..., :, None] & cols[..., None, :]).any(1, keepdim=True)

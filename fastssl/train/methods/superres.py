"""Super-resolution as a pretext (SRResNet, Ledig et al. 2017; EDSR, Lim et al. 2017): from a x4
bicubic reduction, paint the image back at full resolution; the encoder before the upsampler is
the backbone evaluation probes."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from fastssl.pipelines.prediction_views import bicubic
from fastssl.recipes import Recipe
from fastssl.recipes import SuperResolution as SuperResolutionViews
from fastssl.train.dense import FeatureMap, pixel_shuffle_upsampler, to_size, unnormalise
from fastssl.train.methods.base import Method, require_recipe, valid_mask

# ITU-R BT.601 luma of [0, 1] RGB as MATLAB's rgb2ycbcr, the convention of SR evaluation
_Y_WEIGHTS = (65.481 / 255, 128.553 / 255, 24.966 / 255)
_Y_OFFSET = 16 / 255


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """(B, H, W) Y of (B, 3, H, W) RGB in [0, 1], in [16/255, 235/255]."""
    weights = torch.tensor(_Y_WEIGHTS, device=rgb.device)[None, :, None, None]
    return (rgb.float() * weights).sum(1) + _Y_OFFSET


def psnr_y(prediction: torch.Tensor, target: torch.Tensor, shave: int = 4) -> torch.Tensor:
    """(B,) PSNR in dB on the Y channel of [0, 1] images with `shave` border pixels left out (the
    scale factor, as EDSR's and SRGAN's evaluations)."""
    pred, true = luma(prediction.clamp(0, 1)), luma(target)
    if shave:
        pred, true = pred[:, shave:-shave, shave:-shave], true[:, shave:-shave, shave:-shave]
    mse = (pred - true).square().mean(dim=(1, 2)).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


class SuperResolution(Method):
    """The backbone's feature map of the normalised low-resolution input, EDSR's pixel-shuffle
    upsampler to the target's size, added to the bicubic upsampling of the input (a global
    residual, as VDSR (Kim et al. 2016): the network learns what bicubic misses). Loss: L1 on
    [0, 1] pixels (EDSR's). Meant for the `edsr` backbone, which keeps the input's resolution;
    a strided backbone upsamples by its stride more."""

    name: ClassVar[str] = "superres"

    def __init__(self, backbone: nn.Module, feature_dim: int, *, factor: int = 4) -> None:
        super().__init__(backbone, feature_dim)
        self.features = FeatureMap(backbone)
        channels, stride = self.features.geometry()
        if 2 ** round(math.log2(stride * factor)) != stride * factor:
            raise ValueError(f"the backbone's stride {stride} times factor {factor} must be a power of two")
        self.factor = factor
        self.upsampler = pixel_shuffle_upsampler(channels, 3, stride * factor)
        nn.init.zeros_(self.upsampler[-1].weight)  # the residual starts at 0: training starts at bicubic
        nn.init.zeros_(self.upsampler[-1].bias)
        self.pixel_stats = (SuperResolutionViews.mean, SuperResolutionViews.std)

    def default_recipe(self, size: int) -> Recipe:
        return SuperResolutionViews(factor=self.factor).resized(size)

    def check_recipe(self, recipe: Recipe) -> None:
        require_recipe(self.name, recipe, SuperResolutionViews)
        if recipe.factor != self.factor:
            raise ValueError(f"the recipe reduces by {recipe.factor}, the method upsamples by {self.factor}")
        self.pixel_stats = (recipe.mean, recipe.std)

    def baseline(self, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The bicubic upsampling of the input, the same bicubic the recipe reduced with."""
        return bicubic(unnormalise(low, *self.pixel_stats), size).clamp(0, 1)

    def predict(self, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        residual = to_size(self.upsampler(self.features(low)), size).float()
        return self.baseline(low, size) + residual

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        low, high = batch["views"][0], batch["hr"].float()
        prediction = self.predict(low, high.shape[-2:])
        valid = valid_mask(batch, len(high), high.device)
        error = (prediction - high).abs().mean(dim=(1, 2, 3))
        return (error * valid).sum() / valid.sum().clamp_min(1)

    @torch.no_grad()
    def pictures(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        low, high = batch["views"][0], batch["hr"].float()
        size = high.shape[-2:]
        return [self.baseline(low, size), high, self.predict(low, size).clamp(0, 1)]

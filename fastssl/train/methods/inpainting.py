"""Inpainting (Pathak et al. 2016, "Context Encoders: Feature Learning by Inpainting"): an encoder
sees an image with a hole filled with the data set's mean colour, a decoder paints the pixels back,
scored by a weighted L2 and optionally by a discriminator."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fastssl.recipes import Inpainting as InpaintingViews
from fastssl.recipes import Recipe
from fastssl.train.dense import FeatureMap, to_size, transposed_decoder, unnormalise
from fastssl.train.methods.base import Method, require_recipe, valid_mask


def discriminator(width: int = 64) -> nn.Module:
    """The context encoder's adversary (after DCGAN): stride-2 4x4 convs with batch norm and
    leaky ReLU doubling the width, pooled to one real/fake logit per image."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
    for i in range(3):
        channels = width * 2**i
        layers += [nn.Conv2d(channels, 2 * channels, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * channels)]
        layers.append(nn.LeakyReLU(0.2, inplace=True))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width * 8, 1)]
    return nn.Sequential(*layers)


class Inpainting(Method):
    """The backbone's feature map of the masked image and a transposed-conv decoder back to the
    input's size (the channel-wise fully connected bottleneck of the paper is left out: the
    decoder is convolutional from the map).

    Loss: the L2 between prediction and target (both normalised) weighted by the recipe's `weight`
    map (central mask: 1 in the hole, 10 on its overlap band; random masks: the whole image),
    averaged over the weighted pixels. With `adversarial` > 0 (the paper's 0.001): the L2 weighs
    1 - adversarial and a discriminator's non-saturating GAN loss on the completed image weighs
    `adversarial`; the discriminator trains in the same step on target (real) against completed
    image (fake), its weights reached only by its own loss (the generator's term runs it on
    detached copies), so one optimiser serves both.
    """

    name: ClassVar[str] = "inpainting"

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        adversarial: float = 0.0,
        discriminator_width: int = 64,
    ) -> None:
        super().__init__(backbone, feature_dim)
        if not 0.0 <= adversarial < 1.0:
            raise ValueError(f"adversarial is the GAN loss's weight in [0, 1), got {adversarial}")
        self.features = FeatureMap(backbone)
        channels, stride = self.features.geometry()
        self.decoder = transposed_decoder(channels, 3, stride)
        self.adversarial = adversarial
        self.discriminator = discriminator(discriminator_width) if adversarial > 0 else None
        self.pixel_stats = (InpaintingViews.mean, InpaintingViews.std)  # the run's recipe's, once checked

    def default_recipe(self, size: int) -> Recipe:
        return InpaintingViews().resized(size)

    def check_recipe(self, recipe: Recipe) -> None:
        require_recipe(self.name, recipe, InpaintingViews)
        self.pixel_stats = (recipe.mean, recipe.std)  # to show pictures in [0, 1]

    def predict(self, masked: torch.Tensor) -> torch.Tensor:
        return to_size(self.decoder(self.features(masked)), masked.shape[-2:]).float()

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        masked, target = batch["views"][0], batch["target"].float()
        prediction = self.predict(masked)
        valid = valid_mask(batch, len(target), target.device)
        weight = batch["weight"].float() * valid[:, None, None, None]
        squared = (prediction - target).square().mean(1, keepdim=True)  # over channels
        reconstruction = (squared * weight).sum() / weight.sum().clamp_min(1e-6)
        if self.discriminator is None:
            return reconstruction
        completed = torch.where(batch["mask"], prediction, target)
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        fooled = functional_call(self.discriminator, frozen, (completed[valid],))
        generator = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        real = self.discriminator(target[valid])
        fake = self.discriminator(completed[valid].detach())
        critic = F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        critic = critic + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        return (1 - self.adversarial) * reconstruction + self.adversarial * generator + critic

    @torch.no_grad()
    def pictures(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        masked, target = batch["views"][0].float(), batch["target"].float()
        completed = torch.where(batch["mask"], self.predict(masked), target)
        return [self._pixels(masked), self._pixels(target), self._pixels(completed)]

    def _pixels(self, normalised: torch.Tensor) -> torch.Tensor:
        return unnormalise(normalised, *self.pixel_stats)

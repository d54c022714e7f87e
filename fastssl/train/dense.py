"""What the data-prediction pretexts add to a backbone: its feature map before pooling, decoders
back up to a target's resolution, and the picture grids they write each epoch.

The feature map shares the backbone's weights, so what the pretext trains is the backbone that
evaluation probes and users keep.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class FeatureMap:
    """(B, 3, H, W) -> (B, C, h, w): the backbone without its global pooling. Backbones with a
    `feature_map` method (fastssl's ResNet, EDSR and ViT) use it; torchvision's ResNet and the
    small CNN (an `nn.Sequential` ending in pooling and flatten) are run up to their pooling.
    A plain callable, not a module: the method registers the backbone once, as `backbone`."""

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone
        pooled_sequential = (
            isinstance(backbone, nn.Sequential)
            and len(backbone) > 2
            and isinstance(backbone[-2], nn.AdaptiveAvgPool2d)
            and isinstance(backbone[-1], nn.Flatten)
        )
        torchvision_resnet = all(hasattr(backbone, n) for n in ("conv1", "maxpool", "layer4", "avgpool"))
        if not (hasattr(backbone, "feature_map") or pooled_sequential or torchvision_resnet):
            raise ValueError(
                f"a dense pretext needs the backbone's feature map before pooling; {type(backbone).__name__} "
                "has no `feature_map(x)` method (add one returning (B, C, h, w))"
            )
        self._sequential = pooled_sequential

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        net = self.backbone
        if hasattr(net, "feature_map"):
            return net.feature_map(x)
        if self._sequential:
            for layer in list(net)[:-2]:
                x = layer(x)
            return x
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    @torch.no_grad()
    def geometry(self, side: int = 64) -> tuple[int, int]:
        """(channels, stride) of the map, found by running it once on a (2, 3, side, side) input."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            out = self(torch.zeros(2, 3, side, side, device=next(self.backbone.parameters()).device))
        finally:
            self.backbone.train(was_training)
        return out.shape[1], max(1, round(side / out.shape[-1]))


def transposed_decoder(
    channels: int, out_channels: int, scale: int, *, width: int | None = None
) -> nn.Module:
    """Upsampling by `scale` (a power of two; 1 for none) in transposed-conv steps of 2 with batch
    norm and ReLU, halving the width each step, then a 3x3 conv to `out_channels`: the
    context-encoder decoder (Pathak et al. 2016, after DCGAN)."""
    steps = _doublings(scale)
    layers: list[nn.Module] = []
    width = width or channels
    current = channels
    for _ in range(steps):
        nxt = max(16, width // 2)
        layers += [
            nn.ConvTranspose2d(current, nxt, 4, 2, 1, bias=False),
            nn.BatchNorm2d(nxt),
            nn.ReLU(inplace=True),
        ]
        current, width = nxt, nxt
    layers.append(nn.Conv2d(current, out_channels, 3, padding=1))
    return nn.Sequential(*layers)


def pixel_shuffle_upsampler(channels: int, out_channels: int, scale: int) -> nn.Module:
    """EDSR's upsampler (Lim et al. 2017): per factor of 2 a conv to 4x the width and a pixel
    shuffle, then a 3x3 conv to `out_channels`."""
    layers: list[nn.Module] = []
    for _ in range(_doublings(scale)):
        layers += [nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2)]
    layers.append(nn.Conv2d(channels, out_channels, 3, padding=1))
    return nn.Sequential(*layers)


def to_size(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`x` bilinearly resized to `size` when its map is not that size already (odd input sides
    make strided maps round up)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear")


def unnormalise(normalised: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """[0, 1] pixels of a batch normalised with a recipe's `mean` and `std` (the stage's inverse)."""
    mean_t, std_t = (torch.tensor(v, device=normalised.device)[:, None, None] for v in (mean, std))
    return normalised.float() * std_t + mean_t


def _doublings(scale: int) -> int:
    steps = round(math.log2(scale)) if scale >= 1 else -1
    if steps < 0 or 2**steps != scale:
        raise ValueError(f"the upsampling factor must be a power of two, got {scale}")
    return steps


def save_grid(columns: list[torch.Tensor], path: str | Path, *, rows: int = 8) -> Path:
    """A PNG of up to `rows` samples, one row each, the given columns side by side (each
    (B, 3 or 1, H, W) in [0, 1], resized to the first column's size): input | target | prediction."""
    from PIL import Image

    height, width = columns[0].shape[-2:]
    cells = []
    for column in columns:
        column = column[:rows].detach().float().cpu().clamp(0, 1)
        column = column.expand(-1, 3, -1, -1) if column.shape[1] == 1 else column
        cells.append(F.interpolate(column, size=(height, width), mode="nearest"))
    grid = torch.cat(cells, dim=3)  # (n, 3, H, columns * W)
    grid = F.pad(grid, (0, 0, 0, 2), value=1.0)  # a white line between rows
    picture = grid.permute(0, 2, 3, 1).reshape(-1, grid.shape[-1], 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((picture.numpy() * 255 + 0.5).astype("uint8")).save(path)
    return path

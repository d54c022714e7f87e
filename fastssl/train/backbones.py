"""Backbones for pretraining: ResNet-18/50 (torchvision's when it imports, else a faithful local
definition of the same architecture), ViT-Tiny/Small/Base of any patch size (`fastssl.train.vit`),
a small CNN for CPU runs, an EDSR-style network that keeps the input's resolution (the
super-resolution pretext's encoder), or any `nn.Module` a user passes.

Every builder returns the network with its classifier removed and the width of its feature vector,
which is what the method heads and the evaluation probes need.
"""

from __future__ import annotations

import torch
from torch import nn

from fastssl.train.vit import VIT_SIZES, vit

BACKBONES = ("resnet18", "resnet50", "small_cnn", "edsr", "vit_tiny", "vit_small", "vit_base")
EDSR_BLOCKS = 16  # EDSR's baseline (Lim et al. 2017, section 3.2): 16 residual blocks


class BasicBlock(nn.Module):
    """ResNet's two-3x3 block (He et al. 2016, fig. 2 left)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * self.expansion, stride)

    def forward(self, x):  # noqa: ANN001, ANN201 - torch module
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    """ResNet's 1x1-3x3-1x1 block with the stride on the 3x3 (torchvision's "ResNet v1.5")."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * 4, stride)

    def forward(self, x):  # noqa: ANN001, ANN201 - torch module
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


def _shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes))


class ResNet(nn.Module):
    """ResNet without its classifier: (B, 3, H, W) -> (B, 512 * expansion) features."""

    def __init__(self, block: type[nn.Module], layers: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inplanes = [], 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if i == 0 else 2
            stage = [block(inplanes, planes, stride)]
            inplanes = planes * block.expansion
            stage += [block(inplanes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):  # noqa: ANN001, ANN201 - torch module
        return self.avgpool(self.feature_map(x)).flatten(1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H / 32, W / 32): the last stage's output before pooling (dense pretexts)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ResidualBlock(nn.Module):
    """EDSR's block: conv-ReLU-conv and the input added back, no batch norm (Lim et al. 2017, fig. 2)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EDSR(nn.Module):
    """EDSR's encoder (Lim et al. 2017): a head conv, `blocks` residual blocks, a conv and a long
    skip, all at the input's resolution; (B, 3, H, W) -> (B, width) by global average pooling, and
    `feature_map` the (B, width, H, W) map the super-resolution pretext upsamples."""

    def __init__(self, width: int = 64, blocks: int = EDSR_BLOCKS) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.tail = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        head = self.head(x)
        return head + self.tail(self.body(head))


def small_cnn(width: int = 32) -> nn.Module:
    """Four conv-BN-ReLU stages (stride 2 from the second), global pooling: (B, 3, H, W) -> (B, 4w)."""
    layers: list[nn.Module] = []
    channels = 3
    for i, out in enumerate((width, 2 * width, 4 * width, 4 * width)):
        layers += [
            nn.Conv2d(channels, out, 3, 1 if i == 0 else 2, 1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(),
        ]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _torchvision_resnet(name: str) -> nn.Module | None:
    try:
        from torchvision import models
    except Exception:  # noqa: BLE001 - absent, or a CUDA build that fails on CPU-only torch
        return None
    model = getattr(models, name)(weights=None)
    model.fc = nn.Identity()
    return model


def build_backbone(
    backbone: str | nn.Module, *, width: int = 32, patch_size: int = 16, image_size: int = 224
) -> tuple[nn.Module, int]:
    """(network without classifier, feature width) for a name in BACKBONES or a user's module
    (whose feature width is found by running it once on a 2x3x64x64 input). `width` sizes the
    small CNN and the EDSR encoder; `patch_size` and `image_size` (the side its position embedding
    is made for) a ViT."""
    if isinstance(backbone, nn.Module):
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            dim = backbone(torch.zeros(2, 3, 64, 64)).flatten(1).shape[1]
        backbone.train(was_training)
        return backbone, dim
    if backbone == "small_cnn":
        return small_cnn(width), 4 * width
    if backbone == "edsr":
        return EDSR(width), width
    if backbone in VIT_SIZES:
        model = vit(backbone, patch_size=patch_size, img_size=image_size)
        return model, model.embed_dim
    if backbone in ("resnet18", "resnet50"):
        model = _torchvision_resnet(backbone)
        if model is None:
            model = (
                ResNet(BasicBlock, (2, 2, 2, 2))
                if backbone == "resnet18"
                else ResNet(Bottleneck, (3, 4, 6, 3))
            )
        return model, 512 if backbone == "resnet18" else 2048
    raise ValueError(f"unknown backbone {backbone!r}; known: {', '.join(BACKBONES)} or an nn.Module")

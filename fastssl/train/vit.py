"""Vision Transformer (Dosovitskiy et al. 2021) as DINO and MoCo v3 use it, with timm's parameter
names (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N.norm1`, `blocks.N.attn.qkv`,
`blocks.N.attn.proj`, `blocks.N.norm2`, `blocks.N.mlp.fc1`, `blocks.N.mlp.fc2`, `norm`) and
shapes as `timm.create_model("vit_small_patch16_224", num_classes=0)`, so that state dicts can
move between the two (the names are tested; loading into timm is not, as timm does not import here).

Written here rather than taken from timm because timm imports torchvision, which does not import
with the CPU torch these machines run. Any patch size works, so a small one (4) makes the same
network usable on 28-64 px images; the position embedding is interpolated (bicubic, as DINO's
`interpolate_pos_encoding`) for crops of another size than it was built for, which is what lets
one network see 224 px global and 96 px local crops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# name -> (embedding width, depth, heads), as timm's vit_tiny / vit_small / vit_base
VIT_SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch for whole samples with probability `rate` in
    training, scaling kept ones by 1 / (1 - rate)."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    """Non-overlapping `patch` px patches, each projected to `dim` by one strided convolution."""

    def __init__(self, patch: int, dim: int, channels: int = 3) -> None:
        super().__init__()
        self.patch_size = patch
        self.proj = nn.Conv2d(channels, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, n, d / heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """(B, 3, H, W) -> (B, dim): the final norm's class token (H and W multiples of the patch size).

    `img_size` is the side the position embedding is made for; other sides interpolate it.
    `drop_path` is the largest stochastic-depth rate, reached at the last block (linear from 0, as
    timm and DINO); `set_drop_path(0)` turns it off (DINO's teacher)."""

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        dim: int = 384,
        depth: int = 12,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of the patch size {patch_size}")
        if dim % heads:
            raise ValueError(f"embedding width {dim} does not divide into {heads} heads")
        self.patch_size, self.embed_dim = patch_size, dim
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (img_size // patch_size) ** 2, dim))
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, drop_path * i / max(1, depth - 1)) for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def set_drop_path(self, rate: float) -> None:
        """Set the largest stochastic-depth rate (0: none), spread over the blocks as at build time."""
        for i, block in enumerate(self.blocks):
            block.drop_path.rate = rate * i / max(1, len(self.blocks) - 1)

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """The position embedding for a (height x width)-patch grid: the built one, or the
        built grid resized by bicubic interpolation (the class token's entry unchanged)."""
        built = self.pos_embed.shape[1] - 1
        if height * width == built and height == width:
            return self.pos_embed
        side = math.isqrt(built)
        grid = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, height * width, -1)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x)[:, 0]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + patches, dim): the final norm's class token and patch tokens."""
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"a {h}x{w} input is not a whole number of {self.patch_size} px patches")
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(h // self.patch_size, w // self.patch_size)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H / patch, W / patch): the patch tokens on their grid (dense pretexts)."""
        h, w = (side // self.patch_size for side in x.shape[-2:])
        return self.tokens(x)[:, 1:].transpose(1, 2).reshape(len(x), -1, h, w)


def vit(name: str, *, patch_size: int = 16, img_size: int = 224, drop_path: float = 0.0) -> VisionTransformer:
    """A ViT of a size in VIT_SIZES; `img_size` rounds down to a multiple of the patch size."""
    dim, depth, heads = VIT_SIZES[name]
    side = max(patch_size, img_size - img_size % patch_size)
    return VisionTransformer(
        img_size=side, patch_size=patch_size, dim=dim, depth=depth, heads=heads, drop_path=drop_path
    )

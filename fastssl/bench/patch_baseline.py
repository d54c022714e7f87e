"""`fastssl bench`'s baseline for patch-grid recipes, written the way public PyTorch jigsaw and
context-prediction code does it: per sample in a Dataset, PIL resize and random crop, grayscale,
then each tile cut with NumPy slicing, normalised with torch and stacked in permuted order;
Jigsaw++ decodes one other random image per sample for its foreign tiles (a map-style dataset has
no batch to borrow from); CPC grids by `Tensor.unfold`. Fed by DataLoader worker processes.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from fastssl.bench.baseline import _Samples
from fastssl.data.manifest import Manifest
from fastssl.recipes.patches import NEIGHBOURS, ContextPrediction, Jigsaw, JigsawPP, PatchRecipe


def _normalise(tile: np.ndarray) -> torch.Tensor:
    """(h, w, 3) pixels -> (3, h, w) float, each channel to mean 0 and std 1."""
    x = torch.from_numpy(tile.astype(np.float32)).permute(2, 0, 1)
    mean = x.mean(dim=(1, 2), keepdim=True)
    std = x.std(dim=(1, 2), correction=0, keepdim=True).clamp_min(1.0)
    return (x - mean) / std


class PilPatchDataset(_Samples):
    """Each item: the recipe's tiles (and target) of one sample, built with PIL, NumPy and torch."""

    def __init__(self, manifest: Manifest, recipe: PatchRecipe) -> None:
        super().__init__(manifest)
        self.recipe = recipe
        self.spec = recipe.patches()
        self.origins = self.spec.origins(recipe.size)
        self.table = recipe.permutation_table() if isinstance(recipe, Jigsaw) else None
        self.mean = torch.tensor(recipe.mean)[:, None, None]
        self.std = torch.tensor(recipe.std)[:, None, None]

    def base(self, index: int) -> tuple[np.ndarray, bool]:
        """Resize (shorter side), random crop, flip, grayscale: the base view as (H, W, 3) uint8."""
        recipe = self.recipe
        image = self.decode(index)
        scale = recipe.resize / min(image.size)
        image = image.resize(
            (max(recipe.size, round(image.width * scale)), max(recipe.size, round(image.height * scale))),
            Image.Resampling.BILINEAR,
        )
        left = random.randint(0, image.width - recipe.size)
        top = random.randint(0, image.height - recipe.size)
        image = image.crop((left, top, left + recipe.size, top + recipe.size))
        if random.random() < recipe.p_flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        gray = random.random() < recipe.p_gray
        if gray:
            image = image.convert("L").convert("RGB")
        return np.asarray(image), gray

    def tile(self, pixels: np.ndarray, cell: int, gray: bool) -> np.ndarray:
        """One cell's tile at a random offset, each channel shifted on its own unless gray."""
        spec, size = self.spec, self.spec.tile
        top = self.origins[cell, 0] + random.randint(0, spec.jitter)
        left = self.origins[cell, 1] + random.randint(0, spec.jitter)
        if gray or not spec.channel_shift:
            return pixels[top : top + size, left : left + size]
        s = spec.channel_shift
        channels = []
        for c in range(3):
            dy, dx = random.randint(-s, s), random.randint(-s, s)
            channels.append(pixels[top + dy : top + dy + size, left + dx : left + dx + size, c])
        return np.stack(channels, axis=-1)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        recipe = self.recipe
        pixels, gray = self.base(index)
        if isinstance(recipe, Jigsaw):
            perm_index = random.randrange(len(self.table))
            tiles = [self.tile(pixels, int(cell), gray) for cell in self.table[perm_index]]
            if isinstance(recipe, JigsawPP):
                replaced = random.sample(range(len(tiles)), random.randint(0, recipe.max_replaced))
                if replaced:
                    other, other_gray = self.base(random.randrange(len(self)))
                    for p in replaced:
                        tiles[p] = self.tile(other, random.randrange(self.spec.cells), other_gray)
            return [torch.stack([_normalise(t) for t in tiles]), torch.tensor(perm_index)]
        if isinstance(recipe, ContextPrediction):
            label = random.randrange(8)
            pair = [self.tile(pixels, cell, gray).astype(np.float32) for cell in (4, NEIGHBOURS[label])]
            if recipe.colour == "project":
                axis = np.array([-1.0, 2.0, -1.0], dtype=np.float32)
                pair = [p - (p @ axis)[..., None] * axis / 6.0 for p in pair]
            pair = [_normalise(p) for p in pair]
            for patch in pair if recipe.colour == "drop" else ():
                keep = random.randrange(3)
                for c in range(3):
                    if c != keep:
                        patch[c] = torch.randn_like(patch[c]) * 0.01
            return [pair[0], pair[1], torch.tensor(label)]
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)
        image = (image - self.mean) / self.std
        tile, stride = self.spec.tile, self.spec.stride
        grid = image.unfold(1, tile, stride).unfold(2, tile, stride)  # (3, 7, 7, tile, tile)
        return [grid.permute(1, 2, 0, 3, 4).reshape(-1, 3, tile, tile)]

"""Per-sample random draws of the data-prediction recipes (inpainting's blocks and noise windows),
from the same counter-based hash as the view parameters, so a resumed run redraws them exactly.

Colorization and super-resolution draw nothing beyond their views' crop and flip. The noise
pattern random-region masks are windows of is fixed by the recipe (`noise_pattern`), as the
context-encoder code makes one pattern per run.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fastssl.host.params import uniforms
from fastssl.recipes.prediction import Inpainting, PredictionRecipe

PREDICTION_STREAM = 1 << 21  # uniform stream of these draws, apart from the views' and patches'
PATTERN_CROPS = 16  # the noise pattern's side in crop sides (the authors': 10000 px for 128 px crops)


def sample_prediction_params(
    recipe: PredictionRecipe, *, seed: int, epoch: int, sample_ids: Sequence[int] | np.ndarray
) -> dict[str, np.ndarray]:
    """Inpainting "blocks": `blocks` (B, n_blocks, 3) int32 (top, left, side) in the crop;
    "noise": `window` (B, 2) int32, the top-left corner of each sample's window in the pattern,
    and `coverage` (B,) float32, the masked share it holds. Nothing for the other recipes."""
    if not isinstance(recipe, Inpainting) or recipe.mask == "central":
        return {}
    ids = np.asarray(sample_ids, dtype=np.int64)
    size = recipe.size
    if recipe.mask == "blocks":
        u = uniforms(seed, epoch, ids, stream=PREDICTION_STREAM, count=3 * recipe.n_blocks)
        u = u.reshape(len(ids), recipe.n_blocks, 3)
        lo, hi = (max(1, round(f * size)) for f in recipe.block_side)
        side = np.minimum(lo + (u[..., 0] * (hi - lo + 1)).astype(np.int64), hi)
        top = (u[..., 1] * (size - side + 1)).astype(np.int64)
        left = (u[..., 2] * (size - side + 1)).astype(np.int64)
        return {"blocks": np.stack([top, left, side], axis=-1).astype(np.int32)}
    pattern, integral = noise_pattern(size, recipe.noise_resolution, recipe.noise_density, recipe.noise_seed)
    u = uniforms(seed, epoch, ids, stream=PREDICTION_STREAM, count=2 * recipe.noise_tries)
    corners = (u.reshape(len(ids), recipe.noise_tries, 2) * (len(pattern) - size + 1)).astype(np.int64)
    top, left = corners[..., 0], corners[..., 1]
    masked = integral[top + size, left + size] - integral[top, left + size]
    masked = masked - integral[top + size, left] + integral[top, left]
    share = masked / size**2
    lo, hi = recipe.coverage
    inside = (share >= lo) & (share <= hi)
    # the first window in range, as their rejection loop; the closest to the range when none is
    miss = np.maximum(lo - share, share - hi)
    pick = np.where(inside.any(1), inside.argmax(1), miss.argmin(1))
    rows = np.arange(len(ids))
    return {
        "window": np.stack([top[rows, pick], left[rows, pick]], axis=1).astype(np.int32),
        "coverage": share[rows, pick].astype(np.float32),
    }


@functools.lru_cache(maxsize=4)
def noise_pattern(size: int, resolution: float, density: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pattern, integral): a (S, S) bool pattern, S = 16 crop sides, of uniform noise drawn at
    `resolution` of S, bicubic-upsampled and thresholded below `density` (train_random.lua), and
    its (S + 1, S + 1) summed-area table, which counts a window's masked pixels in four reads."""
    side = PATTERN_CROPS * size
    low = max(2, round(resolution * side))
    noise = torch.from_numpy(np.random.default_rng(seed).random((low, low), dtype=np.float32))
    smooth = F.interpolate(noise[None, None], size=(side, side), mode="bicubic", align_corners=False)[0, 0]
    pattern = (smooth < density).numpy()
    integral = np.zeros((side + 1, side + 1), dtype=np.int64)
    integral[1:, 1:] = pattern.cumsum(0).cumsum(1)
    pattern.flags.writeable = False
    integral.flags.writeable = False
    return pattern, integral

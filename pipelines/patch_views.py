"""The patch stage of patch-grid recipes: cut tiles from the backends' uint8 base views, normalise,
and shape them for the task (jigsaw order, Jigsaw++ foreign tiles, context pair, CPC grid).

Both view backends (DALI and Kornia) deliver the base view; this stage is shared, so every backend
gives the same layout. It turns the raw draws of `fastssl.host.patch_params` into a gather plan (which
image and cell each output position takes, and each channel's corner) and gathers with the Numba
kernel on the CPU (`fastssl.kernels.tiles`, measured faster there: `benchmarks/bench_patches.py`)
or with torch indexing on a GPU.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from fastssl.kernels.tiles import LUMA, gather_tiles

from fastssl.recipes.patches import NEIGHBOURS, ContextPrediction, Jigsaw, JigsawPP, PatchRecipe

Engine = Literal["auto", "numba", "torch"]
_GREEN_MAGENTA = torch.tensor([-1.0, 2.0, -1.0])
_LUMA = torch.tensor(LUMA)
_STD_FLOOR = 1.0  # in pixel levels: a flat tile is centred, not blown up
_NOISE = 0.01  # Doersch et al.: dropped channels become noise of 1/100 the kept channel's std


def gather_plan(recipe: PatchRecipe, patch: dict[str, np.ndarray], table: np.ndarray | None) -> dict:
    """Which image (`source`, (B, P)) and cell (`cell`, (B, P)) each output position takes, each
    channel's corner (`corners`, (B, P, 3, 2)), and the permutation rows (`perm`) for jigsaws."""
    offsets, shifts = patch["offsets"].astype(np.int64), patch["channel_shift"].astype(np.int64)
    n, cells = offsets.shape[:2]
    rows = np.arange(n)[:, None]
    plan: dict[str, np.ndarray] = {}
    if isinstance(recipe, Jigsaw):
        cell = table[patch["perm_index"]]
        plan["perm"] = cell.copy()
        source = np.repeat(rows, cells, axis=1)
        if isinstance(recipe, JigsawPP):
            replaced = patch["replaced"]
            source = np.where(replaced, patch["donor"], source)
            cell = np.where(replaced, patch["donor_cell"], cell)
    elif isinstance(recipe, ContextPrediction):
        cell = np.stack([np.full(n, 4), np.asarray(NEIGHBOURS)[patch["neighbor"]]], axis=1)
        source = np.repeat(rows, 2, axis=1)
    else:
        cell = np.repeat(np.arange(cells)[None], n, axis=0)
        source = np.repeat(rows, cells, axis=1)
    corners = offsets[source, cell][:, :, None, :] + shifts[source, cell]
    plan.update(source=source.astype(np.int64), cell=cell.astype(np.int64), corners=corners)
    return plan


def torch_gather(base: torch.Tensor, source: torch.Tensor, corners: torch.Tensor, tile: int) -> torch.Tensor:
    """The gather as torch advanced indexing (any device): (B, P, C, tile, tile) from (N, C, H, W)."""
    steps = torch.arange(tile, device=base.device)
    rows = corners[..., 0, None] + steps  # (B, P, C, tile)
    cols = corners[..., 1, None] + steps
    channel = torch.arange(base.shape[1], device=base.device)[None, None, :, None, None]
    return base[source[:, :, None, None, None], channel, rows[..., :, None], cols[..., None, :]]


def standardise(tiles: torch.Tensor) -> torch.Tensor:
    """Each tile channel to mean 0, std 1 (std floored at one pixel level)."""
    x = tiles.float()
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), correction=0, keepdim=True).clamp_min(_STD_FLOOR)
    return (x - mean) / std


def to_luma(tiles: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
    """Every channel of the tiles whose `gray` (B, P) is set becomes their luma (uint8 stays uint8)."""
    x = tiles.float()
    weights = _LUMA.to(x.device)[None, None, :, None, None]
    luma = (x * weights).sum(dim=2, keepdim=True).expand_as(x)  # a plain sum: no TF32 matmul
    x = torch.where(gray[:, :, None, None, None], luma, x)
    return x.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8) if tiles.dtype == torch.uint8 else x


class PatchViews:
    """Base views (B, 3, H, W) uint8 and patch draws in; the task's views and targets out."""

    params_key = "patch_params"

    def __init__(
        self, recipe: PatchRecipe, device: torch.device | str = "cpu", engine: Engine = "auto"
    ) -> None:
        if engine not in ("auto", "numba", "torch"):
            raise ValueError(f"engine must be 'auto', 'numba' or 'torch', got {engine!r}")
        self.recipe = recipe
        self.spec = recipe.patches()
        self.device = torch.device(device)
        self.engine = ("numba" if self.device.type == "cpu" else "torch") if engine == "auto" else engine
        if self.engine == "numba" and self.device.type != "cpu":
            raise ValueError("the numba engine gathers on the CPU; use 'torch' on a GPU")
        self.table = recipe.permutation_table() if isinstance(recipe, Jigsaw) else None
        self.mean = torch.tensor(recipe.mean, device=self.device)[:, None, None] * 255
        self.std = torch.tensor(recipe.std, device=self.device)[:, None, None] * 255

    def __call__(
        self, base: torch.Tensor, patch: dict[str, np.ndarray]
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], dict[str, np.ndarray]]:
        """(views, targets, plan): targets are `perm_index`, `replaced` or `neighbor` by task."""
        recipe = self.recipe
        plan = gather_plan(recipe, patch, self.table)
        raw = recipe.dtype == "uint8"
        project = isinstance(recipe, ContextPrediction) and recipe.colour == "project"
        # normalised while gathering, except where a colour projection has to come first
        mode = "uint8" if raw else "float" if project else "normalised"
        tiles = self._gather(base, plan, patch["gray"], mode)
        if mode == "float":
            axis = _GREEN_MAGENTA.to(tiles.device)[None, None, :, None, None]
            along = (tiles * axis).sum(dim=2, keepdim=True)
            tiles = tiles - along * axis / axis.square().sum()
            tiles = standardise(tiles) if recipe.tile_norm == "tile" else (tiles - self.mean) / self.std
        if isinstance(recipe, ContextPrediction) and recipe.colour == "drop" and not raw:
            tiles = self._drop_colours(tiles, patch)
        return self._shape(tiles), self._targets(patch), plan

    def _gather(self, base: torch.Tensor, plan: dict, gray: np.ndarray, mode: str) -> torch.Tensor:
        """Tiles as "uint8" (luma rounded), "float" (pixel levels, luma unrounded) or
        "normalised" as the recipe says (`tile_norm`)."""
        tile = self.spec.tile
        standardised = mode == "normalised" and self.recipe.tile_norm == "tile"
        if self.engine == "numba":
            affine = None
            if mode == "float":
                affine = (np.ones(3), np.zeros(3))
            elif mode == "normalised" and not standardised:  # (x / 255 - mean) / std in one multiply-add
                std = np.asarray(self.recipe.std) * 255
                affine = (1.0 / std, -np.asarray(self.recipe.mean) * 255 / std)
            images = base.detach().cpu().numpy()
            out = gather_tiles(
                images,
                plan["source"],
                plan["corners"],
                tile,
                gray=gray,
                standardise=standardised,
                affine=affine,
            )
            return torch.from_numpy(out).to(self.device)
        source = torch.from_numpy(plan["source"]).to(base.device)
        corners = torch.from_numpy(plan["corners"]).to(base.device)
        tiles = torch_gather(base, source, corners, tile)
        if mode != "uint8":
            tiles = tiles.float()
        if gray.any():  # luma rounded only for uint8 output, as the Numba kernel does
            tiles = to_luma(tiles, torch.from_numpy(gray).to(base.device)[source])
        if mode != "normalised":
            return tiles
        return standardise(tiles) if standardised else (tiles - self.mean) / self.std

    def _drop_colours(self, tiles: torch.Tensor, patch: dict[str, np.ndarray]) -> torch.Tensor:
        """Keep one channel per patch; the other two become faint Gaussian noise (std 1/100 of the
        kept channel's, which per-tile normalisation has made 1). The batch's noise is seeded from
        its first sample's `noise_seed` on the tiles' device: reproducible, but not the same
        numbers on a CPU and a GPU, nor for a sample placed in another batch."""
        keep = torch.from_numpy(patch["keep_channel"].astype(np.int64)).to(tiles.device)
        dropped = torch.arange(tiles.shape[2], device=tiles.device)[None, None, :] != keep[:, :, None]
        # drawn on the tiles' device: a CPU draw and copy cost a GPU loader a third of its rate
        generator = torch.Generator(device=tiles.device)
        generator.manual_seed(int(patch["noise_seed"][0]) if len(keep) else 0)
        noise = torch.randn(tiles.shape, generator=generator, device=tiles.device).mul_(_NOISE)
        return torch.where(dropped[..., None, None], noise.to(tiles.dtype), tiles)

    def _shape(self, tiles: torch.Tensor) -> list[torch.Tensor]:
        if isinstance(self.recipe, ContextPrediction):
            return [tiles[:, 0].contiguous(), tiles[:, 1].contiguous()]
        return [tiles]

    def _targets(self, patch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out: dict[str, Any] = {}
        if "perm_index" in patch:
            out["perm_index"] = torch.from_numpy(patch["perm_index"].astype(np.int64))
        if "replaced" in patch:
            out["replaced"] = torch.from_numpy(patch["replaced"])
        if "neighbor" in patch:
            out["neighbor"] = torch.from_numpy(patch["neighbor"].astype(np.int64))
        return {name: value.to(self.device) for name, value in out.items()}

"""Patch-grid pretext recipes: jigsaw (Noroozi & Favaro 2016), Jigsaw++ (Noroozi et al. 2018),
context prediction (Doersch et al. 2015) and CPC-style overlapping patch grids (van den Oord et al.
2018; Henaff et al. 2019).

Each is one base view (a `ViewSpec`: crop, flip, grayscale, made by the view backends as uint8)
plus a `PatchSpec` saying where tiles are cut from it: a grid of cells, a tile inside each cell at
a random offset that keeps a gap to its neighbours' tiles, and optionally each colour channel
shifted on its own by a few pixels (against chromatic-aberration shortcuts). Tiles are then
normalised per tile (each channel to mean 0, std 1) or with the recipe's mean/std, and reordered,
replaced or selected as the task needs (`fastssl.pipelines.patch_views`).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from fastssl.recipes.views import Recipe, StagedRecipe, ViewSpec

TileNorm = Literal["tile", "image"]
ContextColour = Literal["drop", "project", "none"]
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)  # cells of a 3x3 grid around the centre (4), label = position here


@dataclass(frozen=True)
class PatchSpec:
    """Where tiles come from in a base view of side `size`: a `grid` of cells `stride` apart.

    When `stride` >= `tile`, each cell holds one tile at a random offset in
    [gap // 2, gap // 2 + jitter] with jitter = stride - tile - gap, so tiles of neighbouring cells
    are always at least `gap` pixels apart. When `stride` < `tile` the tiles overlap (a CPC grid):
    fixed positions, `gap` must be 0. The grid is centred in the view. `channel_shift` moves each
    colour channel of a tile by up to that many pixels, independently (0: none), so one channel of
    a tile can come up to 2 * channel_shift pixels closer to a neighbouring tile than `gap`.
    """

    grid: tuple[int, int] = (3, 3)
    stride: int = 85
    tile: int = 64
    gap: int = 10
    channel_shift: int = 0

    def __post_init__(self) -> None:
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"grid must be (rows, cols) of positive sizes, got {self.grid!r}")
        for name in ("stride", "tile"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.gap < 0 or self.channel_shift < 0:
            raise ValueError(f"gap and channel_shift must be >= 0, got {self.gap}, {self.channel_shift}")
        if self.stride >= self.tile and self.stride - self.tile < self.gap:
            raise ValueError(
                f"a {self.tile} px tile with a {self.gap} px gap does not fit a {self.stride} px cell"
            )
        if self.stride < self.tile and self.gap:
            raise ValueError("overlapping tiles (stride < tile) take no gap")

    @property
    def cells(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def jitter(self) -> int:
        """Largest random offset of a tile inside its cell, in pixels."""
        return max(0, self.stride - self.tile - self.gap)

    @property
    def margin(self) -> int:
        """Smallest offset of a tile inside its cell."""
        return self.gap // 2 if self.stride >= self.tile else 0

    def extent(self) -> tuple[int, int]:
        """(height, width) the grid covers."""
        if self.stride >= self.tile:
            return self.grid[0] * self.stride, self.grid[1] * self.stride
        return tuple((n - 1) * self.stride + self.tile for n in self.grid)

    def check_fits(self, size: int) -> None:
        """Refuse a grid (with its jitter and channel shifts) that would reach outside a `size` view."""
        corners = self.origins(size)
        low = int(corners.min()) - self.channel_shift
        high = int(corners.max()) + self.jitter + self.tile + self.channel_shift
        if low < 0 or high > size:
            raise ValueError(
                f"a {self.grid[0]}x{self.grid[1]} grid of {self.tile} px tiles {self.stride} px apart "
                f"(gap {self.gap}, channel shift {self.channel_shift}) does not fit a {size} px view"
            )

    def origins(self, size: int) -> np.ndarray:
        """(cells, 2) top-left corner of each cell's lowest tile position, cells in reading order."""
        height, width = self.extent()
        rows, cols = np.divmod(np.arange(self.cells), self.grid[1])
        top = (size - height) // 2 + rows * self.stride + self.margin
        left = (size - width) // 2 + cols * self.stride + self.margin
        return np.stack([top, left], axis=1).astype(np.int64)


@dataclass(frozen=True)
class PatchRecipe(StagedRecipe):
    """A base view and the tiles cut from it. Subclasses set the task's outputs."""

    name: ClassVar[str] = "patches"
    size: int = 255
    resize: int = 256
    crop: Literal["random_resized", "resize_random"] = "resize_random"
    scale: tuple[float, float] = (0.08, 1.0)
    p_flip: float = 0.0
    p_gray: float = 0.0
    grid: tuple[int, int] = (3, 3)
    stride: int = 85
    tile: int = 64
    gap: int = 10
    channel_shift: int = 0
    tile_norm: TileNorm = "tile"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tile_norm not in ("tile", "image"):
            raise ValueError(f"tile_norm must be 'tile' or 'image', got {self.tile_norm!r}")
        self.patches().check_fits(self.size)

    def resized(self, size: int) -> Recipe:
        """Unchanged: a patch grid's geometry (crop, tiles, gaps) is set by its own options."""
        return self

    def views(self) -> tuple[ViewSpec, ...]:
        return (self._view(),)

    def graph_views(self) -> tuple[ViewSpec, ...]:
        """The base view without grayscale: the patch stage turns the tiles of grayscale-drawn
        samples to luma as it cuts them, which costs nothing there, where a colour pass over the
        whole base view in the graph halved the loader's rate."""
        return tuple(dataclasses.replace(spec, p_gray=0.0) for spec in self.views())

    def patches(self) -> PatchSpec:
        return PatchSpec(self.grid, self.stride, self.tile, self.gap, self.channel_shift)


@dataclass(frozen=True)
class Jigsaw(PatchRecipe):
    """Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by
    Solving Jigsaw Puzzles", section 3-4).

    Defaults: shorter side resized to 256, a random 255 crop, 3x3 cells of 85 px, a 64 px tile in
    each at a random offset with at least a 10 px gap between neighbouring tiles (the paper: 64 px
    tiles in 75 px cells of a 225 crop, "so that the tiles do not share edges"); grayscale with
    p 0.7 (as in their released training code) and, for colour images, each channel shifted by up
    to 2 px on its own; each tile normalised to mean 0 and std 1 per channel; the tiles reordered
    by a permutation drawn uniformly from a set of `n_permutations` (1000) chosen by maximal
    minimum Hamming distance. Batches carry `views` = [tiles (B, 9, C, 64, 64)], where position p
    holds cell `perm[p]`, and `perm_index` (B,), the class to predict.

    `permutations`: a `.npy` or text file of a published set (0- or 1-based) instead of computing
    one; `n_permutations` must then be its number of rows (the class count the model predicts).
    """

    name: ClassVar[str] = "jigsaw"
    p_gray: float = 0.7
    channel_shift: int = 2
    n_permutations: int = 1000
    criterion: Literal["max_min", "max_avg"] = "max_min"
    min_distance: int | None = None
    permutation_seed: int = 0
    permutations: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        table = self.permutation_table()
        if table.shape[1] != self.patches().cells:
            raise ValueError(
                f"the permutation set orders {table.shape[1]} tiles, the grid has {self.patches().cells}"
            )
        if len(table) != self.n_permutations:  # perm_index is drawn in 0..n_permutations-1
            raise ValueError(
                f"{self.permutations} holds {len(table)} permutations; pass n_permutations={len(table)}"
            )

    def permutation_table(self) -> np.ndarray:
        """The (n_permutations, cells) 0-based set this recipe draws from (computed once per process)."""
        if self.permutations is not None:
            return _loaded_permutations(self.permutations)
        cells = self.patches().cells
        return _computed_permutations(
            cells, self.n_permutations, self.criterion, self.min_distance, self.permutation_seed
        )


@dataclass(frozen=True)
class JigsawPP(Jigsaw):
    """Jigsaw++ (Noroozi, Vinjimoor, Favaro & Pirsiavash 2018, "Boosting Self-Supervised Learning via
    Knowledge Transfer", section 4): a jigsaw whose puzzle also holds 0 to `max_replaced` (2) tiles
    from other images of the batch, in random positions. The set is 701 permutations chosen by
    maximal mean distance with every pair at least 3 apart, as in the paper. Batches add
    `replaced` (B, 9) bool: which output positions hold a foreign tile.
    """

    name: ClassVar[str] = "jigsawpp"
    n_permutations: int = 701
    criterion: Literal["max_min", "max_avg"] = "max_avg"
    min_distance: int | None = 3
    max_replaced: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.max_replaced < self.patches().cells:
            raise ValueError(
                f"max_replaced must lie in 0..{self.patches().cells - 1}, got {self.max_replaced}"
            )


@dataclass(frozen=True)
class ContextPrediction(PatchRecipe):
    """Context prediction (Doersch, Gupta & Efros 2015, "Unsupervised Visual Representation Learning
    by Context Prediction", section 3): the centre patch of a 3x3 grid and one of its 8 neighbours,
    with a gap and a random jitter, and the neighbour's position (0-7, reading order) as the label.

    Defaults: shorter side resized to 256, a random 255 crop, 64 px patches in 85 px cells with a
    16 px gap (jitter up to 5 px; the paper used 96 px patches, a 48 px gap and 7 px jitter on
    larger images); colour `"drop"`: in each patch two of the three channels are replaced by
    Gaussian noise of 1/100 the kept channel's std, as in the paper; `"project"` removes the
    green-magenta axis instead (their other remedy for chromatic aberration); patches normalised
    per channel. Batches carry `views` = [centre, neighbour] (B, C, 64, 64) and `neighbor` (B,).
    """

    name: ClassVar[str] = "context"
    gap: int = 16
    colour: ContextColour = "drop"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grid != (3, 3):
            raise ValueError(f"context prediction uses a 3x3 grid, got {self.grid}")
        if self.colour not in ("drop", "project", "none"):
            raise ValueError(f"colour must be 'drop', 'project' or 'none', got {self.colour!r}")


@dataclass(frozen=True)
class PatchGrid(PatchRecipe):
    """Overlapping patch grid for CPC-style tasks (van den Oord et al. 2018, "Representation Learning
    with Contrastive Predictive Coding", section 3.1): a random 256 crop of the image resized to
    256 on its shorter side, flipped with p 0.5, cut into 7x7 patches of 64 px with stride 32,
    normalised with the recipe's mean and std. Batches carry `views` = [patches (B, 49, C, 64, 64)].
    """

    name: ClassVar[str] = "patchgrid"
    size: int = 256
    resize: int = 256
    p_flip: float = 0.5
    grid: tuple[int, int] = (7, 7)
    stride: int = 32
    tile: int = 64
    gap: int = 0
    tile_norm: TileNorm = "image"


@functools.lru_cache(maxsize=8)
def _computed_permutations(
    cells: int, count: int, criterion: str, min_distance: int | None, seed: int
) -> np.ndarray:
    from fastssl.kernels.permutations import permutation_set

    table = permutation_set(cells, count, criterion, min_distance=min_distance, seed=seed)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=8)
def _loaded_permutations(path: str) -> np.ndarray:
    from fastssl.kernels.permutations import load_permutations

    table = load_permutations(path)
    table.flags.writeable = False
    return table

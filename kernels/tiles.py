"""Tile gathering for patch-grid recipes on the CPU: cut (B, P, C, t, t) tiles out of a batch of
CHW images at per-tile, per-channel corners, optionally standardising each tile channel on the fly.

Torch can express the gather as advanced indexing, but on the CPU that materialises an int64 index
per output element (8x the tiles' bytes) and the standardisation takes two more passes; this kernel
copies each tile row once and accumulates the statistics while it copies. On a GPU the loader uses
the torch indexing instead (`fastssl.pipelines.patch_views`). A NumPy reference sits beside it.
"""

from __future__ import annotations

import numba
import numpy as np


def check_plan(images: np.ndarray, source: np.ndarray, corners: np.ndarray, tile: int) -> None:
    """Refuse a gather plan that would read outside the images (the kernel does not check)."""
    n, channels, height, width = images.shape
    if source.ndim != 2 or corners.shape != (*source.shape, channels, 2):
        raise ValueError(f"plan shapes {source.shape} / {corners.shape} do not fit images {images.shape}")
    if source.size and (source.min() < 0 or source.max() >= n):
        raise ValueError(f"source rows must lie in 0..{n - 1}")
    if corners.size and (
        corners.min() < 0 or corners[..., 0].max() + tile > height or corners[..., 1].max() + tile > width
    ):
        raise ValueError(f"a {tile} px tile at the given corners reaches outside {height}x{width} images")


@numba.njit(parallel=True, cache=True)
def _gather(images: np.ndarray, source: np.ndarray, corners: np.ndarray, tile: int) -> np.ndarray:
    batch, positions = source.shape
    channels = images.shape[1]
    out = np.empty((batch, positions, channels, tile, tile), dtype=images.dtype)
    for job in numba.prange(batch * positions):
        b, p = job // positions, job % positions
        s = source[b, p]
        for c in range(channels):
            top, left = corners[b, p, c, 0], corners[b, p, c, 1]
            for y in range(tile):
                out[b, p, c, y, :] = images[s, c, top + y, left : left + tile]
    return out


@numba.njit(parallel=True, cache=True)
def _gather_standardised(
    images: np.ndarray, source: np.ndarray, corners: np.ndarray, tile: int, floor: float
) -> np.ndarray:
    batch, positions = source.shape
    channels = images.shape[1]
    out = np.empty((batch, positions, channels, tile, tile), dtype=np.float32)
    count = tile * tile
    for job in numba.prange(batch * positions):
        b, p = job // positions, job % positions
        s = source[b, p]
        for c in range(channels):
            top, left = corners[b, p, c, 0], corners[b, p, c, 1]
            total, squares = 0.0, 0.0
            for y in range(tile):
                for x in range(tile):
                    v = np.float64(images[s, c, top + y, left + x])
                    total += v
                    squares += v * v
            mean = total / count
            std = max(np.sqrt(max(squares / count - mean * mean, 0.0)), floor)
            scale = 1.0 / std
            for y in range(tile):
                for x in range(tile):
                    out[b, p, c, y, x] = (np.float64(images[s, c, top + y, left + x]) - mean) * scale
    return out


def gather_tiles(
    images: np.ndarray,
    source: np.ndarray,
    corners: np.ndarray,
    tile: int,
    *,
    standardise: bool = False,
    floor: float = 1.0,
) -> np.ndarray:
    """Tiles (B, P, C, tile, tile): tile [b, p] channel c is `images[source[b, p], c]` from row
    `corners[b, p, c, 0]`, column `corners[b, p, c, 1]`. With `standardise`, each tile channel
    becomes float32 with mean 0 and std 1 (std floored at `floor`, in the images' units);
    otherwise the images' dtype is kept."""
    source = np.ascontiguousarray(source, dtype=np.int64)
    corners = np.ascontiguousarray(corners, dtype=np.int64)
    check_plan(images, source, corners, tile)
    images = np.ascontiguousarray(images)
    if standardise:
        return _gather_standardised(images, source, corners, tile, float(floor))
    return _gather(images, source, corners, tile)


def gather_tiles_reference(
    images: np.ndarray,
    source: np.ndarray,
    corners: np.ndarray,
    tile: int,
    *,
    standardise: bool = False,
    floor: float = 1.0,
) -> np.ndarray:
    """The same gather with NumPy slicing, one tile at a time: the kernel's test oracle."""
    check_plan(images, source, corners, tile)
    batch, positions = source.shape
    channels = images.shape[1]
    dtype = np.float64 if standardise else images.dtype
    out = np.empty((batch, positions, channels, tile, tile), dtype=dtype)
    for b in range(batch):
        for p in range(positions):
            for c in range(channels):
                top, left = corners[b, p, c]
                cut = images[source[b, p], c, top : top + tile, left : left + tile]
                if standardise:
                    cut = cut.astype(np.float64)
                    cut = (cut - cut.mean()) / max(cut.std(), floor)
                out[b, p, c] = cut
    return out.astype(np.float32) if standardise else out

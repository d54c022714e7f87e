"""Tile gathering for patch-grid recipes on the CPU: cut (B, P, C, t, t) tiles out of a batch of
CHW images at per-tile, per-channel corners, turning the tiles of grayscale-drawn images to luma
and optionally standardising each tile channel on the fly.

Torch can express the gather as advanced indexing, but on the CPU that materialises an int64 index
per output element (8x the tiles' bytes) and the standardisation takes two more passes; this kernel
copies each tile row once and accumulates the statistics while it copies. On a GPU the loader uses
the torch indexing instead (`fastssl.pipelines.patch_views`). A NumPy reference sits beside it.
"""

from __future__ import annotations

import numba
import numpy as np

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's and torchvision's grayscale


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


@numba.njit(inline="always")
def _cut(
    images: np.ndarray, corners: np.ndarray, b: int, p: int, s: int, c: int, tile: int, gray: bool
) -> np.ndarray:
    """Channel c of tile [b, p] as float64 (tile, tile); for a grayscale-drawn image, the luma of
    the three channels as cut (each at its own corner), the same for every channel."""
    out = np.empty((tile, tile), dtype=np.float64)
    if gray:
        t0, l0 = corners[b, p, 0, 0], corners[b, p, 0, 1]
        t1, l1 = corners[b, p, 1, 0], corners[b, p, 1, 1]
        t2, l2 = corners[b, p, 2, 0], corners[b, p, 2, 1]
        for y in range(tile):
            for x in range(tile):
                out[y, x] = (
                    LUMA[0] * images[s, 0, t0 + y, l0 + x]
                    + LUMA[1] * images[s, 1, t1 + y, l1 + x]
                    + LUMA[2] * images[s, 2, t2 + y, l2 + x]
                )
    else:
        top, left = corners[b, p, c, 0], corners[b, p, c, 1]
        for y in range(tile):
            for x in range(tile):
                out[y, x] = images[s, c, top + y, left + x]
    return out


@numba.njit(parallel=True, cache=True)
def _gather(
    images: np.ndarray, source: np.ndarray, corners: np.ndarray, tile: int, gray: np.ndarray
) -> np.ndarray:
    batch, positions = source.shape
    channels = images.shape[1]
    out = np.empty((batch, positions, channels, tile, tile), dtype=np.uint8)
    for job in numba.prange(batch * positions):
        b, p = job // positions, job % positions
        s = source[b, p]
        for c in range(channels):
            if gray[s]:
                luma = _cut(images, corners, b, p, s, c, tile, True)
                for y in range(tile):
                    for x in range(tile):
                        out[b, p, c, y, x] = np.uint8(min(255.0, luma[y, x] + 0.5))
            else:
                top, left = corners[b, p, c, 0], corners[b, p, c, 1]
                for y in range(tile):
                    out[b, p, c, y, :] = images[s, c, top + y, left : left + tile]
    return out


@numba.njit(parallel=True, cache=True)
def _gather_float(
    images: np.ndarray,
    source: np.ndarray,
    corners: np.ndarray,
    tile: int,
    gray: np.ndarray,
    standardise: bool,
    floor: float,
    scale: np.ndarray,
    offset: np.ndarray,
) -> np.ndarray:
    """float32 tiles: each tile channel standardised (std floored), or `value * scale + offset`."""
    batch, positions = source.shape
    channels = images.shape[1]
    out = np.empty((batch, positions, channels, tile, tile), dtype=np.float32)
    for job in numba.prange(batch * positions):
        b, p = job // positions, job % positions
        s = source[b, p]
        for c in range(channels):
            if standardise and gray[s] and c > 0:  # grayscale: standardised channels are equal
                out[b, p, c] = out[b, p, 0]
                continue
            cut = _cut(images, corners, b, p, s, c, tile, gray[s])
            if standardise:
                mean = cut.mean()
                std = max(np.sqrt(max((cut * cut).mean() - mean * mean, 0.0)), floor)
                out[b, p, c] = (cut - mean) * (1.0 / std)
            else:
                out[b, p, c] = cut * scale[c] + offset[c]
    return out


def _gray_flags(images: np.ndarray, gray: np.ndarray | None) -> np.ndarray:
    if gray is None:
        return np.zeros(len(images), dtype=np.bool_)
    gray = np.ascontiguousarray(gray, dtype=np.bool_)
    if gray.shape != (len(images),) or (gray.any() and images.shape[1] != 3):
        raise ValueError(f"gray needs one flag per image ({len(images)}) and 3-channel images")
    return gray


def gather_tiles(
    images: np.ndarray,
    source: np.ndarray,
    corners: np.ndarray,
    tile: int,
    *,
    gray: np.ndarray | None = None,
    standardise: bool = False,
    floor: float = 1.0,
    affine: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Tiles (B, P, C, tile, tile) from uint8 images (N, C, H, W): tile [b, p] channel c is
    `images[source[b, p], c]` from row `corners[b, p, c, 0]`, column `corners[b, p, c, 1]`;
    where `gray[source[b, p]]`, every channel is the pixels' luma instead. With `standardise`,
    each tile channel becomes float32 with mean 0 and std 1 (std floored at `floor`, in pixel
    levels); with `affine` = (scale, offset), per channel, float32 `value * scale + offset`
    (a fixed normalisation); otherwise uint8 (luma rounded)."""
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    source = np.ascontiguousarray(source, dtype=np.int64)
    corners = np.ascontiguousarray(corners, dtype=np.int64)
    check_plan(images, source, corners, tile)
    images = np.ascontiguousarray(images)
    flags = _gray_flags(images, gray)
    if standardise and affine is not None:
        raise ValueError("standardise and affine are two normalisations: choose one")
    if not standardise and affine is None:
        return _gather(images, source, corners, tile, flags)
    channels = images.shape[1]
    scale, offset = affine if affine is not None else (np.ones(channels), np.zeros(channels))
    scale, offset = (np.ascontiguousarray(a, dtype=np.float64) for a in (scale, offset))
    if scale.shape != (channels,) or offset.shape != scale.shape:
        raise ValueError(f"affine needs one scale and one offset per channel ({channels})")
    return _gather_float(images, source, corners, tile, flags, standardise, float(floor), scale, offset)


def gather_tiles_reference(
    images: np.ndarray,
    source: np.ndarray,
    corners: np.ndarray,
    tile: int,
    *,
    gray: np.ndarray | None = None,
    standardise: bool = False,
    floor: float = 1.0,
    affine: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """The same gather with NumPy slicing, one tile at a time: the kernel's test oracle."""
    check_plan(images, source, corners, tile)
    flags = _gray_flags(images, gray)
    batch, positions = source.shape
    channels = images.shape[1]
    as_float = standardise or affine is not None
    dtype = np.float64 if as_float else images.dtype
    out = np.empty((batch, positions, channels, tile, tile), dtype=dtype)
    for b in range(batch):
        for p in range(positions):
            image = images[source[b, p]].astype(np.float64)
            cuts = [
                image[c, top : top + tile, left : left + tile] for c, (top, left) in enumerate(corners[b, p])
            ]
            if flags[source[b, p]]:  # luma of the channels as cut, in every channel
                luma = sum(w * cut for w, cut in zip(LUMA, cuts, strict=True))
                cuts = [luma if as_float else np.floor(np.minimum(luma + 0.5, 255.0))] * channels
            for c, cut in enumerate(cuts):
                if standardise:
                    cut = (cut - cut.mean()) / max(cut.std(), floor)
                elif affine is not None:
                    cut = cut * affine[0][c] + affine[1][c]
                out[b, p, c] = cut
    return out.astype(np.float32) if as_float else out

"""Colour jitter and grayscale folded into one affine colour transform per sample (NumPy).

Brightness, saturation, hue and grayscale are linear maps of a pixel's RGB; contrast blends each
pixel with the mean gray level of the image, which is affine with an offset proportional to the
view's mean colour `mu`. Whatever order the jitter ops come in, the composition is therefore

    out = M @ x + v * (w . mu)

with a 3x3 matrix M and vectors v, w per sample. Backends apply it in one pass per view
(DALI `fn.coord_transform`, a torch `einsum`) instead of one pass per op.

Approximations against torchvision's op-by-op semantics, bounded by
`tests/test_colour.py` against a float64 reference:
- no clamping to [0, 1] between the jitter ops, only at the end;
- hue is a 3x3 matrix fitted (least squares over the RGB cube) to torchvision's HSV hue shift,
  which is not linear in RGB; saturated pixels come out differently (see `_hue_table`).
"""

from __future__ import annotations

import functools

import numpy as np

GRAY = np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
_HUE_TABLE_SIZE = 257  # fitted matrices for shifts -0.5..0.5 in steps of 1/256 turn, interpolated


def rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] (..., 3) to HSV with H in [0, 1), as torchvision's `_rgb2hsv`."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    top, bottom = x.max(-1), x.min(-1)
    delta = top - bottom
    s = np.where(top > 0, delta / np.where(top > 0, top, 1), 0)
    safe = np.where(delta > 0, delta, 1)
    h = np.where(top == r, ((g - b) / safe) % 6, np.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = np.where(delta > 0, h / 6.0, 0.0)
    return np.stack([h, s, top], -1)


def hsv_to_rgb(x: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_hsv`."""
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    sector = np.floor(h * 6) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(x.shape)
    for k, (r, g, b) in enumerate(choices):
        mask = sector == k
        out[mask] = np.stack([r, g, b], -1)[mask]
    return out


def hue_shift(x: np.ndarray, shift: float) -> np.ndarray:
    """Exact HSV hue shift by `shift` turns of RGB values in [0, 1] (torchvision's adjust_hue)."""
    hsv = rgb_to_hsv(x)
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    return hsv_to_rgb(hsv)


@functools.lru_cache(maxsize=1)
def _hue_table() -> np.ndarray:
    """3x3 matrices that best reproduce the HSV hue shift, least squares over the RGB cube.

    The hue shift is not linear in RGB, so any one-pass matrix approximates it; the fit halves the
    error of the usual YIQ rotation (measured on the packaged photos: mean |error| 6.5 vs 10.7
    levels of 255 at a 0.05-turn shift). About 0.2 s, once per process.
    """
    grid = np.linspace(0.0, 1.0, 13)
    cube = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
    shifts = np.linspace(-0.5, 0.5, _HUE_TABLE_SIZE)
    table = np.empty((_HUE_TABLE_SIZE, 3, 3))
    for k, shift in enumerate(shifts):
        fit, *_ = np.linalg.lstsq(cube, hue_shift(cube, shift), rcond=None)
        table[k] = fit.T
    table[_HUE_TABLE_SIZE // 2] = np.eye(3)
    return table


def hue_matrix(shift: np.ndarray) -> np.ndarray:
    """RGB -> RGB matrices approximating a hue shift of `shift` turns, shape shift.shape + (3, 3)."""
    table = _hue_table()
    pos = (np.clip(np.asarray(shift, dtype=np.float64), -0.5, 0.5) + 0.5) * (_HUE_TABLE_SIZE - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), _HUE_TABLE_SIZE - 2)
    frac = (pos - lo)[..., None, None]
    return (1 - frac) * table[lo] + frac * table[lo + 1]


def colour_transform(
    jitter: np.ndarray, order: np.ndarray, gray: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, v, w) float32 per sample for jitter factors (B, 4), their order (B, 4) and grayscale
    flags (B,): `colour_transform_reference`'s result from the compiled kernel
    (`fastssl.kernels.colour_matrix`), which the loaders use."""
    from fastssl.kernels.colour_matrix import colour_matrices

    return colour_matrices(
        np.asarray(jitter, dtype=np.float64), np.asarray(order, dtype=np.int64),
        np.asarray(gray, dtype=np.bool_), _hue_table(),
    )  # fmt: skip


def colour_transform_reference(
    jitter: np.ndarray, order: np.ndarray, gray: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, v, w) per sample for jitter factors (B, 4), their order (B, 4) and grayscale flags (B,).

    `out = M @ x + v * (w . mu)` where `mu` is the view's mean RGB before the transform. Identity
    factors (1, 1, 1, 0) give M = I and v = 0. Vectorised over the batch: one pass per op position.
    """
    jitter = np.asarray(jitter, dtype=np.float64)
    n = len(jitter)
    rows = np.arange(n)
    eye = np.broadcast_to(np.eye(3), (n, 3, 3))
    gray_matrix = np.outer(np.ones(3), GRAY)
    b, c, s, h = (jitter[:, k, None, None] for k in range(4))
    steps = np.stack(
        [b * eye, c * eye, s * eye + (1 - s) * gray_matrix, hue_matrix(jitter[:, HUE])], axis=1
    )  # (B, op, 3, 3)
    before = eye.copy()  # linear part applied so far
    after = eye.copy()  # ops applied after contrast
    seen = np.zeros(n, dtype=bool)
    w = np.zeros((n, 3))
    for k in range(4):
        op = np.asarray(order)[:, k]
        step = steps[rows, op]
        is_contrast = op == CONTRAST
        # gray level of the image's mean as it stands when contrast is applied
        w = np.where(is_contrast[:, None], np.einsum("j,bjk->bk", GRAY, before), w)
        after = np.where((seen & ~is_contrast)[:, None, None], step @ after, after)
        seen |= is_contrast
        before = step @ before
    gray = np.asarray(gray, dtype=bool)[:, None, None]
    before = np.where(gray, gray_matrix @ before, before)
    after = np.where(gray, gray_matrix @ after, after)
    v = (1 - jitter[:, CONTRAST, None]) * after.sum(axis=2)  # (1 - c) * N @ ones
    return before.astype(np.float32), v.astype(np.float32), w.astype(np.float32)


def affine_for_mean(mats: np.ndarray, vs: np.ndarray, ws: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """The offset T (B, 3) of `out = M @ x + T` once each view's mean colour `mu` (B, 3) is known."""
    return vs * np.einsum("bc,bc->b", ws, mu)[:, None]

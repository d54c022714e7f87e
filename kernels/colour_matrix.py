"""Colour jitter and grayscale folded into one affine transform per sample, compiled: the per-batch
NumPy version (`fastssl.pipelines.colour.colour_transform_reference`) builds (B, 4, 3, 3) stacks and
runs a dozen batched matrix products per batch, about 4 us a sample; this walks each sample's four
ops once. Same algebra, same hue table, float64 inside; the reference stays beside it for tests."""

from __future__ import annotations

import numba
import numpy as np

GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as fastssl.pipelines.colour.GRAY
CONTRAST = 1


@numba.njit(inline="always")
def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            out[i, j] = a[i, 0] * b[0, j] + a[i, 1] * b[1, j] + a[i, 2] * b[2, j]
    return out


@numba.njit(cache=True, nogil=True)
def colour_matrices(
    jitter: np.ndarray, order: np.ndarray, gray: np.ndarray, hue_table: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M (B,3,3), v (B,3), w (B,3)) float32 with `out = M @ x + v * (w . mu)` per sample, for jitter
    factors (B, 4) (brightness, contrast, saturation, hue), their order (B, 4) and grayscale flags."""
    n = len(jitter)
    size = len(hue_table)
    mats = np.empty((n, 3, 3), np.float32)
    vs = np.empty((n, 3), np.float32)
    ws = np.zeros((n, 3), np.float32)
    luma = np.array(GRAY)
    to_gray = np.empty((3, 3))
    for i in range(3):
        to_gray[i, :] = luma
    for s in range(n):
        b, c, sat, h = jitter[s, 0], jitter[s, 1], jitter[s, 2], jitter[s, 3]
        pos = (min(max(h, -0.5), 0.5) + 0.5) * (size - 1)
        lo = min(int(np.floor(pos)), size - 2)
        frac = pos - lo
        hue = (1 - frac) * hue_table[lo] + frac * hue_table[lo + 1]
        before = np.eye(3)
        after = np.eye(3)
        seen = False
        w = np.zeros(3)
        for k in range(4):
            op = order[s, k]
            if op == 0:
                step = b * np.eye(3)
            elif op == CONTRAST:
                step = c * np.eye(3)
            elif op == 2:
                step = sat * np.eye(3) + (1 - sat) * to_gray
            else:
                step = hue
            if op == CONTRAST:
                for j in range(3):
                    w[j] = luma[0] * before[0, j] + luma[1] * before[1, j] + luma[2] * before[2, j]
            elif seen:
                after = _matmul(step, after)
            seen = seen or op == CONTRAST
            before = _matmul(step, before)
        if gray[s]:
            before = _matmul(to_gray, before)
            after = _matmul(to_gray, after)
        for i in range(3):
            vs[s, i] = (1 - c) * (after[i, 0] + after[i, 1] + after[i, 2])
            ws[s, i] = w[i]
            for j in range(3):
                mats[s, i, j] = before[i, j]
    return mats, vs, ws

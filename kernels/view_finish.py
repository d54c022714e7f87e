"""A view's pixel ops after the decode, fused into one compiled pass per sample on a view-sized
buffer: crop-resize with flip (Pillow's antialiased BILINEAR), the colour transform (jitter +
grayscale as `M x + v (w . mu)`, `fastssl.pipelines.colour`), the Gaussian blur, solarize, rotation,
normalisation and the HWC -> CHW layout change, written straight into the output tensor.

Why by hand: on the CPU, DALI runs these as separate ops with a full pass and a buffer each; its
`resize`, `coord_transform` and `gaussian_blur` cost 1.4, 1.7 and 7.5 ms per 224 px view on the
2-core VM, this pass 0.27, 0.14 and 0.35 (`benchmarks/bench_roofline.py`); torch and Pillow are
slower than DALI at most of them. Inner loops index through slices: a runtime offset added to the
index keeps Numba's negative-index check, which stops LLVM vectorising the loop. The
same rounding as the DALI graph on the GPU: uint8 after the resize, the colour pass and the blur.
`finish_view_reference` is the Pillow + NumPy version the tests hold the kernel to.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always", fastmath=True)
def _to_uint8(x: float) -> np.uint8:
    """Round half up and saturate, branch-free (so the loops around it vectorise): the truncation
    of a non-negative value is its floor."""
    x = min(max(x + np.float32(0.5), np.float32(0.0)), np.float32(255.0))
    return np.uint8(np.int32(x))


@numba.njit(cache=True, nogil=True, fastmath=True)
def gaussian_taps(sigma: float, side: int) -> np.ndarray:
    """Normalised taps of a Gaussian spanning 3 sigma each side (DALI's default window), at most
    as wide as a reflect-101 border of a `side`-pixel image allows."""
    radius = max(1, min(int(math.ceil(3.0 * sigma)), side - 1))
    taps = np.empty(2 * radius + 1, np.float32)
    total = 0.0
    for k in range(-radius, radius + 1):
        w = math.exp(-0.5 * (k / sigma) ** 2)
        taps[k + radius] = w
        total += w
    for k in range(2 * radius + 1):
        taps[k] /= total
    return taps


@numba.njit(cache=True, nogil=True, inline="always", fastmath=True)
def _reflect(i: int, n: int) -> int:
    """Reflect-101 (mirror without repeating the edge), DALI's and OpenCV's default border."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * n - 2 - i
    return i


@numba.njit(cache=True, nogil=True, fastmath=True)
def _blur(image: np.ndarray, sigma: float, padded: np.ndarray, across: np.ndarray) -> None:
    """Separable Gaussian blur of one (H, W, 3) uint8 image in place. `padded` is scratch of at
    least (W + 2 * (H - 1)) * 3 float32, `across` of H * W * 3: each pass runs over whole rows, so
    the inner loops are contiguous and vectorise."""
    h, w = image.shape[0], image.shape[1]
    taps = gaussian_taps(sigma, min(h, w))
    r = (len(taps) - 1) // 2
    row_len = w * 3
    flat = image.reshape(h * row_len)
    for y in range(h):  # along each row, through a reflect-padded copy of it
        base = y * row_len
        line, inner = flat[base : base + row_len], padded[3 * r : 3 * r + row_len]
        for j in range(row_len):
            inner[j] = line[j]
        for d in range(1, r + 1):  # reflect-101 borders: pixel -d is pixel d, w - 1 + d is w - 1 - d
            for c in range(3):
                padded[3 * (r - d) + c] = line[3 * d + c]
                padded[3 * (r + w - 1 + d) + c] = line[3 * (w - 1 - d) + c]
        out = across[base : base + row_len]
        out[:] = 0.0
        for k in range(2 * r + 1):
            # through a slice, the index is known non-negative: no wraparound check, so it vectorises
            t, src = taps[k], padded[k * 3 : k * 3 + row_len]
            for j in range(row_len):
                out[j] += t * src[j]
    acc = padded[:row_len]
    for y in range(h):  # down each column, a whole row at a time
        acc[:] = 0.0
        for k in range(2 * r + 1):
            base = _reflect(y + k - r, h) * row_len
            t, src = taps[k], across[base : base + row_len]
            for j in range(row_len):
                acc[j] += t * src[j]
        dst = flat[y * row_len : (y + 1) * row_len]
        for j in range(row_len):
            dst[j] = _to_uint8(acc[j])


@numba.njit(cache=True, nogil=True, fastmath=True)
def _colour(image: np.ndarray, m: np.ndarray, v: np.ndarray, w: np.ndarray) -> None:
    """`M x + v (w . mu)` in place on one (H, W, 3) uint8 image, rounded and clamped to uint8."""
    n = image.shape[0] * image.shape[1]
    flat = image.reshape(n * 3)
    s0 = s1 = s2 = np.float32(0.0)
    for p in range(n):
        s0 += np.float32(flat[3 * p])
        s1 += np.float32(flat[3 * p + 1])
        s2 += np.float32(flat[3 * p + 2])
    gray_mean = (w[0] * s0 + w[1] * s1 + w[2] * s2) / n
    t0, t1, t2 = v[0] * gray_mean, v[1] * gray_mean, v[2] * gray_mean
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8]
    for p in range(n):
        r, g, b = np.float32(flat[3 * p]), np.float32(flat[3 * p + 1]), np.float32(flat[3 * p + 2])
        flat[3 * p] = _to_uint8(m00 * r + m01 * g + m02 * b + t0)
        flat[3 * p + 1] = _to_uint8(m10 * r + m11 * g + m12 * b + t1)
        flat[3 * p + 2] = _to_uint8(m20 * r + m21 * g + m22 * b + t2)


@numba.njit(cache=True, nogil=True, inline="always", fastmath=True)
def _is_identity(m: np.ndarray, v: np.ndarray) -> bool:
    for i in range(9):
        if m[i] != (1.0 if i % 4 == 0 else 0.0):
            return False
    return v[0] == 0.0 and v[1] == 0.0 and v[2] == 0.0


@numba.njit(cache=True, nogil=True, fastmath=True)
def _resample_table(size: int, lo: float, hi: float, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's BILINEAR resampling along one axis (a triangle filter widened by the downscale
    factor, so it antialiases): for each of `out` outputs over the source span [lo, hi) of an axis
    of `size` pixels, its first source pixel, tap count and normalised weights (out, taps)."""
    scale = (hi - lo) / out
    filterscale = max(scale, 1.0)
    support = filterscale  # the triangle's support is 1, widened when shrinking
    taps = int(math.ceil(support)) * 2 + 1
    first = np.empty(out, np.int64)
    count = np.empty(out, np.int64)
    weights = np.zeros((out, taps), np.float32)
    for i in range(out):
        centre = lo + (i + 0.5) * scale
        x0 = max(int(centre - support + 0.5), 0)
        x1 = min(int(centre + support + 0.5), size)
        total = 0.0
        n = min(x1 - x0, taps)
        for k in range(n):
            t = abs((x0 + k - centre + 0.5) / filterscale)
            w = 1.0 - t if t < 1.0 else 0.0
            weights[i, k] = w
            total += w
        if total > 0.0:
            for k in range(n):
                weights[i, k] /= total
        first[i], count[i] = x0, n
    return first, count, weights


@numba.njit(cache=True, nogil=True, fastmath=True)
def _crop_resize_transposed(
    image: np.ndarray, top: float, left: float, bottom: float, right: float, flip: bool,
    out: np.ndarray, scratch: np.ndarray,
) -> None:  # fmt: skip
    """The box [top, bottom) x [left, right) of `image` (H, W, 3) uint8 resized to S x S as
    Pillow's `resize(BILINEAR, box=...)` does (float inside, rounded once), mirrored left-right when
    `flip`, written TRANSPOSED into `out` (S, S, 3) uint8: out[x, y] is pixel (y, x) of the view.

    Both passes run down whole rows, so their inner loops are contiguous and vectorise: first the
    vertical resample of each needed column span, stored transposed, then the horizontal one as a
    vertical pass over that. `scratch` holds at least (S + 1) * W * 3 float32."""
    w = image.shape[1]
    side_y, side_x = out.shape[1], out.shape[0]
    fx, nx, wx = _resample_table(w, left, right, side_x)
    fy, ny, wy = _resample_table(image.shape[0], top, bottom, side_y)
    x_lo, x_hi = fx[0], fx[side_x - 1] + nx[side_x - 1]
    span = (x_hi - x_lo) * 3
    acc = scratch[:span]
    columns = scratch[span : span + (x_hi - x_lo) * side_y * 3]  # columns[x, y, c]
    flat = image.reshape(image.shape[0], w * 3)
    for i in range(side_y):  # down: output row i from whole source rows, over the needed columns
        acc[:] = 0.0
        for k in range(ny[i]):
            t = wy[i, k]
            src = flat[fy[i] + k, x_lo * 3 : x_hi * 3]
            for j in range(span):
                acc[j] += t * src[j]
        for x in range(x_hi - x_lo):
            base = (x * side_y + i) * 3
            columns[base] = acc[3 * x]
            columns[base + 1] = acc[3 * x + 1]
            columns[base + 2] = acc[3 * x + 2]
    row_len = side_y * 3
    line = np.empty(row_len, np.float32)
    result = out.reshape(side_x, row_len)
    for i in range(side_x):  # across: output column i from whole transposed columns
        line[:] = 0.0
        for k in range(nx[i]):
            base = (fx[i] + k - x_lo) * row_len
            t, src = wx[i, k], columns[base : base + row_len]
            for j in range(row_len):
                line[j] += t * src[j]
        dst = result[(side_x - 1 - i) if flip else i]
        for j in range(row_len):
            dst[j] = _to_uint8(line[j])


@numba.njit(cache=True, nogil=True)
def scratch_size(width: int, side: int) -> int:
    """float32 elements of scratch `finish_view` needs for an image `width` pixels wide and a
    `side`-pixel view: the transposed vertical pass of the resize, or the blur's two buffers."""
    return max((side + 1) * width * 3, (3 * side - 2) * 3 + side * side * 3)


@numba.njit(cache=True, nogil=True, fastmath=True)
def finish_view(
    image: np.ndarray,
    params: np.ndarray,
    columns: np.ndarray,
    rotation: int,
    level: int,
    scale: np.ndarray,
    shift: np.ndarray,
    view: np.ndarray,
    scratch: np.ndarray,
    out: np.ndarray,
) -> None:
    """One sample's view from its decoded image (H, W, 3) uint8 into `out` (3, S, S): crop-resize
    (and flip), colour transform, blur, solarize, `rotation` quarter turns counter-clockwise, then
    `x * scale + shift` per channel (float32 normalised, or uint8 with scale 1 and shift 0: exact,
    the values are whole numbers).

    `params` is the sample's row of the batch's float32 parameter array; `columns` (8,) int64
    holds the columns of its ROI start (y, x), ROI end (y, x) (a flip has end x before start x, as
    DALI's resize reads it), colour matrix (9), v (3), w (3), blur flag, sigma and solarize flag,
    -1 for a group the view never applies. Solarize inverts values >= `level`. `view` (S, S, 3)
    uint8 and `scratch` (`scratch_size` float32, checked) are the caller's, reused.
    """
    side = view.shape[0]
    if len(scratch) < scratch_size(image.shape[1], side):
        raise ValueError("finish_view: scratch smaller than scratch_size(width, side)")
    at_roi, at_end, at_m, at_v, at_w, at_blur, at_sigma, at_solarize = (
        columns[0], columns[1], columns[2], columns[3], columns[4], columns[5], columns[6], columns[7],
    )  # fmt: skip
    top, bottom = params[at_roi], params[at_end]
    x0, x1 = params[at_roi + 1], params[at_end + 1]
    flip = x1 < x0
    # `view` holds the view transposed from here on: the colour pass, the isotropic blur and
    # solarize do not care, and the last loop reads it back the right way round.
    _crop_resize_transposed(image, top, min(x0, x1), bottom, max(x0, x1), flip, view, scratch)
    if at_m >= 0:
        m, v = params[at_m : at_m + 9], params[at_v : at_v + 3]
        if not _is_identity(m, v):
            _colour(view, m, v, params[at_w : at_w + 3])
    if at_blur >= 0 and params[at_blur] != 0.0:
        cut = (side + 2 * (side - 1)) * 3
        _blur(view, max(params[at_sigma], 1e-3), scratch[:cut], scratch[cut : cut + side * side * 3])
    if at_solarize >= 0 and params[at_solarize] != 0.0:
        for y in range(side):
            for x in range(side):
                for c in range(3):
                    if view[y, x, c] >= level:
                        view[y, x, c] = 255 - view[y, x, c]
    last = side - 1
    for c in range(3):  # out[c, i, j] = rot90(V, rotation)[i, j, c] with V[a, b] = view[b, a]
        sc, sh = scale[c], shift[c]
        for i in range(side):
            for j in range(side):
                if rotation == 0:
                    p = view[j, i, c]
                elif rotation == 1:
                    p = view[last - i, j, c]
                elif rotation == 2:
                    p = view[last - j, last - i, c]
                else:
                    p = view[i, last - j, c]
                out[c, i, j] = p * sc + sh


def finish_view_reference(
    image: np.ndarray, params: np.ndarray, columns: np.ndarray, rotation: int, level: int,
    scale: np.ndarray, shift: np.ndarray, side: int, out_dtype: type,
) -> np.ndarray:  # fmt: skip
    """`finish_view` op by op, for the tests: Pillow's own `resize(BILINEAR, box=)` for the crop
    (rounded to uint8 between its two passes, so up to a level from the kernel's), then NumPy in
    float64."""
    from fastssl.pipelines.colour import affine_for_mean
    from PIL import Image

    at_roi, at_end, at_m, at_v, at_w, at_blur, at_sigma, at_solarize = (int(c) for c in columns)
    row = params.astype(np.float64)
    top, bottom = row[at_roi], row[at_end]
    x0, x1 = row[at_roi + 1], row[at_end + 1]
    box = (min(x0, x1), top, max(x0, x1), bottom)
    x = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR, box=box))
    x = (x[:, ::-1] if x1 < x0 else x).astype(np.float64)
    if at_m >= 0:
        m = row[at_m : at_m + 9].reshape(3, 3)
        offset = affine_for_mean(m[None], row[None, at_v : at_v + 3], row[None, at_w : at_w + 3],
                                 x.reshape(-1, 3).mean(0)[None])[0]  # fmt: skip
        x = np.clip(np.floor(x @ m.T + offset + 0.5), 0, 255)
    if at_blur >= 0 and row[at_blur]:
        taps = gaussian_taps(max(float(row[at_sigma]), 1e-3), side).astype(np.float64)
        r = (len(taps) - 1) // 2
        for axis in (1, 0):
            pad = [(0, 0)] * 3
            pad[axis] = (r, r)
            padded = np.pad(x, pad, mode="reflect")  # NumPy's "reflect" is reflect-101
            x = sum(t * np.take(padded, np.arange(k, k + side), axis=axis) for k, t in enumerate(taps))
        x = np.clip(np.floor(x + 0.5), 0, 255)
    if at_solarize >= 0 and row[at_solarize]:
        x = np.where(x >= level, 255 - x, x)
    x = np.rot90(x, k=rotation).transpose(2, 0, 1)
    if out_dtype == np.float32:
        x = x * scale.astype(np.float64)[:, None, None] + shift.astype(np.float64)[:, None, None]
    return x.astype(out_dtype)

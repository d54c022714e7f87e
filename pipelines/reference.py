"""Float64 reference of a view's pixel ops, op by op with torchvision's semantics (NumPy, slow).

The backends fuse and approximate (see `fastssl.pipelines.colour`); tests compare them with this
reference to bound the difference. It starts from the cropped and resized uint8 view (crop boxes
are checked separately, from the returned parameters) and applies, in the recipe's order: colour
jitter in the sampled order with clamping after each op and hue shifted in HSV, grayscale,
Gaussian blur (reflect borders, kernel spanning 4 sigma), solarize, rotation, normalisation.
"""

from __future__ import annotations

import numpy as np
from fastssl.pipelines.colour import BRIGHTNESS, CONTRAST, GRAY, HUE, SATURATION, hue_shift


def _gray(x: np.ndarray) -> np.ndarray:
    return x @ GRAY


def jitter_reference(x: np.ndarray, factors: np.ndarray, order: np.ndarray) -> np.ndarray:
    """torchvision ColorJitter on a float image in [0, 1] (H, W, 3): ops in `order`, clamped each."""
    b, c, s, h = (float(f) for f in factors)
    for op in order:
        if op == BRIGHTNESS:
            x = np.clip(x * b, 0, 1)
        elif op == CONTRAST:
            x = np.clip(c * x + (1 - c) * _gray(x).mean(), 0, 1)
        elif op == SATURATION:
            x = np.clip(s * x + (1 - s) * _gray(x)[..., None], 0, 1)
        elif op == HUE:
            x = hue_shift(x, h)
    return x


def blur_reference(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflect (mirror without edge repeat) borders, radius 4 sigma."""
    radius = max(1, int(np.ceil(4 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="reflect")
        x = sum(w * np.take(padded, np.arange(k, k + x.shape[axis]), axis=axis) for k, w in enumerate(taps))
    return x


def view_reference(
    resized: np.ndarray, params: dict[str, np.ndarray], i: int, threshold: float = 0.5
) -> np.ndarray:
    """Sample `i`'s view in [0, 1], (H, W, 3) float64, from its cropped, resized (and flipped) uint8
    image and the view's parameters, before normalisation."""
    x = resized.astype(np.float64) / 255.0
    x = jitter_reference(x, params["jitter"][i], params["jitter_order"][i])
    if params["gray"][i]:
        x = np.repeat(_gray(x)[..., None], 3, axis=-1)
    if params["blur"][i]:
        x = blur_reference(x, float(params["blur_sigma"][i]))
    if params["solarize"][i]:
        x = np.where(x >= threshold, 1.0 - x, x)
    return np.rot90(x, k=int(params["rotation"][i]))

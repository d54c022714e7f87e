"""Per-sample random parameters of a recipe's views, as a pure function of (seed, epoch, sample id).

Every backend receives the same parameters from here, so DALI and Kornia produce the same crops,
flips and colour factors for the same sample, a resumed run continues the same stream, and the
conformance suite can check each op's statistics against the recipe. The numbers come from a
counter-based hash (SplitMix64 finaliser) of (seed, epoch, sample id, view, slot) rather than a
stateful generator: a sample's parameters then do not depend on batch size, rank count, worker
count or on which samples came before it, which no per-pipeline RNG (DALI's `fn.random.*` included)
can promise across a resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastssl.recipes import Recipe, ViewSpec

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_CROP_TRIES = 10  # torchvision's RandomResizedCrop tries ten boxes before its centre-crop fallback

# Slots of the uniform stream of one (sample, view); fixed so that adding an op never shifts others.
_SLOT_CROP = 0  # 4 per try: area, log-ratio, top, left
_SLOT_FLIP = _SLOT_CROP + 4 * _CROP_TRIES
_SLOT_JITTER = _SLOT_FLIP + 1  # applied, 4 factors, 4 order keys
_SLOT_GRAY = _SLOT_JITTER + 9
_SLOT_BLUR = _SLOT_GRAY + 1  # applied, sigma
_SLOT_SOLARIZE = _SLOT_BLUR + 2
_SLOTS = _SLOT_SOLARIZE + 1

GROUPS: dict[str, tuple[str, ...]] = {
    "crop": ("crop",),
    "flip": ("flip",),
    "jitter": ("jitter_applied", "jitter", "jitter_order"),
    "gray": ("gray",),
    "blur": ("blur", "blur_sigma"),
    "solarize": ("solarize",),
}


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection on uint64 whose output bits look independent."""
    x = (x ^ (x >> np.uint64(30))) * _MUL1
    x = (x ^ (x >> np.uint64(27))) * _MUL2
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, epoch: int, sample_ids: np.ndarray, stream: int, count: int) -> np.ndarray:
    """`count` uniform numbers in [0, 1) per sample, shape (len(sample_ids), count), float64."""
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed) * _GOLDEN + _mix(np.asarray([epoch + 1], dtype=np.uint64)))
        ids = np.asarray(sample_ids, dtype=np.int64).astype(np.uint64)
        per_sample = _mix(_mix(ids + key) ^ (np.uint64(stream + 1) * _MUL2))
        counters = per_sample[:, None] + np.arange(1, count + 1, dtype=np.uint64)[None, :] * _GOLDEN
        bits = _mix(counters)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _random_resized_crop(
    spec: ViewSpec, u: np.ndarray, heights: np.ndarray, widths: np.ndarray
) -> np.ndarray:
    """torchvision's RandomResizedCrop.get_params, vectorised: (top, left, height, width) per sample."""
    n = len(heights)
    area = (heights * widths).astype(np.float64)
    lo_r, hi_r = np.log(spec.ratio[0]), np.log(spec.ratio[1])
    tries = u[:, : 4 * _CROP_TRIES].reshape(n, _CROP_TRIES, 4)
    target = area[:, None] * (spec.scale[0] + (spec.scale[1] - spec.scale[0]) * tries[..., 0])
    aspect = np.exp(lo_r + (hi_r - lo_r) * tries[..., 1])
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (h > 0) & (w <= widths[:, None]) & (h <= heights[:, None])
    first = np.argmax(fits, axis=1)
    found = fits[np.arange(n), first]
    h, w = h[np.arange(n), first], w[np.arange(n), first]
    top = np.floor(tries[np.arange(n), first, 2] * (heights - h + 1)).astype(np.int64)
    left = np.floor(tries[np.arange(n), first, 3] * (widths - w + 1)).astype(np.int64)
    # Fallback (no try fitted): the whole image, cut to the nearest allowed aspect ratio, centred.
    in_ratio = widths / heights
    narrow, wide = in_ratio < spec.ratio[0], in_ratio > spec.ratio[1]
    fh = np.where(narrow, np.rint(widths / spec.ratio[0]), heights).astype(np.int64)
    fw = np.where(wide, np.rint(heights * spec.ratio[1]), widths).astype(np.int64)
    fh, fw = np.clip(fh, 1, heights), np.clip(fw, 1, widths)
    box = np.stack([top, left, h, w], axis=1)
    fallback = np.stack([(heights - fh) // 2, (widths - fw) // 2, fh, fw], axis=1)
    return np.where(found[:, None], box, fallback).astype(np.int32)


def _resize_then_random_crop(
    spec: ViewSpec, u: np.ndarray, heights: np.ndarray, widths: np.ndarray
) -> np.ndarray:
    """Resize(shorter side = spec.resize) then RandomCrop(spec.size) (CenterCrop for "resize_center"),
    as a box in source pixels."""
    side = np.rint(spec.size * np.minimum(heights, widths) / spec.resize).astype(np.int64)
    side = np.clip(side, 1, np.minimum(heights, widths))
    if spec.crop == "resize_center":
        top, left = (heights - side) // 2, (widths - side) // 2
    else:
        top = np.floor(u[:, 0] * (heights - side + 1)).astype(np.int64)
        left = np.floor(u[:, 1] * (widths - side + 1)).astype(np.int64)
    return np.stack([top, left, side, side], axis=1).astype(np.int32)


def sample_view(
    spec: ViewSpec, u: np.ndarray, heights: np.ndarray, widths: np.ndarray, rotation: int
) -> dict[str, np.ndarray]:
    """One view's parameters for a batch, from its uniform stream `u` of shape (B, _SLOTS)."""
    n = len(heights)
    if spec.crop == "random_resized":
        crop = _random_resized_crop(spec, u[:, _SLOT_CROP:], heights, widths)
    else:
        crop = _resize_then_random_crop(spec, u[:, _SLOT_CROP:], heights, widths)
    ju = u[:, _SLOT_JITTER : _SLOT_JITTER + 9]
    jitter_applied = ju[:, 0] < spec.p_jitter
    b, c, s, h = spec.jitter
    factors = np.stack(
        [
            max(0.0, 1 - b) + (1 + b - max(0.0, 1 - b)) * ju[:, 1],
            max(0.0, 1 - c) + (1 + c - max(0.0, 1 - c)) * ju[:, 2],
            max(0.0, 1 - s) + (1 + s - max(0.0, 1 - s)) * ju[:, 3],
            -h + 2 * h * ju[:, 4],
        ],
        axis=1,
    )
    identity = np.array([1.0, 1.0, 1.0, 0.0])
    factors = np.where(jitter_applied[:, None], factors, identity).astype(np.float32)
    order = np.argsort(ju[:, 5:9], axis=1).astype(np.int8)
    blur = u[:, _SLOT_BLUR] < spec.p_blur
    lo, hi = spec.blur_sigma
    sigma = np.where(blur, lo + (hi - lo) * u[:, _SLOT_BLUR + 1], 0.0).astype(np.float32)
    return {
        "crop": crop,
        "flip": u[:, _SLOT_FLIP] < spec.p_flip,
        "jitter_applied": jitter_applied,
        "jitter": factors,
        "jitter_order": order,
        "gray": u[:, _SLOT_GRAY] < spec.p_gray,
        "blur": blur,
        "blur_sigma": sigma,
        "solarize": u[:, _SLOT_SOLARIZE] < spec.p_solarize,
        "rotation": np.full(n, rotation, dtype=np.int8),
    }


def sample_params(
    recipe: Recipe,
    *,
    seed: int,
    epoch: int,
    sample_ids: Sequence[int] | np.ndarray,
    heights: Sequence[int] | np.ndarray,
    widths: Sequence[int] | np.ndarray,
) -> list[dict[str, np.ndarray]]:
    """Every view's parameters for a batch of samples of the given source sizes.

    Returns one dict per view: `crop` (B, 4) int32 (top, left, height, width in source pixels),
    `flip`, `jitter_applied`, `gray`, `blur`, `solarize` (B,) bool, `jitter` (B, 4) float32
    (brightness, contrast, saturation factors and hue shift; identity where not applied),
    `jitter_order` (B, 4) int8 (the order the four are applied in), `blur_sigma` (B,) float32 (0 where
    no blur), `rotation` (B,) int8 quarter turns. Groups named in `recipe.share` are copied from view 0.
    """
    ids = np.asarray(sample_ids, dtype=np.int64)
    heights = np.asarray(heights, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    if not len(ids) == len(heights) == len(widths):
        raise ValueError("sample_ids, heights and widths must have the same length")
    if len(ids) and (heights.min() < 1 or widths.min() < 1):
        raise ValueError("image sizes must be positive")
    views = recipe.views()
    out = []
    for v, spec in enumerate(views):
        u = uniforms(seed, epoch, ids, stream=v, count=_SLOTS)
        params = sample_view(spec, u, heights, widths, spec.rotation)
        for group in recipe.share:
            if v > 0:
                for name in GROUPS[group]:
                    params[name] = out[0][name].copy()
        out.append(params)
    return out

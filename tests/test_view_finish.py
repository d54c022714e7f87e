"""The CPU path's fused view kernel against Pillow + NumPy, op by op, and the output tensor pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastssl.kernels.view_finish import (
    _crop_resize_transposed,
    finish_view,
    finish_view_reference,
    scratch_size,
)
from fastssl.pipelines.colour import colour_transform
from fastssl.pipelines.host_finish import HostFinish, TensorPool
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fastssl.recipes import SimCLR

# columns of a parameter row laid out as the kernel reads it (roi_start, roi_end, M, v, w, blur,
# sigma, solarize)
COLUMNS = np.array([0, 2, 4, 13, 16, 19, 20, 21], np.int64)
NAMES = ("roi_start", "roi_end", "matrix", "v", "w", "blur", "sigma", "solarize")
SCALE = np.array([1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)], np.float32)
SHIFT = np.array([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], np.float32)


def photo(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth random image with edges (blocks of colour, upsampled), uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR))


def row(box, flip, jitter, order, gray, blur, sigma, solarize) -> np.ndarray:  # noqa: ANN001
    top, left, bottom, right = box
    m, v, w = colour_transform(np.array([jitter]), np.array([order]), np.array([gray]))
    x0, x1 = (right, left) if flip else (left, right)
    return np.concatenate(
        [[top, x0, bottom, x1], m.reshape(9), v[0], w[0], [float(blur), sigma, float(solarize)]]
    ).astype(np.float32)


def run(image: np.ndarray, params: np.ndarray, side: int, rotation: int, dtype: type) -> np.ndarray:
    out = np.empty((3, side, side), dtype)
    scale, shift = (
        (SCALE, SHIFT) if dtype == np.float32 else (np.ones(3, np.float32), np.zeros(3, np.float32))
    )
    view = np.empty((side, side, 3), np.uint8)
    scratch = np.empty(scratch_size(image.shape[1], side), np.float32)
    finish_view(image, params, COLUMNS, rotation, 128, scale, shift, view, scratch, out)
    return out


boxes = st.tuples(
    st.integers(40, 120),
    st.integers(40, 120),
    st.floats(0, 0.4),
    st.floats(0, 0.4),
    st.floats(0.3, 1),
    st.floats(0.3, 1),
)


@settings(max_examples=40, deadline=None)
@given(boxes, st.integers(8, 96), st.booleans())
def test_crop_resize_matches_pillow_within_a_level(shape, side, flip) -> None:
    """Pillow's BILINEAR resize with a box, antialiased when shrinking: the kernel rounds once,
    Pillow between its two passes, so they differ by at most one level."""
    height, width, ty, tx, fh, fw = shape
    image = photo(height * width, height, width)
    top, left = ty * height, tx * width
    bottom, right = min(height, top + fh * height), min(width, left + fw * width)
    view = np.empty((side, side, 3), np.uint8)
    scratch = np.empty(scratch_size(width, side), np.float32)
    _crop_resize_transposed(image, top, left, bottom, right, flip, view, scratch)
    want = np.asarray(
        Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR, box=(left, top, right, bottom))
    )
    if flip:
        want = want[:, ::-1]
    assert np.abs(view.transpose(1, 0, 2).astype(int) - want).max() <= 1


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 10_000),
    st.tuples(st.floats(0.2, 1.8), st.floats(0.2, 1.8), st.floats(0.2, 1.8), st.floats(-0.2, 0.2)),
    st.permutations([0, 1, 2, 3]),
    st.booleans(), st.booleans(), st.floats(0.1, 2.0), st.booleans(), st.booleans(),
    st.sampled_from([np.float32, np.uint8]),
)  # fmt: skip
def test_every_op_follows_its_parameters(
    seed, jitter, order, gray, blur, sigma, solarize, flip, dtype
) -> None:
    """The fused pass equals Pillow's crop-resize then the NumPy ops one by one in float64, up
    to the rounding of the resize's one level carried through the colour transform's gain."""
    image = photo(seed, 90, 120)
    params = row((10.0, 15.0, 80.0, 110.0), flip, jitter, order, gray, blur, sigma, solarize)
    got = run(image, params, 48, 0, dtype)
    want = finish_view_reference(image, params, COLUMNS, 0, 128, *_affine(dtype), 48, dtype)
    levels = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if dtype == np.float32:
        levels = levels / SCALE.astype(np.float64)[:, None, None]
    gain = (
        np.abs(colour_transform(np.array([jitter]), np.array([order]), np.array([gray]))[0]).sum(axis=2).max()
    )
    assert levels.mean() < 0.5
    assert levels.max() <= np.ceil(2 * max(1.0, gain)) + 1e-3


def _affine(dtype: type) -> tuple[np.ndarray, np.ndarray]:
    return (SCALE, SHIFT) if dtype == np.float32 else (np.ones(3, np.float32), np.zeros(3, np.float32))


@pytest.mark.parametrize("rotation", [1, 2, 3])
def test_rotation_is_an_exact_quarter_turn(rotation) -> None:
    image = photo(3, 70, 90)
    params = row((5.0, 5.0, 65.0, 80.0), True, (1.3, 0.7, 1.2, 0.05), [2, 0, 3, 1], False, True, 1.2, True)
    upright = run(image, params, 32, 0, np.uint8)
    turned = run(image, params, 32, rotation, np.uint8)
    assert np.array_equal(turned, np.rot90(upright, k=rotation, axes=(1, 2)))


def test_identity_parameters_leave_the_resized_pixels_as_they_are() -> None:
    image = photo(5, 64, 64)
    params = row((0.0, 0.0, 64.0, 64.0), False, (1.0, 1.0, 1.0, 0.0), [0, 1, 2, 3], False, False, 1.0, False)
    assert np.array_equal(run(image, params, 64, 0, np.uint8), image.transpose(2, 0, 1))


def test_threads_split_a_batch_without_changing_it() -> None:
    recipe = SimCLR(size=40, p_solarize=0.2)
    from fastssl.pipelines.dali_views import param_layout

    layout, k = param_layout(recipe)
    rng = np.random.default_rng(0)
    images = [photo(i, int(rng.integers(50, 90)), int(rng.integers(50, 90))) for i in range(9)]
    params = np.zeros((9, k), np.float32)
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        for columns in layout:
            box = (2.0, 3.0, h - 1.0, w - 2.0)
            p = row(
                box,
                i % 2 == 0,
                (1.2, 0.8, 1.1, 0.1),
                [3, 1, 0, 2],
                i % 3 == 0,
                i % 2 == 1,
                0.5 + i / 9,
                i == 4,
            )
            for name, at in zip(NAMES, COLUMNS, strict=True):
                width = columns[name].stop - columns[name].start
                params[i, columns[name]] = p[at : at + width]
    one, two = HostFinish(recipe, layout, threads=1), HostFinish(recipe, layout, threads=2)
    try:
        for a, b in zip(one(images, params), two(images, params), strict=True):
            assert a.shape == (9, 3, 40, 40) and a.dtype == torch.float32
            assert torch.equal(a, b)
    finally:
        one.close()
        two.close()


def test_pool_reuses_a_tensor_only_once_nothing_else_holds_it() -> None:
    pool = TensorPool(keep=16)
    first = pool.take((2, 3), torch.float32)
    address = first.data_ptr()
    assert pool.take((2, 3), torch.float32).data_ptr() != address  # held by name
    holders = {
        "a slice": lambda t: t[1:],
        "a NumPy array": lambda t: t.numpy(),
        "a batch dict": lambda t: {"views": [t]},
    }
    for what, hold in holders.items():
        kept = hold(first)
        del first
        assert pool.take((2, 3), torch.float32).data_ptr() != address, what
        first = next(t for t in pool._given[((2, 3), torch.float32)] if t.data_ptr() == address)
        del kept
    del first
    again = pool.take((2, 3), torch.float32)
    assert again.data_ptr() == address


def test_a_panorama_wider_than_anything_else_in_its_batch_is_finished_right() -> None:
    """Each thread's scratch is sized by the widest image of its share of the batch."""
    recipe = SimCLR(size=16, p_blur=1.0)
    from fastssl.pipelines.dali_views import param_layout

    layout, k = param_layout(recipe)
    images = [photo(1, 30, 30), photo(2, 12, 700), photo(3, 20, 25)]
    params = np.zeros((3, k), np.float32)
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        p = row(
            (0.0, 0.0, float(h), float(w)), False, (1.1, 0.9, 1.0, 0.0), [0, 1, 2, 3], False, True, 1.5, False
        )
        for columns in layout:
            for name, at in zip(NAMES[:7], COLUMNS[:7], strict=True):
                width = columns[name].stop - columns[name].start
                params[i, columns[name]] = p[at : at + width]
    finish = HostFinish(recipe, layout, threads=1)
    try:
        got = finish(images, params)[0].numpy()
    finally:
        finish.close()
    cols = finish.columns[0]
    for i, image in enumerate(images):
        want = finish_view_reference(
            image, params[i], cols, 0, 128, finish.scale, finish.shift, 16, np.float32
        )
        assert np.abs(got[i] - want).max() * 255 * 0.229 <= 3


def test_a_scratch_too_small_is_refused_not_overrun() -> None:
    image = photo(4, 10, 300)
    params = row((0.0, 0.0, 10.0, 300.0), False, (1.0, 1.0, 1.0, 0.0), [0, 1, 2, 3], False, False, 1.0, False)
    out, view = np.empty((3, 16, 16), np.float32), np.empty((16, 16, 3), np.uint8)
    small = np.empty(scratch_size(300, 16) - 1, np.float32)
    with pytest.raises(ValueError, match="scratch"):
        finish_view(image, params, COLUMNS, 0, 128, SCALE, SHIFT, view, small, out)

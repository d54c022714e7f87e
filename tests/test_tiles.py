"""The tile-gather kernel against its NumPy reference and against torch indexing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastssl.kernels.tiles import gather_tiles, gather_tiles_reference
from fastssl.pipelines.patch_views import standardise, to_luma, torch_gather
from hypothesis import given, settings
from hypothesis import strategies as st


def _case(seed: int, n: int, batch: int, positions: int, size: int, tile: int, flat: bool = False):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, size, size + 3), dtype=np.uint8)
    if flat:
        images[0] = 77  # a constant image: its tiles have std 0
    source = rng.integers(0, n, size=(batch, positions))
    corners = np.stack(
        [rng.integers(0, size - tile + 1, size=(batch, positions, 3)),
         rng.integers(0, size + 3 - tile + 1, size=(batch, positions, 3))],
        axis=-1,
    )  # fmt: skip
    return images, source, corners


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 4),
    batch=st.integers(1, 5),
    positions=st.integers(1, 10),
    size=st.integers(8, 40),
    tile=st.integers(1, 8),
    standardised=st.booleans(),
    gray_bits=st.integers(0, 15),
)
def test_kernel_equals_reference(seed, n, batch, positions, size, tile, standardised, gray_bits):
    images, source, corners = _case(seed, n, batch, positions, size, tile, flat=seed % 3 == 0)
    gray = (gray_bits >> np.arange(n)) & 1 == 1
    got = gather_tiles(images, source, corners, tile, gray=gray, standardise=standardised)
    expected = gather_tiles_reference(images, source, corners, tile, gray=gray, standardise=standardised)
    assert got.shape == (batch, positions, 3, tile, tile)
    if standardised:
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=2e-5)
    else:
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)
    from_gray = gray[source]
    assert np.array_equal(got[from_gray][:, 0], got[from_gray][:, 2]), "grayscale tiles: equal channels"


def test_torch_indexing_gives_the_same_tiles_and_statistics():
    images, source, corners = _case(5, 3, 4, 9, 40, 16, flat=True)
    tiles = torch_gather(torch.from_numpy(images), torch.from_numpy(source), torch.from_numpy(corners), 16)
    np.testing.assert_array_equal(tiles.numpy(), gather_tiles(images, source, corners, 16))
    fused = gather_tiles(images, source, corners, 16, standardise=True)
    np.testing.assert_allclose(standardise(tiles).numpy(), fused, atol=2e-5)
    stats = fused.reshape(*fused.shape[:3], -1)
    flat = source == 0  # constant image: centred to 0, not divided by a zero std
    assert np.all(stats[flat] == 0)
    np.testing.assert_allclose(stats[~flat].mean(-1), 0, atol=1e-4)
    np.testing.assert_allclose(stats[~flat].std(-1), 1, atol=1e-3)


def test_affine_normalisation_while_gathering():
    images, source, corners = _case(2, 3, 4, 9, 40, 16)
    gray = np.array([False, True, False])
    scale, offset = np.array([0.5, 2.0, -1.0]), np.array([1.0, -3.0, 0.25])
    got = gather_tiles(images, source, corners, 16, gray=gray, affine=(scale, offset))
    expected = gather_tiles_reference(images, source, corners, 16, gray=gray, affine=(scale, offset))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)
    plain = gather_tiles_reference(images, source, corners, 16).astype(float)
    rows = ~gray[source]
    np.testing.assert_allclose(
        got[rows], plain[rows] * scale[:, None, None] + offset[:, None, None], atol=1e-4
    )
    with pytest.raises(ValueError, match="choose one"):
        gather_tiles(images, source, corners, 16, standardise=True, affine=(scale, offset))


def test_grayscale_tiles_are_itu601_luma_on_both_engines():
    images, source, corners = _case(9, 3, 4, 9, 40, 16)
    gray = np.array([True, False, True])
    got = gather_tiles(images, source, corners, 16, gray=gray)
    tiles = torch_gather(torch.from_numpy(images), torch.from_numpy(source), torch.from_numpy(corners), 16)
    by_torch = to_luma(tiles, torch.from_numpy(gray[source])).numpy().astype(int)
    assert np.abs(by_torch - got).max() <= 1  # float32 luma on torch: a rare .5 rounds the other way
    b, p = np.argwhere(gray[source])[0]
    r, g, bl = (
        images[source[b, p], c, top : top + 16, left : left + 16].astype(float)
        for c, (top, left) in enumerate(corners[b, p])
    )  # each channel as cut at its own corner
    expected = np.floor(0.299 * r + 0.587 * g + 0.114 * bl + 0.5)
    for c in range(3):
        np.testing.assert_array_equal(got[b, p, c], expected)


def test_a_plan_reaching_outside_the_images_is_refused():
    images, source, corners = _case(1, 2, 2, 3, 20, 8)
    bad = corners.copy()
    bad[1, 2, 0, 1] = 20 + 3 - 7  # one column too far right
    with pytest.raises(ValueError, match="reaches outside 20x23"):
        gather_tiles(images, source, bad, 8)
    with pytest.raises(ValueError, match="source rows"):
        gather_tiles(images, source + 2, corners, 8)
    with pytest.raises(ValueError, match="do not fit"):
        gather_tiles(images, source, corners[:, :, :2], 8)

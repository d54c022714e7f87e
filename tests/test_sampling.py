"""Per-sample random parameters: every op's rate and range against the recipe, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fastssl.host.params import sample_params
from fastssl.recipes import BYOL, MoCoV2, MultiCrop, Rotation, SimCLR

N = 4000


def _rate_ok(flags: np.ndarray, p: float) -> bool:
    """Empirical rate within 4.5 binomial standard errors of p (false alarm ~1e-5 per check)."""
    tol = 4.5 * np.sqrt(max(p * (1 - p), 1e-12) / len(flags))
    return abs(flags.mean() - p) <= tol + 1e-12


def _batch(recipe, n=N, seed=0, epoch=0, heights=None, widths=None):
    rng = np.random.default_rng(123)
    heights = rng.integers(200, 600, n) if heights is None else heights
    widths = rng.integers(200, 600, n) if widths is None else widths
    params = sample_params(
        recipe, seed=seed, epoch=epoch, sample_ids=np.arange(n), heights=heights, widths=widths
    )
    return params, heights, widths


def _torchvision_rrc_areas(scale, ratio, n, h, w, seed=0) -> np.ndarray:
    """torchvision's RandomResizedCrop.get_params written as its loop, with numpy's generator."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        for _ in range(10):
            target = h * w * rng.uniform(*scale)
            aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
            cw, ch = round(np.sqrt(target * aspect)), round(np.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                out.append(cw * ch / (h * w))
                break
        else:
            out.append(1.0)
    return np.array(out)


@pytest.mark.parametrize("recipe", [SimCLR(), MoCoV2(), BYOL(), MultiCrop(n_local=2)], ids=lambda r: r.name)
def test_every_random_op_matches_its_recipe(recipe) -> None:
    params, heights, widths = _batch(recipe)
    for spec, p in zip(recipe.views(), params, strict=True):
        top, left, h, w = p["crop"].T
        assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
        assert (top + h <= heights).all() and (left + w <= widths).all()
        # a crop that fitted has its area within scale, up to rounding each side to whole pixels
        fallback = (h == heights) | (w == widths)
        slack = 0.5 * (h + w) + 0.25
        area = (h * w)[~fallback]
        full = (heights * widths)[~fallback]
        assert (area >= spec.scale[0] * full - slack[~fallback]).all()
        assert (area <= spec.scale[1] * full + slack[~fallback]).all()
        assert _rate_ok(p["flip"], spec.p_flip)
        assert _rate_ok(p["jitter_applied"], spec.p_jitter)
        assert _rate_ok(p["gray"], spec.p_gray)
        assert _rate_ok(p["blur"], spec.p_blur)
        assert _rate_ok(p["solarize"], spec.p_solarize)
        j = p["jitter"][p["jitter_applied"]]
        for k in range(3):
            lo, hi = max(0.0, 1 - spec.jitter[k]), 1 + spec.jitter[k]
            assert j[:, k].min() >= lo - 1e-6 and j[:, k].max() <= hi + 1e-6
            assert stats.kstest(j[:, k], stats.uniform(lo, hi - lo).cdf).pvalue > 1e-4
        assert np.abs(j[:, 3]).max() <= spec.jitter[3] + 1e-6
        assert (p["jitter"][~p["jitter_applied"]] == [1, 1, 1, 0]).all()
        assert (np.sort(p["jitter_order"], axis=1) == np.arange(4)).all()
        first_op = np.bincount(p["jitter_order"][:, 0], minlength=4) / len(p["jitter_order"])
        assert np.abs(first_op - 0.25).max() < 4.5 * np.sqrt(0.25 * 0.75 / N)
        sigma = p["blur_sigma"][p["blur"]]
        if len(sigma):
            lo, hi = spec.blur_sigma
            assert sigma.min() >= lo and sigma.max() <= hi
            assert stats.kstest(sigma, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-4
        assert (p["blur_sigma"][~p["blur"]] == 0).all()


def test_crop_area_follows_torchvision_random_resized_crop() -> None:
    """Same algorithm, independent random numbers: the area distributions must agree."""
    recipe = SimCLR()
    n, h, w = 3000, 375, 500
    params, _, _ = _batch(recipe, n=n, heights=np.full(n, h), widths=np.full(n, w))
    ours = params[0]["crop"][:, 2] * params[0]["crop"][:, 3] / (h * w)
    theirs = _torchvision_rrc_areas((0.08, 1.0), (3 / 4, 4 / 3), n, h, w)
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-3
    aspect = params[0]["crop"][:, 3] / params[0]["crop"][:, 2]
    assert aspect.min() >= 3 / 4 * 0.97 and aspect.max() <= 4 / 3 * 1.03


def test_byol_views_are_asymmetric() -> None:
    one, two = _batch(BYOL())[0]
    assert _rate_ok(one["blur"], 1.0) and _rate_ok(two["blur"], 0.1)
    assert not one["solarize"].any() and _rate_ok(two["solarize"], 0.2)


def test_rotation_gives_each_image_all_four_turns_once() -> None:
    params, heights, widths = _batch(Rotation(), n=500)
    turns = np.stack([p["rotation"] for p in params], axis=1)
    assert (np.sort(turns, axis=1) == np.arange(4)).all()
    for p in params[1:]:
        assert (p["crop"] == params[0]["crop"]).all() and (p["flip"] == params[0]["flip"]).all()
    side = params[0]["crop"][:, 2]
    assert (params[0]["crop"][:, 3] == side).all()
    assert np.allclose(side, np.round(224 * np.minimum(heights, widths) / 256), atol=1)


def test_share_gives_views_the_same_crop_and_only_that() -> None:
    one, two = _batch(SimCLR(share=("crop",)), n=300)[0]
    assert (one["crop"] == two["crop"]).all()
    assert (one["flip"] != two["flip"]).any() and (one["jitter"] != two["jitter"]).any()


def test_views_differ_without_share() -> None:
    one, two = _batch(SimCLR(), n=300)[0]
    assert (one["crop"] != two["crop"]).any(axis=1).mean() > 0.95


@settings(max_examples=25, deadline=None)
@given(
    ids=st.lists(st.integers(0, 10**9), min_size=1, max_size=20, unique=True),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 1000),
)
def test_parameters_depend_only_on_seed_epoch_and_sample(ids, seed, epoch) -> None:
    """Batch composition and order do not change a sample's parameters; epoch and seed do."""
    recipe = SimCLR()
    sizes = np.full(len(ids), 400)
    together = sample_params(recipe, seed=seed, epoch=epoch, sample_ids=ids, heights=sizes, widths=sizes)
    alone = sample_params(
        recipe, seed=seed, epoch=epoch, sample_ids=ids[-1:], heights=sizes[:1], widths=sizes[:1]
    )
    for v in range(2):
        for name, value in together[v].items():
            assert (value[-1] == alone[v][name][0]).all(), name
    other = sample_params(recipe, seed=seed, epoch=epoch + 1, sample_ids=ids, heights=sizes, widths=sizes)
    assert not np.array_equal(other[0]["crop"], together[0]["crop"]) or len(ids) < 3


def test_tiny_and_extreme_images_fall_back_to_a_valid_centre_crop() -> None:
    heights, widths = np.array([1, 1, 2000, 7]), np.array([1, 3000, 1, 7])
    params = sample_params(SimCLR(), seed=0, epoch=0, sample_ids=np.arange(4), heights=heights, widths=widths)
    for p in params:
        top, left, h, w = p["crop"].T
        assert (h >= 1).all() and (w >= 1).all() and (top + h <= heights).all() and (left + w <= widths).all()

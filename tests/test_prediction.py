"""Data-prediction recipes (colorization, inpainting, super-resolution): validation, the ab bins,
the statistics of the mask draws, and that every backend's targets follow its inputs: the Lab
round trip, masked pixels exactly the mask, LR the bicubic reduction of HR; resume and params."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastssl.pipelines.lab import (
    ab_bins,
    annealed_mean,
    lab_to_rgb,
    nearest_bin,
    rebalancing_weights,
    rgb_to_lab,
    smoothed_prior,
    soft_encode,
)
from fastssl.pipelines.prediction_views import PredictionViews, bicubic
from scipy import stats

from fastssl import SSLLoader
from fastssl.host.prediction_params import noise_pattern, sample_prediction_params
from fastssl.recipes import RECIPES, Colorization, Inpainting, SuperResolution, get_recipe
from tests.shardsets import demo_shard_set

BATCH = 6


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_shard_set(tmp_path_factory.mktemp("photos"), num_images=18, seed=7, shard_size=9)


def batches(shards, recipe, backend, **kw):
    name, device = backend
    with SSLLoader(shards, recipe, BATCH, backend=name, device=device, num_threads=1, **kw) as loader:
        return [{k: v.cpu() if torch.is_tensor(v) else v for k, v in b.items()} for b in loader]


def base_views(shards, size, backend):
    """The uint8 crops the prediction recipes start from when they take random resized crops: the
    Crop recipe's, whose view draws (same spec, seed and sample ids) are theirs."""
    return [b["views"][0] for b in batches(shards, get_recipe("crop", size=size, dtype="uint8"), backend)]


# -- recipes ---------------------------------------------------------------------------------------
def test_recipes_are_registered_and_validate():
    for name, kind in (
        ("colorization", Colorization),
        ("inpainting", Inpainting),
        ("superres", SuperResolution),
    ):
        assert RECIPES[name] is kind and get_recipe(name).view_dtype == "uint8"
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        Colorization(dtype="uint8")
    with pytest.raises(ValueError, match="multiple of factor"):
        SuperResolution(size=30)
    with pytest.raises(ValueError, match="mask must be one of"):
        Inpainting(mask="stripes")
    with pytest.raises(ValueError, match="leaves no hole"):
        Inpainting(size=16, overlap=4)
    assert Colorization().resized(64).resize == round(64 * 256 / 176)


def test_ab_bins_cover_every_srgb_colour_on_a_grid_of_ten():
    bins = ab_bins()
    assert len(bins) == 261 and np.all(bins % 10 == 0)
    rng = np.random.default_rng(0)
    colours = np.concatenate(
        [rng.integers(0, 256, (20000, 3)), np.array(np.meshgrid(*[[0, 255]] * 3)).reshape(3, -1).T]
    )
    lab = rgb_to_lab(torch.from_numpy(colours.T[None, :, :, None] / 255.0).float())[0, 1:, :, 0]
    cells = {tuple(c) for c in (np.round(lab.T.numpy() / 10) * 10).astype(int)}
    assert cells <= {tuple(b) for b in bins.astype(int)}


def test_lab_matches_the_cie_formula_and_round_trips():
    # sRGB white, red, green and mid gray, with their published CIE Lab (D65) values
    rgb = torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 1, 0], [0.5, 0.5, 0.5]]).T[None, :, :, None]
    expected = torch.tensor([[100.0, 0, 0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18], [53.39, 0, 0]])
    lab = rgb_to_lab(rgb)[0, :, :, 0].T
    assert torch.allclose(lab, expected, atol=0.05)
    pixels = torch.rand(2, 3, 16, 16)
    assert (lab_to_rgb(rgb_to_lab(pixels)) - pixels).abs().max() < 1e-4


def test_soft_encoding_annealed_mean_and_rebalancing():
    bins = torch.from_numpy(ab_bins().copy())
    ab = torch.tensor([[23.0, -41.0], [0.0, 0.0]]).T[None, :, :, None]  # (1, 2, 2, 1)
    target = soft_encode(ab, bins)
    assert torch.allclose(target.sum(1), torch.ones(1, 2, 1)) and int((target[0, :, 0, 0] > 0).sum()) == 5
    assert torch.equal(target.argmax(1), nearest_bin(ab, bins))
    # logits peaked on the nearest bins decode back close to the colour, sharper at lower temperature
    logits = torch.log(target.clamp_min(1e-8))
    assert (annealed_mean(logits, bins, 1.0) - ab).abs().max() < 3.0
    prior = smoothed_prior(np.bincount([5] * 90 + [100] * 10, minlength=len(bins)))
    weights = rebalancing_weights(prior)
    assert prior.sum() == pytest.approx(1.0) and (prior * weights).sum() == pytest.approx(1.0)
    assert weights[100] > weights[5] and weights.max() <= 2 * len(bins)


# -- the mask draws ------------------------------------------------------------------------------
def test_central_mask_is_the_published_hole_with_its_overlap_band():
    recipe = Inpainting()
    views = PredictionViews(recipe)
    base = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    (masked,), targets, _ = views(base, {})
    mask, weight = targets["mask"][0, 0], targets["weight"][0, 0]
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (36, 91, 36, 91)  # 56 x 56
    assert int((weight == 10).sum()) == 64**2 - 56**2 and int((weight == 1).sum()) == 56**2
    assert int((weight > 0).sum()) == 64**2
    fill = (torch.tensor(recipe.mean) - torch.tensor(recipe.mean)) / torch.tensor(recipe.std)
    assert torch.equal(masked[:, :, mask], fill[None, :, None].expand(2, 3, 56**2))
    assert torch.equal(masked[:, :, ~mask], targets["target"][:, :, ~mask])


def test_block_draws_are_uniform_within_their_ranges():
    recipe = Inpainting(mask="blocks", size=64)
    blocks = sample_prediction_params(recipe, seed=3, epoch=0, sample_ids=np.arange(4000))["blocks"]
    top, left, side = blocks[..., 0].ravel(), blocks[..., 1].ravel(), blocks[..., 2].ravel()
    assert side.min() == 8 and side.max() == 16 and np.all(top + side <= 64) and np.all(left + side <= 64)
    counts = np.bincount(side - 8, minlength=9)
    assert stats.chisquare(counts).pvalue > 1e-4
    mask = PredictionViews(recipe)(torch.zeros(50, 3, 64, 64, dtype=torch.uint8), {"blocks": blocks[:50]})[1][
        "mask"
    ]
    assert mask.float().mean(dim=(1, 2, 3)).max() <= 0.25  # four blocks of at most 1/4 side


def test_noise_windows_hold_the_coverage_asked_for():
    recipe = Inpainting(mask="noise", size=32)
    pattern, integral = noise_pattern(32, 0.06, 0.25, 0)
    assert pattern.shape == (512, 512) and 0.15 < pattern.mean() < 0.35 and integral[-1, -1] == pattern.sum()
    draws = sample_prediction_params(recipe, seed=0, epoch=1, sample_ids=np.arange(400))
    share = draws["coverage"]
    assert np.mean((share >= 0.2) & (share <= 0.3)) > 0.95
    mask = PredictionViews(recipe)(torch.zeros(400, 3, 32, 32, dtype=torch.uint8), draws)[1]["mask"]
    assert np.allclose(mask.float().mean(dim=(1, 2, 3)).numpy(), share)  # the window the draw counted
    again = sample_prediction_params(recipe, seed=0, epoch=1, sample_ids=np.arange(400))
    other = sample_prediction_params(recipe, seed=0, epoch=2, sample_ids=np.arange(400))
    assert np.array_equal(draws["window"], again["window"]) and not np.array_equal(
        draws["window"], other["window"]
    )


# -- what the loader delivers, per backend -----------------------------------------------------------
def test_colorization_targets_are_the_lab_of_the_input(photo_shards, backend):
    recipe = Colorization(size=64, crop="random_resized")
    out = batches(photo_shards, recipe, backend)
    base = base_views(photo_shards, 64, backend)
    assert len(out) == 3
    for batch, pixels in zip(out, base, strict=True):
        light, ab = batch["views"][0], batch["ab"]
        assert light.shape == (BATCH, 1, 64, 64) and ab.shape == (BATCH, 2, 16, 16)
        assert light.min() >= -50 and light.max() <= 50 and ab.abs().max() < 110
        # the Lab round trip: L and ab at the subsampled pixels give back the crop's colours
        lab = torch.cat([light[:, :, ::4, ::4] + 50, ab], dim=1)
        assert (lab_to_rgb(lab) * 255 - pixels[:, :, ::4, ::4].float()).abs().max() <= 1.0
        assert batch["colourful"].shape == (BATCH,) and batch["colourful"].dtype == torch.bool


def test_grayscale_images_carry_no_colour_weight():
    gray = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8).expand(3, 3, 32, 32)
    tinted = gray.clone()
    tinted[1, 0] = tinted[1, 0] // 2 + 100  # one image given a red cast
    _, targets, _ = PredictionViews(Colorization(size=32))(tinted, None)
    assert targets["colourful"].tolist() == [False, True, False]
    assert targets["ab"][[0, 2]].abs().max() < 0.01  # float32 white point rounding


@pytest.mark.parametrize("mask", ["central", "blocks", "noise"])
def test_inpainting_masked_pixels_are_exactly_the_mask(photo_shards, backend, mask):
    recipe = Inpainting(size=32, resize=40, mask=mask, overlap=2, return_params=True)
    for batch in batches(photo_shards, recipe, backend):
        masked, target, hole = batch["views"][0], batch["target"], batch["mask"]
        assert masked.shape == target.shape == (BATCH, 3, 32, 32) and hole.dtype == torch.bool
        holes = hole.expand_as(masked)
        assert torch.equal(masked[~holes], target[~holes])
        assert torch.all(masked[holes] == 0)  # the data set's mean colour, normalised
        assert hole.any() and not hole.all()
        if mask != "central":
            assert set(batch["prediction_params"]) == (
                {"blocks"} if mask == "blocks" else {"window", "coverage"}
            )


def test_superres_low_resolution_is_the_bicubic_reduction(photo_shards, backend):
    recipe = SuperResolution(size=32, crop="random_resized")
    out = batches(photo_shards, recipe, backend)
    base = base_views(photo_shards, 32, backend)
    std, mean = torch.tensor(recipe.std)[:, None, None], torch.tensor(recipe.mean)[:, None, None]
    for batch, pixels in zip(out, base, strict=True):
        low, high = batch["views"][0], batch["hr"]
        assert low.shape == (BATCH, 3, 8, 8) and high.shape == (BATCH, 3, 32, 32)
        assert torch.allclose(high * 255, pixels.float())  # HR is the crop, flip included
        reduced = bicubic(high, (8, 8)).clamp(0, 1)
        assert torch.allclose(low * std + mean, reduced, atol=1e-5)


@pytest.mark.parametrize("reduction", ["mild", "tenfold"])
def test_backends_agree_on_prediction_targets(photo_shards, reduction):
    """DALI and Kornia differ only in their resizes: at the learning runs' sizes (photos resized
    to 93 and 128 px) 99% of L, a and b agree within 2 units and of HR pixels within 3 levels;
    resized tenfold (to 36 and 40 px, where Kornia's JPEG draft decoding and DALI's filter part)
    the medians stay within 1 unit and 2 levels."""
    pytest.importorskip("nvidia.dali")
    mild = reduction == "mild"
    recipes = (
        (Colorization(size=64), SuperResolution(size=48))
        if mild
        else (Colorization(size=32, resize=36), SuperResolution(size=32, resize=40))
    )
    statistic = (lambda d: d.flatten().quantile(0.99)) if mild else (lambda d: d.median())
    bound = {"ab": 2.0, "L": 2.0, "hr": 3 / 255} if mild else {"ab": 1.0, "L": 1.0, "hr": 2 / 255}
    for recipe in recipes:
        dali = batches(photo_shards, recipe, ("dali", "cpu"))
        kornia = batches(photo_shards, recipe, ("kornia", "cpu"))
        for a, b in zip(dali, kornia, strict=True):
            assert a["key"] == b["key"]
            pairs = (
                {"ab": (a["ab"], b["ab"]), "L": (a["views"][0], b["views"][0])}
                if isinstance(recipe, Colorization)
                else {"hr": (a["hr"], b["hr"])}
            )
            for name, (x, y) in pairs.items():
                assert float(statistic((x - y).abs())) <= bound[name] + 1e-6, name


def test_resume_continues_the_same_masks(photo_shards, backend):
    name, device = backend
    recipe = Inpainting(size=32, resize=40, mask="noise")

    def loader():
        return SSLLoader(photo_shards, recipe, BATCH, backend=name, device=device, num_threads=1)

    with loader() as full_loader:
        full = [b["mask"].cpu() for b in full_loader]
    with loader() as first:
        it = iter(first)
        next(it)
        state = first.state_dict()
    with loader() as second:
        second.load_state_dict(state)
        rest = [b["mask"].cpu() for b in second]
    assert len(rest) == len(full) - 1 and all(torch.equal(a, b) for a, b in zip(full[1:], rest, strict=True))

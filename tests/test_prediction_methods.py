"""Colorization, inpainting and super-resolution as methods: what their losses weigh, what they
refuse, the colour prior command, lightness probes, and exact resume (learning: test_learning.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastssl.pipelines.lab import ab_bins, nearest_bin, rebalancing_weights
from fastssl.pipelines.prediction_views import PredictionViews
from torch import nn

from fastssl.cli import main
from fastssl.recipes import Colorization, Inpainting, MultiCrop, SimCLR, SuperResolution
from fastssl.train import PretrainConfig, pretrain
from fastssl.train.backbones import build_backbone
from fastssl.train.checkpoint import load_checkpoint
from fastssl.train.evaluate import extract_features
from fastssl.train.methods import METHODS
from fastssl.train.methods.superres import psnr_y
from tests.shardsets import demo_shard_set


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_shard_set(tmp_path_factory.mktemp("prediction"), num_images=32, seed=9, shard_size=16)


def method(name: str, backbone: str = "small_cnn", **options):
    torch.manual_seed(0)
    net, dim = build_backbone(backbone, width=8)
    return METHODS[name](net, dim, **options)


def batch_of(recipe, pixels: torch.Tensor, draws=None) -> dict:
    views, targets, _ = PredictionViews(recipe)(pixels, draws or {})
    return {"views": views, **targets, "valid": torch.ones(len(pixels), dtype=torch.bool)}


def photos(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_pretexts_refuse_other_and_multi_crop_recipes():
    for name in ("colorization", "inpainting", "superres"):
        with pytest.raises(ValueError, match=f"{name} trains on the .* recipe's views .*multi-crop"):
            method(name).check_recipe(MultiCrop())
        with pytest.raises(ValueError, match="not 'simclr'"):
            method(name).check_recipe(SimCLR())
    with pytest.raises(ValueError, match="reduces by 2"):
        method("superres").check_recipe(SuperResolution(factor=2))
    with pytest.raises(ValueError, match="adversarial"):
        method("inpainting", adversarial=1.5)
    with pytest.raises(ValueError, match="feature map before pooling"):
        METHODS["inpainting"](nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), 4)


def test_colorization_weighs_grayscale_images_zero_and_rare_colours_more(tmp_path):
    recipe = Colorization(size=32)
    gray = photos()[:, :1].expand(-1, 3, -1, -1).contiguous()
    plain = method("colorization")
    gray_batch = batch_of(recipe, gray)
    assert not gray_batch["colourful"].any()
    loss = plain(gray_batch)
    loss.backward()
    assert loss.item() == 0.0 and all(p.grad is None or not p.grad.any() for p in plain.parameters())
    # a prior that makes the batch's colours common weighs them less than a uniform one does
    colour_batch = batch_of(recipe, photos())
    common = np.ones(len(ab_bins()))
    common[np.unique(nearest_bin(colour_batch["ab"], torch.from_numpy(ab_bins().copy())).numpy())] *= 50
    common /= common.sum()
    np.save(tmp_path / "common.npy", common)
    rebalanced = method("colorization", prior=str(tmp_path / "common.npy"))
    assert torch.allclose(rebalanced.bin_weights, torch.from_numpy(rebalancing_weights(common)).float())
    assert rebalanced(colour_batch).item() < plain(colour_batch).item()
    np.save(tmp_path / "bad.npy", np.ones(10))
    with pytest.raises(ValueError, match="not a colour prior over the 261 ab bins"):
        method("colorization", prior=str(tmp_path / "bad.npy"))


def test_inpainting_scores_only_the_weighted_pixels():
    recipe = Inpainting(size=32, overlap=2)
    inpaint = method("inpainting")
    inpaint.check_recipe(recipe)
    inpaint.eval()
    batch = batch_of(recipe, photos())
    loss = inpaint(batch)
    changed = dict(batch, target=torch.where(batch["weight"] > 0, batch["target"], batch["target"] + 5))
    assert inpaint(changed).item() == pytest.approx(loss.item())  # outside the centre: not scored
    inside = dict(batch, target=torch.where(batch["weight"] > 0, batch["target"] + 1, batch["target"]))
    assert inpaint(inside).item() != pytest.approx(loss.item())
    # the overlap band weighs 10x: the same error costs 10x per pixel there than in the hole
    prediction = inpaint.predict(batch["views"][0]).detach()
    losses = {}
    for level in (10, 1):
        where = batch["weight"] == level
        losses[level] = inpaint(dict(batch, target=prediction + 0.5 * where)).item() / int(where.sum())
    assert losses[10] == pytest.approx(10 * losses[1], rel=1e-4)
    adversarial = method("inpainting", adversarial=0.001, discriminator_width=8)
    total = adversarial(batch)
    total.backward()
    assert adversarial.discriminator[0].weight.grad.abs().sum() > 0  # its own loss trains it


def test_superres_starts_at_bicubic_and_psnr_is_on_luma():
    recipe = SuperResolution(size=32)
    sr = method("superres", backbone="edsr")
    sr.check_recipe(recipe)
    batch = batch_of(recipe, photos())
    size = batch["hr"].shape[-2:]
    assert torch.equal(sr.predict(batch["views"][0], size), sr.baseline(batch["views"][0], size))
    assert sr.baseline(batch["views"][0], size).shape == batch["hr"].shape
    gray = torch.full((2, 3, 16, 16), 0.5)
    assert torch.allclose(psnr_y(gray + 0.1 * 255 / 219, gray), torch.full((2,), 20.0), atol=1e-3)
    noisy = gray.clone()
    noisy[:, :, :4] = 1.0  # an error only in the shaved border does not count
    assert torch.isinf(psnr_y(noisy, gray)).logical_not().all() and psnr_y(noisy, gray).min() > 90


def test_colour_prior_command_writes_a_prior_the_method_loads(shards, tmp_path, capsys):
    out = tmp_path / "prior.npy"
    assert main(["colour-prior", str(shards), "--out", str(out), "--size", "32", "--backend", "kornia"]) == 0
    assert "images colourful" in capsys.readouterr().out
    prior = np.load(out)
    assert prior.shape == (len(ab_bins()),) and prior.sum() == pytest.approx(1.0)
    assert prior.argmax() == int(np.flatnonzero((ab_bins() == 0).all(1))[0])  # photos: mostly near gray
    assert method("colorization", prior=str(out)).bin_weights.max() > 1


def test_lightness_probe_feeds_the_backbone_l_star(shards):
    pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    features, labels, _ = extract_features(pooled, str(shards), size=32, backend="kornia", input="lightness")
    assert features.shape == (32, 3) and torch.equal(features[:, 0], features[:, 2])
    assert features.min() >= -1 and features.max() <= 1 and len(labels) == 32
    with pytest.raises(ValueError, match="input must be one of"):
        extract_features(pooled, str(shards), size=32, input="hsv")


@pytest.mark.parametrize("name", ["colorization", "inpainting"])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(shards, tmp_path, name) -> None:
    options = {"inpainting": {"adversarial": 0.001, "discriminator_width": 8}}.get(name, {})
    recipe = {"inpainting": {"mask": "noise", "overlap": 2}}.get(name, {})

    def config(out: Path, **changes) -> PretrainConfig:
        return PretrainConfig(
            data=str(shards), out=str(out), method=name, backbone="small_cnn", width=4, size=32,
            batch_size=8, epochs=2, num_threads=1, progress=False, method_options=options,
            recipe_options=recipe, **changes,
        )  # fmt: skip

    pretrain(config(tmp_path / "whole"))
    pretrain(config(tmp_path / "split", max_steps=5))  # 4 steps an epoch: stops inside epoch 1
    assert pretrain(config(tmp_path / "split", resume=True))["steps"] == 8
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    split = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for key, value in whole["model"].items():
        torch.testing.assert_close(split["model"][key], value, msg=key)
    assert sorted(p.name for p in (tmp_path / "split" / "pictures").iterdir()) == [
        "epoch-000.png",
        "epoch-001.png",
    ]

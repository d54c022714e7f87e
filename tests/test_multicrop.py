"""Multi-crop in the contrastive and momentum methods: every crop reaches the loss and gets a
gradient, the pairing each method documents, the methods that refuse it, and choosing the views
(and rerunning a run) from `fastssl pretrain`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastssl.cli import main
from fastssl.recipes import MultiCrop, get_recipe
from fastssl.train import PretrainConfig
from fastssl.train.backbones import build_backbone
from fastssl.train.loop import build_recipe
from fastssl.train.losses import multi_positive_nt_xent, nt_xent
from fastssl.train.methods import METHODS
from fastssl.train.methods.base import crop_pairs, global_crops
from tests.shardsets import demo_shard_set

MULTI_CROP_METHODS = ("simclr", "mocov2", "mocov3", "byol", "dino")
SMALL_OPTIONS = {"mocov2": {"queue_size": 32}, "dino": {"out_dim": 32, "hidden": 16, "bottleneck": 8}}


def _crops(batch: int = 6, n_local: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(0)
    sizes = [32, 32] + [16] * n_local
    return [torch.randn(batch, 3, s, s, requires_grad=True) for s in sizes]


@pytest.mark.parametrize("name", MULTI_CROP_METHODS)
def test_every_crop_reaches_the_loss_and_gets_a_gradient(name) -> None:
    torch.manual_seed(1)
    backbone, dim = build_backbone("small_cnn", width=4)
    method = METHODS[name](backbone, dim, **SMALL_OPTIONS.get(name, {}))
    views = _crops()
    loss = method.loss({"views": views, "valid": torch.ones(6, dtype=torch.bool)})
    assert torch.isfinite(loss)
    loss.backward()
    for k, view in enumerate(views):
        assert view.grad is not None and view.grad.abs().sum() > 0, f"crop {k} got no gradient"
    if name == "mocov2":  # only the global crops' keys went into the queue
        assert int(method.queue_ptr) == 2 * 6


def test_the_pairs_are_every_crop_against_each_other_global_crop() -> None:
    views = _crops(n_local=2)
    assert global_crops(views) == 2
    assert crop_pairs(views) == [(0, 1), (1, 0), (2, 0), (2, 1), (3, 0), (3, 1)]
    assert crop_pairs(views[:2]) == [(0, 1), (1, 0)]  # the two-view methods' symmetric pairs


def _supcon_reference(views: list[torch.Tensor], t: float) -> torch.Tensor:
    """SupCon's loss with the image as the label, anchor by anchor (Khosla et al. 2020, eq. 2)."""
    z = F.normalize(torch.cat(views), dim=1)
    n, v = len(views[0]), len(views)
    total = 0.0
    for a in range(v * n):
        others = [c for c in range(v * n) if c != a]
        log_denominator = torch.logsumexp(torch.stack([z[a] @ z[c] / t for c in others]), dim=0)
        positives = [c for c in others if c % n == a % n]
        total = total - sum(z[a] @ z[p] / t - log_denominator for p in positives) / len(positives)
    return total / (v * n)


def test_the_multi_positive_loss_is_supcons_and_two_views_are_nt_xent() -> None:
    torch.manual_seed(2)
    views = [torch.randn(5, 8) for _ in range(4)]
    torch.testing.assert_close(multi_positive_nt_xent(views, 0.3), _supcon_reference(views, 0.3))
    valid = torch.tensor([True, False, True, True, False])
    torch.testing.assert_close(
        multi_positive_nt_xent(views, 0.3, valid), _supcon_reference([x[valid] for x in views], 0.3)
    )
    torch.testing.assert_close(multi_positive_nt_xent(views[:2], 0.5), nt_xent(views[0], views[1], 0.5))
    with pytest.raises(ValueError, match="at least 2 views"):
        multi_positive_nt_xent(views[:1], 0.5)


@pytest.mark.parametrize(("method", "recipe"), list(itertools.product(("rotnet", "jigsaw"), ("multicrop",))))
def test_single_view_pretexts_refuse_a_multi_crop_recipe(method, recipe) -> None:
    backbone, dim = build_backbone("small_cnn", width=4)
    config = PretrainConfig(data="unused", out="unused", method=method, recipe=recipe, size=32)
    with pytest.raises(ValueError, match=f"{method} trains on one kind of view and takes no multi-crop"):
        build_recipe(METHODS[method](backbone, dim), config)


def test_size_and_options_combine_as_the_help_says() -> None:
    backbone, dim = build_backbone("small_cnn", width=4)
    method = METHODS["simclr"](backbone, dim)
    made = build_recipe(method, PretrainConfig(data="x", out="y", recipe="multicrop", size=64))
    assert isinstance(made, MultiCrop) and made.size == (64, 27)  # locals keep 96/224 of the globals
    options = {"n_local": 4, "local_size": 24, "scale": [[0.3, 1.0], [0.05, 0.3]]}  # as JSON keeps them
    config = PretrainConfig(data="x", out="y", recipe="multicrop", size=64, recipe_options=options)
    made = build_recipe(method, config)
    assert made.size == (64, 24) and made.n_local == 4 and made.scale == ((0.3, 1.0), (0.05, 0.3))
    assert [v.size for v in made.views()] == [64, 64, 24, 24, 24, 24]
    with pytest.raises(ValueError, match="has no option n_locals"):
        build_recipe(
            method, PretrainConfig(data="x", out="y", recipe="multicrop", recipe_options={"n_locals": 2})
        )
    assert get_recipe("rotation").resized(32).resize == 37  # 256 / 224 of the crop, as the default


def test_the_base_recipe_is_chosen_by_name_and_set_field_by_field() -> None:
    made = MultiCrop().replace(
        base="byol", base_p_blur=(0.0, 0.5), base_jitter=(0.4, 0.4, 0.0, 0.0), n_local=1
    )
    views = made.views()
    assert [v.p_blur for v in views] == [0.0, 0.5, made.local_p_blur]  # global i takes base view i
    assert [v.p_solarize for v in views] == [0.0, 0.2, 0.0] and all(
        v.jitter == (0.4, 0.4, 0.0, 0.0) for v in views
    )
    assert made.replace(n_local=2).base == made.base  # other changes keep the base
    with pytest.raises(ValueError, match="recipe 'simclr' has no option blur"):
        MultiCrop().replace(base_blur=0.5)
    with pytest.raises(ValueError, match="multicrop sets its crops' scale itself"):
        MultiCrop().replace(base_scale=(0.5, 1.0))
    with pytest.raises(ValueError, match="unknown recipe 'byl'"):
        MultiCrop().replace(base="byl")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_shard_set(tmp_path_factory.mktemp("multicrop"), num_images=48, seed=4, shard_size=24)


def test_pretrain_takes_a_recipe_and_its_options_and_reruns_from_its_config(shards, tmp_path, capsys) -> None:
    run, again = tmp_path / "run", tmp_path / "again"
    small = ["--backbone", "small_cnn", "--width", "4", "--batch-size", "8", "--workers", "1", "--quiet"]
    args = ["pretrain", str(shards), "--out", str(run), "--method", "byol", "--recipe", "multicrop",
            "--size", "32", "--recipe-option", "n_local=2", "--recipe-option", "local_size=16",
            "--recipe-option", "scale=((0.3, 1.0), (0.1, 0.3))", "--method-option", "momentum=0.99",
            "--max-steps", "2", *small]  # fmt: skip
    assert main(args) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["recipe"] == "multicrop" and saved["method_options"] == {"momentum": 0.99}
    assert saved["recipe_options"] == {"n_local": 2, "local_size": 16, "scale": [[0.3, 1.0], [0.1, 0.3]]}
    # rerun as it was, in another folder, one option changed
    assert (
        main(["pretrain", "--config", str(run / "config.json"), "--out", str(again), "--max-steps", "1"]) == 0
    )
    rerun = json.loads((again / "config.json").read_text())
    assert rerun == {**saved, "out": str(again), "max_steps": 1}
    # what cannot work says so
    assert main(["pretrain", str(shards), "--out", str(tmp_path / "r"), "--method", "rotnet",
                 "--recipe", "multicrop", *small]) == 2  # fmt: skip
    assert "takes no multi-crop" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "r")]) == 2
    assert "needs DATA" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", str(shards), "--out", str(tmp_path / "r"), "--recipe-option", "n_local"])

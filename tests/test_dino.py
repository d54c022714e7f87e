"""DINO and the ViT it trains: the loss against its definition, the centre, the schedules, the
gradient rules, the published recipes, the ViT's parameter names and crop sizes, and a run that
resumes exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastssl.recipes import Crop, SimCLR
from fastssl.train import PretrainConfig, pretrain
from fastssl.train.backbones import build_backbone
from fastssl.train.checkpoint import load_checkpoint
from fastssl.train.loop import build_method, build_recipe
from fastssl.train.methods import DINO
from fastssl.train.methods.dino import PUBLISHED, published_config
from fastssl.train.vit import VisionTransformer
from tests.shardsets import demo_shard_set

SMALL_HEAD = {"out_dim": 32, "hidden": 16, "bottleneck": 8}


def _dino(**options) -> DINO:
    torch.manual_seed(0)
    backbone, dim = build_backbone("small_cnn", width=4)
    return DINO(backbone, dim, **{**SMALL_HEAD, **options})


def _views(batch: int = 5, n_local: int = 2) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(batch, 3, s, s) for s in [24, 24] + [12] * n_local]


def test_the_loss_is_the_teachers_global_targets_against_every_other_student_crop() -> None:
    dino = _dino(student_temp=0.1, teacher_temp=0.07)
    dino.center.normal_()  # a centre the loss must subtract
    center = dino.center.clone()
    views = _views()
    loss = dino.loss({"views": views})
    with torch.no_grad():
        s = [dino.head(dino.backbone(v)) / 0.1 for v in views]
        t = [dino.teacher_head(dino.teacher_backbone(v)) for v in views[:2]]
        q = [F.softmax((x - center) / 0.07, dim=-1) for x in t]
        terms = [
            -(q[j] * F.log_softmax(s[i], -1)).sum(-1).mean() for j in range(2) for i in range(4) if i != j
        ]
    assert len(terms) == 6  # 2 global targets x (4 crops - itself)
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    # the centre moved towards the teacher's batch mean by 1 - 0.9, after the loss used the old one
    torch.testing.assert_close(dino.center, 0.9 * center + 0.1 * torch.cat(t).mean(0, keepdim=True))


def test_invalid_samples_neither_enter_the_loss_nor_the_centre() -> None:
    dino = _dino().eval()  # batch norm's running statistics: no sample touches another's output
    views = _views(batch=6)
    valid = torch.tensor([True, True, False, True, False, True])
    loss = dino.loss({"views": views, "valid": valid})
    centre = dino.center.clone()
    fresh = _dino().eval()
    kept = fresh.loss({"views": [v[valid] for v in views]})
    torch.testing.assert_close(loss, kept)
    torch.testing.assert_close(centre, fresh.center)


def test_teacher_temperature_warms_up_linearly_per_epoch() -> None:
    dino = _dino(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30)
    temps = []
    for epoch in (0, 15, 29, 30, 99):
        dino.on_epoch(epoch, 100)
        temps.append(dino.teacher_temp)
    # np.linspace(0.04, 0.07, 30)[epoch], as main_dino.py: 0.07 from epoch 29 on
    assert temps == pytest.approx([0.04, 0.04 + 0.03 * 15 / 29, 0.07, 0.07, 0.07])


def test_gradients_are_clipped_per_tensor_and_the_last_layer_waits_an_epoch() -> None:
    dino = _dino(clip_grad=1.0, freeze_last_layer=1)
    dino.loss({"views": _views()}).backward()
    params = [*dino.backbone.parameters(), *dino.head.mlp.parameters()]
    before = [p.grad.clone() for p in params]
    norms = [torch.linalg.vector_norm(g).item() for g in before]
    assert max(norms) > 1.0 and min(norms) < 1.0  # some tensors above the limit, some below
    dino.adjust_gradients(epoch=0)
    for p, old, norm in zip(params, before, norms, strict=True):
        if norm > 1.0:  # each tensor scaled to the limit on its own (not by a global norm)
            assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(1.0, rel=1e-3)
            torch.testing.assert_close(p.grad, old * (1.0 / (norm + 1e-6)))
        else:
            torch.testing.assert_close(p.grad, old)
    assert all(p.grad is None for p in dino.head.last_layer.parameters())
    dino.zero_grad()
    dino.loss({"views": _views()}).backward()
    dino.adjust_gradients(epoch=1)
    assert dino.head.last_layer.parametrizations.weight.original1.grad is not None


def test_the_last_layer_has_unit_norm_prototypes_and_the_teacher_gets_no_gradient() -> None:
    dino = _dino()
    weight = dino.head.last_layer.weight
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(SMALL_HEAD["out_dim"]))
    assert not dino.head.last_layer.parametrizations.weight.original0.requires_grad
    assert not any(p.requires_grad for p in dino.teacher_backbone.parameters())
    before = [p.clone() for p in dino.teacher_backbone.parameters()]
    for p in dino.backbone.parameters():
        p.data.add_(1.0)
    dino.on_step(0, 100)  # momentum 0.996 at step 0
    for old, new, online in zip(
        before, dino.teacher_backbone.parameters(), dino.backbone.parameters(), strict=True
    ):
        torch.testing.assert_close(new, 0.996 * old + 0.004 * online)


def test_the_vit_has_timms_names_and_takes_crops_of_any_multiple_of_its_patch() -> None:
    torch.manual_seed(0)
    vit, dim = build_backbone("vit_tiny", patch_size=4, image_size=28)
    assert isinstance(vit, VisionTransformer) and dim == 192
    names = set(vit.state_dict())
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.11.attn.qkv.weight",
            "blocks.0.mlp.fc2.bias", "norm.weight"} <= names  # fmt: skip
    assert vit.pos_embed.shape == (1, 1 + 49, 192)
    assert vit.position_embedding(7, 7) is vit.pos_embed
    assert vit.position_embedding(3, 3).shape == (1, 10, 192)
    vit.eval()
    assert vit(torch.randn(2, 3, 28, 28)).shape == vit(torch.randn(2, 3, 12, 12)).shape == (2, 192)
    with pytest.raises(ValueError, match="not a whole number of 4 px patches"):
        vit(torch.randn(1, 3, 14, 14))


def test_the_vit_student_drops_paths_and_its_teacher_does_not() -> None:
    torch.manual_seed(0)
    vit, dim = build_backbone("vit_tiny", patch_size=4, image_size=28)
    dino = DINO(vit, dim, drop_path=0.1, **SMALL_HEAD)
    assert dino.backbone.blocks[-1].drop_path.rate == pytest.approx(0.1)
    assert dino.backbone.blocks[0].drop_path.rate == 0.0
    assert all(block.drop_path.rate == 0.0 for block in dino.teacher_backbone.blocks)
    recipe = dino.default_recipe(28)
    assert [s.size for s in recipe.views()] == [28, 28] + [12] * 8  # 96/224 of 28, a multiple of 4
    dino.check_recipe(recipe)
    with pytest.raises(ValueError, match=r"crop sizes \[14\] are not multiples"):
        dino.check_recipe(recipe.replace(local_size=14))
    with pytest.raises(ValueError, match="at least two crops"):
        _dino().check_recipe(Crop(size=28))
    _dino().check_recipe(SimCLR(size=28))  # two crops: the two cross terms
    with pytest.raises(
        ValueError, match="local crops of the global crops' size .28 px. would count as global"
    ):
        _dino().check_recipe(recipe.replace(local_size=28))


def test_the_published_recipes_build_the_papers_views_and_schedules(tmp_path) -> None:
    fields = published_config("vit_small", "data", str(tmp_path), global_batch=1024)
    assert fields["lr"] == pytest.approx(0.0005 * 4) and fields["optimizer"] == "adamw"
    config = PretrainConfig(**fields)
    method = build_method(config)
    assert isinstance(method.backbone, VisionTransformer) and method.backbone.patch_size == 16
    assert method.head.last_layer.weight.shape == (65536, 256)
    recipe = build_recipe(method, config)
    views = recipe.views()
    assert [v.size for v in views] == [224, 224] + [96] * 8
    assert views[0].scale == (0.4, 1.0) and views[2].scale == (0.05, 0.4)
    assert [v.p_blur for v in views[:3]] == [1.0, 0.1, 0.5] and [v.p_solarize for v in views[:3]] == [
        0.0,
        0.2,
        0.0,
    ]
    rn50 = PretrainConfig(**published_config("resnet50", "data", str(tmp_path), global_batch=256))
    assert rn50.lr == 0.03 and rn50.weight_decay == rn50.weight_decay_end == 1e-4
    assert set(PUBLISHED) == {"vit_small", "resnet50"}
    with pytest.raises(ValueError, match="publishes recipes for vit_small, resnet50"):
        published_config("resnet18", "data", "out", global_batch=256)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_shard_set(tmp_path_factory.mktemp("dino"), num_images=48, seed=4, shard_size=16)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(shards, tmp_path) -> None:
    """Across the epoch boundary where the last layer unfreezes and the teacher temperature warms."""

    def config(out: Path, **changes) -> PretrainConfig:
        return PretrainConfig(
            data=str(shards), out=str(out), method="dino", backbone="small_cnn", width=4, size=24,
            batch_size=16, epochs=2, num_threads=1, progress=False, optimizer="adamw", lr=1e-3,
            weight_decay=0.04, weight_decay_end=0.4, recipe_options={"n_local": 2},
            method_options={**SMALL_HEAD, "warmup_teacher_temp_epochs": 2, "teacher_temp": 0.07},
            **changes,
        )  # fmt: skip

    pretrain(config(tmp_path / "whole"))
    pretrain(config(tmp_path / "split", max_steps=4))  # 3 steps an epoch: stops inside epoch 1
    summary = pretrain(config(tmp_path / "split", resume=True))
    assert summary["steps"] == 6
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    split = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    # the decay of the last step (5 of 6) on DINO's cosine from 0.04 to 0.4; the norms' group stays 0
    decay = 0.4 + (0.04 - 0.4) * (1 + math.cos(math.pi * 5 / 6)) / 2
    groups = whole["optimizer"]["param_groups"]
    assert groups[0]["weight_decay"] == pytest.approx(decay) and groups[1]["weight_decay"] == 0.0
    for name, value in whole["model"].items():
        torch.testing.assert_close(split["model"][name], value, msg=name)

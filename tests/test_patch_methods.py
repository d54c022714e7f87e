"""Context prediction and CPC as methods: the losses against their definitions, the causal context
network, the recipes they take and refuse, and a run of each through the loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastssl.recipes import ContextPrediction as ContextViews
from fastssl.recipes import MultiCrop, PatchGrid, SimCLR
from fastssl.train import PretrainConfig, pretrain
from fastssl.train.backbones import build_backbone
from fastssl.train.methods import CPC, ContextPrediction
from fastssl.train.methods.cpc import CausalRows
from tests.shardsets import demo_shard_set


def _backbone(width: int = 4):
    torch.manual_seed(0)
    return build_backbone("small_cnn", width=width)


def test_context_classifies_the_pair_in_centre_then_neighbour_order() -> None:
    context = ContextPrediction(*_backbone(), hidden=16).eval()
    centre, neighbour = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    labels = torch.tensor([0, 3, 7, 1, 5])
    loss = context.loss({"views": [centre, neighbour], "neighbor": labels})
    with torch.no_grad():
        pair = torch.cat([context.backbone(centre), context.backbone(neighbour)], dim=1)
        expected = F.cross_entropy(context.classifier(pair), labels)
    torch.testing.assert_close(loss, expected)
    assert context.classifier[-1].out_features == 8
    valid = torch.tensor([True, False, True, True, False])
    kept = context.loss({"views": [centre, neighbour], "neighbor": labels, "valid": valid})
    torch.testing.assert_close(
        kept, context.loss({"views": [centre[valid], neighbour[valid]], "neighbor": labels[valid]})
    )


def test_the_context_network_sees_only_the_rows_above() -> None:
    torch.manual_seed(0)
    network = CausalRows(6, layers=3)
    grid = torch.randn(2, 6, 5, 4)
    changed = grid.clone()
    changed[:, :, 3:] = torch.randn(2, 6, 2, 4)  # rows 3 and 4 differ
    out, out_changed = network(grid), network(changed)
    torch.testing.assert_close(out[:, :, :3], out_changed[:, :, :3])  # rows 0-2 cannot see them
    assert not torch.allclose(out[:, :, 3], out_changed[:, :, 3])


def test_cpc_scores_each_prediction_against_every_patch_of_the_batch() -> None:
    cpc = CPC(*_backbone(), steps=2, temperature=0.5).eval()
    cpc.check_recipe(PatchGrid(size=28, resize=28, grid=(4, 5), stride=5, tile=8))
    assert cpc.grid == (4, 5)
    patches = torch.randn(3, 20, 3, 8, 8, requires_grad=True)
    loss = cpc.loss({"views": [patches]})
    with torch.no_grad():
        z = cpc.norm(cpc.backbone(patches.flatten(0, 1))).view(3, 4, 5, -1)
        context = cpc.context(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        flat = z.reshape(60, -1)
        terms = []
        for k in (1, 2):
            scores, targets = [], []
            for i in range(3):
                for r in range(4 - k):
                    for c in range(5):
                        scores.append(cpc.predictors[k - 1](context[i, r, c]) @ flat.T / 0.5)
                        targets.append(i * 20 + (r + k) * 5 + c)  # the same image's patch k rows below
            terms.append(F.cross_entropy(torch.stack(scores), torch.tensor(targets)))
    torch.testing.assert_close(loss, torch.stack(terms).mean(), rtol=1e-4, atol=1e-5)
    loss.backward()
    per_patch = patches.grad.abs().sum(dim=(0, 2, 3, 4))
    assert (per_patch > 0).all()  # every patch is a target or a context, and a negative


@pytest.mark.parametrize(
    ("method", "recipe", "message"),
    [
        ("context", MultiCrop(), "context trains on the 'context' recipe's views .it takes no multi-crop"),
        ("context", PatchGrid(), "context trains on the 'context' recipe's views, not 'patchgrid'"),
        ("cpc", SimCLR(), "cpc trains on the 'patchgrid' recipe's views, not 'simclr'"),
        ("cpc", PatchGrid(grid=(1, 7)), "needs at least 2 rows"),
        (
            "cpc",
            PatchGrid(size=96, resize=96, grid=(3, 3), stride=32, tile=32),
            r"steps=5 rows ahead; a 3-row grid has 2",
        ),
    ],
)
def test_each_pretext_refuses_views_it_has_no_labels_for(method, recipe, message) -> None:
    backbone, dim = _backbone()
    model = ContextPrediction(backbone, dim, hidden=8) if method == "context" else CPC(backbone, dim)
    with pytest.raises(ValueError, match=message):
        model.check_recipe(recipe)
    default = model.default_recipe(224)
    assert isinstance(default, ContextViews if method == "context" else PatchGrid)
    model.check_recipe(default)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_shard_set(tmp_path_factory.mktemp("patch-methods"), num_images=32, seed=5, shard_size=16)


@pytest.mark.parametrize(
    ("method", "options", "recipe"),
    [
        ("context", {"hidden": 16}, {"size": 64, "resize": 64, "stride": 21, "tile": 16, "gap": 4}),
        ("cpc", {"steps": 2}, {"size": 32, "resize": 32, "grid": (3, 3), "stride": 8, "tile": 16}),
    ],
)
def test_a_run_trains_on_the_loaders_patches(shards, tmp_path, method, options, recipe) -> None:
    config = PretrainConfig(
        data=str(shards), out=str(tmp_path / method), method=method, backbone="small_cnn", width=4,
        batch_size=8, max_steps=3, num_threads=1, progress=False, method_options=options,
        recipe_options=recipe,
    )  # fmt: skip
    summary = pretrain(config)
    assert summary["steps"] == 3 and torch.isfinite(torch.tensor(summary["loss"]))
    assert summary["recipe"] == ("context" if method == "context" else "patchgrid")

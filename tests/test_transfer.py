"""Transfer protocols: stages by depth cover every backbone parameter once, frozen stages and a
frozen trunk stay exactly as they were (weights and BatchNorm statistics), the `fastssl eval`
protocols write their results and plots, and fine-tuning a pretrained backbone beats random
initialisation at 1% labels on Fashion-MNIST."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from fastssl.cli import main
from fastssl.data import fashion_mnist
from fastssl.data.subset import read_subset
from fastssl.train.backbones import build_backbone
from fastssl.train.transfer import make_split, stages, transfer
from tests.shardsets import demo_shard_set

SMALL = ["--backbone", "small_cnn", "--width", "8", "--size", "32", "--batch-size", "16", "--quiet"]


@pytest.mark.parametrize(("name", "count"), [("resnet18", 5), ("small_cnn", 4), ("vit_tiny", 5), ("edsr", 6)])
def test_stages_cover_every_parameter_once_in_depth_order(name, count) -> None:
    backbone, _ = build_backbone(name, width=8, patch_size=8, image_size=32)
    parts = stages(backbone)
    assert len(parts) == count
    seen: list[int] = []
    for stage in parts:
        for part in stage:
            params = [part] if isinstance(part, torch.nn.Parameter) else list(part.parameters())
            seen += [id(p) for p in params]
    assert sorted(seen) == sorted(id(p) for p in backbone.parameters())
    assert len(seen) == len(set(seen))


def test_a_backbone_without_stages_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="no stages are defined for a Linear"):
        stages(torch.nn.Linear(3, 3))


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_shard_set(tmp_path_factory.mktemp("transfer"), num_images=48, seed=4, shard_size=16)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_stages_keep_weights_and_batchnorm_statistics(shards) -> None:
    backbone, _ = build_backbone("small_cnn", width=8)
    before = _state(backbone)
    split = make_split(str(shards))
    result = transfer(
        backbone, split, protocol="finetune", freeze=2, size=32, epochs=2, batch_size=8, num_threads=1
    )
    after = backbone.state_dict()
    # blocks 0 and 1 are Sequential indices 0-5 (conv, BN, ReLU each); 6 on are trained
    for key, value in before.items():
        block = int(key.split(".")[0]) // 3
        changed = not torch.equal(after[key], value)
        if key.endswith("num_batches_tracked"):
            assert changed == (block >= 2), key
        elif block < 2:
            assert not changed, f"{key} of a frozen stage changed"
        else:
            assert changed, f"{key} of a trained stage did not change"
    assert len(result["history"]) == 2 and 0 <= result["accuracy"] <= 1
    assert result["train_samples"] + len(split.test_keys) == 48


def test_linear_protocols_leave_the_whole_trunk_untouched(shards) -> None:
    backbone, _ = build_backbone("small_cnn", width=8)
    before = _state(backbone)
    result = transfer(
        backbone, make_split(str(shards)), protocol="linear-moco", size=32, epochs=1, batch_size=8,
        num_threads=1,
    )  # fmt: skip
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert result["protocol"]["lr_head"] == 30.0 and result["freeze"] is None


def test_freeze_beyond_the_stages_is_refused(shards) -> None:
    with pytest.raises(ValueError, match=r"freeze must lie in 0\.\.4"):
        transfer(
            build_backbone("small_cnn", width=8)[0], make_split(str(shards)), freeze=5, size=32,
            epochs=1, num_threads=1,
        )  # fmt: skip


def test_few_label_splits_are_balanced_and_written(shards, tmp_path) -> None:
    split = make_split(str(shards), labels_fraction=0.5, out=tmp_path)
    written = read_subset(tmp_path / "subset-50percent.txt")
    assert written == split.train_keys
    assert not set(written) & set(split.test_keys)  # never a test sample
    assert make_split(str(shards), labels_fraction=0.5).train_keys == written  # deterministic
    again = make_split(str(shards), subset=tmp_path / "subset-50percent.txt")
    assert again.train_keys == written


def test_eval_protocols_write_results_plots_and_the_freeze_sweep(shards, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert (
        main(["pretrain", str(shards), "--out", str(run), "--max-steps", "2", "--workers", "1", *SMALL]) == 0
    )
    out = tmp_path / "eval"
    common = [
        "eval",
        str(run),
        "--data",
        str(shards),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--out",
        str(out),
    ]
    assert main([*common, "--protocol", "finetune", "--labels-fraction", "0.5", "--random-init"]) == 0
    result = json.loads((out / "finetune.json").read_text())
    for init in ("pretrained", "random init"):
        assert 0 <= result[init]["accuracy"] <= 1 and len(result[init]["history"]) == 1
    assert (out / "finetune.png").stat().st_size > 0 and (out / "subset-50percent.txt").exists()
    assert main([*common, "--protocol", "linear-simclr"]) == 0
    assert (
        json.loads((out / "linear-simclr.json").read_text())["pretrained"]["protocol"]["weight_decay"] == 1e-6
    )
    assert main([*common, "--protocol", "finetune", "--freeze-sweep"]) == 0
    sweep = json.loads((out / "finetune.json").read_text())["sweep"]
    assert [(r["freeze"], r["init"]) for r in sweep] == [
        (k, init) for k in range(5) for init in ("pretrained", "random init")
    ]
    table = (out / "freeze-sweep.md").read_text()
    assert table.count("\n") == 2 + len(sweep) and (out / "freeze-sweep.png").stat().st_size > 0
    assert main([*common, "--protocol", "linear-moco", "--freeze-sweep"]) == 2
    assert "--freeze-sweep fine-tunes" in capsys.readouterr().err


FASHION = pytest.mark.skipif(
    not fashion_mnist.available(),
    reason="Fashion-MNIST absent: apt-get install dataset-fashion-mnist (.ci/run does it where it can)",
)


@FASHION
def test_fine_tuning_a_pretrained_backbone_beats_random_init_at_one_percent_labels(tmp_path) -> None:
    from fastssl.train import PretrainConfig, build_run_backbone, load_backbone
    from tests.learning import COMMON, SIZE, pretrain_variant

    data = fashion_mnist.write_fashion_mnist(tmp_path / "fm", limit={"train": 2000, "test": 1000}, workers=1)
    run = pretrain_variant("simclr", data, tmp_path / "simclr")
    split = make_split(str(data["train"]), str(data["test"]), labels_fraction=0.01)
    assert len(split.train_keys) == 20  # two of each of the ten classes
    untrained = build_run_backbone(PretrainConfig(data=str(data["train"]), out="", **COMMON))[0]
    scores = {}
    for name, backbone in (("pretrained", load_backbone(run)[0]), ("random init", copy.deepcopy(untrained))):
        got = transfer(
            backbone, split, protocol="finetune", size=SIZE, epochs=30, batch_size=32, scale=(0.3, 1.0),
            eval_every=30, num_threads=2,
        )  # fmt: skip
        scores[name] = got["accuracy"]
    print(f"fine-tuning on 1% of Fashion-MNIST 2000 (20 labels), tested on 1000: {scores}")
    assert scores["pretrained"] > scores["random init"] + 0.04, scores

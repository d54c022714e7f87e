"""The learning settings shared by tests/test_learning.py and benchmarks/bench_learning.py: each
method (and its multi-crop variant) on Fashion-MNIST with a small CNN, and the probes that score it
against the same network at random initialisation.

Fashion-MNIST is 28 px grayscale: no blur, hue or saturation jitter; global crops keep 30-100% of
the image at 28 px, multi-crop's local crops 10-30% at 12 px (96/224 of 28); the patch pretexts
cut their grids from the whole 28 px image (sizes by each variant)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from fastssl.train import PretrainConfig, build_run_backbone, evaluate, load_backbone, pretrain
from fastssl.train.evaluate import load_method

SIZE = 28
TWO_CROP = {"scale": (0.3, 1.0), "p_blur": 0.0, "jitter": (0.4, 0.4, 0.0, 0.0)}
MULTI_CROP = {
    "global_size": SIZE, "local_size": 12, "n_local": 4, "scale": ((0.3, 1.0), (0.1, 0.3)),
    "local_p_blur": 0.0, "base_p_blur": 0.0, "base_jitter": (0.4, 0.4, 0.0, 0.0),
}  # fmt: skip
BYOL_BASE = {"base": "byol", "base_p_blur": (0.0, 0.0), "base_p_solarize": (0.0, 0.0)}
MOMENTUM = {"momentum": 0.99}
# a small head with batch norm (the released ResNet-50 run's use_bn_in_head; without it the small
# CNN's outputs collapse to uniform within these few hundred steps), the published momentum
DINO_HEAD = {"out_dim": 1024, "hidden": 256, "bottleneck": 64, "use_bn": True, "freeze_last_layer": 0}
DINO_OPTIM = {"lr": 0.03, "warmup_epochs": 1}

# name -> PretrainConfig fields, its epochs, and the probe margin over random init its test asserts
# ("-mc": multi-crop views); the margins are the issue's: 4 points kNN or 2 points linear probe
VARIANTS: dict[str, dict[str, Any]] = {
    "simclr": {
        "method": "simclr", "recipe_options": TWO_CROP, "method_options": {"temperature": 0.2},
        "epochs": 4, "margin": {"knn": 0.04, "linear": 0.02},
    },
    "simclr-mc": {
        "method": "simclr", "recipe": "multicrop", "recipe_options": MULTI_CROP,
        "method_options": {"temperature": 0.2}, "epochs": 4, "margin": {"knn": 0.04},
    },
    "mocov2": {
        "method": "mocov2", "recipe_options": TWO_CROP, "method_options": {"queue_size": 1024, **MOMENTUM},
        "epochs": 4, "margin": {"knn": 0.04},
    },
    "mocov2-mc": {
        "method": "mocov2", "recipe": "multicrop", "recipe_options": MULTI_CROP,
        "method_options": {"queue_size": 1024, **MOMENTUM}, "epochs": 4, "margin": {"linear": 0.02},
    },
    "mocov3": {
        "method": "mocov3", "recipe": "simclr", "recipe_options": TWO_CROP, "method_options": MOMENTUM,
        "epochs": 6, "margin": {"knn": 0.04},
    },
    "mocov3-mc": {
        "method": "mocov3", "recipe": "multicrop", "recipe_options": MULTI_CROP, "method_options": MOMENTUM,
        "epochs": 6, "margin": {"linear": 0.02},
    },
    "byol": {
        "method": "byol", "recipe": "simclr", "recipe_options": TWO_CROP, "method_options": MOMENTUM,
        "epochs": 10, "margin": {"linear": 0.02},
    },
    "byol-mc": {
        "method": "byol", "recipe": "multicrop", "recipe_options": MULTI_CROP, "method_options": MOMENTUM,
        "epochs": 10, "margin": {"linear": 0.02},
    },
    "dino": {
        "method": "dino", "recipe_options": {**MULTI_CROP, **BYOL_BASE, "n_local": 0},
        "method_options": DINO_HEAD, **DINO_OPTIM, "epochs": 6, "margin": {"knn": 0.04},
    },
    "dino-mc": {
        "method": "dino", "recipe_options": {**MULTI_CROP, **BYOL_BASE}, "method_options": DINO_HEAD,
        **DINO_OPTIM, "epochs": 6, "margin": {"linear": 0.02},
    },
    # the centre and a neighbour of a 3x3 grid on the image upsampled 3x to 84 px: 20 px patches in
    # 28 px cells, a 4 px gap and up to 4 px jitter (7 px tiles of the 28 px image transfer little)
    "context": {
        "method": "context", "method_options": {"hidden": 256}, "epochs": 6, "margin": {"linear": 0.02},
        "recipe_options": {"size": 84, "resize": 84, "stride": 28, "tile": 20, "gap": 4, "colour": "none"},
    },
    # a 5x5 grid of 8 px patches 5 px apart covering the 28 px image, predicting 1-2 rows below;
    # Adam as the paper (unnormalised scores diverge under SGD at these rates)
    "cpc": {
        "method": "cpc", "method_options": {"steps": 2},
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0,
        "recipe_options": {"size": SIZE, "resize": SIZE, "grid": (5, 5), "stride": 5, "tile": 8},
        "epochs": 4, "margin": {"linear": 0.02},
    },
    # the central 14 px of the 28 px image, its hole 10 px inside a 2 px overlap band
    "inpainting": {
        "method": "inpainting", "recipe_options": {"size": SIZE, "resize": SIZE, "overlap": 2},
        "epochs": 4, "margin": {"linear": 0.02},
    },
    # on the demo corpus's photos (`demo_data`): 64 px crops of images resized to 93 px, the ab
    # target at 16 px; without class rebalancing (see DEMO_NOTE); AdamW as the paper's Adam
    "colorization": {
        "method": "colorization", "size": 64, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-3,
        "batch_size": 32, "epochs": 6, "margin": {"linear": 0.02, "bin_accuracy": 0.0}, "data": "demo",
    },
    # 48 px HR crops of the demo photos and their 12 px bicubic reductions, the EDSR encoder 16 wide
    "superres": {
        "method": "superres", "backbone": "edsr", "size": 48, "optimizer": "adamw", "lr": 1e-3,
        "weight_decay": 0.0, "batch_size": 16, "epochs": 4, "margin": {"psnr_db": 0.2}, "data": "demo",
    },
}  # fmt: skip
# the demo-corpus variants train without colour rebalancing: rebalancing trades per-pixel bin
# accuracy for rare colours (Zhang et al. report the same), and the test asserts per-pixel accuracy
DEMO_NOTE = "colorization's test run has no prior; benchmarks/bench_learning.py --prior adds one"
DEMO_IMAGES = {"train": 400, "test": 150}  # two demo corpora of the same photos, other crops
# what tests/test_learning.py asserts learning for on Fashion-MNIST: every multi-crop variant,
# two-crop SimCLR, the patch pretexts and inpainting (colorization and super-resolution: on photos)
TESTED = (
    "simclr",
    "simclr-mc",
    "mocov2-mc",
    "mocov3-mc",
    "byol-mc",
    "dino-mc",
    "context",
    "cpc",
    "inpainting",
)
COMMON = {"backbone": "small_cnn", "width": 16, "batch_size": 64, "size": SIZE, "lr": 0.1, "num_threads": 2}


def config(
    name: str, data: dict[str, Path], out: Path, *, epochs: int | None = None, changes: dict | None = None
) -> PretrainConfig:
    """The PretrainConfig of variant `name` on the written Fashion-MNIST or demo `data`; `changes`
    set fields, "method_options.X" and "recipe_options.X" one option."""
    fields = {**COMMON, **{k: v for k, v in VARIANTS[name].items() if k not in ("epochs", "margin", "data")}}
    for key, value in (changes or {}).items():
        group, _, option = key.partition(".")
        if option:
            fields[group] = {**fields.get(group, {}), option: value}
        else:
            fields[key] = value
    return PretrainConfig(
        data=str(data["train"]),
        out=str(out),
        epochs=epochs or VARIANTS[name]["epochs"],
        progress=False,
        **fields,
    )


def pretrain_variant(
    name: str, data: dict[str, Path], out: Path, *, epochs: int | None = None, changes: dict | None = None
) -> Path:
    """Pretrain variant `name`; returns its run folder."""
    pretrain(config(name, data, out, epochs=epochs, changes=changes))
    return out


def scores(run: Path | torch.nn.Module, data: dict[str, Path]) -> dict[str, Any]:
    """kNN and linear-probe accuracy of a run's backbone (or a given one): trained on the train
    split, tested on the test split."""
    backbone = load_backbone(run)[0] if isinstance(run, Path) else run
    return evaluate(backbone, str(data["train"]), size=SIZE, test_data=str(data["test"]))


@functools.cache
def _baseline(train: str, test: str) -> dict[str, Any]:
    untrained, _ = build_run_backbone(PretrainConfig(data=train, out="", **COMMON))
    return scores(untrained, {"train": Path(train), "test": Path(test)})


def baseline_scores(data: dict[str, Path]) -> dict[str, Any]:
    """The probes on the backbone every variant starts from (one seed, one initialisation: the
    backbone is built first, before any head), computed once per data set."""
    return _baseline(str(data["train"]), str(data["test"]))


def demo_data(root: Path) -> dict[str, Path]:
    """Train and held-out shard sets of the demo corpus (`DEMO_IMAGES`), labelled by source photo."""
    from tests.shardsets import demo_shard_set

    return {
        split: demo_shard_set(root / split, num_images=count, seed=seed, shard_size=100)
        for (split, count), seed in zip(DEMO_IMAGES.items(), (1, 2), strict=True)
    }


def colorization_scores(run: Path, data: dict[str, Path], *, baseline: bool = False) -> dict[str, Any]:
    """On the held-out photos: the share of colourful pixels whose most likely bin is their
    colour's nearest (`bin_accuracy`), the same share for always answering the training prior's
    most common bin (`prior_mode_accuracy`), and linear-probe / kNN accuracy of the L-input
    features (`baseline`: also of the same backbone at random initialisation)."""
    from fastssl.pipelines.lab import ab_bins, nearest_bin

    from fastssl import SSLLoader
    from fastssl.train.colour_prior import colour_prior

    method, config = _trained_method(run)
    recipe = method.default_recipe(config.size)
    prior, _ = colour_prior(str(data["train"]), recipe=recipe, device="cpu", num_threads=2)
    bins, mode = torch.from_numpy(ab_bins().copy()), int(prior.argmax())
    hits = mode_hits = total = 0
    with (
        SSLLoader(
            str(data["test"]), recipe, 64, device="cpu", shuffle=False, drop_last=False, num_threads=2
        ) as loader,
        torch.no_grad(),
    ):
        for batch in loader:
            keep = batch["valid"] & batch["colourful"]
            nearest = nearest_bin(batch["ab"], bins)[keep]
            predicted = method.logits(batch["views"][0], batch["ab"].shape[-2:]).argmax(1)[keep]
            hits, mode_hits = (
                hits + int((predicted == nearest).sum()),
                mode_hits + int((nearest == mode).sum()),
            )
            total += nearest.numel()
    probe = dict(size=config.size, test_data=str(data["test"]), input="lightness")
    out = {"bin_accuracy": hits / total, "prior_mode_accuracy": mode_hits / total}
    out["trained"] = evaluate(method.backbone, str(data["train"]), **probe)
    if baseline:
        out["random_init"] = evaluate(build_run_backbone(config)[0], str(data["train"]), **probe)
    return out


@torch.no_grad()
def superres_scores(run: Path, data: dict[str, Path]) -> dict[str, float]:
    """Mean PSNR (Y channel, 4 px shaved) on the held-out photos of the trained network and of
    bicubic upsampling with the recipe's own bicubic."""
    from fastssl import SSLLoader
    from fastssl.train.methods.superres import psnr_y

    method, config = _trained_method(run)
    recipe = method.default_recipe(config.size)
    method.check_recipe(recipe)
    totals, count = {"psnr": 0.0, "bicubic_psnr": 0.0}, 0
    with SSLLoader(
        str(data["test"]), recipe, 64, device="cpu", shuffle=False, drop_last=False, num_threads=2
    ) as loader:
        for batch in loader:
            low, high = batch["views"][0][batch["valid"]], batch["hr"][batch["valid"]]
            totals["psnr"] += float(psnr_y(method.predict(low, high.shape[-2:]), high).sum())
            totals["bicubic_psnr"] += float(psnr_y(method.baseline(low, high.shape[-2:]), high).sum())
            count += len(high)
    return {name: value / count for name, value in totals.items()}


def _trained_method(run: Path) -> tuple[Any, PretrainConfig]:
    """The whole trained method of a run, in eval mode, and its config."""
    method, config = load_method(run)
    return method.eval(), PretrainConfig(**config)

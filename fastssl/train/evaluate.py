"""Evaluation of a backbone on frozen features: weighted kNN (cosine, k=200, temperature 0.1, as
in Wu et al. 2018 and DINO) and a linear probe; usable after training and as monitors during it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastssl.loader import SSLLoader
from fastssl.pipelines.lab import lightness as lab_lightness
from fastssl.recipes import Center
from fastssl.train.checkpoint import load_checkpoint
from fastssl.train.methods.colorization import lightness_input

INPUTS = ("rgb", "lightness")


def model_input(view: torch.Tensor, input: str) -> torch.Tensor:
    """What the backbone takes from a loader view: the normalised RGB view itself, or for
    `input` "lightness" (a uint8 view) its CIE L* as colorization trained it."""
    if input == "lightness":
        return lightness_input(lab_lightness(view.float() / 255))
    return view


def centre_view(size: int, **distortion: Any) -> Center:
    """The evaluation view at `size`: shorter side resized to 8/7 of it, the centre crop, with
    `distortion` (Center's jitter, p_jitter, p_gray) when given."""
    return Center(size=size, resize=max(size, round(size * 8 / 7)), **distortion)


def input_dtype(input: str) -> str:
    """The view dtype a recipe must yield for `input` (`model_input`)."""
    if input not in INPUTS:
        raise ValueError(f"input must be one of {INPUTS}, got {input!r}")
    return "uint8" if input == "lightness" else "float32"


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    data: Any,
    *,
    size: int,
    device: torch.device | str = "cpu",
    backend: str = "auto",
    batch_size: int = 256,
    num_threads: int | None = None,
    input: str = "rgb",
    subset: Any = None,
    view: Center | None = None,
    need_labels: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(features (N, d) float32 on the CPU, labels (N,), keys) of every sample, from one centre view
    (shorter side resized to size * 8 / 7, centre crop), in the data set's own order. `input`
    "lightness" feeds the backbone the view's CIE L* as colorization trained it, not RGB; `subset`
    (keys or a subset file, as `SSLLoader`'s) restricts it to those samples; `view` replaces the
    centre view (its size and colour distortion; `centre_view` makes it). Without `need_labels`
    unlabelled shards are welcome, their labels -1."""
    device = torch.device(device)
    recipe = (view or centre_view(size)).replace(dtype=input_dtype(input))
    backbone = backbone.to(device).eval()
    feats, labels, keys = [], [], []
    with SSLLoader(
        data, recipe, batch_size, backend=backend, device=device, shuffle=False,
        rank=0, world_size=1, num_threads=num_threads, subset=subset,
    ) as loader:  # fmt: skip
        if loader.manifest.classes is None and need_labels:
            raise ValueError("evaluation needs labelled shards (a manifest with classes)")
        for batch in loader:
            keep = batch["valid"].cpu()
            feats.append(backbone(model_input(batch["views"][0], input)).float().cpu()[keep])
            label = batch["label"]
            labels.append(label.cpu()[keep] if label is not None else torch.full((int(keep.sum()),), -1))
            keys += [k for k, ok in zip(batch["key"], keep.tolist(), strict=True) if ok]
    return torch.cat(feats), torch.cat(labels), keys


class _Scores(nn.Module):
    """A method's class scores as the "features" extract_features collects."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.method.logits(views)


def classifier_accuracy(
    method: nn.Module, data: Any, *, size: int, device: torch.device | str = "cpu", backend: str = "auto",
    num_threads: int | None = None,
) -> float:  # fmt: skip
    """Top-1 accuracy of a method's own classifier (its `logits(views)`: supervised, distill) on
    the centre views of labelled `data`."""
    if not hasattr(method, "logits"):
        raise ValueError(f"{type(method).__name__} has no classifier of its own (no logits)")
    scores, labels, _ = extract_features(
        _Scores(method), data, size=size, device=device, backend=backend, num_threads=num_threads
    )
    return float((scores.argmax(1) == labels).float().mean())


def knn_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Weighted kNN: each of the k nearest training features (cosine) votes for its class with
    weight exp(similarity / temperature); returns top-1 accuracy on `test`."""
    train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, len(train))
    correct = 0
    for start in range(0, len(test), 1024):
        sims = test[start : start + 1024] @ train.T
        top, index = sims.topk(k, dim=1)
        votes = torch.zeros(len(top), classes).scatter_add_(1, train_labels[index], (top / temperature).exp())
        correct += int((votes.argmax(1) == test_labels[start : start + 1024]).sum())
    return correct / len(test)


def linear_probe_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    epochs: int = 300,
    lr: float = 0.5,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """A linear classifier on standardised frozen features (full-batch SGD with momentum and a
    cosine schedule, deterministic from `seed`); returns top-1 accuracy on `test`."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    x, x_test = (train - mean) / std, (test - mean) / std
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    probe = nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(probe.weight.shape, generator=generator) * 0.01)
        probe.bias.zero_()
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    with torch.enable_grad():  # trains even when called under no_grad
        for _ in range(epochs):
            optimizer.zero_grad()
            F.cross_entropy(probe(x), train_labels).backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        return float((probe(x_test).argmax(1) == test_labels).float().mean())


def split_by_key(keys: list[str], test_fraction: float = 0.2) -> np.ndarray:
    """A fixed train/test split of one labelled set: True for test samples (by a hash of the key)."""
    buckets = [int(hashlib.sha1(k.encode()).hexdigest()[:8], 16) / 2**32 for k in keys]
    return np.asarray(buckets) < test_fraction


def load_method(run: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A run's whole trained method (heads and decoders too; from RUN/checkpoint.pt) and the
    run's config."""
    from fastssl.train.loop import CHECKPOINT, PretrainConfig, build_method

    state = load_checkpoint(Path(run) / CHECKPOINT)
    method = build_method(PretrainConfig(**state["config"]))
    method.load_state_dict(state["model"])
    return method, state["config"]


def load_backbone(run: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A run's trained backbone (from RUN/checkpoint.pt) and the run's config."""
    method, config = load_method(run)
    return method.backbone, config


def evaluate(
    backbone: nn.Module,
    data: Any,
    *,
    size: int,
    test_data: Any = None,
    probes: tuple[str, ...] = ("knn", "linear"),
    device: torch.device | str = "cpu",
    backend: str = "auto",
    input: str = "rgb",
    test_view: Center | None = None,
) -> dict[str, Any]:
    """Accuracies of the requested probes: trained on `data`, tested on `test_data` (or on a fixed
    20% of `data` split by key when no test set is given); `input` as `extract_features`;
    `test_view` (a `centre_view` with colour distortion, say) is how the test images are seen."""
    common = dict(size=size, device=device, backend=backend, input=input)
    feats, labels, keys = extract_features(backbone, data, **common)
    if test_data is not None:
        test_feats, test_labels, _ = extract_features(backbone, test_data, view=test_view, **common)
        train_feats, train_labels = feats, labels
    else:
        is_test = torch.from_numpy(split_by_key(keys))
        train_feats, train_labels = feats[~is_test], labels[~is_test]
        if test_view is None:
            test_feats, test_labels = feats[is_test], labels[is_test]
        else:  # the same test images, seen through the test view
            test_keys = [k for k, t in zip(keys, is_test.tolist(), strict=True) if t]
            test_feats, test_labels, _ = extract_features(
                backbone, data, view=test_view, subset=test_keys, **common
            )
    result: dict[str, Any] = {"train_samples": len(train_feats), "test_samples": len(test_feats)}
    if "knn" in probes:
        result["knn"] = knn_accuracy(train_feats, train_labels, test_feats, test_labels)
    if "linear" in probes:
        result["linear"] = linear_probe_accuracy(train_feats, train_labels, test_feats, test_labels)
    return result


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")

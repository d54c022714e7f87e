"""Transfer protocols through the loader: the published linear evaluations (MoCo's, SimCLR's),
full fine-tuning with a low trunk learning rate (SwAV's semi-supervised recipe), layer freezing by
depth (Yosinski et al. 2014) and few-label fine-tuning on balanced subsets (SimCLR's 1% / 10%).

Unlike `fastssl.train.evaluate`, which probes cached features of one centre view, these train on
augmented views drawn by the loader every epoch (random resized crop and flip), with the
protocol's optimiser and schedule, and test on centre views (shorter side to 8/7 of the size, the
centre crop). Parameters and sources: ../shared/METHODS.md, section 9. One process; DDP is not
used here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastssl.data.manifest import Manifest
from fastssl.data.source import ByteSource
from fastssl.data.subset import balanced_subset, read_labels, read_subset, sample_keys, write_subset
from fastssl.loader import SSLLoader, resolve_data
from fastssl.recipes import Crop
from fastssl.train.backbones import EDSR, ResNet
from fastssl.train.evaluate import extract_features, input_dtype, model_input, split_by_key
from fastssl.train.vit import VisionTransformer

Stage = list[nn.Module | nn.Parameter]


@dataclass(frozen=True)
class Protocol:
    """One transfer recipe. `lr_trunk` None freezes the whole trunk (a linear evaluation, its
    BatchNorm statistics fixed); `milestones` are fractions of the epochs where the learning rates
    are multiplied by `gamma`, `schedule` "cosine" decays them per step instead; `lr_per_256`
    scales both by batch / 256 (SimCLR's linear scaling)."""

    name: str
    epochs: int
    lr_head: float
    lr_trunk: float | None
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    schedule: Literal["step", "cosine"] = "step"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    head_init: Literal["normal", "zeros"] = "normal"
    lr_per_256: bool = False


PROTOCOLS: dict[str, Protocol] = {
    # facebookresearch/moco main_lincls.py: fc N(0, 0.01), SGD lr 30, momentum 0.9, wd 0, batch
    # 256, 100 epochs, x0.1 at 60 and 80
    "linear-moco": Protocol("linear-moco", 100, 30.0, None, milestones=(0.6, 0.8)),
    # google-research/simclr (README, run.py flags): head only, momentum, lr 0.1 per 256 linearly
    # scaled, wd 1e-6, 90 epochs, no warmup, zero-initialised logits; the rate decays by a cosine
    # after the warmup (its learning-rate schedule, model_util.py)
    "linear-simclr": Protocol(
        "linear-simclr",
        90,
        0.1,
        None,
        weight_decay=1e-6,
        schedule="cosine",
        head_init="zeros",
        lr_per_256=True,
    ),
    # facebookresearch/swav eval_semisup.py: 20 epochs, trunk 0.01, head 0.2, x0.2 at 12 and 16, wd 0
    "finetune": Protocol("finetune", 20, 0.2, 0.01, milestones=(0.6, 0.8), gamma=0.2),
}


def stages(backbone: nn.Module) -> list[Stage]:
    """The backbone's stages from input to output, the units `freeze` counts: a ResNet's stem and
    layer1-4; the small CNN's four conv-BN-ReLU blocks; a ViT's patch embedding (with the class
    token and position embedding), then its blocks in four groups (the last with the final norm);
    EDSR's head conv, its residual blocks in four groups, its tail."""
    if isinstance(backbone, ResNet) or _is_torchvision_resnet(backbone):
        stem: Stage = [backbone.conv1, backbone.bn1]
        return [stem, [backbone.layer1], [backbone.layer2], [backbone.layer3], [backbone.layer4]]
    if isinstance(backbone, VisionTransformer):
        groups = _groups(list(backbone.blocks), 4)
        groups[-1].append(backbone.norm)
        return [[backbone.patch_embed, backbone.cls_token, backbone.pos_embed], *groups]
    if isinstance(backbone, EDSR):
        return [[backbone.head], *_groups(list(backbone.body), 4), [backbone.tail]]
    if isinstance(backbone, nn.Sequential):  # the small CNN: conv, BN, ReLU per block
        convs = [i for i, m in enumerate(backbone) if isinstance(m, nn.Conv2d)]
        if convs:
            ends = [*convs[1:], len(backbone)]
            return [list(backbone[a:b]) for a, b in zip(convs, ends, strict=True)]
    raise ValueError(
        f"no stages are defined for a {type(backbone).__name__}; layer freezing knows ResNet, "
        "small_cnn, ViT and EDSR backbones"
    )


def _is_torchvision_resnet(backbone: nn.Module) -> bool:
    return all(hasattr(backbone, name) for name in ("conv1", "bn1", "layer1", "layer4", "fc"))


def _groups(items: list[nn.Module], count: int) -> list[Stage]:
    bounds = np.linspace(0, len(items), count + 1).round().astype(int)
    return [list(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _stage_parameters(stage: Stage) -> list[nn.Parameter]:
    out: list[nn.Parameter] = []
    for part in stage:
        out.extend([part] if isinstance(part, nn.Parameter) else part.parameters())
    return out


def _stage_norms(stage: Stage) -> list[nn.Module]:
    return [m for part in stage if isinstance(part, nn.Module) for m in part.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]  # fmt: skip


class _Classifier(nn.Module):
    """Backbone and linear head, with `freeze` stages (or the whole trunk) fixed: no gradients,
    and their BatchNorm layers kept in eval mode (statistics fixed) whenever the model trains."""

    def __init__(self, backbone: nn.Module, dim: int, classes: int, frozen: int | None, init: str) -> None:
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(dim, classes)
        if init == "zeros":
            nn.init.zeros_(self.head.weight)
        else:
            nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        self.whole_trunk = frozen is None
        self._fixed_norms: list[nn.Module] = []
        if self.whole_trunk:
            backbone.requires_grad_(False)
        elif frozen:
            parts = stages(backbone)
            if not 0 <= frozen <= len(parts):
                raise ValueError(f"freeze must lie in 0..{len(parts)} for this backbone, got {frozen}")
            for stage in parts[:frozen]:
                for parameter in _stage_parameters(stage):
                    parameter.requires_grad_(False)
                self._fixed_norms += _stage_norms(stage)

    def train(self, mode: bool = True) -> _Classifier:
        super().train(mode)
        if self.whole_trunk:
            self.backbone.eval()
        for norm in self._fixed_norms:
            norm.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.whole_trunk:
            with torch.no_grad():
                features = self.backbone(x)
            return self.head(features.flatten(1))
        return self.head(self.backbone(x).flatten(1))


def _manifest(data: Any) -> Manifest:
    return data if isinstance(data, Manifest) else resolve_data(data)


def _feature_dim(backbone: nn.Module, size: int, device: torch.device) -> int:
    was = backbone.training
    backbone.eval()
    with torch.no_grad():
        dim = backbone(torch.zeros(2, 3, size, size, device=device)).flatten(1).shape[1]
    backbone.train(was)
    return dim


@dataclass(frozen=True)
class Split:
    """Which samples train and which test: keys (None for all of a set) and the test set."""

    train_data: Any
    train_keys: list[str] | None
    test_data: Any
    test_keys: list[str] | None


def make_split(
    data: Any,
    test_data: Any = None,
    *,
    labels_fraction: float | None = None,
    subset: str | Path | None = None,
    seed: int = 0,
    out: str | Path | None = None,
) -> Split:
    """The train and test samples: `test_data`, or else a fixed 20% of `data` by key (as
    `evaluate`); the training samples cut to `subset` (a subset file) or to a balanced
    `labels_fraction` of every class (written to `out/subset-<percent>.txt` when `out` is given)."""
    train_keys = test_keys = None
    if test_data is None or labels_fraction is not None or subset is not None:
        with ByteSource(_manifest(data)) as source:
            keys = sample_keys(source)
            labels = read_labels(source) if labels_fraction is not None else None
        pool = np.ones(len(keys), bool)
        if test_data is None:
            is_test = split_by_key(keys)
            test_keys = [k for k, t in zip(keys, is_test, strict=True) if t]
            pool &= ~is_test
        if subset is not None:
            named = set(read_subset(subset))
            pool &= np.array([k in named for k in keys])
        elif labels_fraction is not None:
            candidates = np.flatnonzero(pool)
            chosen = candidates[balanced_subset(labels[candidates], labels_fraction, seed)]
            pool = np.zeros(len(keys), bool)
            pool[chosen] = True
        train_keys = [k for k, keep in zip(keys, pool, strict=True) if keep]
        if not train_keys:
            raise ValueError("no training samples are left after the test split and the subset")
        if labels_fraction is not None and out is not None:
            write_subset(Path(out) / f"subset-{labels_fraction * 100:g}percent.txt", train_keys)
    return Split(data, train_keys, data if test_data is None else test_data, test_keys)


def accuracy(
    model: nn.Module, split: Split, *, size: int, device: torch.device, backend: str, input: str
) -> float:
    """Top-1 accuracy of `model`'s logits on the split's test samples (centre views)."""
    logits, labels, _ = extract_features(
        model, split.test_data, size=size, device=device, backend=backend, input=input,
        subset=split.test_keys,
    )  # fmt: skip
    return float((logits.argmax(1) == labels).float().mean())


def transfer(
    backbone: nn.Module,
    split: Split,
    *,
    protocol: Protocol | str = "finetune",
    size: int,
    freeze: int = 0,
    epochs: int | None = None,
    batch_size: int | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
    device: torch.device | str = "cpu",
    backend: str = "auto",
    input: str = "rgb",
    seed: int = 0,
    num_threads: int | None = None,
    eval_every: int = 1,
) -> dict[str, Any]:
    """Train a linear head on `backbone` (and, unless the protocol freezes the trunk, the trunk
    from stage `freeze` on) by `protocol` on the split's training samples; test accuracy after
    every `eval_every` epochs and after the last. `epochs` and `batch_size` shorten or resize the
    published recipe (the step milestones stay at their fractions); `scale` is the training
    crops' area range. The backbone is trained in place: pass a copy to keep it."""
    protocol = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    protocol = replace(
        protocol, epochs=epochs or protocol.epochs, batch_size=batch_size or protocol.batch_size
    )
    device = torch.device(device)
    torch.manual_seed(seed)
    backbone = backbone.to(device)
    classes = _manifest(split.train_data).classes
    if classes is None:
        raise ValueError("transfer needs labelled shards (a manifest with classes)")
    frozen = None if protocol.lr_trunk is None else freeze
    model = _Classifier(
        backbone, _feature_dim(backbone, size, device), len(classes), frozen, protocol.head_init
    )
    model = model.to(device)
    scaling = protocol.batch_size / 256 if protocol.lr_per_256 else 1.0
    groups = [{"params": list(model.head.parameters()), "lr": protocol.lr_head * scaling}]
    trunk = [p for p in model.backbone.parameters() if p.requires_grad]
    if trunk and protocol.lr_trunk is not None:
        groups.append({"params": trunk, "lr": protocol.lr_trunk * scaling})
    optimizer = torch.optim.SGD(
        groups, momentum=protocol.momentum, weight_decay=protocol.weight_decay, nesterov=protocol.nesterov
    )
    recipe = Crop(size=size, scale=scale, dtype=input_dtype(input))
    history: list[dict[str, float]] = []
    with SSLLoader(
        split.train_data, recipe, protocol.batch_size, backend=backend, device=device, seed=seed,
        rank=0, world_size=1, num_threads=num_threads, subset=split.train_keys,
    ) as loader:  # fmt: skip
        steps = protocol.epochs * len(loader)
        milestones = [round(f * protocol.epochs) for f in protocol.milestones]
        base = [g["lr"] for g in optimizer.param_groups]
        step = 0
        for epoch in range(protocol.epochs):
            factor = protocol.gamma ** sum(epoch >= m for m in milestones)
            model.train()
            total, seen = 0.0, 0
            for batch in loader:
                if protocol.schedule == "cosine":
                    factor = 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
                for group, lr in zip(optimizer.param_groups, base, strict=True):
                    group["lr"] = lr * factor
                keep = batch["valid"]
                x = model_input(batch["views"][0], input)[keep]
                loss = F.cross_entropy(model(x), batch["label"][keep])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, seen, step = total + float(loss.detach()) * len(x), seen + len(x), step + 1
            record: dict[str, float] = {"epoch": epoch + 1, "loss": total / max(seen, 1)}
            if (epoch + 1) % eval_every == 0 or epoch + 1 == protocol.epochs:
                model.eval()
                record["accuracy"] = accuracy(
                    model, split, size=size, device=device, backend=backend, input=input
                )
            history.append(record)
        train_samples = int(loader.plan().valid.sum())
    return {
        "protocol": asdict(protocol), "freeze": None if frozen is None else freeze,
        "train_samples": train_samples, "accuracy": history[-1].get("accuracy") if history else None,
        "history": history,
    }  # fmt: skip


def _figure():  # noqa: ANN202 - matplotlib's figure and axes
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 4))


def _save(figure: Any, axes: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    axes.grid(alpha=0.3)
    axes.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_history(results: dict[str, dict[str, Any]], path: str | Path, title: str) -> Path:
    """Test accuracy per epoch of each named result, as a PNG."""
    figure, axes = _figure()
    for name, result in results.items():
        tested = [h for h in result["history"] if "accuracy" in h]
        axes.plot([h["epoch"] for h in tested], [h["accuracy"] for h in tested], marker="o", label=name)
    axes.set(xlabel="epoch", ylabel="test top-1 accuracy", title=title)
    return _save(figure, axes, path)


def plot_sweep(rows: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Test accuracy against the number of frozen stages, one line per backbone initialisation."""
    figure, axes = _figure()
    for init in sorted({r["init"] for r in rows}):
        mine = [r for r in rows if r["init"] == init]
        axes.plot([r["freeze"] for r in mine], [r["accuracy"] for r in mine], marker="o", label=init)
    axes.set(xlabel="stages frozen (copied, not trained)", ylabel="test top-1 accuracy", title=title)
    return _save(figure, axes, path)


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """The freezing sweep as a Markdown table: stages frozen, initialisation, accuracy."""
    lines = ["| stages frozen | initialisation | test top-1 |", "| ---: | --- | ---: |"]
    lines += [f"| {r['freeze']} | {r['init']} | {r['accuracy']:.4f} |" for r in rows]
    return "\n".join(lines) + "\n"

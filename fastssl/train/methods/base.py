"""What every pretraining method provides to the training loop."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from fastssl.recipes import MultiCrop, Recipe, StagedRecipe


class Method(nn.Module):
    """A pretraining method: an online `backbone` (what evaluation and users keep), its heads, and
    a loss over a loader batch. `on_step` runs after each optimiser step (momentum encoders)."""

    name: ClassVar[str] = "method"
    probe_input: ClassVar[str] = "rgb"  # what evaluation feeds the backbone: "rgb" or "lightness"

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim

    def default_recipe(self, size: int) -> Recipe:
        raise NotImplementedError

    def check_recipe(self, recipe: Recipe) -> None:
        """Raise a ValueError when this method cannot train on `recipe`'s views; any by default."""

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """The loss: DistributedDataParallel synchronises gradients through `forward`."""
        return self.loss(batch)

    def on_step(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step; nothing by default."""

    def on_epoch(self, epoch: int, epochs: int) -> None:
        """Called as each epoch starts (also the epoch a run resumes in); nothing by default."""

    def adjust_gradients(self, epoch: int) -> None:
        """Called between backward and the optimiser step (gradients already all-reduced under
        DDP): clipping, frozen layers. Nothing by default."""

    def pictures(self, batch: dict[str, Any]) -> list[torch.Tensor] | None:
        """Columns (B, C, H, W) in [0, 1] of what the model makes of `batch` (input, target,
        prediction), which the loop saves as RUN/pictures/epoch-NNN.png after each epoch; None
        (the default) for methods whose outputs are not pictures."""
        return None


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy for a momentum (EMA) encoder."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


def valid_mask(batch: dict[str, Any], n: int, device: torch.device) -> torch.Tensor:
    valid = batch.get("valid")
    return torch.ones(n, dtype=torch.bool, device=device) if valid is None else valid.to(device).bool()


def labelled_mask(batch: dict[str, Any], labels: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """`valid_mask` and a label (>= 0; -1 marks none): the samples a classification loss counts."""
    return valid_mask(batch, n, device) & (labels.to(device) >= 0)


def global_crops(views: Sequence[torch.Tensor]) -> int:
    """How many leading views are global crops: those of the first view's resolution
    (`recipes.MultiCrop` puts its global crops first; a two-view recipe has two)."""
    size = views[0].shape[-2:]
    count = 1
    while count < len(views) and views[count].shape[-2:] == size:
        count += 1
    return count


def crop_pairs(views: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """(prediction crop, target crop) pairs of the multi-crop momentum methods: every crop against
    each global crop other than itself. Two views give (0, 1) and (1, 0), the symmetric loss of
    BYOL and MoCo v3; 2 global + N local crops give 2 + 2 N pairs."""
    targets = range(global_crops(views))
    return [(i, j) for i in range(len(views)) for j in targets if i != j]


def require_recipe(method: str, recipe: Recipe, kind: type[Recipe]) -> None:
    """Raise a ValueError naming `method` when `recipe` is not a `kind` (the pretexts whose labels
    only that recipe makes)."""
    if not isinstance(recipe, kind):
        multi = " (it takes no multi-crop recipe)" if isinstance(recipe, MultiCrop) else ""
        raise ValueError(f"{method} trains on the {kind.name!r} recipe's views{multi}, not {recipe.name!r}")


def refuse_multi_crop(method: str, recipe: Recipe) -> None:
    """Raise a ValueError naming `method` when `recipe` makes crops of more than one size."""
    sizes = {spec.size for spec in recipe.views()} if not isinstance(recipe, StagedRecipe) else set()
    if isinstance(recipe, MultiCrop) or len(sizes) > 1:
        raise ValueError(
            f"{method} trains on one kind of view and takes no multi-crop recipe ({recipe.name}); "
            "multi-crop works with simclr, mocov2, mocov3, byol and dino"
        )

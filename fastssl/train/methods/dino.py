"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"): a student
and a momentum teacher of the same backbone and head; the teacher sees the global crops, the student
every crop, and each student crop learns to match the teacher's centred, sharpened distribution of
each global crop other than itself. Parameters from the paper and `facebookresearch/dino`
(`main_dino.py`, `vision_transformer.py`); see ../shared/METHODS.md section 11."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from fastssl.recipes import BYOL as BYOLViews
from fastssl.recipes import MultiCrop, Recipe, StagedRecipe
from fastssl.train.distributed import world
from fastssl.train.methods.base import Method, crop_pairs, ema_update, global_crops, momentum_copy, valid_mask
from fastssl.train.optim import cosine_momentum
from fastssl.train.vit import VisionTransformer

# The published recipes, as PretrainConfig fields; `lr` is per 256 images of global batch, as
# main_dino.py scales it (lr = base * batch / 256). The ResNet-50 one is the README's command.
PUBLISHED: dict[str, dict[str, Any]] = {
    "vit_small": {
        "patch_size": 16, "size": 224, "epochs": 100, "optimizer": "adamw", "lr": 0.0005,
        "weight_decay": 0.04, "weight_decay_end": 0.4, "warmup_epochs": 10,
        "method_options": {"out_dim": 65536, "teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0,
                           "momentum": 0.996, "clip_grad": 3.0, "freeze_last_layer": 1, "drop_path": 0.1},
        "recipe_options": {"n_local": 8, "scale": ((0.4, 1.0), (0.05, 0.4))},
    },
    "resnet50": {
        "size": 224, "epochs": 100, "optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4,
        "weight_decay_end": 1e-4, "warmup_epochs": 10,
        "method_options": {"out_dim": 65536, "teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0,
                           "momentum": 0.996, "clip_grad": 3.0, "freeze_last_layer": 1},
        "recipe_options": {"n_local": 8, "scale": ((0.14, 1.0), (0.05, 0.14))},
    },
}  # fmt: skip


class DINOHead(nn.Module):
    """DINO's projection head: in -> hidden -> hidden -> bottleneck MLP (GELU; batch norm after the
    hidden layers with `use_bn`, off by default, on in the released ResNet-50 run), L2
    normalisation, then a weight-normalised linear layer without bias to `out_dim` prototypes
    whose norms are fixed at 1 with `norm_last_layer` (the paper's default)."""

    def __init__(
        self,
        dim_in: int,
        out_dim: int,
        *,
        hidden: int = 2048,
        bottleneck: int = 256,
        norm_last_layer: bool = True,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        norm = (lambda: nn.BatchNorm1d(hidden)) if use_bn else nn.Identity
        self.mlp = nn.Sequential(
            nn.Linear(dim_in, hidden), norm(), nn.GELU(),
            nn.Linear(hidden, hidden), norm(), nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )  # fmt: skip
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class DINO(Method):
    """Pairing: the teacher's softmax((t - c) / teacher_temp) of each global crop is the target of
    the student's log-softmax(s / student_temp) of every other crop (cross-entropy, batch mean,
    averaged over the 2 + 2N terms of 2 global + N local crops); two views give the two cross
    terms. The centre c is an EMA (`center_momentum`) of the teacher's batch-mean output over
    every rank, updated after each loss. The teacher temperature rises linearly from
    `warmup_teacher_temp` to `teacher_temp` over `warmup_teacher_temp_epochs`; the teacher's
    momentum goes from `momentum` to 1 on a cosine per step; gradients are clipped per parameter
    tensor at `clip_grad` (as DINO's `clip_gradients`, not a global norm) and the last layer's
    are dropped for the first `freeze_last_layer` epochs. A ViT student gets stochastic depth
    `drop_path`, its teacher none. Defaults are the paper's ViT-S/16 values (`PUBLISHED`)."""

    name: ClassVar[str] = "dino"

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        out_dim: int = 65536,
        hidden: int = 2048,
        bottleneck: int = 256,
        norm_last_layer: bool = True,
        use_bn: bool = False,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
        clip_grad: float = 3.0,
        freeze_last_layer: int = 1,
        drop_path: float = 0.1,
    ) -> None:
        super().__init__(backbone, feature_dim)
        self.head = DINOHead(
            feature_dim,
            out_dim,
            hidden=hidden,
            bottleneck=bottleneck,
            norm_last_layer=norm_last_layer,
            use_bn=use_bn,
        )
        self.teacher_backbone, self.teacher_head = momentum_copy(backbone), momentum_copy(self.head)
        if isinstance(backbone, VisionTransformer):
            backbone.set_drop_path(drop_path)
            self.teacher_backbone.set_drop_path(0.0)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.teacher_temps = (warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)
        self.on_epoch(0, 1)  # sets teacher_temp
        self.base_momentum, self.clip_grad, self.freeze_last_layer = momentum, clip_grad, freeze_last_layer

    def default_recipe(self, size: int) -> Recipe:
        """DINO's multi-crop: 2 global crops at `size` and 8 local ones at 96/224 of it (a multiple
        of a ViT's patch size), the global pair's colour ops BYOL's (blur 1.0 / 0.1, solarize on
        the second), blur 0.5 on local crops; crop areas as `PUBLISHED` for a ViT or a CNN."""
        vit = isinstance(self.backbone, VisionTransformer)
        patch = self.backbone.patch_size if vit else 1
        local = max(patch, round(size * 96 / 224 / patch) * patch)
        crops = PUBLISHED["vit_small" if vit else "resnet50"]["recipe_options"]
        return MultiCrop(size=(size, local), base=BYOLViews(size=size), **crops)

    def check_recipe(self, recipe: Recipe) -> None:
        if isinstance(recipe, StagedRecipe) or recipe.num_views < 2:
            raise ValueError(f"dino needs at least two crops of each image; recipe {recipe.name!r} has one")
        if isinstance(recipe, MultiCrop) and recipe.n_local and recipe.size[1] == recipe.size[0]:
            raise ValueError(  # global crops are told apart by their size (methods.base.global_crops)
                f"local crops of the global crops' size ({recipe.size[0]} px) would count as global; "
                "make them smaller"
            )
        if isinstance(self.backbone, VisionTransformer):
            odd = sorted({s.size for s in recipe.views() if s.size % self.backbone.patch_size})
            if odd:
                raise ValueError(
                    f"crop sizes {odd} are not multiples of the ViT's {self.backbone.patch_size} px patches"
                )

    def on_epoch(self, epoch: int, epochs: int) -> None:
        start, end, warmup = self.teacher_temps
        # np.linspace(start, end, warmup)[epoch], as main_dino.py: `end` is reached at epoch warmup - 1
        self.teacher_temp = start + (end - start) * epoch / max(1, warmup - 1) if epoch < warmup else end

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        views = batch["views"]
        valid = valid_mask(batch, len(views[0]), views[0].device)
        # softmax, centre and loss in float32: bf16 autocast would round the logits before the
        # 0.04 temperature, and the centre's sums
        student = [self.head(self.backbone(view))[valid].float() / self.student_temp for view in views]
        with torch.no_grad():
            teacher = [
                self.teacher_head(self.teacher_backbone(v))[valid].float()
                for v in views[: global_crops(views)]
            ]
            targets = [F.softmax((t - self.center) / self.teacher_temp, dim=-1) for t in teacher]
        pairs = crop_pairs(views)  # (student crop, teacher crop), every crop against each other global one
        terms = [-(targets[j] * F.log_softmax(student[i], dim=-1)).sum(-1).mean() for i, j in pairs]
        loss = torch.stack(terms).mean()
        self._update_center(torch.cat(teacher))
        return loss

    @torch.no_grad()
    def _update_center(self, teacher: torch.Tensor) -> None:
        """c <- m c + (1 - m) mean of the teacher's outputs over every rank's valid samples."""
        total = torch.cat([teacher.sum(0), teacher.new_tensor([len(teacher)])])  # float32 (see loss)
        if world()[1] > 1:
            dist.all_reduce(total)
        mean = total[:-1] / total[-1].clamp_min(1)
        self.center.mul_(self.center_momentum).add_(mean[None], alpha=1 - self.center_momentum)

    def adjust_gradients(self, epoch: int) -> None:
        if self.clip_grad:
            for p in [*self.backbone.parameters(), *self.head.parameters()]:
                if p.grad is not None:
                    norm = torch.linalg.vector_norm(p.grad)
                    p.grad.mul_((self.clip_grad / (norm + 1e-6)).clamp(max=1.0))
        if epoch < self.freeze_last_layer:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def on_step(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(self.base_momentum, step, total_steps)
        ema_update(self.teacher_backbone, self.backbone, momentum)
        ema_update(self.teacher_head, self.head, momentum)


def published_config(
    backbone: str, data: str, out: str, *, global_batch: int, **changes: Any
) -> dict[str, Any]:
    """PretrainConfig fields of DINO's published recipe for `backbone` ("vit_small" or
    "resnet50"), the learning rate scaled to `global_batch` (base * batch / 256), `changes` on top.
    Differences: the learning rate decays to 0, not to DINO's min_lr 1e-6."""
    if backbone not in PUBLISHED:
        raise ValueError(f"DINO publishes recipes for {', '.join(PUBLISHED)}, not {backbone!r}")
    fields = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PUBLISHED[backbone].items()}
    fields["lr"] = fields["lr"] * global_batch / 256
    return {"data": data, "out": out, "method": "dino", "backbone": backbone, **fields, **changes}

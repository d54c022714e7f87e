"""Knowledge distillation: a student backbone learns from a frozen teacher run on the same views in
the same step (`fastssl distill`). Four kinds, with the parameters of RepDistiller
(`HobbitLong/RepDistiller`, ../shared/METHODS.md section 7):

- `kd`, response-based (Hinton et al. 2015): alpha * T^2 * KL(p_teacher^T || p_student^T) (mean over
  the batch) + (1 - alpha) * CE(labels); T = 4, alpha = 0.9. The teacher needs class logits: a run
  of `--method supervised` (or any method with `logits(views)`).
- `fitnets`, feature-based (Romero et al. 2015): a hint regressor (conv, BN, ReLU, RepDistiller's
  `ConvReg` layout) maps the student's stage `hint` output to the teacher's stage `teacher_hint`,
  beta * MSE with beta = 100, plus CE on labels (weight 1).
- `rkd`, relation-based (Park et al. 2019): the pairwise distances of the penultimate features
  (each set normalised by its mean distance, smooth L1) weighted 25, their triplet angles weighted
  50, plus CE on labels (weight 1).
- `embedding`, for self-supervised teachers: the student's projected embedding matches the
  teacher's L2-normalised backbone embedding of the same view, 2 - 2 cos; no labels needed.

The teacher stays in inference mode (eval, no gradients); its weights are in the run's checkpoint
like any module's, so resume needs the teacher run only to build the method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.recipes import Crop, Recipe
from fastssl.train.methods.base import Method, labelled_mask, refuse_multi_crop, valid_mask

KINDS = ("kd", "fitnets", "rkd", "embedding")


class Distill(Method):
    name: ClassVar[str] = "distill"

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        teacher: str,
        kind: str = "kd",
        image_size: int = 224,
        num_classes: int | None = None,
        temperature: float = 4.0,
        alpha: float = 0.9,
        hint: int = 2,
        teacher_hint: int | None = None,
        beta: float = 100.0,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        ce_weight: float | None = None,
    ) -> None:
        super().__init__(backbone, feature_dim)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        from fastssl.train.evaluate import load_method  # here: the loop imports the methods

        self.teacher_run = str(teacher)
        if not (Path(teacher) / "checkpoint.pt").exists():
            raise ValueError(f"teacher {teacher} is not a run folder with a checkpoint.pt")
        self.teacher, _ = load_method(teacher)
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.teacher.eval()
        self.kind, self.temperature, self.alpha = kind, temperature, alpha
        self.beta, self.distance_weight, self.angle_weight = beta, distance_weight, angle_weight
        has_logits = hasattr(self.teacher, "logits")
        if kind == "kd" and not has_logits:
            raise ValueError(
                f"kd distils class logits, and the teacher {teacher} ({type(self.teacher).__name__}) has "
                "none: use a run of --method supervised, or --kind fitnets, rkd or embedding"
            )
        if has_logits:
            num_classes = self.teacher.classifier.out_features
        self.ce_weight = (1.0 - alpha if kind == "kd" else 1.0) if ce_weight is None else ce_weight
        if kind == "embedding" and ce_weight is None:
            self.ce_weight = 0.0
        # a classifier only where a loss term uses it (DDP refuses parameters without gradients)
        needs_classifier = kind == "kd" or bool(self.ce_weight)
        if needs_classifier and not num_classes:
            raise ValueError(f"{kind} distillation trains a classifier: give num_classes or labelled data")
        self.classifier = nn.Linear(feature_dim, num_classes) if needs_classifier else None
        probe = torch.zeros(2, 3, image_size, image_size)
        with torch.no_grad():
            teacher_out = self._teacher_features(probe)
        if kind == "embedding":
            self.projection = nn.Linear(feature_dim, teacher_out.shape[1])
        if kind == "fitnets":
            from fastssl.train.transfer import stages

            self.hint_modules = (
                _stage_end(stages(self.backbone), hint),
                _stage_end(stages(self.teacher.backbone), hint if teacher_hint is None else teacher_hint),
            )
            self._captured: dict[str, torch.Tensor] = {}
            self.hint_modules[0].register_forward_hook(self._capture("student"))
            self.hint_modules[1].register_forward_hook(self._capture("teacher"))
            was = self.backbone.training
            self.backbone.eval()
            with torch.no_grad():
                self.backbone(probe)
                self._teacher_features(probe)
            self.backbone.train(was)
            self.regressor = _hint_regressor(self._captured["student"].shape, self._captured["teacher"].shape)

    def default_recipe(self, size: int) -> Recipe:
        """Random resized crop and flip: the views a supervised student trains on."""
        return Crop(size=size)

    def check_recipe(self, recipe: Recipe) -> None:
        refuse_multi_crop(self.name, recipe)

    def train(self, mode: bool = True) -> Distill:
        super().train(mode)
        self.teacher.eval()  # inference mode always: BatchNorm statistics stay the teacher's
        return self

    def logits(self, views: torch.Tensor) -> torch.Tensor:
        """The student's class scores (B, num_classes)."""
        if self.classifier is None:
            raise ValueError("this student has no classifier (embedding distillation without labels)")
        return self.classifier(self.backbone(views))

    def _capture(self, who: str):  # noqa: ANN202 - a forward hook
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self._captured[who] = output

        return hook

    def _teacher_features(self, views: torch.Tensor) -> torch.Tensor:
        from fastssl.train.evaluate import model_input

        return self.teacher.backbone(model_input(views, self.teacher.probe_input))

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        views = batch["views"][0]
        labels = batch.get("label")
        if labels is None:
            valid = valid_mask(batch, len(views), views.device)
        else:
            valid = labelled_mask(batch, labels, len(views), views.device)
        with torch.no_grad():
            teacher_features = self._teacher_features(views)
            teacher_logits = self.teacher.classifier(teacher_features) if self.kind == "kd" else None
        student_features = self.backbone(views)
        student_features, teacher_features = student_features[valid], teacher_features[valid]
        loss = student_features.new_zeros(())
        scores = self.classifier(student_features) if self.classifier is not None else None
        if self.ce_weight:
            if labels is None:
                raise ValueError(
                    f"{self.kind} distillation with ce_weight {self.ce_weight} needs labelled batches"
                )
            loss = loss + self.ce_weight * F.cross_entropy(scores, labels.to(views.device)[valid])
        if self.kind == "kd":
            t = self.temperature
            kl = F.kl_div(
                F.log_softmax(scores / t, dim=1),
                F.softmax(teacher_logits[valid] / t, dim=1),
                reduction="batchmean",
            )
            loss = loss + self.alpha * t * t * kl
        elif self.kind == "fitnets":
            hint = self.regressor(self._captured["student"][valid])
            loss = loss + self.beta * F.mse_loss(hint, self._captured["teacher"][valid].detach())
        elif self.kind == "rkd":
            loss = loss + self.distance_weight * rkd_distance(student_features, teacher_features)
            loss = loss + self.angle_weight * rkd_angle(student_features, teacher_features)
        else:
            student = F.normalize(self.projection(student_features), dim=1)
            loss = loss + (2 - 2 * (student * F.normalize(teacher_features, dim=1)).sum(dim=1)).mean()
        return loss


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD's distance term: smooth L1 between the two sets' pairwise distances, each divided by
    its mean over the off-diagonal pairs."""
    with torch.no_grad():
        target = _pairwise(teacher)
        target = target / target[target > 0].mean()
    mine = _pairwise(student)
    mine = mine / mine[mine > 0].mean()
    return F.smooth_l1_loss(mine, target)


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD's angle term: smooth L1 between the cosines of the angles every triplet (i, j, k) makes
    at j, in the student's and the teacher's embeddings."""
    with torch.no_grad():
        target = _angles(teacher)
    return F.smooth_l1_loss(_angles(student), target)


def _pairwise(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    squared = (x * x).sum(dim=1)
    d2 = (squared[:, None] + squared[None, :] - 2 * x @ x.T).clamp_min(eps)
    d = d2.sqrt()
    return d * (1 - torch.eye(len(x), device=x.device, dtype=x.dtype))


def _angles(x: torch.Tensor) -> torch.Tensor:
    differences = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=2)  # (j, i, d): x_i - x_j
    return torch.bmm(differences, differences.transpose(1, 2)).reshape(-1)


def _stage_end(stages: list, index: int) -> nn.Module:
    if not 0 <= index < len(stages):
        raise ValueError(f"hint stage {index} out of range: the backbone has stages 0..{len(stages) - 1}")
    last = stages[index][-1]
    if not isinstance(last, nn.Module):
        raise ValueError(f"stage {index} ends in a parameter, not a layer whose output can be a hint")
    return last


def _hint_regressor(student: torch.Size, teacher: torch.Size) -> nn.Module:
    """Maps a student map (B, Cs, Hs, Ws) to the teacher's (B, Ct, Ht, Wt): a stride-2 conv when the
    student's is twice the size, a transposed conv when half, a (1 + Hs - Ht) kernel otherwise."""
    if len(student) != 4 or len(teacher) != 4:
        raise ValueError("FitNets hints are feature maps (B, C, H, W); this stage gives none")
    (_, cs, hs, ws), (_, ct, ht, wt) = student, teacher
    if hs == 2 * ht:
        layer: nn.Module = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
    elif 2 * hs == ht:
        layer = nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
    elif hs >= ht and ws >= wt:
        layer = nn.Conv2d(cs, ct, kernel_size=(1 + hs - ht, 1 + ws - wt))
    else:
        raise ValueError(f"cannot map a {hs}x{ws} student hint onto a {ht}x{wt} teacher hint")
    return nn.Sequential(layer, nn.BatchNorm2d(ct), nn.ReLU(inplace=True))

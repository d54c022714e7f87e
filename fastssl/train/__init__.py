"""Pretraining: methods (SimCLR, MoCo v2/v3, BYOL, DINO, RotNet, Jigsaw), backbones, the DDP
training loop with checkpoints and exact resumption, and kNN / linear-probe evaluation.

`fastssl pretrain` and `fastssl eval` are the command-line faces of `pretrain` and `evaluate`.
"""

from __future__ import annotations

from fastssl.train.backbones import BACKBONES, build_backbone
from fastssl.train.evaluate import evaluate, knn_accuracy, linear_probe_accuracy, load_backbone
from fastssl.train.loop import PretrainConfig, build_method, build_run_backbone, pretrain
from fastssl.train.methods import METHODS

__all__ = [
    "BACKBONES", "METHODS", "PretrainConfig", "build_backbone", "build_method", "build_run_backbone",
    "evaluate", "knn_accuracy", "linear_probe_accuracy", "load_backbone", "pretrain",
]  # fmt: skip

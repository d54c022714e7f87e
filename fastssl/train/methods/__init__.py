"""Pretraining methods, one file each, registered by name for the CLI."""

from __future__ import annotations

from fastssl.train.methods.base import Method
from fastssl.train.methods.byol import BYOL
from fastssl.train.methods.colorization import Colorization
from fastssl.train.methods.context import ContextPrediction
from fastssl.train.methods.cpc import CPC
from fastssl.train.methods.deepcluster import DeepCluster
from fastssl.train.methods.dino import DINO
from fastssl.train.methods.distill import Distill
from fastssl.train.methods.inpainting import Inpainting
from fastssl.train.methods.jigsaw import Jigsaw
from fastssl.train.methods.mocov2 import MoCoV2
from fastssl.train.methods.mocov3 import MoCoV3
from fastssl.train.methods.rotnet import RotNet
from fastssl.train.methods.simclr import SimCLR
from fastssl.train.methods.superres import SuperResolution
from fastssl.train.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (
        SimCLR, MoCoV2, MoCoV3, BYOL, DINO, RotNet, Jigsaw, ContextPrediction, CPC, Colorization, Inpainting,
        SuperResolution, Supervised, DeepCluster, Distill,
    )
}  # fmt: skip

__all__ = [
    "BYOL",
    "CPC",
    "Colorization",
    "DINO",
    "DeepCluster",
    "Distill",
    "Inpainting",
    "METHODS",
    "ContextPrediction",
    "Jigsaw",
    "Method",
    "MoCoV2",
    "MoCoV3",
    "RotNet",
    "SimCLR",
    "SuperResolution",
    "Supervised",
]

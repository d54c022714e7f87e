"""fastssl: a data engine for self-supervised image pretraining.

The data layer (`fastssl.data`) writes WebDataset shards with DALI-compatible indexes and plans
exact, resumable epochs across ranks and workers; recipes (`fastssl.recipes`) describe views;
`fastssl.SSLLoader` turns shards and a recipe into batches of views through a DALI or Kornia
backend. Heavy names (the loader, torch) are imported on first use, so that decode workers stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fastssl.errors import DataError, IndexMismatchError, MissingMemberError, ShardError

__version__ = "0.1.0"

_LAZY = {
    "SSLLoader": "fastssl.loader",
    "BYOL": "fastssl.recipes",
    "ContextPrediction": "fastssl.recipes",
    "Crop": "fastssl.recipes",
    "Jigsaw": "fastssl.recipes",
    "JigsawPP": "fastssl.recipes",
    "MoCoV2": "fastssl.recipes",
    "MultiCrop": "fastssl.recipes",
    "PatchGrid": "fastssl.recipes",
    "Recipe": "fastssl.recipes",
    "Rotation": "fastssl.recipes",
    "SimCLR": "fastssl.recipes",
}
__all__ = [
    "BYOL", "ContextPrediction", "Crop", "DataError", "IndexMismatchError", "Jigsaw", "JigsawPP",
    "MissingMemberError", "MoCoV2", "MultiCrop", "PatchGrid", "Recipe", "Rotation", "SSLLoader",
    "ShardError", "SimCLR", "__version__",
]  # fmt: skip

if TYPE_CHECKING:
    from fastssl.loader import SSLLoader
    from fastssl.recipes import (
        BYOL,
        ContextPrediction,
        Crop,
        Jigsaw,
        JigsawPP,
        MoCoV2,
        MultiCrop,
        PatchGrid,
        Recipe,
        Rotation,
        SimCLR,
    )


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'fastssl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value

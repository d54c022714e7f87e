"""Checkpoints written atomically (temporary file, fsync, rename) and read back with
`torch.load(weights_only=True)`, which refuses pickled code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fastssl.data.atomic import durable_replace


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` (tensors, numbers, strings, lists, tuples, dicts) to `path` atomically: a crash
    leaves the previous checkpoint, never a partial one, and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        durable_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's state; a file that would need to unpickle code (a callable, a class
    instance) is refused with `pickle.UnpicklingError`, as `weights_only=True` does."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)

"""The colour prior of colorization's class rebalancing (Zhang, Isola & Efros 2016, section 2.2):
how often each ab bin occurs in a data set's colourful images, smoothed over the ab plane.

Measured on the views training sees (the colorization recipe's crops and its quarter-resolution
ab target, the loader's seed), so the rebalancing weights fit the pixels they weigh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastssl.loader import SSLLoader
from fastssl.pipelines.lab import ab_bins, nearest_bin, smoothed_prior
from fastssl.recipes import Colorization


def colour_prior(
    data: Any,
    *,
    recipe: Colorization | None = None,
    batch_size: int = 64,
    device: str = "auto",
    backend: str = "auto",
    sigma: float = 5.0,
    num_threads: int | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """(prior (Q,) over `ab_bins()`, counts: images, colourful images, pixels) for the shard set
    `data`; grayscale images (the recipe's `colourful` False) are left out, as in training."""
    recipe = recipe or Colorization()
    counts = np.zeros(len(ab_bins()), dtype=np.int64)
    images = colourful = 0
    with SSLLoader(
        data, recipe, batch_size, device=device, backend=backend, shuffle=False, drop_last=False,
        rank=0, world_size=1, num_threads=num_threads,
    ) as loader:  # fmt: skip
        bins = torch.from_numpy(ab_bins().copy()).to(loader.device)
        for batch in loader:
            keep = batch["valid"] & batch["colourful"]
            images += int(batch["valid"].sum())
            colourful += int(keep.sum())
            if keep.any():
                nearest = nearest_bin(batch["ab"][keep], bins).flatten()
                counts += torch.bincount(nearest, minlength=len(counts)).cpu().numpy()
    if not counts.sum():
        raise ValueError(f"{data}: no colourful image to measure a colour prior from ({images} images read)")
    return smoothed_prior(counts, sigma), {
        "images": images,
        "colourful": colourful,
        "pixels": int(counts.sum()),
    }


def write_prior(prior: np.ndarray, out: str | Path) -> Path:
    """Save a prior as the (Q,) float64 `.npy` the colorization method's `prior` option reads."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, prior)
    return out

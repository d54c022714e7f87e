"""The `webdataset` contestant of `fastssl bench`: the loader a user writes from WebDataset's README,
with the baseline's transforms (torchvision's when it imports, else their PIL equivalents).

`wds.WebDataset(urls, shardshuffle=...)` over the shard files, `.shuffle(1000)`, `.decode("pil")`,
the recipe's views per sample, `.batched(batch_size)`, and `wds.WebLoader` worker processes. It
gives what WebDataset gives: shards split between workers and a shuffle buffer, not an exact
epoch (a worker's last partial batch is dropped), and no resume.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from PIL import Image

from fastssl.bench.baseline import RecipeViews
from fastssl.data.manifest import Manifest
from fastssl.recipes import Recipe, StagedRecipe

SHUFFLE_BUFFER = 1000  # samples; WebDataset's README example's value


def supports(recipe: Recipe) -> bool:
    """Whole-image recipes: the staged ones (patch grids, prediction pretexts) have no
    like-for-like WebDataset pipeline here."""
    return not isinstance(recipe, StagedRecipe)


class _ViewsOf:
    """A sample ("jpg",) to its views as a tuple, which `.batched` stacks view by view."""

    def __init__(self, views: RecipeViews) -> None:
        self.views = views

    def __call__(self, sample: tuple[Image.Image]) -> tuple[torch.Tensor, ...]:
        return tuple(self.views(sample[0]))


def webdataset_batches(
    manifest: Manifest,
    recipe: Recipe,
    batch_size: int,
    workers: int,
    seed: int = 0,
    urls: list[str] | None = None,
) -> Iterator[list[torch.Tensor]]:
    """Endless batches of `[view, ...]` (one float32 CHW tensor per view), epoch after epoch; from
    the manifest's local shard files, or from `urls` (WebDataset streams http URLs through curl)."""
    import webdataset as wds

    if not supports(recipe):
        raise ValueError(f"the webdataset contestant times whole-image recipes, not {recipe.name!r}")
    urls = urls or [str(manifest.shard_path(i)) for i in range(len(manifest.shards))]
    views = RecipeViews(recipe)
    dataset = (
        wds.WebDataset(urls, shardshuffle=len(urls), seed=seed, empty_check=False)
        .shuffle(SHUFFLE_BUFFER)
        .decode("pil")
        .to_tuple("jpg")
        .map(_ViewsOf(views))
        .batched(batch_size, partial=False)
    )
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    while True:
        yield from loader

"""The `dali_native` contestant of `fastssl bench`: the pipeline a user writes from DALI's own docs for
the recipe's views, with DALI's reader deciding the order instead of fastssl's epoch plan.

`fn.readers.webdataset` over the shards with their `.idx` files (`random_shuffle=True`), the CPU
decoder, then per view `fn.random_resized_crop`, colour jitter as `fn.color_twist` with factors from
`fn.random.uniform` (brightness, contrast, saturation, then hue: DALI's fixed order, where the
recipe draws one), grayscale as `fn.color_twist(saturation=0)`, `fn.gaussian_blur` with a random
sigma and solarize by arithmetic, each under a `fn.random.coin_flip` conditional with the recipe's
probability, and `fn.crop_mirror_normalize` (float, CHW, random mirror); batches handed over as
torch tensors by `DALIGenericIterator`, the plugin the docs use for PyTorch. It gives what DALI
gives: a shuffle buffer, not an exact epoch, and no resume; it exists to show what fastssl's
guarantees and its own ops cost against it on the same shards, threads and batch size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from fastssl.data.manifest import Manifest
from fastssl.recipes import Recipe, StagedRecipe


def supports(recipe: Recipe) -> bool:
    """Whole-image recipes whose views are random resized crops without rotation: those DALI's
    documented ops express one for one."""
    if isinstance(recipe, StagedRecipe):
        return False
    return all(spec.crop == "random_resized" and spec.rotation == 0 for spec in recipe.views())


PREFETCH = 2  # written out, as the GPU variant's decoder settings: part of what it measures


def native_batches(
    manifest: Manifest, recipe: Recipe, batch_size: int, threads: int, seed: int = 0, gpu: bool = False
) -> Iterator[list[Any]]:
    """Endless batches of `[view, ...]` (one float32 CHW tensor per view), epoch after epoch; with
    `gpu`, decoded by nvJPEG (`mixed`, with the settings fastssl's own GPU graphs default to:
    `GpuDecoder()`, DALI's defaults) and augmented on GPU 0."""
    import dataclasses

    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    from fastssl.pipelines.dali_views import GpuDecoder

    if not supports(recipe):
        raise ValueError(f"dali_native times whole-image random-resized-crop recipes, not {recipe.name!r}")
    specs = recipe.views()
    paths = [str(manifest.shard_path(i)) for i in range(len(manifest.shards))]
    indexes = [str(manifest.index_path(i)) for i in range(len(manifest.shards))]
    conditionals = any(s.p_jitter or s.p_gray or s.p_blur or s.p_solarize for s in specs)

    def view(images: Any, spec: Any) -> Any:
        images = fn.random_resized_crop(
            images, size=[spec.size, spec.size], random_area=list(spec.scale),
            random_aspect_ratio=list(spec.ratio),
        )  # fmt: skip
        b, c, s, h = spec.jitter
        # the recipe's probabilities are Python numbers: an op the view never applies is not traced
        if spec.p_jitter:  # noqa: SIM102 - a Python test, then DALI's per-sample one
            if fn.random.coin_flip(probability=spec.p_jitter):
                images = fn.color_twist(
                    images,
                    brightness=fn.random.uniform(range=[max(0.0, 1 - b), 1 + b]),
                    contrast=fn.random.uniform(range=[max(0.0, 1 - c), 1 + c]),
                    saturation=fn.random.uniform(range=[max(0.0, 1 - s), 1 + s]),
                    hue=fn.random.uniform(range=[-360.0 * h, 360.0 * h]),  # degrees
                )
        if spec.p_gray:  # noqa: SIM102 - a Python test, then DALI's per-sample one
            if fn.random.coin_flip(probability=spec.p_gray):
                images = fn.color_twist(images, saturation=0.0)
        if spec.p_blur:  # noqa: SIM102 - a Python test, then DALI's per-sample one
            if fn.random.coin_flip(probability=spec.p_blur):
                images = fn.gaussian_blur(images, sigma=fn.random.uniform(range=list(spec.blur_sigma)))
        if spec.p_solarize:  # noqa: SIM102 - a Python test, then DALI's per-sample one
            if fn.random.coin_flip(probability=spec.p_solarize):
                images = images ^ ((images >= spec.solarize_level) * np.uint8(255))
        mirror = fn.random.coin_flip(probability=spec.p_flip)
        return fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="CHW", mirror=mirror,
            mean=[255 * m for m in recipe.mean], std=[255 * s for s in recipe.std],
        )  # fmt: skip

    @pipeline_def(
        batch_size=batch_size, num_threads=threads, device_id=0 if gpu else None, seed=seed,
        prefetch_queue_depth=PREFETCH, enable_conditionals=conditionals,
    )  # fmt: skip
    def views_pipeline():  # noqa: ANN202 - DALI traces this function
        jpegs = fn.readers.webdataset(
            paths=paths, index_paths=indexes, ext=["jpg"], random_shuffle=True, name="reader",
            missing_component_behavior="error",
        )  # fmt: skip
        if gpu:
            settings = dataclasses.asdict(GpuDecoder())
            images = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB, **settings)
        else:
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        return tuple(view(images, spec) for spec in specs)

    pipe = views_pipeline()
    pipe.build()
    names = [f"view{v}" for v in range(len(specs))]
    iterator = DALIGenericIterator(
        [pipe], names, reader_name="reader", last_batch_policy=LastBatchPolicy.DROP, auto_reset=True
    )
    while True:
        for batch in iterator:
            yield [batch[0][name] for name in names]

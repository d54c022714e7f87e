"""The `dali_native` contestant of `fastssl bench`: the pipeline a user writes from DALI's own docs for
one random-resized-crop view, with DALI's reader deciding the order instead of fastssl's epoch plan.

`fn.readers.webdataset` over the shards with their `.idx` files (`random_shuffle=True`), the CPU
decoder, `fn.random_resized_crop` and `fn.crop_mirror_normalize` (float, CHW, random mirror),
batches handed over as torch tensors by `DALIGenericIterator`, the plugin the docs use for PyTorch.
It gives what DALI gives: a shuffle buffer, not an exact epoch, and no resume; it exists to show
what fastssl's guarantees cost against it on the same shards, threads and batch size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastssl.data.manifest import Manifest
from fastssl.recipes import Crop, Recipe


def supports(recipe: Recipe) -> bool:
    """Only the one-view crop recipe has a like-for-like native DALI pipeline here."""
    return isinstance(recipe, Crop)


PREFETCH = 2  # written out, as the GPU variant's decoder settings: part of what it measures


def native_batches(
    manifest: Manifest, recipe: Recipe, batch_size: int, threads: int, seed: int = 0, gpu: bool = False
) -> Iterator[list[Any]]:
    """Endless batches of `[views]` (one float32 CHW tensor per batch), epoch after epoch; with
    `gpu`, decoded by nvJPEG (`mixed`, with the settings fastssl's own GPU graphs default to:
    `GpuDecoder()`, DALI's defaults) and augmented on GPU 0."""
    import dataclasses

    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    from fastssl.pipelines.dali_views import GpuDecoder

    if not supports(recipe):
        raise ValueError(f"dali_native times the crop recipe only, not {recipe.name!r}")
    (spec,) = recipe.views()
    paths = [str(manifest.shard_path(i)) for i in range(len(manifest.shards))]
    indexes = [str(manifest.index_path(i)) for i in range(len(manifest.shards))]

    @pipeline_def(
        batch_size=batch_size, num_threads=threads, device_id=0 if gpu else None, seed=seed,
        prefetch_queue_depth=PREFETCH,
    )  # fmt: skip
    def crop_pipeline():  # noqa: ANN202 - DALI traces this function
        jpegs = fn.readers.webdataset(
            paths=paths, index_paths=indexes, ext=["jpg"], random_shuffle=True, name="reader",
            missing_component_behavior="error",
        )  # fmt: skip
        if gpu:
            settings = dataclasses.asdict(GpuDecoder())
            images = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB, **settings)
        else:
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        images = fn.random_resized_crop(
            images,
            size=[spec.size, spec.size],
            random_area=list(spec.scale),
            random_aspect_ratio=list(spec.ratio),
        )
        mirror = fn.random.coin_flip(probability=spec.p_flip)
        return fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="CHW", mirror=mirror,
            mean=[255 * m for m in recipe.mean], std=[255 * s for s in recipe.std],
        )  # fmt: skip

    pipe = crop_pipeline()
    pipe.build()
    iterator = DALIGenericIterator(
        [pipe], ["view"], reader_name="reader", last_batch_policy=LastBatchPolicy.DROP, auto_reset=True
    )
    while True:
        for batch in iterator:
            yield [batch[0]["view"]]

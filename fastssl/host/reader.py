"""Host side of a batch: read its samples' bytes, check their headers, sample the views' parameters.

Both backends start from a `HostBatch`: the DALI backend feeds it to `fn.external_source` from the
main thread, the Kornia backend builds it inside its decode workers. It holds everything except
pixels: encoded bytes, source sizes (read from the image header, which also enforces the pixel
limit before anything is decoded), labels, keys, the plan's `valid` flags and each view's sampled
parameters (`fastssl.host.params`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from time import perf_counter
from typing import Literal

import numpy as np
from PIL import Image

from fastssl.data.header import check_image, parse_label
from fastssl.data.images import DEFAULT_MAX_PIXELS
from fastssl.data.manifest import Manifest
from fastssl.data.plan import EpochPlan
from fastssl.data.source import ByteSource
from fastssl.errors import DataError, DecodeError
from fastssl.host.params import sample_params
from fastssl.host.patch_params import sample_patch_params
from fastssl.recipes import PatchRecipe, Recipe

OnError = Literal["raise", "skip"]


def _placeholder_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (124, 116, 104)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


PLACEHOLDER = _placeholder_jpeg()  # stands in for a skipped sample so batch shapes never change


@dataclass
class HostBatch:
    """One batch before decoding. `params` holds one dict of NumPy arrays per view; `patch` the
    patch-grid draws of patch recipes (`fastssl.host.patch_params`), else None."""

    number: int
    jpegs: list[np.ndarray]
    heights: np.ndarray
    widths: np.ndarray
    keys: list[str]
    shards: list[str]
    labels: np.ndarray | None
    valid: np.ndarray
    params: list[dict[str, np.ndarray]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    patch: dict[str, np.ndarray] | None = None
    sample_ids: np.ndarray | None = None  # global sample ids, the key of every random draw

    def __len__(self) -> int:
        return len(self.keys)


class BatchReader:
    """Builds `HostBatch` number k of one rank's epoch. Picklable, for decode workers."""

    def __init__(
        self,
        manifest: Manifest,
        plan: EpochPlan,
        recipe: Recipe,
        *,
        on_error: OnError = "raise",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        verify_checksums: bool = False,
        source: ByteSource | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.plan = plan
        self.recipe = recipe
        self.on_error = on_error
        self.max_pixels = max_pixels
        self.labelled = manifest.classes is not None
        self.source = source or ByteSource(manifest, verify_checksums=verify_checksums)
        # (shard, key) of samples found undecodable under on_error="skip": fed as a placeholder
        self.substitute: set[tuple[str, str]] = set()
        # seconds spent per stage, summed over batches, when given (fastssl bench --profile)
        self.timings = timings

    def __call__(self, number: int) -> HostBatch:
        entries = self.plan.batch(number)
        exts = ("jpg", "cls") if self.labelled else ("jpg",)
        n = len(entries.shard)
        jpegs: list[np.ndarray] = []
        heights, widths = np.empty(n, np.int64), np.empty(n, np.int64)
        labels = np.full(n, -1, np.int64) if self.labelled else None
        valid = entries.valid.copy()
        keys, shards, skipped = [], [], []
        timed = self.timings is not None
        stages = dict.fromkeys(("read", "checks", "labels"), 0.0)
        for i in range(n):
            shard, sample = int(entries.shard[i]), int(entries.sample[i])
            shard_name = self.source.manifest.shards[shard].path
            key = self._key(shard, sample)
            try:
                if (shard_name, key) in self.substitute:
                    raise DecodeError("cannot decode image", shard=shard_name, key=key)
                t0 = perf_counter()
                got = self.source.read(shard, sample, exts)
                t1 = perf_counter()
                heights[i], widths[i] = check_image(
                    got.members["jpg"], max_pixels=self.max_pixels, shard=got.shard, key=got.key
                )
                t2 = perf_counter()
                if labels is not None:
                    labels[i] = parse_label(got.members["cls"], shard=got.shard, key=got.key)
                if timed:
                    stages["read"] += t1 - t0
                    stages["checks"] += t2 - t1
                    stages["labels"] += perf_counter() - t2
                jpegs.append(np.frombuffer(got.members["jpg"], dtype=np.uint8))
            except DataError as err:
                if self.on_error == "raise":
                    raise
                if entries.valid[i]:  # a padding entry repeats a sample another rank reads and lists
                    skipped.append(
                        {"shard": shard_name, "key": key, "reason": getattr(err, "reason", str(err))}
                    )
                jpegs.append(np.frombuffer(PLACEHOLDER, dtype=np.uint8))
                heights[i] = widths[i] = 8
                valid[i] = False
            keys.append(key)
            shards.append(shard_name)
        t0 = perf_counter()
        params = sample_params(
            self.recipe,
            seed=self.plan.seed,
            epoch=self.plan.epoch,
            sample_ids=entries.global_id,
            heights=heights,
            widths=widths,
        )
        batch = HostBatch(number, jpegs, heights, widths, keys, shards, labels, valid, params, skipped)
        batch.sample_ids = np.asarray(entries.global_id, dtype=np.int64)
        self.draw_patches(batch)
        if timed:
            stages["params"] = perf_counter() - t0
            for name, value in stages.items():
                self.timings[name] = self.timings.get(name, 0.0) + value
        return batch

    def draw_patches(self, batch: HostBatch) -> None:
        """(Re)draw the patch recipe's draws from the batch's current `valid` flags: called again
        when decoding marks a sample invalid, so that Jigsaw++ never borrows a placeholder's tile
        and every backend ends with the same draws as one that knew it at read time."""
        if isinstance(self.recipe, PatchRecipe):
            batch.patch = sample_patch_params(
                self.recipe,
                seed=self.plan.seed,
                epoch=self.plan.epoch,
                sample_ids=batch.sample_ids,
                gray=batch.params[0]["gray"],
                valid=batch.valid,
            )

    def _key(self, shard: int, sample: int) -> str:
        try:
            return self.source.index(shard).keys[sample]
        except DataError:
            return f"#{sample}"  # the index itself is unusable; the read below reports why

"""Host side of a batch: read its samples' bytes, check their headers, sample the views' parameters,
per batch: one compiled read of every member with its tar header checked, one compiled pass for
the JPEG header facts and one for the labels; only samples those passes leave in doubt (bad data,
unusual files) take the per-sample path, whose errors name shard, key and cause.

Both backends start from a `HostBatch`, built in worker processes: the DALI backend's feeders
build it into a shared slot (`fastssl.host.feeder`, `fastssl.host.slots`) that the graph reads in
place, the Kornia backend inside its decode workers. It holds everything except
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
from fastssl.host.prediction_params import sample_prediction_params
from fastssl.host.slots import Slot
from fastssl.kernels.jpeg_header import OK, jpeg_facts
from fastssl.kernels.labels import parse_labels
from fastssl.recipes import PatchRecipe, PredictionRecipe, Recipe

OnError = Literal["raise", "skip"]


def _placeholder_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (124, 116, 104)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


PLACEHOLDER = _placeholder_jpeg()  # stands in for a skipped sample so batch shapes never change
_PLACEHOLDER_ARRAY = np.frombuffer(PLACEHOLDER, dtype=np.uint8)


@dataclass
class HostBatch:
    """One batch before decoding. `params` holds one dict of NumPy arrays per view; `stage` the
    draws of a staged recipe's stage (`fastssl.host.patch_params`, `.prediction_params`), else None."""

    number: int
    jpegs: list[np.ndarray]  # empty for a batch built into a slot: its bytes are the slot's rows
    heights: np.ndarray
    widths: np.ndarray
    keys: list[str]
    shards: list[str]
    labels: np.ndarray | None
    valid: np.ndarray
    params: list[dict[str, np.ndarray]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    stage: dict[str, np.ndarray] | None = None
    sample_ids: np.ndarray | None = None  # global sample ids, the key of every random draw
    sizes: np.ndarray | None = None  # bytes of each JPEG
    fed: object = None  # what a backend handed to its decoder from this batch, kept alive with it

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
        ahead: int = 0,
        label_table: np.ndarray | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.plan = plan
        self.recipe = recipe
        self.on_error = on_error
        self.max_pixels = max_pixels
        # labels by global sample id from a sidecar (`fastssl.data.labels`), read in place of `.cls`
        self.label_table = label_table
        self.labelled = manifest.classes is not None and label_table is None
        self.source = source or ByteSource(manifest, verify_checksums=verify_checksums)
        # (shard, key) of samples found undecodable under on_error="skip": fed as a placeholder
        self.substitute: set[tuple[str, str]] = set()
        # seconds spent per stage, summed over batches, when given (fastssl bench --profile)
        self.timings = timings
        self._shard_names = np.array([info.path for info in manifest.shards], dtype=object)
        # remote shard sets: how many batches past the current one the shards are fetched ahead
        self.ahead = ahead

    def __call__(self, number: int, into: Slot | None = None) -> HostBatch:
        """Batch `number`; with `into`, its JPEGs are read into the slot's rows (and `jpegs` left
        empty), else into a buffer of the reader's own, viewed by `jpegs`."""
        timed = self.timings is not None
        clock = perf_counter()
        stages: dict[str, float] = {}

        def lap(stage: str) -> None:
            nonlocal clock
            if timed:
                now = perf_counter()
                stages[stage] = stages.get(stage, 0.0) + now - clock
                clock = now

        entries = self.plan.batch(number)
        if self.source.downloads_shards:  # the plan says what comes next: fetch it now
            size = self.plan.batch_size
            upcoming = self.plan.shard[number * size : (number + 1 + self.ahead) * size]
            self.source.prefetch(np.unique(upcoming).tolist())
        exts = ("jpg", "cls") if self.labelled else ("jpg",)
        n = len(entries.shard)
        got = self.source.read_batch(
            entries.shard, entries.sample, exts, layout=None if into is None else into.layout
        )
        keys = got.keys
        shards = self._shard_names[entries.shard].tolist()
        lap("read")
        codes, heights, widths = jpeg_facts(got.buf, got.start[:, 0], got.size[:, 0], self.max_pixels)
        lap("checks")
        labels = None
        if self.labelled:
            labels, parsed = parse_labels(got.buf, got.start[:, 1], got.size[:, 1])
        elif self.label_table is not None:
            labels = self.label_table[entries.global_id]
        lap("labels")
        # Everything the batched pass did not vouch for goes through the per-sample checks, whose
        # verdicts and messages are the ones users see: a slow read, a JPEG the kernel leaves to PIL,
        # a label it leaves to parse_label, a sample known to fail decoding.
        doubt = got.slow | (codes != OK)
        if self.labelled:
            doubt |= ~parsed
        if self.substitute:
            pairs = zip(shards, keys, strict=True)
            doubt |= np.fromiter((pair in self.substitute for pair in pairs), np.bool_, n)
        sizes = got.size[:, 0].copy()
        if into is None:
            starts = got.start[:, 0].tolist()
            jpegs = [got.buf[a : a + b] for a, b in zip(starts, sizes.tolist(), strict=True)]
        else:
            jpegs = []
        valid = entries.valid.copy()
        skipped: list[dict[str, str]] = []
        for i in np.flatnonzero(doubt).tolist():
            try:
                jpeg, heights[i], widths[i], label = self._one_by_one(
                    int(entries.shard[i]), int(entries.sample[i]), shards[i], keys[i], exts,
                    None if got.slow[i] else got.buf[got.start[i, 0] : got.start[i, 0] + sizes[i]],
                    None if got.slow[i] or not self.labelled or parsed[i]
                    else got.buf[got.start[i, 1] : got.start[i, 1] + got.size[i, 1]],
                )  # fmt: skip
                self._place(jpegs, into, i, jpeg, sizes)
                if self.labelled and label is not None:
                    labels[i] = label
            except DataError as err:
                if self.on_error == "raise":
                    raise
                if entries.valid[i]:  # a padding entry repeats a sample another rank reads and lists
                    skipped.append(
                        {"shard": shards[i], "key": keys[i], "reason": getattr(err, "reason", str(err))}
                    )
                self._place(jpegs, into, i, _PLACEHOLDER_ARRAY, sizes)
                heights[i] = widths[i] = 8
                valid[i] = False
                if labels is not None:
                    labels[i] = -1
        lap("checks")
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
        batch.sizes = sizes
        self.draw_stage(batch)
        lap("params")
        if timed:
            for name, value in stages.items():
                self.timings[name] = self.timings.get(name, 0.0) + value
        return batch

    @staticmethod
    def _place(
        jpegs: list[np.ndarray], into: Slot | None, i: int, jpeg: np.ndarray, sizes: np.ndarray
    ) -> None:
        """Position i's bytes are `jpeg` (from the per-sample path, or the placeholder)."""
        sizes[i] = len(jpeg)
        if into is None:
            jpegs[i] = jpeg
        elif not np.may_share_memory(jpeg, into.rows[i]):  # already in place when the batch read it
            into.put(i, jpeg)

    def _one_by_one(
        self,
        shard: int,
        sample: int,
        shard_name: str,
        key: str,
        exts: tuple[str, ...],
        jpeg: np.ndarray | None,
        label_bytes: np.ndarray | None,
    ) -> tuple[np.ndarray, int, int, int | None]:
        """The per-sample path for a position the batched pass left in doubt: (jpeg, height, width,
        label or None when the batched label stands), or the `DataError` that sample raises.
        `jpeg` is the batched read's bytes, None where the read itself must be done again."""
        if (shard_name, key) in self.substitute:
            raise DecodeError("cannot decode image", shard=shard_name, key=key)
        label = None
        if jpeg is None:
            members = self.source.read(shard, sample, exts).members
            jpeg = np.frombuffer(members["jpg"], dtype=np.uint8)
            if "cls" in members:
                label_bytes = np.frombuffer(members["cls"], dtype=np.uint8)
        height, width = check_image(jpeg.tobytes(), max_pixels=self.max_pixels, shard=shard_name, key=key)
        if label_bytes is not None:
            label = parse_label(label_bytes.tobytes(), shard=shard_name, key=key)
        return jpeg, height, width, label

    def draw_stage(self, batch: HostBatch) -> None:
        """(Re)draw the staged recipe's draws from the batch's current `valid` flags: called again
        when decoding marks a sample invalid, so that Jigsaw++ never borrows a placeholder's tile
        and every backend ends with the same draws as one that knew it at read time."""
        if isinstance(self.recipe, PredictionRecipe):
            batch.stage = sample_prediction_params(
                self.recipe, seed=self.plan.seed, epoch=self.plan.epoch, sample_ids=batch.sample_ids
            )
        elif isinstance(self.recipe, PatchRecipe):
            batch.stage = sample_patch_params(
                self.recipe,
                seed=self.plan.seed,
                epoch=self.plan.epoch,
                sample_ids=batch.sample_ids,
                gray=batch.params[0]["gray"],
                valid=batch.valid,
            )

"""Compile a recipe into one DALI graph: decode each JPEG once, cut every view from it, then per view
one resize (crop + flip through the ROI), one colour pass, blur, solarize, rotation and normalise.

Inputs arrive through `fn.external_source` (batch mode) from the epoch plan, with every random
parameter sampled per sample on the host (`fastssl.host.params`) and passed as per-sample argument
inputs; blur and solarize run under per-sample conditionals, so only the samples that drew them pay.
`device="cpu"` runs with `device_id=None`; `device="gpu"` decodes with nvJPEG (`mixed`).
"""

from __future__ import annotations

import io
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from time import perf_counter
from typing import Any

import numpy as np
import torch
from fastssl.pipelines.colour import colour_transform
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dali_math
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import feed_ndarray
from PIL import Image

from fastssl.errors import DecodeError, WorkerError
from fastssl.host.reader import BatchReader, HostBatch
from fastssl.recipes import Recipe, ViewSpec

# DALI takes the host side's arrays as they are instead of copying them at feed time (one copy of
# every encoded image fewer on the training thread); `DaliBackend` keeps them alive until used.
NO_COPY = True


def _needs(spec: ViewSpec) -> dict[str, bool]:
    """Which op groups a view can ever apply, so that a graph never holds an op it cannot use."""
    return {
        "colour": spec.p_jitter > 0 or spec.p_gray > 0,
        "blur": spec.p_blur > 0,
        "solarize": spec.p_solarize > 0,
    }


def view_inputs(spec: ViewSpec) -> tuple[str, ...]:
    """Names of the per-sample inputs one view's part of the graph reads, in feed order."""
    needs = _needs(spec)
    return (
        ("roi_start", "roi_end")
        + (("matrix", "v", "w") if needs["colour"] else ())
        + (("blur", "sigma") if needs["blur"] else ())
        + (("solarize",) if needs["solarize"] else ())
    )


def roi_decode(recipe: Recipe) -> bool:
    """Whether the graph decodes only each sample's crop box (one view: nothing else needs the rest
    of the image). libjpeg-turbo and nvJPEG then skip what lies outside it; the pixels inside are
    the same as a full decode's (tested)."""
    return len(recipe.graph_views()) == 1


def pack_inputs(recipe: Recipe, batch: HostBatch) -> tuple[Any, ...]:
    """The external_source outputs for one batch: the JPEGs (a list: they differ in length), with a
    ROI decode the crop boxes' anchors (x, y) and shapes (w, h), then `view_inputs` of every view,
    each one dense (B, ...) array rather than B small ones."""
    columns: list[Any] = [batch.jpegs]
    roi = roi_decode(recipe)
    for spec, params in zip(recipe.graph_views(), batch.params, strict=True):
        names = view_inputs(spec)
        crop = params["crop"].astype(np.float32)
        top, left, height, width = crop[:, 0], crop[:, 1], crop[:, 2], crop[:, 3]
        if roi:  # the decoder cuts the box; the resize then takes all of it
            columns += [np.stack([left, top], axis=1), np.stack([width, height], axis=1)]
            top, left = np.zeros_like(top), np.zeros_like(left)
        # DALI's resize flips a dimension whose ROI end lies before its start.
        flip = params["flip"]
        starts = np.stack([top, np.where(flip, left + width, left)], axis=1)
        ends = np.stack([top + height, np.where(flip, left, left + width)], axis=1)
        columns += [starts, ends]
        if "matrix" in names:
            columns += list(colour_transform(params["jitter"], params["jitter_order"], params["gray"]))
        if "blur" in names:
            columns.append(np.ascontiguousarray(params["blur"]))
            columns.append(np.maximum(params["blur_sigma"], np.float32(1e-3)).astype(np.float32))
        if "solarize" in names:
            columns.append(np.ascontiguousarray(params["solarize"]))
    return tuple(columns)


def _rotate(image: Any, quarter_turns: int) -> Any:
    """Counter-clockwise rotation by quarter turns (np.rot90's direction). fn.flip flips
    horizontally unless told otherwise, so both flags are always given."""
    if quarter_turns == 0:
        return image
    if quarter_turns == 2:
        return fn.flip(image, horizontal=1, vertical=1)
    transposed = fn.transpose(image, perm=[1, 0, 2], transpose_layout=False)
    return fn.flip(transposed, horizontal=int(quarter_turns == 3), vertical=int(quarter_turns == 1))


def build_pipeline(
    recipe: Recipe,
    source: Callable[[], tuple[list[Any], ...]],
    *,
    batch_size: int,
    device: str = "cpu",
    num_threads: int = 2,
    device_id: int | None = None,
    prefetch: int = 2,
    seed: int = 0,
) -> Pipeline:
    """A built DALI pipeline whose outputs are the recipe's views, in order.

    `source` is called once per batch and returns `pack_inputs(...)`; it raises StopIteration at
    the end of the epoch. Views come out CHW: float32 normalised (also for "bfloat16", which the
    loader converts, DALI having no bfloat16) or uint8 unnormalised.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    views = recipe.graph_views()
    mean = [255.0 * m for m in recipe.mean]
    std = [255.0 * s for s in recipe.std]

    @pipeline_def(enable_conditionals=True)
    def graph():  # noqa: ANN202 - DALI traces this function
        names = [view_inputs(spec) for spec in views]
        roi = roi_decode(recipe)
        inputs = fn.external_source(
            source=source, num_outputs=1 + 2 * roi + sum(len(n) for n in names), batch=True,
            cycle=None, no_copy=NO_COPY,
        )  # fmt: skip
        decoder = "mixed" if device == "gpu" else "cpu"
        if roi:  # only the crop box is decoded; the view's ROI is then relative to it
            decoded = fn.decoders.image_slice(
                inputs[0], inputs[1], inputs[2], device=decoder, output_type=types.RGB,
                normalized_anchor=False, normalized_shape=False,
            )  # fmt: skip
        else:
            decoded = fn.decoders.image(inputs[0], device=decoder, output_type=types.RGB)
        outputs = []
        position = 1 + 2 * roi
        # DALI's autograph rewrites zip() without `strict`; lengths match by construction.
        for spec, view_names in zip(views, names):  # noqa: B905
            got = dict(zip(view_names, inputs[position : position + len(view_names)]))  # noqa: B905
            position += len(view_names)
            needs = _needs(spec)
            view = fn.resize(
                decoded,
                roi_start=got["roi_start"],
                roi_end=got["roi_end"],
                size=[spec.size, spec.size],
                antialias=True,
                dtype=types.UINT8,
            )
            if needs["colour"]:
                view = _colour(view, got["matrix"], got["v"], got["w"], device)
            if needs["blur"]:
                view = _blur_where(view, got["blur"], got["sigma"])
            if needs["solarize"]:
                view = _solarize_where(view, got["solarize"], spec.solarize_threshold)
            view = _rotate(view, spec.rotation)
            if recipe.view_dtype == "uint8":
                outputs.append(fn.transpose(view, perm=[2, 0, 1]))
            else:
                outputs.append(
                    fn.crop_mirror_normalize(view, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std)
                )
        return tuple(outputs)

    pipe = graph(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if device == "gpu" else None,
        prefetch_queue_depth=prefetch,
        seed=seed,
        exec_dynamic=True,
    )
    pipe.build()
    return pipe


def _colour(view: Any, matrix: Any, vec_v: Any, vec_w: Any, device: str) -> Any:
    """out = M x + v (w . mu): jitter and grayscale in one pass (see fastssl.pipelines.colour)."""
    mu = fn.reductions.mean(view, axes=(0, 1))
    offset = vec_v * fn.reductions.sum(vec_w * mu)
    if device == "cpu":
        return fn.coord_transform(view, M=matrix, T=offset, dtype=types.UINT8)
    # On the GPU the offset is a GPU tensor, which argument inputs cannot take: add it instead.
    linear = fn.coord_transform(view, M=matrix, dtype=types.FLOAT)
    return fn.cast(dali_math.clamp(linear + offset, 0.0, 255.0) + 0.5, dtype=types.UINT8)


def _blur_where(view: Any, blur: Any, sigma: Any) -> Any:
    # Window spans 3 sigma each side (DALI's default for a given sigma), reflect-101 borders.
    if blur:
        view = fn.gaussian_blur(view, sigma=sigma)
    return view


def _solarize_where(view: Any, solarize: Any, threshold: float) -> Any:
    level = math.ceil(threshold * 255 - 1e-9)  # uint8 values at or above threshold * 255
    if solarize:
        view = view ^ ((view >= level) * np.uint8(255))
    return view


def undecodable(batch: HostBatch) -> list[int]:
    """Positions in `batch` whose bytes PIL cannot fully decode: used to name the sample behind a
    decoder failure inside the DALI graph, whose own error does not say which sample it was."""
    bad = []
    for i, jpeg in enumerate(batch.jpegs):
        try:
            with Image.open(io.BytesIO(jpeg.tobytes())) as image:
                image.load()
        except Exception:  # noqa: BLE001 - any failure to decode marks the sample
            bad.append(i)
    return bad


class HostAhead:
    """The host side of the next batches (bytes, header probes, parameter draws, packed inputs),
    built on a worker thread ahead of DALI's callback, in order (GPU graphs; inline on the CPU).
    The callback runs on the thread that calls `pipe.run()`, the training thread: building
    batches there serialised them with the training step (ResNet-50 on an H100 ran at 0.57x its
    synthetic-data rate)."""

    def __init__(
        self, work: Callable[[int], Any], numbers: Sequence[int], depth: int, threaded: bool
    ) -> None:
        self._work = work
        self._numbers = iter(numbers)
        # one thread: the reader's ByteSource (its cache of open shard files) is not thread-safe
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fastssl-host") if threaded else None
        self._queue: deque[Future] = deque()
        for _ in range(depth if threaded else 0):
            self._submit()

    def _submit(self) -> None:
        number = next(self._numbers, None)
        if number is not None:
            self._queue.append(self._pool.submit(self._work, number))

    def next(self) -> Any:
        """The next batch's result (its exception re-raised); StopIteration after the last."""
        if self._pool is None:
            return self._work(next(self._numbers))
        if not self._queue:
            raise StopIteration
        future = self._queue.popleft()
        self._submit()
        return future.result()

    def close(self) -> None:
        """Cancel what has not started and wait for what has, so nothing reads after this."""
        self._queue.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class DaliBackend:
    """Runs a recipe's DALI graph over the batches of an epoch plan, in the plan's order.

    A graph is built on first use and reset between complete epochs; an epoch abandoned midway, or
    a graph that failed, is rebuilt. A decoder failure is traced to its sample by decoding the
    batches in flight with PIL: with `on_error="raise"` it becomes a `DecodeError` naming shard and
    key, with "skip" the sample is replaced (valid=False, listed in `skipped`) and the run goes on
    from the failed batch on a fresh graph.
    """

    def __init__(
        self,
        recipe: Recipe,
        *,
        device: str,
        batch_size: int,
        num_threads: int,
        prefetch: int,
        device_id: int | None = None,
        seed: int = 0,
        timings: dict[str, float] | None = None,
    ) -> None:
        self.recipe = recipe
        self.timings = timings  # seconds per stage, when profiling
        self.device = device
        self.target = torch.device("cuda", device_id or 0) if device == "gpu" else torch.device("cpu")
        self.options = dict(
            batch_size=batch_size,
            device=device,
            num_threads=num_threads,
            device_id=device_id,
            prefetch=prefetch,
            seed=seed,
        )
        self._pipe: Pipeline | None = None
        self._clean = False  # True when the graph finished an epoch and was reset
        self._pending: deque[HostBatch] = deque()
        self._ahead: HostAhead | None = None
        self._reader: BatchReader | None = None
        self._error: BaseException | None = None

    def _host(self, number: int) -> tuple[HostBatch, tuple[list[Any], ...]]:
        try:
            batch = self._reader(number)
            start = perf_counter()
            packed = pack_inputs(self.recipe, batch)
            if self.timings is not None:
                self.timings["pack"] = self.timings.get("pack", 0.0) + perf_counter() - start
            return batch, packed
        except StopIteration as err:  # would end DALI's epoch silently
            raise RuntimeError(f"batch {number}: unexpected StopIteration") from err

    def _source(self) -> tuple[list[Any], ...]:
        try:
            batch, packed = self._ahead.next()  # StopIteration ends the epoch for DALI
        except StopIteration:
            raise
        except BaseException as err:  # kept: DALI wraps errors raised in its callback
            self._error = err
            raise
        # With no_copy DALI reads these arrays in place until the batch's outputs come out of
        # pipe.run(): the pending batch keeps them (and the buffer its JPEGs are views of) alive.
        batch.fed = packed
        self._pending.append(batch)
        return packed

    def _start(self, reader: BatchReader, numbers: Sequence[int]) -> None:
        if self._pipe is not None and self._clean:
            self._pipe.reset()
        else:
            self.close()
            self._pipe = build_pipeline(self.recipe, self._source, **self.options)
        self._clean = False
        if self._ahead is not None:
            self._ahead.close()
        self._reader = reader
        self._pending.clear()
        self._error = None
        # Read ahead on a thread only for GPU graphs, where it overlaps the training step. On the
        # CPU it gains nothing (DALI's threads have the cores), and a Python thread that may be
        # mid-read when another loader forks its decode workers risks a deadlocked child.
        self._ahead = HostAhead(
            self._host, list(numbers), depth=self.options["prefetch"] + 2, threaded=self.device == "gpu"
        )

    def run(
        self, reader: BatchReader, numbers: Sequence[int]
    ) -> Iterator[tuple[HostBatch, list[torch.Tensor]]]:
        remaining = list(numbers)
        self._start(reader, remaining)
        timings = self.timings
        host_stages = ("read", "checks", "labels", "params", "pack")
        while True:
            if timings is not None:
                host_before = sum(timings.get(k, 0.0) for k in host_stages)
                start = perf_counter()
            try:
                outputs = self._pipe.run()
            except StopIteration:
                self._pipe.reset()
                self._clean = True
                return
            except Exception as err:
                if self._error is not None:
                    raise self._error from None
                resume_at = self._recover(reader, err)
                remaining = remaining[remaining.index(resume_at) :]
                self._start(reader, remaining)
                continue
            batch = self._pending.popleft()
            remaining.pop(0)
            if timings is None:
                yield batch, [_to_torch(out, self.target) for out in outputs]
                continue
            # on CPU graphs the host side runs inside pipe.run() (DALI's callback): not decode time;
            # on GPU graphs it runs on its own thread, beside pipe.run()
            ran = perf_counter() - start
            if self.device == "cpu":
                ran -= sum(timings.get(k, 0.0) for k in host_stages) - host_before
            timings["decode + views"] = timings.get("decode + views", 0.0) + ran
            start = perf_counter()
            views = [_to_torch(out, self.target) for out in outputs]
            timings["to_torch"] = timings.get("to_torch", 0.0) + perf_counter() - start
            yield batch, views

    def _recover(self, reader: BatchReader, err: Exception) -> int:
        """After a failed graph: name the culprit (raise) or mark it for substitution (skip);
        returns the batch number to resume from."""
        self.close()
        found = 0
        for batch in self._pending:
            for i in undecodable(batch):
                if reader.on_error == "raise":
                    raise DecodeError(
                        "cannot decode image (DALI decoder failed; PIL confirms the data is bad)",
                        shard=batch.shards[i],
                        key=batch.keys[i],
                    ) from err
                reader.substitute.add((batch.shards[i], batch.keys[i]))
                found += 1
        if found:  # only a newly found culprit makes a retry worth it; else the failure is reported
            return self._pending[0].number
        keys = [k for b in self._pending for k in b.keys]
        raise WorkerError(
            f"DALI pipeline failed on batches holding samples {keys[:8]}..., and PIL decodes every "
            f"one of them: {err}"
        ) from err

    def close(self) -> None:
        """Shut the graph down now (its threads and buffers), and the host-side threads.

        Now, not when the garbage collector reaches it: DALI's pipeline sits in reference cycles,
        and a process forked before the collector ran (a Kornia decode worker) would run its
        destructor there, waiting on threads that exist only in the parent."""
        if self._pipe is not None:
            self._pipe._shutdown()  # what Pipeline.__del__ does; idempotent
        self._pipe = None
        self._clean = False
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None


def _to_torch(output: Any, device: torch.device) -> torch.Tensor:
    """One view's batch as a torch tensor owned by torch: DALI reuses its buffers at the next run,
    so the data is copied once, into host memory or into the pipeline's own GPU's memory."""
    tensor = output.as_tensor()
    dtype = {types.FLOAT: torch.float32, types.UINT8: torch.uint8}[tensor.dtype]
    target = torch.empty(tensor.shape(), dtype=dtype, device=device)
    feed_ndarray(tensor, target)
    return target

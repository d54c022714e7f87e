"""Compile a recipe into one DALI graph: decode each JPEG once, cut every view from it, then per view
one resize (crop + flip through the ROI), one colour pass, blur, solarize, rotation and normalise.
That is the GPU graph. On the CPU the graph only decodes, and `HostFinish`
(`fastssl.pipelines.host_finish`) makes every view from the decoded image in one fused compiled
pass, written into the tensors the loader yields: DALI's CPU ops cost ten times as much.

Inputs arrive through one `fn.external_source` (batch mode) as dense arrays built by feeder
processes into shared slots (`fastssl.host.feeder`): the JPEGs, one per row of a (B, R) uint8
array, and every per-sample parameter of every view in one (B, K) float32 array (`param_layout`),
sampled on the host from the counter hash (`fastssl.host.params`) and split into argument inputs
inside the graph. Blur and solarize run under per-sample conditionals, so only the samples that
drew them pay. `device="cpu"` runs with `device_id=None`; `device="gpu"` decodes with nvJPEG
(`mixed`), from rows cut to each JPEG's size first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from time import perf_counter, thread_time
from typing import Any

import numpy as np
import torch
from fastssl.pipelines.colour import colour_transform
from fastssl.pipelines.host_finish import HostFinish
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dali_math
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import feed_ndarray
from PIL import Image

from fastssl.data.plan import EpochPlan, PlanState
from fastssl.data.source import ByteSource
from fastssl.errors import DataError, DecodeError, WorkerError
from fastssl.host.ahead import RunAhead
from fastssl.host.feeder import Feeders
from fastssl.host.reader import PLACEHOLDER, BatchReader, HostBatch
from fastssl.host.slots import Slot
from fastssl.recipes import Recipe, ViewSpec

# the next run, as the run-ahead thread asks for it: (reader, batch numbers), or None for none
Following = Callable[[], "tuple[BatchReader, Sequence[int]] | None"]

PLACEHOLDER_SIZE = len(PLACEHOLDER)
_WARMED: set[tuple] = set()  # kinds of batch this process has built once (`DaliBackend._warm`)

# widths of the per-sample parameters the graph reads, in float32 columns
_WIDTHS = {
    "anchor": 2, "shape": 2, "roi_start": 2, "roi_end": 2, "matrix": 9, "v": 3, "w": 3,
    "blur": 1, "sigma": 1, "solarize": 1,
}  # fmt: skip


def _needs(spec: ViewSpec) -> dict[str, bool]:
    """Which op groups a view can ever apply, so that a graph never holds an op it cannot use."""
    return {
        "colour": spec.p_jitter > 0 or spec.p_gray > 0,
        "blur": spec.p_blur > 0,
        "solarize": spec.p_solarize > 0,
    }


def view_inputs(spec: ViewSpec) -> tuple[str, ...]:
    """Names of the per-sample parameters one view's part of the graph reads."""
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


def param_layout(recipe: Recipe) -> tuple[list[dict[str, slice]], int]:
    """Where each view's parameters sit in the (B, K) parameter array: one {name: columns} per
    view (with a ROI decode, view 0 also has the decoder's `anchor` (x, y) and `shape` (w, h)),
    and K."""
    layout, at = [], 0
    for v, spec in enumerate(recipe.graph_views()):
        names = (("anchor", "shape") if v == 0 and roi_decode(recipe) else ()) + view_inputs(spec)
        columns = {}
        for name in names:
            columns[name] = slice(at, at + _WIDTHS[name])
            at += _WIDTHS[name]
        layout.append(columns)
    return layout, at


def pack_params(recipe: Recipe, batch: HostBatch, out: np.ndarray) -> np.ndarray:
    """Write the graph's parameters of `batch` into `out` ((B, K) float32, `param_layout`)."""
    layout, _ = param_layout(recipe)
    n = len(batch)
    for columns, params in zip(layout, batch.params, strict=True):

        def put(name: str, value: np.ndarray, columns: dict[str, slice] = columns) -> None:
            out[:n, columns[name]] = np.asarray(value, np.float32).reshape(n, -1)

        crop = params["crop"].astype(np.float32)
        top, left, height, width = crop[:, 0], crop[:, 1], crop[:, 2], crop[:, 3]
        if "anchor" in columns:  # the decoder cuts the box; the resize then takes all of it
            put("anchor", np.stack([left, top], axis=1))
            put("shape", np.stack([width, height], axis=1))
            top, left = np.zeros_like(top), np.zeros_like(left)
        # DALI's resize flips a dimension whose ROI end lies before its start.
        flip = params["flip"]
        put("roi_start", np.stack([top, np.where(flip, left + width, left)], axis=1))
        put("roi_end", np.stack([top + height, np.where(flip, left, left + width)], axis=1))
        if "matrix" in columns:
            matrix, vec_v, vec_w = colour_transform(params["jitter"], params["jitter_order"], params["gray"])
            put("matrix", matrix)
            put("v", vec_v)
            put("w", vec_w)
        if "blur" in columns:
            put("blur", params["blur"])
            put("sigma", np.maximum(params["blur_sigma"], np.float32(1e-3)))
        if "solarize" in columns:
            put("solarize", params["solarize"])
    return out


def build_batch(recipe: Recipe, reader: BatchReader, number: int, slot: Slot) -> HostBatch:
    """Batch `number` built into `slot`, everything the graph reads: the JPEGs into its rows, the
    parameters and the JPEGs' sizes into its arrays. Returns the batch without its bytes (with
    the time of packing in `reader.timings` when the reader keeps timings)."""
    batch = reader(number, into=slot)
    start = perf_counter()
    pack_params(recipe, batch, slot.params)
    slot.sizes[: len(batch), 0] = batch.sizes
    if reader.timings is not None:
        reader.timings["pack"] = reader.timings.get("pack", 0.0) + perf_counter() - start
    return batch


def slot_shape(
    recipe: Recipe, source: ByteSource, batch_size: int, labelled: bool
) -> tuple[int, int, int, int, int]:
    """`Slot`'s arguments for any batch of `source`'s data set: batch size, its largest JPEG and
    label, the recipe's parameter columns, label rows."""
    others = int(labelled)
    return (
        batch_size, max(source.largest_member("jpg"), PLACEHOLDER_SIZE),
        source.largest_member("cls") if others else 0, param_layout(recipe)[1], others,
    )  # fmt: skip


def graph_inputs(recipe: Recipe, device: str) -> int:
    """How many of (rows, params, sizes) a graph reads: on the GPU all three; on the CPU the
    parameters only for a ROI decode (the views are made on the host)."""
    if device == "gpu":
        return 3
    return 2 if roi_decode(recipe) else 1


def slot_count(prefetch: int, host_workers: int) -> int:
    """Slots a backend needs: DALI's queue and the batch in `run()`, one ready, one per feeder."""
    return prefetch + 2 + host_workers


def _rotate(image: Any, quarter_turns: int) -> Any:
    """Counter-clockwise rotation by quarter turns (np.rot90's direction). fn.flip flips
    horizontally unless told otherwise, so both flags are always given."""
    if quarter_turns == 0:
        return image
    if quarter_turns == 2:
        return fn.flip(image, horizontal=1, vertical=1)
    transposed = fn.transpose(image, perm=[1, 0, 2], transpose_layout=False)
    return fn.flip(transposed, horizontal=int(quarter_turns == 3), vertical=int(quarter_turns == 1))


@dataclass(frozen=True)
class GpuDecoder:
    """nvJPEG settings of GPU graphs (`SSLLoader(gpu_decoder=...)`); the defaults are DALI's.

    `hw_decoder_load` is the share of each batch sent to the A100/H100 hardware JPEG decoder (the
    rest runs on CUDA cores, its Huffman stage on the host threads). The paddings are what nvJPEG
    adds to each of its device and pinned host buffers when they grow, the hints the image size
    its buffers are allocated for up front: they bound how often buffers are reallocated, not how
    much device memory the decoder may hold (DALI has no such cap; `fastssl bench` reports the peak).
    """

    hw_decoder_load: float = 0.65
    device_memory_padding: int = 16 << 20
    host_memory_padding: int = 8 << 20
    preallocate_width_hint: int = 0
    preallocate_height_hint: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ValueError(f"hw_decoder_load must lie in [0, 1], got {self.hw_decoder_load}")
        for name in ("device_memory_padding", "host_memory_padding", "preallocate_width_hint",
                     "preallocate_height_hint"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")


def build_pipeline(
    recipe: Recipe,
    source: Callable[[], tuple[np.ndarray, ...]],
    *,
    batch_size: int,
    device: str = "cpu",
    num_threads: int = 2,
    device_id: int | None = None,
    prefetch: int = 2,
    seed: int = 0,
    gpu_decoder: GpuDecoder | None = None,
) -> Pipeline:
    """A built DALI pipeline whose outputs are the recipe's views, in order.

    `source` is called once per batch and returns the first `graph_inputs(recipe, device)` of
    (rows, params, sizes): the JPEGs one per row of a (B, R) uint8 array, `param_layout`'s (B, K)
    float32 array and the JPEGs' sizes (B, 1) int32; it raises StopIteration at the end of the
    epoch. On the GPU views come out CHW: float32 normalised (also for "bfloat16", which the loader
    converts, DALI having no bfloat16) or uint8 unnormalised. On the CPU the graph only decodes
    (the crop box with a ROI decode): its one output is the decoded images, uint8 HWC, from which
    `HostFinish` makes the views in one fused pass (DALI's CPU resize, colour, blur and normalise
    ops cost ten times as much).
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    views = recipe.graph_views()
    mean = [255.0 * m for m in recipe.mean]
    std = [255.0 * s for s in recipe.std]
    layout, _ = param_layout(recipe)
    host_finish = device == "cpu"
    decoder_args = {}
    if device == "gpu":
        decoder_args = dataclasses.asdict(gpu_decoder or GpuDecoder())

    @pipeline_def(enable_conditionals=True)
    def graph():  # noqa: ANN202 - DALI traces this function
        inputs = fn.external_source(
            source=source, num_outputs=graph_inputs(recipe, device), batch=True, cycle=None,
            no_copy=True,
        )  # fmt: skip
        rows, params = inputs[0], (inputs[1] if len(inputs) > 1 else None)

        def column(v: int, name: str) -> Any:
            cut = layout[v][name]
            if cut.stop - cut.start == 1:
                return params[cut.start]
            if name == "matrix":
                return fn.reshape(params[cut.start : cut.stop], shape=[3, 3])
            return params[cut.start : cut.stop]

        if device == "gpu":  # nvJPEG gets each JPEG's bytes only, not the rest of its row
            rows = fn.slice(
                rows, 0, inputs[2], axes=[0], normalized_anchor=False, normalized_shape=False
            )  # fmt: skip
        decoder = "mixed" if device == "gpu" else "cpu"
        # On the CPU, libjpeg-turbo stops at the end-of-image marker: the rest of a row is unread.
        if "anchor" in layout[0]:  # only the crop box is decoded; the view's ROI is then relative to it
            decoded = fn.decoders.image_slice(
                rows, column(0, "anchor"), column(0, "shape"), device=decoder,
                output_type=types.RGB, normalized_anchor=False, normalized_shape=False,
                **decoder_args,
            )  # fmt: skip
        else:
            decoded = fn.decoders.image(rows, device=decoder, output_type=types.RGB, **decoder_args)
        if host_finish:  # the views are made on the host, fused (`fastssl.pipelines.host_finish`)
            return (decoded,)
        outputs = []
        for v, spec in enumerate(views):
            needs = _needs(spec)
            view = fn.resize(
                decoded,
                roi_start=column(v, "roi_start"),
                roi_end=column(v, "roi_end"),
                size=[spec.size, spec.size],
                antialias=True,
                dtype=types.UINT8,
            )
            if needs["colour"]:
                view = _colour(view, column(v, "matrix"), column(v, "v"), column(v, "w"))
            if needs["blur"]:
                view = _blur_where(view, column(v, "blur"), column(v, "sigma"))
            if needs["solarize"]:
                view = _solarize_where(view, column(v, "solarize"), spec.solarize_level)
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
        # On the CPU the classic executor: it recycles its output buffers (read by `HostFinish`
        # before the next run), where the dynamic one maps fresh pages for every batch of decoded
        # images (5,500 page faults per batch of 64 SimCLR samples against 125).
        exec_dynamic=device == "gpu",
    )
    pipe.build()
    return pipe


def _colour(view: Any, matrix: Any, vec_v: Any, vec_w: Any) -> Any:
    """out = M x + v (w . mu): jitter and grayscale in one pass (see fastssl.pipelines.colour), on
    the GPU (CPU graphs leave it to `HostFinish`)."""
    mu = fn.reductions.mean(view, axes=(0, 1))
    offset = vec_v * fn.reductions.sum(vec_w * mu)
    # The offset is a GPU tensor, which argument inputs cannot take: add it instead.
    linear = fn.coord_transform(view, M=matrix, dtype=types.FLOAT)
    return fn.cast(dali_math.clamp(linear + offset, 0.0, 255.0) + 0.5, dtype=types.UINT8)


def _blur_where(view: Any, blur: Any, sigma: Any) -> Any:
    # Window spans 3 sigma each side (DALI's default for a given sigma), reflect-101 borders.
    if fn.cast(blur, dtype=types.BOOL):
        view = fn.gaussian_blur(view, sigma=sigma)
    return view


def _solarize_where(view: Any, solarize: Any, level: int) -> Any:
    if fn.cast(solarize, dtype=types.BOOL):
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


class _FeederJob:
    """What each feeder runs (`fastssl.host.feeder.Job`): the batches of the run's epoch, built into
    slots. Forked with the loader's reader; each run's `setup` brings the epoch's plan (rebuilt
    from its state, the same plan) and the samples to substitute."""

    def __init__(self, recipe: Recipe, reader: BatchReader, profile: bool) -> None:
        self.recipe, self.reader, self.profile = recipe, reader, profile

    def setup(self, message: tuple) -> None:
        """(plan state, samples to substitute, shard verdicts, (subset or draw, repeats), labels by id)."""
        state, substitute, verdicts, (subset, repeats), label_table = message
        template = self.reader
        template.source.adopt(verdicts)  # shards the parent verified since this feeder forked
        plan = EpochPlan.from_state(
            template.source.manifest, PlanState.from_dict(state), subset=subset, repeats=repeats
        )
        self.reader = BatchReader(
            template.source.manifest, plan, self.recipe, on_error=template.on_error,
            max_pixels=template.max_pixels, source=template.source, ahead=template.ahead,
            label_table=label_table,
        )  # fmt: skip
        self.reader.substitute = set(substitute)

    def __call__(self, number: int, slot: Slot) -> tuple[HostBatch, dict | None]:
        """`build_batch`, with the seconds of each host stage when profiling. The parameter dicts
        stay behind unless the consumer yields them (a third of what is pickled)."""
        reader = self.reader
        reader.timings = {} if self.profile else None
        batch = build_batch(self.recipe, reader, number, slot)
        if not self.recipe.batch_params:
            batch.params = []
        return batch, reader.timings


_RUN_ENDS = object()  # from the run-ahead thread: the batches of one run end here


class DaliBackend:
    """Runs a recipe's DALI graph over the batches of an epoch plan, in the plan's order.

    The host side of every batch runs in `host_workers` feeder processes (`fastssl.host.feeder`),
    which build it into shared slots ahead of the graph; DALI's callback, on the thread that calls
    `pipe.run()` (the training thread), only hands a ready slot over. A graph is built on first
    use and reset between complete epochs; an epoch abandoned midway, or a graph that failed, is
    rebuilt. A decoder failure is traced to its sample by decoding the batches in flight with PIL:
    with `on_error="raise"` it becomes a `DecodeError` naming shard and key, with "skip" the sample
    is replaced (valid=False, listed in `skipped`) and the run goes on from the failed batch on a
    fresh graph.
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
        host_workers: int = 1,
        gpu_decoder: GpuDecoder | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        self.recipe = recipe
        self.timings = timings  # seconds per stage, when profiling
        self.device = device
        self.host_workers = host_workers
        self.target = torch.device("cuda", device_id or 0) if device == "gpu" else torch.device("cpu")
        self.options = dict(
            batch_size=batch_size,
            device=device,
            num_threads=num_threads,
            device_id=device_id,
            prefetch=prefetch,
            seed=seed,
            gpu_decoder=gpu_decoder,
        )
        self._pipe: Pipeline | None = None
        self._clean = False  # True when the graph finished an epoch and was reset
        self._pending: deque[HostBatch] = deque()  # fed to the graph, outputs not out yet
        self._slots: list[Slot] = []
        self._feeders: Feeders | None = None  # forked at the first run, kept for the next ones
        self._running = False  # whether the current run has batches
        self._error: BaseException | None = None
        self._fed_seconds = 0.0  # spent in the callback since the last pipe.run() began
        # on the CPU the graph only decodes; the views are one fused pass on the host
        self._inputs = graph_inputs(recipe, device)
        self._finish = None
        if device == "cpu":  # tensors for the batches ahead, the consumer's and the one in the making
            self._finish = HostFinish(recipe, param_layout(recipe)[0], num_threads, keep=prefetch + 2)
        self._ahead: RunAhead | None = None  # the CPU path's graph and view pass, ahead of the consumer
        # makes the run expected next, called in the run-ahead thread when this one's graph runs dry
        self._following: Following | None = None
        self._continues: tuple[int, list[int]] | None = None  # (id of its reader, batches) once started
        self._assemble: Callable[[HostBatch, list[torch.Tensor]], Any] | None = None  # run(assemble=)

    def _source(self) -> tuple[np.ndarray, ...]:
        start = perf_counter()
        if not self._running:  # nothing to read in this run
            raise StopIteration
        try:
            _, index, (batch, stages) = self._feeders.next()  # StopIteration ends DALI's epoch
        except StopIteration:
            raise
        except BaseException as err:  # kept: DALI wraps errors raised in its callback
            self._error = err
            raise
        # DALI reads the slot in place (no_copy) until this batch's outputs come out of pipe.run():
        # only then is the slot given back to the feeders.
        batch.fed = index
        self._pending.append(batch)
        slot, n = self._slots[index], len(batch)
        inputs = (slot.rows[:n], slot.params[:n], slot.sizes[:n])[: self._inputs]
        if self.timings is not None:
            for name, seconds in (stages or {}).items():
                self.timings[name] = self.timings.get(name, 0.0) + seconds
            spent = perf_counter() - start
            self.timings["feed"] = self.timings.get("feed", 0.0) + spent
            self._fed_seconds += spent
        return inputs

    def _ensure_feeders(self, reader: BatchReader, first: int) -> None:
        """Feeders (and their slots) that can build every batch of the data set: the ones there are
        while they live, else new ones, forked after one batch was built here (`_warm`)."""
        if self._feeders is not None and self._feeders.alive:
            return
        self._stop_feeders()
        shape = slot_shape(self.recipe, reader.source, self.options["batch_size"], reader.labelled)
        count = slot_count(self.options["prefetch"], self.host_workers)
        if len(self._slots) != count or not all(slot.fits(*shape) for slot in self._slots):
            self._slots = []  # unmapped once DALI and the old feeders let go of them
            self._slots = [Slot(*shape) for _ in range(count)]
        self._warm(reader, first)
        job = _FeederJob(self.recipe, reader, profile=self.timings is not None)
        self._feeders = Feeders(job, self._slots, self.host_workers)

    def _warm(self, reader: BatchReader, number: int) -> None:
        """Build one batch here, once per process and kind of batch, and throw it away: the compiled
        kernels it runs are then loaded in this process, and every feeder forked from it has them
        (else each feeder loads them from Numba's cache when it starts: 0.7 s per epoch here)."""
        needs = tuple(tuple(sorted(_needs(spec).items())) for spec in self.recipe.graph_views())
        kind = (type(self.recipe), needs, reader.labelled)
        if kind in _WARMED:
            return
        timings, reader.timings = reader.timings, None
        try:
            with contextlib.suppress(DataError):  # raised again, in order, by the feeder
                build_batch(self.recipe, reader, number, self._slots[0])
        finally:
            reader.timings = timings
        _WARMED.add(kind)

    def _start(self, reader: BatchReader, numbers: Sequence[int]) -> None:
        if self._pipe is not None and self._clean:
            self._pipe.reset()
        else:  # an epoch abandoned midway or a failed graph: a new graph, the same feeders
            self._close_pipe()
            self._pipe = build_pipeline(self.recipe, self._source, **self.options)
        self._clean = False
        self._pending.clear()
        self._error = None
        self._running = bool(len(numbers))
        if self._running:
            self._ensure_feeders(reader, numbers[0])
            plan = reader.plan
            setup = (
                plan.state(0).to_dict(), set(reader.substitute), reader.source.verdicts(),
                (plan.subset, plan.repeats), reader.label_table,
            )  # fmt: skip
            self._feeders.start(numbers, setup)

    def run(
        self,
        reader: BatchReader,
        numbers: Sequence[int],
        following: Following | None = None,
        assemble: Callable[[HostBatch, list[torch.Tensor]], Any] | None = None,
    ) -> Iterator[tuple[HostBatch, Any]]:
        """(host batch, views) for batch `numbers` of the reader's plan, in order.

        The graph is built and the feeders started here, on the caller's thread (feeders are forked
        from it). On a GPU the caller's thread then runs the graph (its outputs are device buffers,
        copied out on the caller's stream); on the CPU a thread does (`RunAhead`), with the view
        pass, up to `prefetch` batches ahead, so the consumer's step overlaps them. `following`
        (CPU) makes the run expected next, the next epoch's reader and batches (or None for none):
        the thread calls it and starts that run as soon as this run's last batch is out of the
        graph (so the next epoch's plan is built there too), and a `run()` called with that same
        reader and batches continues with what it made, so the epoch boundary costs the consumer
        no wait. Any other next run, or `close()`, stops that thread first. `assemble(batch,
        views)` (CPU) is applied in that thread too, and its result yielded in place of the views:
        the loader's batch dict and a staged recipe's stage are then built ahead as well."""
        remaining = list(numbers)
        continued = self._ahead is not None and self._continues == (id(reader), remaining)
        if not continued:
            self._stop_ahead()  # an abandoned run's thread may still be inside the graph
            self._start(reader, remaining)
        self._continues = None
        self._following = following if self._finish is not None else None
        self._assemble = assemble if self._finish is not None else None
        if self._finish is None:
            yield from self._batches(reader, remaining)
            return
        if not continued:
            self._ahead = RunAhead(self._chain(reader, remaining), depth=self.options["prefetch"],
                                   name="fastssl-cpu-views")  # fmt: skip
        ahead, handed_on = self._ahead, False
        try:
            for item in ahead:
                if item is _RUN_ENDS:  # this run is done; the thread may have gone on to the next
                    handed_on = self._continues is not None
                    return
                yield item
        finally:
            if not handed_on:
                self._stop_ahead()

    @property
    def runs_ahead(self) -> bool:
        """Whether runs go in a thread ahead of the consumer (CPU graphs), and `run()` takes the
        run expected next (`following`)."""
        return self._finish is not None

    def _chain(self, reader: BatchReader, remaining: list[int]) -> Iterator[Any]:
        """The run-ahead thread's work: this run's batches, the end marker, then the following run
        (the one named by the latest `run()` when this one's graph ran dry), and so on."""
        while True:
            yield from self._batches(reader, remaining)
            prepare, self._following = self._following, None
            following = prepare() if prepare is not None else None
            if following is not None:
                reader, remaining = following[0], list(following[1])
                self._continues = (id(reader), list(remaining))
            yield _RUN_ENDS
            if following is None:
                return
            self._start(reader, remaining)

    def _stop_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None
        self._continues = None

    def _batches(
        self, reader: BatchReader, remaining: list[int]
    ) -> Iterator[tuple[HostBatch, list[torch.Tensor]]]:
        """The graph's runs over `remaining` (started by `_start`), recovering from decoder failures."""
        timings = self.timings
        while True:
            self._fed_seconds = 0.0
            start = perf_counter()
            try:
                outputs = self._pipe.run()
            except StopIteration:
                self._pipe.reset()
                self._clean = True
                return
            except Exception as err:
                if self._error is not None:  # the feeders' (they are replaced if one died)
                    raise self._error from None
                resume_at = self._recover(reader, err)
                remaining = remaining[remaining.index(resume_at) :]
                self._start(reader, remaining)
                continue
            batch = self._pending.popleft()
            remaining.pop(0)
            if timings is None:
                views = self._finished(batch, self._views(outputs, batch))
                self._feeders.release(batch.fed)
                yield batch, views
                continue
            # DALI calls the callback (`feed`) from inside pipe.run(): not decode time
            ran = perf_counter() - start - self._fed_seconds
            timings["decode + views"] = timings.get("decode + views", 0.0) + ran
            start, thread_start = perf_counter(), thread_time()
            views = self._views(outputs, batch)
            timings["to_torch"] = timings.get("to_torch", 0.0) + perf_counter() - start
            timings["to_torch cpu"] = timings.get("to_torch cpu", 0.0) + thread_time() - thread_start
            views = self._finished(batch, views)
            self._feeders.release(batch.fed)
            yield batch, views

    def _finished(self, batch: HostBatch, views: list[torch.Tensor]) -> Any:
        """The views, or what `run(assemble=)` makes of them (in the run-ahead thread)."""
        return views if self._assemble is None else self._assemble(batch, views)

    def _views(self, outputs: Sequence[Any], batch: HostBatch) -> list[torch.Tensor]:
        """The batch's views as torch-owned tensors: on the GPU copied out of DALI's buffers, on
        the CPU made by `HostFinish` from DALI's decoded images, read in place, and the
        parameters still in the batch's slot (so the slot is given back only after this)."""
        if self._finish is None:
            return [_to_torch(out, self.target) for out in outputs]
        (decoded,) = outputs
        images = [np.asarray(decoded[i]) for i in range(len(batch))]  # in place, DALI's buffers
        return self._finish(images, self._slots[batch.fed].params[: len(batch)])

    def _recover(self, reader: BatchReader, err: Exception) -> int:
        """After a failed graph: name the culprit (raise) or mark it for substitution (skip);
        returns the batch number to resume from."""
        for batch in self._pending:  # their bytes, out of the slots before they are filled again
            rows = self._slots[batch.fed].rows
            batch.jpegs = [rows[i, :size].copy() for i, size in enumerate(batch.sizes.tolist())]
        self._close_pipe()
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

    def _stop_feeders(self) -> None:
        if self._feeders is not None:
            self._feeders.close()
            self._feeders = None

    def close(self) -> None:
        """Shut the graph down now (its threads and buffers), and the feeder processes.

        Now, not when the garbage collector reaches it: DALI's pipeline sits in reference cycles,
        and a process forked before the collector ran (a decode worker, a feeder) would run its
        destructor there, waiting on threads that exist only in the parent. A run still going
        ahead of an abandoned iteration is stopped first: its thread may be inside the graph."""
        self._stop_ahead()
        self._stop_feeders()
        self._close_pipe()
        if self._finish is not None:
            self._finish.close()

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            self._pipe._shutdown()  # what Pipeline.__del__ does; idempotent
        self._pipe = None
        self._clean = False


def _to_torch(output: Any, device: torch.device) -> torch.Tensor:
    """One view's batch as a torch tensor owned by torch: DALI reuses its buffers at the next run,
    so the data is copied once, into host memory or into the pipeline's own GPU's memory."""
    tensor = output.as_tensor()
    dtype = {types.FLOAT: torch.float32, types.UINT8: torch.uint8}[tensor.dtype]
    target = torch.empty(tensor.shape(), dtype=dtype, device=device)
    feed_ndarray(tensor, target)
    return target

"""`SSLLoader`: the public iterator that turns shards and a recipe into batches of views on a device.

It picks the backend, wires the epoch plan and the byte source into it, converts to torch and keeps
the position in the epoch for `state_dict()` / `load_state_dict()`. It holds no augmentation code.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from fastssl.data.images import DEFAULT_MAX_PIXELS
from fastssl.data.index import read_index
from fastssl.data.manifest import Manifest, ShardInfo
from fastssl.data.plan import DEFAULT_BLOCK_SIZE, READ_ORDERS, EpochPlan, PlanState
from fastssl.data.remote import PipeShards, default_cache_dir, local_shard, url_scheme
from fastssl.data.source import ByteSource
from fastssl.data.store import RemoteShards, is_remote
from fastssl.host.reader import BatchReader, HostBatch, OnError
from fastssl.recipes import PatchRecipe, PredictionRecipe, Recipe, get_recipe

Backend = Literal["auto", "dali", "kornia"]


def resolve_data(
    data: str | os.PathLike | Manifest | Sequence[str | os.PathLike],
    *,
    allow_pipe: bool = False,
    pipes: PipeShards | None = None,
) -> Manifest:
    """A manifest from a shard folder, a manifest file, a Manifest, or a list of indexed shard paths.

    A list of `.tar` paths needs each shard's DALI index beside it (`x.tar` -> `x.idx`; write
    missing ones with `fastssl index`); the resulting manifest has no checksums and no classes.
    The list may hold `pipe:` URLs when `allow_pipe` is True (refused otherwise, with
    `UnsafeSourceError`): each command's output is copied once into the bounded shard cache of
    `pipes` (the default cache folder, unbounded, when None), indexed there and kept pinned
    until `pipes` is closed (`fastssl.data.remote.PipeShards`).
    """
    if isinstance(data, Manifest):
        return data
    if isinstance(data, str) and url_scheme(data) is not None:
        data = [data]
    if isinstance(data, (str, os.PathLike)):
        return Manifest.load(data)
    located = [local_shard(str(p), pipes, allow_pipe=allow_pipe) for p in data]
    if not located:
        raise ValueError("no shard paths given")
    shards = []
    for path, index in ((path.resolve(), index.resolve()) for path, index in located):
        if not index.is_file():
            raise FileNotFoundError(f"{path}: no index at {index}; create it with `fastssl index {path}`")
        shards.append(ShardInfo(str(path), str(index), len(read_index(index, shard=str(path))), 0, ""))
    return Manifest(shards=tuple(shards), classes=None, root=Path("/"))


def _has_pipe_urls(data: object) -> bool:
    """Whether `data` is a list of shard locations holding a `pipe:` URL (or is one)."""
    if isinstance(data, str):
        return url_scheme(data) == "pipe"
    if isinstance(data, (os.PathLike, Manifest)):
        return False
    return any(isinstance(p, str) and url_scheme(p) == "pipe" for p in data)


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Rank and world size: given, else from torch.distributed, else RANK / WORLD_SIZE, else 0, 1."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        found = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return (found[0] if rank is None else rank), (found[1] if world_size is None else world_size)


def _nodes(world_size: int) -> int:
    """Nodes the ranks run on: the world size over torchrun's LOCAL_WORLD_SIZE (ranks per node)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size) or world_size)
    return world_size // local if local >= 1 and world_size % local == 0 else 1


def _default_threads() -> int:
    """CPU cores this process may use, shared among the ranks on this node."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def dali_available() -> bool:
    """Whether NVIDIA DALI imports on this machine."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class SSLLoader:
    """Iterable of batches of views for self-supervised training.

    Each batch is a dict: `views` (list of tensors (B, C, H, W) on `device`, one per view of the
    recipe), `label` (int64 (B,) or None for unlabelled shards), `key` (list of sample keys),
    `valid` (bool (B,): False for samples that pad the epoch to equal rank sizes or were skipped),
    `params` (with `recipe.return_params`: one dict of tensors per view), and `rotation` (B, 4) for
    the Rotation recipe. Patch-grid recipes (`fastssl.recipes.patches`) put their tiles in `views`
    and add their targets: `perm_index` (Jigsaw), `replaced` (Jigsaw++), `neighbor` (context), and
    with `return_params` a `patch_params` dict. Every rank yields `len(loader)` batches per epoch;
    over one epoch the valid samples of all ranks are the data set, each exactly once.

    Bad data (see README, "Bad data and failures"): with `on_error="raise"` the iterator raises a
    `fastssl.errors.DataError` subclass naming shard, key and cause; with `"skip"` the sample keeps
    its place as a placeholder with `valid` False and is listed in `loader.skipped` (dicts of
    epoch, rank, shard, key, reason). Every image header is checked before decoding: more than
    `max_pixels` pixels, a truncated JPEG, a non-JPEG or CMYK `.jpg` are refused on every backend.
    `verify_checksums` checks the sha256 of each shard an epoch reads, once per loader, before
    decode workers start (a manifest with checksums is needed); `allow_pipe` lets `data` hold
    `pipe:` URLs (shell commands, refused by default), copied once into the shard cache under
    `cache_dir` (bounded by `cache_limit` bytes, shared with remote sets; the loader keeps its pipe
    shards there, safe from eviction, until it is closed). A dead decode
    worker raises `fastssl.errors.WorkerError`.

    With DALI, the host side of each batch (read, header checks, labels, parameter draws, packing)
    runs in `host_workers` feeder processes (default 1 on the CPU, 2 with a GPU) that build batches
    ahead into shared memory; `next(loader)` only hands ready ones to the graph. `gpu_decoder`
    (`fastssl.pipelines.dali_views.GpuDecoder`) sets nvJPEG's hardware-decoder share, memory
    paddings and preallocation hints on GPU graphs.

    `profile=True` sums the seconds of each stage in `loader.timings`: on the DALI backend read,
    checks, labels, params and pack as the feeders spent them (CPU seconds in other processes),
    then what the thread running the graph spent (the consumer's on a GPU; on the CPU a thread of
    its own, up to `prefetch` batches ahead of the consumer): feed (waiting for and taking a ready
    batch), decode + views (the rest of `pipe.run()`; on the CPU the graph only decodes), to_torch
    (on a GPU the copy out of DALI's buffers; on the CPU the fused view pass, which writes the
    views into torch tensors) and `to_torch cpu` (that thread's CPU seconds in to_torch); then
    `next(loader)`, everything the consumer waited for, and `next(loader) cpu`, the part of it
    the consumer's thread spent computing rather than waiting.
    Kornia's host stages run in its decode workers and are not counted.

    `data` may be the URL of a shard set in object storage (`s3://`, `gs://`, `https://` folders
    holding `manifest.json`; README, "Data in object storage"): `read_order` is then `"block"` by
    default (whole shards per node bucket: `buckets`, default the number of nodes, `block_size`
    samples shuffled together), fetched `download_ahead` batches ahead into `cache_dir`, bounded by
    `cache_limit` bytes; `"global"` reads each sample by a range request instead. `retries`,
    `timeout` (seconds) and `storage_options` (fsspec's, for the client) govern the transfers.

    `subset` (keys, or the path of a subset file: one key or file name per line, as SimCLR's
    `1percent.txt`; `fastssl.data.subset`) restricts every epoch to those samples, each read once
    per epoch across ranks, in the global read order.

    `labels` (the path of a label sidecar, `fastssl.data.labels`, as `fastssl pseudo-label`
    writes) gives every sample's `label` in place of the shards' `.cls` members, which are then
    not read; every sample the loader reads must be labelled there. `num_classes` is the number of
    classes the batches' labels come from (the sidecar's, else the manifest's; None unlabelled).

    Epochs advance by themselves after each complete pass; `set_epoch(e)` chooses one explicitly
    (as with DistributedSampler). `state_dict()` after k batches and `load_state_dict()` in a new
    loader continue the epoch at batch k, with the same samples and the same random parameters,
    also on another number of ranks with the same global batch (`load_state_dict`).
    """

    def __init__(
        self,
        data: str | os.PathLike | Manifest | Sequence[str | os.PathLike],
        recipe: Recipe | str,
        batch_size: int,
        backend: Backend = "auto",
        device: str | torch.device = "auto",
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        num_threads: int | None = None,
        prefetch: int = 2,
        drop_last: bool = False,
        on_error: OnError = "raise",
        *,
        shuffle: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        verify_checksums: bool = False,
        allow_pipe: bool = False,
        cache_dir: str | os.PathLike | None = None,
        profile: bool = False,
        host_workers: int | None = None,
        gpu_decoder: Any = None,
        read_order: str = "auto",
        buckets: int | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        cache_limit: int | None = None,
        download_ahead: int = 4,
        retries: int = 3,
        timeout: float = 60.0,
        storage_options: dict[str, Any] | None = None,
        subset: Sequence[str] | str | os.PathLike | None = None,
        labels: str | os.PathLike | None = None,
    ) -> None:
        if read_order not in ("auto", *READ_ORDERS):
            raise ValueError(f"read_order must be 'auto', 'global' or 'block', got {read_order!r}")
        # remote shards are read in blocks by default: each node downloads only its buckets' shards
        self.read_order = ("block" if is_remote(data) else "global") if read_order == "auto" else read_order
        self.remote: RemoteShards | None = None
        self._pipes: PipeShards | None = None
        self._backend: Any = None
        self._source: ByteSource | None = None
        if is_remote(data):
            if download_ahead < 0:
                raise ValueError(f"download_ahead must be 0 or more, got {download_ahead}")
            self.remote = RemoteShards(
                str(data), cache_dir if cache_dir is not None else default_cache_dir(),
                cache_limit=cache_limit, retries=retries, timeout=timeout, storage_options=storage_options,
                ranges=self.read_order == "global",  # a global shuffle reads samples by range requests
            )  # fmt: skip
            self.manifest = self.remote.open()
        else:
            # pipe: shards go into the same bounded cache as remote ones, pinned while this loader lives
            self._pipes = PipeShards(cache_dir, cache_limit) if _has_pipe_urls(data) else None
            try:
                self.manifest = resolve_data(data, allow_pipe=allow_pipe, pipes=self._pipes)
            except BaseException:
                self.close()
                raise
        self.download_ahead = download_ahead
        self.recipe = get_recipe(recipe)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.batch_size, self.seed, self.prefetch = batch_size, seed, prefetch
        self.drop_last, self.shuffle, self.on_error = drop_last, shuffle, on_error
        self.max_pixels, self.verify_checksums = max_pixels, verify_checksums
        self.rank, self.world_size = _distributed(rank, world_size)
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank {self.rank}, world_size {self.world_size}"
            )
        self.nodes = _nodes(self.world_size)
        if buckets is not None and buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {buckets}")
        # fixed for the run: the first run's node count unless given (a checkpoint keeps it)
        self.buckets, self._buckets_given = buckets or self.nodes, buckets is not None
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.block_size = block_size
        self.device = self._pick_device(device)
        self.backend_name = self._pick_backend(backend)
        self.num_threads = num_threads if num_threads is not None else _default_threads()
        if host_workers is not None and host_workers < 1:
            raise ValueError(f"host_workers must be at least 1, got {host_workers}")
        # one feeder keeps a CPU graph fed (decoding is the cost there); a GPU graph needs more
        self.host_workers = host_workers or (2 if self.device.type == "cuda" else 1)
        self.gpu_decoder = gpu_decoder
        self.epoch = 0
        self.skipped: list[dict[str, Any]] = []
        self._batches_done = 0  # of the current epoch, as consumed by the caller
        self._resume: PlanState | None = None
        self._stage: Any = None  # the stage after the graph of staged recipes, built with the backend
        self._plans: dict[int, EpochPlan] = {}  # by epoch: the current one and the next
        self._next_reader: BatchReader | None = None  # the next epoch's, handed to the backend ahead
        # the plan cache and the next reader are also set by the backend's run-ahead thread, which
        # builds the next epoch's while the consumer takes this one's batches; `_runs` counts the
        # iterations started, so a thread of an abandoned one hands nothing to a later one
        self._lock = threading.Lock()
        self._runs = 0
        # seconds per stage, summed over batches (`profile=True`; `fastssl bench --profile`)
        self.timings: dict[str, float] | None = {} if profile else None
        if verify_checksums and self.remote is None and any(not s.sha256 for s in self.manifest.shards):
            raise ValueError(
                "verify_checksums needs recorded checksums, and shards given as paths or pipe: URLs "
                "have none; use a manifest (`fastssl shards` writes one)"
            )
        # one source for the loader's life: indexes loaded and checksums verified once, not per epoch
        self._source = ByteSource(self.manifest, verify_checksums=verify_checksums, remote=self.remote)
        self.subset: np.ndarray | None = None  # global ids of the samples read, all when None
        self.repeats = False  # whether `subset` is a draw naming samples more than once (set_draw)
        if subset is not None:
            if self.read_order != "global":
                raise ValueError("a subset is read in the global order only (read_order='global')")
            from fastssl.data.subset import read_subset, subset_ids

            try:
                keys = read_subset(subset) if isinstance(subset, (str, os.PathLike)) else list(subset)
                self.subset = subset_ids(self._source, keys)
            except BaseException:
                self.close()
                raise
        self.label_table: np.ndarray | None = None  # labels by global id, from `labels`
        classes = self.manifest.classes
        self.num_classes: int | None = len(classes) if classes is not None else None
        if labels is not None:
            from fastssl.data.labels import label_table
            from fastssl.data.subset import sample_keys

            try:
                table = label_table(labels, sample_keys(self._source), self.subset)
            except BaseException:
                self.close()
                raise
            self.label_table, self.num_classes = table.labels, table.classes
        self._given = (self.subset, self.label_table, self.num_classes)  # what set_draw(None) restores

    # -- configuration -------------------------------------------------------------------------
    @staticmethod
    def _pick_device(device: str | torch.device) -> torch.device:
        if str(device) == "auto":
            return (
                torch.device("cuda", torch.cuda.current_device())
                if torch.cuda.is_available()
                else torch.device("cpu")
            )
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' asked for, but torch sees no CUDA device")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {device}")
        return device

    def _pick_backend(self, backend: str) -> str:
        if backend == "auto":
            return "dali" if dali_available() else "kornia"
        if backend not in ("dali", "kornia"):
            raise ValueError(f"backend must be 'auto', 'dali' or 'kornia', got {backend!r}")
        if backend == "dali" and not dali_available():
            raise RuntimeError("backend='dali' asked for, but nvidia-dali does not import here")
        return backend

    def _make_backend(self) -> Any:
        if self.backend_name == "dali":
            from fastssl.pipelines.dali_views import DaliBackend

            return DaliBackend(
                self.recipe,
                device="gpu" if self.device.type == "cuda" else "cpu",
                batch_size=self.batch_size,
                num_threads=self.num_threads,
                prefetch=self.prefetch,
                device_id=self.device.index if self.device.type == "cuda" else None,
                seed=self.seed,
                host_workers=self.host_workers,
                gpu_decoder=self.gpu_decoder,
                timings=self.timings,
            )
        from fastssl.pipelines.kornia_views import KorniaBackend

        return KorniaBackend(
            self.recipe, device=self.device, num_workers=self.num_threads, prefetch=self.prefetch
        )

    # -- epochs and state ----------------------------------------------------------------------
    def plan(self, epoch: int | None = None) -> EpochPlan:
        """This rank's epoch plan (the current epoch by default)."""
        epoch = self.epoch if epoch is None else epoch
        with self._lock:
            return self._plan(epoch)

    def _plan(self, epoch: int) -> EpochPlan:
        cached = self._plans.get(epoch)
        if cached is None:
            cached = EpochPlan(
                self.manifest,
                epoch=epoch,
                seed=self.seed,
                batch_size=self.batch_size,
                world_size=self.world_size,
                rank=self.rank,
                drop_last=self.drop_last,
                shuffle=self.shuffle,
                order=self.read_order,  # type: ignore[arg-type]
                buckets=self.buckets,
                block_size=self.block_size,
                nodes=self.nodes,
                subset=self.subset,
                repeats=self.repeats,
            )
            # this epoch's and the next one's (built ahead when the backend runs ahead)
            self._plans = {e: p for e, p in self._plans.items() if e in (epoch - 1, epoch + 1)}
            self._plans[epoch] = cached
        return cached

    def __len__(self) -> int:
        return len(self.plan())

    def sample_keys(self) -> list[str]:
        """Every sample's key, in global-id order (the ids of `subset`, `set_draw` and labels)."""
        from fastssl.data.subset import sample_keys

        return sample_keys(self._source)

    def set_draw(
        self, draw: np.ndarray | None, labels: np.ndarray | None = None, num_classes: int | None = None
    ) -> None:
        """From the next epoch's start on, read `draw` (global sample ids, in any order, a sample
        possibly named several times or not at all: DeepCluster's sampling uniform over
        clusters) in place of the whole set or the subset, and label each sample by `labels` (by
        global id, -1 for none) when given. The plan stays deterministic from (seed, epoch, draw),
        equal in batch count on every rank, and a state saved under a draw resumes under the same
        draw. `set_draw(None)` goes back to what the loader was made with. Between epochs only."""
        if 0 < self._batches_done < len(self.plan()):
            raise ValueError("set_draw between epochs only: this epoch is partly read")
        if draw is None:
            subset, table, classes = self._given
        else:
            subset, table, classes = np.asarray(draw, dtype=np.int64), self.label_table, self.num_classes
            if self.read_order != "global":
                raise ValueError("a draw is read in the global order only (read_order='global')")
            if labels is not None:
                table = np.asarray(labels, dtype=np.int64)
                if table.shape != (self.manifest.num_samples,):
                    raise ValueError(f"labels must hold one entry per sample ({self.manifest.num_samples})")
                classes = num_classes if num_classes is not None else int(table.max()) + 1
        with self._lock:
            self.subset, self.repeats = subset, draw is not None
            self.label_table, self.num_classes = table, classes
            self._plans, self._next_reader = {}, None
            self._runs += 1  # a next epoch being prepared ahead under the old draw is not used

    def set_epoch(self, epoch: int) -> None:
        """Use epoch `epoch`'s order and random parameters from the next iteration on."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        if epoch != self.epoch:
            self._resume = None
        self.epoch = epoch
        self._batches_done = 0

    def state_dict(self) -> dict[str, Any]:
        """Where the run stands: epoch, global batches consumed, and what the global stream was
        built from (the same on every rank; `world_size` and `rank` say who saved it)."""
        state = self.plan().state(self._batches_done)
        return {"plan": state.to_dict(), "recipe": self.recipe.name, "backend": self.backend_name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`: the next iteration yields the rest of that epoch.

        Elastic: a state saved by N ranks resumes on this loader's world size M as long as this
        loader's global batch (`batch_size * world_size`) is the state's, that is `batch_size` is
        the saved global batch divided by M; the global batches that follow are the ones an
        uninterrupted run would have read, keys and view parameters alike. Any rank's state will
        do. The read order's bucket count is the state's unless this loader was given another.
        A state saved before elastic resume (version 1) resumes only at its own world size."""
        plan_state = PlanState.from_dict(state["plan"])
        if not self._buckets_given and plan_state.order == "block":
            self.buckets = plan_state.buckets  # fixed for the run, whatever the nodes now
        mine = {
            "seed": self.seed,
            "world_size": self.world_size,
            "rank": self.rank,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "shuffle": self.shuffle,
            "order": self.read_order,
        }
        if self.read_order == "block":
            mine.update(buckets=self.buckets, block_size=self.block_size)
        differ = plan_state.mismatches(**mine)
        if differ:
            raise ValueError("loader state does not match this loader: " + ", ".join(differ))
        # refuses a state saved for other shards; the plan it rebuilds is the one the loader reads
        resumed = EpochPlan.from_state(
            self.manifest, plan_state, world_size=self.world_size, rank=self.rank, nodes=self.nodes,
            subset=self.subset, repeats=self.repeats,
        )  # fmt: skip
        with self._lock:
            self._plans, self._next_reader = {resumed.epoch: resumed}, None
        self.epoch = plan_state.epoch
        self._batches_done = plan_state.batches_done
        self._resume = plan_state

    # -- iteration -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        plan = self.plan()
        start = self._batches_done if self._resume is not None else 0
        self._resume, self._batches_done = None, start
        with self._lock:
            self._runs += 1
            prepared, self._next_reader = self._next_reader, None
        # the reader the backend was told would come next, if this is that run: its batches are
        # being made already
        ready = prepared is not None and prepared.plan is plan and start == 0
        reader = prepared if ready else self._reader(plan)
        if self.remote is not None and not self.remote.ranges:
            self._check_cache_holds(plan, start)
        if self._backend is None:
            self._backend = self._make_backend()
            if isinstance(self.recipe, PatchRecipe):
                from fastssl.pipelines.patch_views import PatchViews

                self._stage = PatchViews(self.recipe, self.device)
            elif isinstance(self.recipe, PredictionRecipe):
                from fastssl.pipelines.prediction_views import PredictionViews

                self._stage = PredictionViews(self.recipe, self.device)
        if self.verify_checksums:  # here, so that forked decode workers inherit the verdicts
            self._source.verify(np.unique(plan.shard))
        numbers = range(start, len(plan))
        ahead = getattr(self._backend, "runs_ahead", False)
        if ahead:  # it starts the next epoch ahead of us, and assembles the batches in its thread
            following = self._following(plan.epoch + 1, self._runs)
            run = self._backend.run(reader, numbers, following=following, assemble=self._assemble)
        else:
            run = self._backend.run(reader, numbers)
        timings = self.timings
        clock, thread_clock = time.perf_counter(), time.thread_time()
        for host, made in run:
            self.skipped.extend({"epoch": plan.epoch, "rank": self.rank, **s} for s in host.skipped)
            self._batches_done = host.number + 1
            batch = made if ahead else self._assemble(host, made)
            if timings is not None:  # the consumer's time inside next(loader), everything included
                timings["next(loader)"] = timings.get("next(loader)", 0.0) + time.perf_counter() - clock
                # and what of it this thread computed, not waited for (to_torch's copy included)
                spent = time.thread_time() - thread_clock
                timings["next(loader) cpu"] = timings.get("next(loader) cpu", 0.0) + spent
            yield batch
            clock, thread_clock = time.perf_counter(), time.thread_time()
        self.epoch, self._batches_done = plan.epoch + 1, 0  # a complete pass: the next one is new

    def _following(self, epoch: int, run: int) -> Any:
        """What the backend's run-ahead thread calls when this run's graph has run dry: the next
        epoch's plan and reader, built there rather than on the consumer's thread, and kept for
        the iteration that follows (unless another one started meanwhile)."""

        def prepare() -> tuple[BatchReader, range] | None:
            try:
                plan = self.plan(epoch)
                if self.verify_checksums:
                    self._source.verify(np.unique(plan.shard))
                reader = self._reader(plan)
            except Exception:  # noqa: BLE001 - not started ahead; the next iteration redoes it and raises
                return None
            with self._lock:
                if self._runs != run:  # abandoned: whatever comes next builds its own
                    return None
                self._next_reader = reader
            return reader, range(len(plan))

        return prepare

    def _reader(self, plan: EpochPlan) -> BatchReader:
        """The host side's reader of `plan`'s batches."""
        return BatchReader(
            self.manifest,
            plan,
            self.recipe,
            on_error=self.on_error,
            max_pixels=self.max_pixels,
            source=self._source,
            timings=self.timings,
            ahead=self.download_ahead,
            label_table=self.label_table,
        )

    def _check_cache_holds(self, plan: EpochPlan, start: int) -> None:
        """Refuse to start when the cache limit cannot hold the shards of `download_ahead + 1`
        consecutive batches, the most this rank keeps in flight at once."""
        limit = self.remote.cache.limit_bytes
        if limit is None or plan.num_batches == 0:
            return
        sizes = np.array([info.bytes for info in self.manifest.shards], dtype=np.int64)
        span = (self.download_ahead + 1) * plan.batch_size
        need = 0
        for lo in range(start * plan.batch_size, len(plan.shard), plan.batch_size):
            need = max(need, int(sizes[np.unique(plan.shard[lo : lo + span])].sum()))
        if need > limit:
            from fastssl.data.cache import CacheFullError

            raise CacheFullError(
                f"the cache limit of {limit} bytes cannot hold the {need} bytes of shards that "
                f"{self.download_ahead + 1} consecutive batches of this rank need at once; raise "
                "cache_limit, lower download_ahead or block_size, or read samples by range requests "
                "(read_order='global')"
            )

    def _assemble(self, host: HostBatch, views: list[torch.Tensor]) -> dict[str, Any]:
        """The batch dict of a host batch and its views, a staged recipe's stage applied. Runs in
        the backend's run-ahead thread when it has one (so it touches nothing the consumer's
        thread changes), else on the consumer's."""
        device = self.device
        views = [v.to(device, non_blocking=True) for v in views]
        targets: dict[str, torch.Tensor] = {}
        if self._stage is not None:
            views, targets, plan = self._stage(views[0], host.stage)
        if self.recipe.dtype == "bfloat16":
            views = [v.to(torch.bfloat16) for v in views]
        batch: dict[str, Any] = {
            "views": views,
            "label": torch.from_numpy(host.labels).to(device) if host.labels is not None else None,
            "key": list(host.keys),
            "valid": torch.from_numpy(host.valid).to(device),
        }
        if self.recipe.name == "rotation":  # view k is turned k quarter turns, for every sample
            turns = torch.stack([torch.from_numpy(p["rotation"]).long() for p in host.params], dim=1)
            batch["rotation"] = turns.to(device)
        batch.update(targets)
        if self.recipe.return_params:
            batch["params"] = [_params_to_torch(p, host, device) for p in host.params]
            if self._stage is not None:
                draws = {**(host.stage or {}), **plan}
                batch[self._stage.params_key] = {
                    k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in draws.items()
                }
        return batch

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend (DALI graph, worker processes and threads), then the shard files."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        if self._source is not None:
            self._source.close()
        if self._pipes is not None:
            self._pipes.close()

    def __enter__(self) -> SSLLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn down modules
            self.close()


def _params_to_torch(
    params: dict[str, np.ndarray], host: HostBatch, device: torch.device
) -> dict[str, torch.Tensor]:
    out = {name: torch.from_numpy(np.ascontiguousarray(value)).to(device) for name, value in params.items()}
    out["source_size"] = torch.from_numpy(np.stack([host.heights, host.widths], axis=1)).to(device)
    return out

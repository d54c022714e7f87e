"""The epoch plan: which (shard, sample) each (rank, worker) reads, in which order, and where to resume.

A pure function of (shard sizes, epoch, seed, global batch, read order, world size, rank, workers,
worker id, drop_last). The plan first builds the epoch's **global stream**, which depends on none
of world size, rank or workers: its global batches of `global_batch` entries are the unit every
guarantee is stated in. Two orders build it:

- `"global"` (local shards' default): one seeded permutation of all samples per (seed, epoch);
- `"block"` (remote shards' default, after MosaicML Streaming's canonical nodes): the shards are
  dealt once per run to `buckets` contiguous sample ranges (a shard on a boundary is shared by two
  buckets); each epoch shuffles each bucket's shard pieces and then its samples within blocks of
  `block_size`, and global batch k takes `global_batch / buckets` entries from every bucket. A
  node reads only its buckets' shards, and the shards in use at once stay few.

Without `drop_last` the last global batch is short: it holds the rest of the epoch, padded (by
wrapping to the stream's start, entries with `valid=False`) only to a multiple of the world size,
so that a small data set is not drowned in padding; its valid entries, like every other global
batch's, do not depend on the world size. With `drop_last` the last partial global batch is left
out. Each global batch
is dealt to the ranks (interleaved; in block order first cut into one contiguous segment per
node, then interleaved among the node's ranks), and each rank's batches to its workers
round-robin (batch b to worker b mod num_workers in a fresh epoch, (b - start) mod num_workers when
resuming at batch `start`), the way PyTorch's DataLoader hands batches to its workers. A loader
that reads worker outputs round-robin therefore sees the rank's batches in order, and the state
needed to resume is one global batch count: a run resumes on another number of ranks (elastic
resume) as long as the global batch stays the same and divides by the new world size.

States saved before the global stream existed (version 1) padded each rank's share instead; they
are still read and resume at their own world size with their own padding.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np

from fastssl.data.manifest import Manifest

_PLAN_STREAM = 0x9E3779B9  # separates the plan's random stream from other users of (seed, epoch)
_BUCKET_STREAM = 0x5BD1E995  # the run's shard-to-bucket deal, fixed for every epoch
PLAN_VERSION = 2
DEFAULT_BLOCK_SIZE = 1 << 18  # samples shuffled together in block order (MosaicML's floor)

ReadOrder = Literal["global", "block"]
READ_ORDERS = ("global", "block")


def _sizes_of(data: Manifest | Sequence[int] | np.ndarray) -> np.ndarray:
    sizes = data.shard_sizes if isinstance(data, Manifest) else np.asarray(data)
    if sizes.ndim != 1 or (sizes.size and (sizes.dtype.kind not in "iu" or (sizes < 0).any())):
        raise ValueError("shard sizes must be a 1-D sequence of non-negative integers")
    return sizes.astype(np.int64, copy=False)


def data_fingerprint(data: Manifest | Sequence[int] | np.ndarray, subset: np.ndarray | None = None) -> str:
    """Short digest of what a plan depends on, stored in resume state to catch changed data.

    For a manifest it covers shard paths and checksums as well as sizes, so that re-sharding
    with another shuffle (same sizes, other samples) is caught; for bare sizes, sizes only; and
    the subset's ids when the plan reads one (the whole set's digest is unchanged without).
    """
    digest = hashlib.sha1(np.ascontiguousarray(_sizes_of(data), dtype="<i8").tobytes())
    if isinstance(data, Manifest):
        for shard in data.shards:
            digest.update(f"\0{shard.path}\0{shard.sha256}".encode())
    if subset is not None:
        digest.update(b"\0subset\0" + np.ascontiguousarray(subset, dtype="<i8").tobytes())
    return digest.hexdigest()[:16]


def _checked_subset(subset: np.ndarray | Sequence[int], total: int, repeats: bool = False) -> np.ndarray:
    """The subset's global ids, sorted; refused when empty, out of range or (unless `repeats`)
    repeated."""
    ids = np.asarray(subset)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError("a subset is a 1-D sequence of global sample ids")
    ids = np.sort(ids.astype(np.int64))
    if not len(ids):
        raise ValueError("the subset is empty")
    if ids[0] < 0 or ids[-1] >= total:
        raise ValueError(f"subset ids must lie in 0..{total - 1}, got {int(ids[0])}..{int(ids[-1])}")
    if not repeats and (np.diff(ids) == 0).any():
        raise ValueError(f"the subset names sample {int(ids[1:][np.diff(ids) == 0][0])} more than once")
    return ids


def epoch_order(sizes: np.ndarray, epoch: int, seed: int, shuffle: bool = True) -> np.ndarray:
    """Global sample ids (0..N-1, shard by shard) in this epoch's order."""
    total = int(sizes.sum())
    if not shuffle:
        return np.arange(total, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([_PLAN_STREAM, seed, epoch])))
    return rng.permutation(total).astype(np.int64, copy=False)


def locate(sizes: np.ndarray, global_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map global sample ids to (shard, sample-within-shard); empty shards are stepped over."""
    ends = np.cumsum(sizes)
    shard = np.searchsorted(ends, global_ids, side="right")
    sample = global_ids - (ends[shard] - sizes[shard])
    return shard.astype(np.int64), sample.astype(np.int64)


def _concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """`arange(starts[i], starts[i] + lengths[i])` for every i, one after the other, without a
    Python loop over the ranges."""
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + within


def bucket_ranges(sizes: np.ndarray, seed: int, buckets: int) -> list[np.ndarray]:
    """The run's deal of samples to `buckets` canonical buckets: global sample ids of each, in the
    run's shard order (the shards permuted once per seed, fixed for every epoch), cut into
    contiguous ranges whose sizes differ by at most one sample."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([_PLAN_STREAM, seed, _BUCKET_STREAM])))
    shard_order = rng.permutation(len(sizes))
    firsts = np.cumsum(sizes) - sizes
    total = int(sizes.sum())
    run_ids = _concatenated_ranges(firsts[shard_order], sizes[shard_order])  # shard after shard
    bounds = np.arange(buckets + 1, dtype=np.int64) * total // buckets
    return [run_ids[bounds[c] : bounds[c + 1]] for c in range(buckets)]


def block_order(
    sizes: np.ndarray, epoch: int, seed: int, buckets: int, block_size: int, shuffle: bool = True
) -> list[np.ndarray]:
    """Each bucket's global sample ids in this epoch's block order: its shard pieces in a new
    order each epoch, then the samples permuted within consecutive blocks of `block_size`."""
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    ranges = bucket_ranges(sizes, seed, buckets)
    if not shuffle:
        return ranges
    ends = np.cumsum(sizes)
    out = []
    for c, ids in enumerate(ranges):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([_PLAN_STREAM, seed, epoch, c])))
        shard = np.searchsorted(ends, ids, side="right")
        starts = np.flatnonzero(np.r_[True, shard[1:] != shard[:-1]]) if len(ids) else np.zeros(0, int)
        lengths = np.diff(np.r_[starts, len(ids)])
        pieces = rng.permutation(len(starts))
        ids = ids[_concatenated_ranges(starts[pieces], lengths[pieces])]
        keys = np.arange(len(ids)) // block_size + rng.random(len(ids))
        out.append(ids[np.argsort(keys, kind="stable")])
    return out


@dataclass(frozen=True)
class PlanState:
    """Everything needed to resume mid-epoch: the global stream's inputs and the global batches
    done. `world_size` and `rank` say who saved it; a version-2 state resumes on any world size
    that divides `global_batch` (a version-1 state, written before elastic resume, only on its own).
    """

    epoch: int
    seed: int
    global_batch: int
    drop_last: bool
    shuffle: bool
    data_fingerprint: str
    batches_done: int
    world_size: int
    rank: int
    nodes: int = 1
    order: str = "global"
    buckets: int = 1
    block_size: int = DEFAULT_BLOCK_SIZE
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanState:
        """Rebuild a state from `to_dict()` output (or a version-1 state); missing or unknown keys
        are named."""
        data = dict(data)
        if "version" not in data:  # version 1: one rank's batch size, padding per rank
            legacy = {"epoch", "seed", "world_size", "rank", "batch_size", "drop_last", "shuffle",
                      "data_fingerprint", "batches_done"}  # fmt: skip
            missing, unknown = legacy - set(data), set(data) - legacy
            if missing or unknown:
                raise ValueError(f"not a plan state: missing {sorted(missing)}, unknown {sorted(unknown)}")
            data["global_batch"] = data.pop("batch_size") * data["world_size"]
            data["version"] = 1
        if data["version"] not in (1, PLAN_VERSION):
            raise ValueError(
                f"plan state version {data['version']!r} is newer than this fastssl reads ({PLAN_VERSION})"
            )
        expected = {f.name for f in fields(cls)}
        missing, unknown = (
            expected - set(data) - {"nodes", "order", "buckets", "block_size"},
            set(data) - expected,
        )
        if missing or unknown:
            raise ValueError(f"not a plan state: missing {sorted(missing)}, unknown {sorted(unknown)}")
        return cls(**data)

    def mismatches(self, **expected: Any) -> list[str]:
        """`name=value (state has ...)` for each expected field this state disagrees with.
        `batch_size` and `world_size` are checked as the global batch they make, and the world
        size only for a version-1 state, which cannot change it."""
        expected = dict(expected)
        differ = []
        if "batch_size" in expected:
            batch, world = expected.pop("batch_size"), expected.get("world_size", self.world_size)
            if self.version == 1 and world != self.world_size:
                differ.append(
                    f"world_size={world!r} (state has {self.world_size!r}; a state saved before "
                    "elastic resume resumes only at its own world size)"
                )
            elif batch * world != self.global_batch:
                differ.append(
                    f"batch_size={batch!r} (the state's global batch is {self.global_batch}: "
                    f"{_per_rank_advice(self.global_batch, world)})"
                )
        if self.version != 1:
            for saved_by in ("world_size", "rank", "nodes"):
                expected.pop(saved_by, None)
        differ += [f"{k}={v!r} (state has {getattr(self, k)!r})" for k, v in expected.items()
                   if getattr(self, k) != v]  # fmt: skip
        return differ


def _wrapped(order: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """`order` cut, or padded by wrapping to its start, to `length` entries; and `valid` (False
    for the padding)."""
    stream = np.resize(order, length) if len(order) else order[:0]
    return stream, np.arange(length) < len(order)


def _per_rank_advice(global_batch: int, world_size: int) -> str:
    if global_batch % world_size:
        return f"it does not divide by {world_size} ranks; resume on a world size that divides it"
    return f"with {world_size} ranks each takes {global_batch // world_size}"


@dataclass(frozen=True)
class PlanEntries:
    """Plan entries in read order: shard number, sample within the shard, global sample id
    (shard by shard, for per-sample seeds) and `valid` (False for padding)."""

    shard: np.ndarray
    sample: np.ndarray
    global_id: np.ndarray
    valid: np.ndarray

    def __len__(self) -> int:
        return len(self.shard)

    def take(self, positions: np.ndarray | slice) -> dict[str, np.ndarray]:
        """The four arrays at `positions`, as keyword arguments for a subclass."""
        return {f.name: getattr(self, f.name)[positions] for f in fields(PlanEntries)}


@dataclass(frozen=True)
class PlanBatch(PlanEntries):
    """One batch; `index` is its number in the rank's epoch."""

    index: int


@dataclass(frozen=True)
class ReaderPlan(PlanEntries):
    """The ordered work of one reader (rank, worker): its batches, flattened, with boundaries."""

    batch_numbers: np.ndarray  # rank-level batch numbers, ascending
    offsets: np.ndarray  # entries of batch k are [offsets[k], offsets[k + 1])

    @property
    def num_batches(self) -> int:
        return len(self.batch_numbers)

    def batches(self) -> Iterator[PlanBatch]:
        for k, number in enumerate(self.batch_numbers):
            span = slice(self.offsets[k], self.offsets[k + 1])
            yield PlanBatch(index=int(number), **self.take(span))


class EpochPlan:
    """One rank's epoch: the samples it reads, cut into batches, identical on every call.

    `batch_size` is the rank's batch; the global batch is `batch_size * world_size`. Without
    `drop_last` the last global batch holds the rest of the epoch, padded to a multiple of the
    world size so that every rank gets the same number of samples; padded entries carry
    `valid=False`, fewer than `world_size` of them in the epoch. With `drop_last` the samples that
    fill no whole global batch are left out. `order` chooses the global stream (module
    docstring); `nodes` (block order only) is the number of nodes the ranks run on, each of which
    reads only its own buckets' shards.
    `version=1` rebuilds the plan of a state saved before the global stream existed.
    `subset` (global order only) restricts the epoch to those global sample ids, each read once
    per epoch, in an order that depends on (seed, epoch) alone; the state's fingerprint covers it.
    With `repeats` the subset is a draw that may name a sample several times (DeepCluster's
    sampling uniform over clusters, `fastssl.train.deepcluster`): each entry is read once, so a
    sample named twice is read twice and one not named not at all, by design.
    """

    def __init__(
        self,
        data: Manifest | Sequence[int] | np.ndarray,
        *,
        epoch: int,
        seed: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        shuffle: bool = True,
        order: ReadOrder = "global",
        buckets: int = 1,
        block_size: int = DEFAULT_BLOCK_SIZE,
        nodes: int = 1,
        version: int = PLAN_VERSION,
        subset: np.ndarray | Sequence[int] | None = None,
        repeats: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if epoch < 0 or seed < 0:
            raise ValueError(f"epoch and seed must be non-negative, got {epoch} and {seed}")
        if order not in READ_ORDERS:
            raise ValueError(f"order must be one of {READ_ORDERS}, got {order!r}")
        if version not in (1, PLAN_VERSION) or (version == 1 and order != "global"):
            raise ValueError(f"plan version {version!r} with order {order!r} does not exist")
        self._data = data
        self.sizes = _sizes_of(data)
        self.subset = None if subset is None else _checked_subset(subset, int(self.sizes.sum()), repeats)
        self.repeats = repeats and subset is not None
        if self.subset is not None and (order != "global" or version == 1):
            raise ValueError("a subset is read in the global order only (read_order='global')")
        self.epoch, self.seed, self.batch_size = epoch, seed, batch_size
        self.world_size, self.rank = world_size, rank
        self.drop_last, self.shuffle = drop_last, shuffle
        self.order, self.version = order, version
        self.buckets, self.block_size = (buckets, block_size) if order == "block" else (1, DEFAULT_BLOCK_SIZE)
        self.global_batch = batch_size * world_size
        self.nodes = nodes
        if version == 1:
            stream, valid, positions = self._legacy_stream()
        elif order == "global":  # every global batch's multiple of world_size dealt interleaved
            if self.subset is None:
                ordered = epoch_order(self.sizes, epoch, seed, shuffle)
            else:  # the subset's own positions in this epoch's order
                ordered = self.subset[epoch_order(np.array([len(self.subset)]), epoch, seed, shuffle)]
            stream, valid = self._padded(ordered)
            positions = np.arange(rank, len(stream), world_size, dtype=np.int64)
        else:
            stream, valid, positions = self._block_stream(nodes)
        self.num_batches = -(-len(positions) // batch_size)
        self.samples_per_rank = len(positions)
        mine = stream[positions]
        shard, sample = locate(self.sizes, mine)
        self.entries = PlanEntries(shard=shard, sample=sample, global_id=mine, valid=valid[positions])

    def _padded(self, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`order` cut to whole global batches (drop_last), or with its last global batch padded,
        by wrapping to the stream's start, to a multiple of the world size; and `valid`."""
        total, batch, world = len(order), self.global_batch, self.world_size
        return _wrapped(order, total // batch * batch if self.drop_last else total + (-total % world))

    def _legacy_stream(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Version 1: the order padded to a multiple of the world size, each rank's share cut into
        batches with a short last one (or, with drop_last, each rank's whole batches only)."""
        order = epoch_order(self.sizes, self.epoch, self.seed, self.shuffle)
        world, total = self.world_size, len(order)
        if self.drop_last:
            length = total // world // self.batch_size * self.batch_size * world
        else:
            length = -(-total // world) * world
        stream, valid = _wrapped(order, length)
        return stream, valid, np.arange(self.rank, length, world, dtype=np.int64)

    def _block_stream(self, nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Block order: every global batch takes global_batch / buckets entries of each bucket (a
        bucket's share padded from its own start), node p the segment of its buckets."""
        buckets, world, batch = self.buckets, self.world_size, self.global_batch
        if nodes < 1 or world % nodes:
            raise ValueError(f"{world} ranks do not split evenly over {nodes} nodes")
        if buckets % nodes:
            raise ValueError(
                f"{buckets} buckets do not divide among {nodes} nodes: the bucket count is fixed for "
                "the run (a checkpoint keeps it), so run on a number of nodes that divides it"
            )
        if batch % buckets:
            raise ValueError(
                f"the global batch ({batch}) must be a multiple of the number of buckets ({buckets}): "
                "every global batch takes the same number of samples from each bucket"
            )
        per_bucket = batch // buckets
        streams = block_order(self.sizes, self.epoch, self.seed, buckets, self.block_size, self.shuffle)
        total = int(self.sizes.sum())
        num = -(-total // batch)  # whole global batches, the last one compacted below
        share = num * per_bucket
        fallback = np.concatenate(streams) if total else np.zeros(0, np.int64)
        parts, valid = [], []
        for ids in streams:
            source = ids if len(ids) else fallback  # an empty bucket pads from the whole stream
            parts.append(np.resize(source, share) if len(source) else np.zeros(share, np.int64))
            valid.append(np.arange(share) < len(ids))
        shape = (buckets, num, per_bucket)
        stream = np.stack(parts).reshape(shape).transpose(1, 0, 2).reshape(-1) if share else fallback[:0]
        flags = np.stack(valid).reshape(shape).transpose(1, 0, 2).reshape(-1) if share else np.zeros(0, bool)
        full = total // batch
        if self.drop_last or num == full:
            stream, flags, tail = stream[: full * batch], flags[: full * batch], 0
        else:  # the last global batch: its real entries, padded to a multiple of the world size
            last = stream[full * batch :][flags[full * batch :]]
            tail = len(last) + (-len(last) % world)
            pad = stream[: tail - len(last)]
            stream = np.concatenate([stream[: full * batch], last, pad])
            kept = [flags[: full * batch], np.ones(len(last), bool), np.zeros(len(pad), bool)]
            flags = np.concatenate(kept)
        local = world // nodes
        node, local_rank = divmod(self.rank, local)

        def dealt(base: int, length: int) -> np.ndarray:
            """This rank's positions in a global batch of `length` entries at `base`: its node's
            contiguous segment, interleaved among the node's ranks."""
            segment = length // nodes
            return base + node * segment + local_rank + local * np.arange(length // world, dtype=np.int64)

        within = dealt(0, batch)
        positions = (np.arange(full, dtype=np.int64)[:, None] * batch + within[None, :]).reshape(-1)
        if tail:
            positions = np.concatenate([positions, dealt(full * batch, tail)])
        return stream.astype(np.int64, copy=False), flags, positions

    @property
    def shard(self) -> np.ndarray:
        return self.entries.shard

    @property
    def sample(self) -> np.ndarray:
        return self.entries.sample

    @property
    def global_id(self) -> np.ndarray:
        return self.entries.global_id

    @property
    def valid(self) -> np.ndarray:
        return self.entries.valid

    @functools.cached_property
    def fingerprint(self) -> str:
        """`data_fingerprint` of the plan's data (and subset), computed when a state is first asked for."""
        return data_fingerprint(self._data, self.subset)

    def __len__(self) -> int:
        return self.num_batches

    def batch(self, number: int) -> PlanBatch:
        """Batch `number` (0-based) of this rank's epoch."""
        if not 0 <= number < self.num_batches:
            raise IndexError(f"batch {number} out of range 0..{self.num_batches - 1}")
        span = slice(number * self.batch_size, (number + 1) * self.batch_size)
        return PlanBatch(index=number, **self.entries.take(span))

    def for_worker(self, num_workers: int, worker_id: int, start_batch: int = 0) -> ReaderPlan:
        """The batches worker `worker_id` of `num_workers` reads, from `start_batch` on.

        `num_workers=0` means the rank reads in its main process: one reader, worker id 0.
        Batches are dealt round-robin starting at `start_batch`, so a resumed rank may use a
        different number of workers than the run that saved the state.
        """
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        readers = max(1, num_workers)
        if not 0 <= worker_id < readers:
            raise ValueError(f"worker_id {worker_id} out of range for {num_workers} workers")
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} out of range 0..{self.num_batches}")
        numbers = np.arange(start_batch + worker_id, self.num_batches, readers, dtype=np.int64)
        lo = numbers * self.batch_size
        hi = np.minimum(lo + self.batch_size, len(self.global_id))
        offsets = np.concatenate([[0], np.cumsum(hi - lo)]).astype(np.int64)
        batch_of = np.arange(len(self.global_id)) // self.batch_size
        take = np.flatnonzero((batch_of >= start_batch) & ((batch_of - start_batch) % readers == worker_id))
        return ReaderPlan(batch_numbers=numbers, offsets=offsets, **self.entries.take(take))

    def state(self, batches_done: int) -> PlanState:
        """State after the rank has consumed its first `batches_done` batches (the global stream's
        first `batches_done` global batches, on every rank)."""
        if not 0 <= batches_done <= self.num_batches:
            raise ValueError(f"batches_done {batches_done} out of range 0..{self.num_batches}")
        return PlanState(
            epoch=self.epoch,
            seed=self.seed,
            global_batch=self.global_batch,
            drop_last=self.drop_last,
            shuffle=self.shuffle,
            data_fingerprint=self.fingerprint,
            batches_done=batches_done,
            world_size=self.world_size,
            rank=self.rank,
            nodes=self.nodes,
            order=self.order,
            buckets=self.buckets,
            block_size=self.block_size,
            version=self.version,
        )

    @classmethod
    def from_state(
        cls,
        data: Manifest | Sequence[int] | np.ndarray,
        state: PlanState,
        *,
        world_size: int | None = None,
        rank: int | None = None,
        nodes: int | None = None,
        subset: np.ndarray | Sequence[int] | None = None,
        repeats: bool = False,
    ) -> EpochPlan:
        """Rebuild a state's global stream, as seen by `rank` of `world_size` on `nodes` nodes
        (default: whoever saved it), over `subset` when the saved plan read one; refuses a state
        made for other data or another subset, and a world size the global batch does not divide
        by (or, for a version-1 state, any other than its own)."""
        checked = None if subset is None else _checked_subset(subset, int(_sizes_of(data).sum()), repeats)
        fingerprint = data_fingerprint(data, checked)
        if fingerprint != state.data_fingerprint:
            raise ValueError(
                "resume state was saved for a different shard set (shard sizes, paths or "
                "checksums differ) or another sample subset; start the epoch afresh or point the "
                "loader at the original shards and subset"
            )
        world = state.world_size if world_size is None else world_size
        rank = state.rank if rank is None else rank
        nodes = state.nodes if nodes is None else nodes
        if state.version == 1 and world != state.world_size:
            raise ValueError(
                f"this state was saved by {state.world_size} ranks before elastic resume existed; "
                f"it resumes only on {state.world_size} ranks, not {world}"
            )
        if state.global_batch % world:
            raise ValueError(
                f"cannot resume on {world} ranks: the state's global batch of {state.global_batch} "
                f"does not divide by {world}; use a world size that divides it"
            )
        plan = cls(
            data,
            epoch=state.epoch,
            seed=state.seed,
            batch_size=state.global_batch // world,
            world_size=world,
            rank=rank,
            drop_last=state.drop_last,
            shuffle=state.shuffle,
            order=state.order,  # type: ignore[arg-type]
            buckets=state.buckets,
            block_size=state.block_size,
            nodes=nodes,
            version=state.version,
            subset=checked,
            repeats=repeats,
        )
        plan.__dict__["fingerprint"] = fingerprint  # already computed: fill the cached_property
        return plan


def reader_plan(
    data: Manifest | Sequence[int] | np.ndarray,
    *,
    epoch: int,
    seed: int,
    world_size: int,
    rank: int,
    num_workers: int,
    worker_id: int,
    batch_size: int,
    drop_last: bool = False,
    shuffle: bool = True,
    order: ReadOrder = "global",
    buckets: int = 1,
    block_size: int = DEFAULT_BLOCK_SIZE,
    nodes: int = 1,
    state: PlanState | None = None,
) -> ReaderPlan:
    """The ordered (shard, sample) list of one reader, as a pure function of its arguments.

    With `state`, the plan continues the epoch that state was saved in, on this world size; the
    other arguments must agree with it (the global batch, not the rank's batch, for a version-2
    state), and a mismatch is refused rather than silently resumed.
    """
    layout = {"order": order, "buckets": buckets, "block_size": block_size} if order == "block" else {}
    if state is None:
        plan = EpochPlan(
            data,
            epoch=epoch,
            seed=seed,
            batch_size=batch_size,
            world_size=world_size,
            rank=rank,
            drop_last=drop_last,
            shuffle=shuffle,
            nodes=nodes,
            **layout,
        )
        return plan.for_worker(num_workers, worker_id)
    asked = {
        "epoch": epoch,
        "seed": seed,
        "world_size": world_size,
        "rank": rank,
        "batch_size": batch_size,
        "drop_last": drop_last,
        "shuffle": shuffle,
        "order": order,
        **layout,
    }
    differ = state.mismatches(**asked)
    if differ:
        raise ValueError("resume state does not match the plan asked for: " + ", ".join(differ))
    plan = EpochPlan.from_state(data, state, world_size=world_size, rank=rank, nodes=nodes)
    return plan.for_worker(num_workers, worker_id, start_batch=state.batches_done)


def distinct_shards_per_batch(plan: EpochPlan) -> float:
    """Mean number of distinct shards a batch of this rank draws from (a shuffle-quality figure
    beside `mixing_ratio`: near the batch size for a global shuffle, a few for block order)."""
    if plan.num_batches == 0:
        return 0.0
    counts = [len(np.unique(plan.batch(k).shard)) for k in range(plan.num_batches)]
    return float(np.mean(counts))


def mixing_ratio(shard_ids: np.ndarray) -> float:
    """How well a read order mixes shards: observed shard switches between neighbours divided by
    the switches expected from a uniformly random order of the same entries.

    About 1.0 for a well-mixed order, near 0 for reading one shard after another. Returns 1.0
    when a random order would switch shards fewer than once (one shard, or one entry).
    """
    shard_ids = np.asarray(shard_ids)
    n = len(shard_ids)
    if n < 2:
        return 1.0
    counts = np.unique(shard_ids, return_counts=True)[1].astype(np.float64)
    expected_rate = 1.0 - float((counts * (counts - 1)).sum()) / (n * (n - 1))
    expected = expected_rate * (n - 1)
    if expected < 1.0:
        return 1.0
    observed = float(np.count_nonzero(shard_ids[1:] != shard_ids[:-1]))
    return observed / expected

"""The epoch plan: which (shard, sample) each (rank, worker) reads, in which order, and where to resume.

A pure function of (shard sizes, epoch, seed, world size, rank, workers, worker id, batch size,
drop_last). One seeded permutation of all samples is drawn per (seed, epoch); ranks take
interleaved slices of it, each rank cuts its slice into batches, and the batches are dealt to
workers round-robin (batch b to worker b mod num_workers in a fresh epoch, (b - start) mod
num_workers when resuming at batch `start`), the way PyTorch's DataLoader hands batches to its
workers. A loader that reads worker outputs round-robin therefore sees the rank's batches in
order, and the state needed to resume is a single batch count.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from fastssl.data.manifest import Manifest

_PLAN_STREAM = 0x9E3779B9  # separates the plan's random stream from other users of (seed, epoch)


def _sizes_of(data: Manifest | Sequence[int] | np.ndarray) -> np.ndarray:
    sizes = data.shard_sizes if isinstance(data, Manifest) else np.asarray(data)
    if sizes.ndim != 1 or (sizes.size and (sizes.dtype.kind not in "iu" or (sizes < 0).any())):
        raise ValueError("shard sizes must be a 1-D sequence of non-negative integers")
    return sizes.astype(np.int64, copy=False)


def data_fingerprint(data: Manifest | Sequence[int] | np.ndarray) -> str:
    """Short digest of what a plan depends on, stored in resume state to catch changed data.

    For a manifest it covers shard paths and checksums as well as sizes, so that re-sharding
    with another shuffle (same sizes, other samples) is caught; for bare sizes, sizes only.
    """
    digest = hashlib.sha1(np.ascontiguousarray(_sizes_of(data), dtype="<i8").tobytes())
    if isinstance(data, Manifest):
        for shard in data.shards:
            digest.update(f"\0{shard.path}\0{shard.sha256}".encode())
    return digest.hexdigest()[:16]


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


@dataclass(frozen=True)
class PlanState:
    """Everything needed to resume a rank mid-epoch: the plan's inputs and batches already done."""

    epoch: int
    seed: int
    world_size: int
    rank: int
    batch_size: int
    drop_last: bool
    shuffle: bool
    data_fingerprint: str
    batches_done: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanState:
        """Rebuild a state from `to_dict()` output; missing or unknown keys are named."""
        expected = {f.name for f in fields(cls)}
        missing, unknown = expected - set(data), set(data) - expected
        if missing or unknown:
            raise ValueError(f"not a plan state: missing {sorted(missing)}, unknown {sorted(unknown)}")
        return cls(**data)

    def mismatches(self, **expected: Any) -> list[str]:
        """`name=value (state has ...)` for each expected field this state disagrees with."""
        differ = {k: v for k, v in expected.items() if getattr(self, k) != v}
        return [f"{k}={v!r} (state has {getattr(self, k)!r})" for k, v in differ.items()]


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

    Without `drop_last`, the global order is padded (by wrapping to its start) to a multiple of
    `world_size` so that every rank gets the same number of samples and batches; padded entries
    carry `valid=False`, at most `world_size - 1` of them in the epoch. With `drop_last`, each
    rank keeps only full batches and the samples at the end of the epoch's order are left out.
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
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if epoch < 0 or seed < 0:
            raise ValueError(f"epoch and seed must be non-negative, got {epoch} and {seed}")
        self._data = data
        self.sizes = _sizes_of(data)
        self.epoch, self.seed, self.batch_size = epoch, seed, batch_size
        self.world_size, self.rank = world_size, rank
        self.drop_last, self.shuffle = drop_last, shuffle

        order = epoch_order(self.sizes, epoch, seed, shuffle)
        total = len(order)
        if drop_last:
            self.num_batches = total // world_size // batch_size
            per_rank = self.num_batches * batch_size
            mine = order[rank : per_rank * world_size : world_size]
            valid = np.ones(len(mine), dtype=bool)
        else:
            per_rank = -(-total // world_size)
            self.num_batches = -(-per_rank // batch_size)
            padded = np.resize(order, per_rank * world_size) if total else order
            mine = padded[rank::world_size]
            valid = np.arange(rank, len(padded), world_size) < total
        self.samples_per_rank = per_rank
        shard, sample = locate(self.sizes, mine)
        self.entries = PlanEntries(shard=shard, sample=sample, global_id=mine, valid=valid)

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
        """`data_fingerprint` of the plan's data, computed when a state is first asked for."""
        return data_fingerprint(self._data)

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
        """State after the rank has consumed its first `batches_done` batches."""
        if not 0 <= batches_done <= self.num_batches:
            raise ValueError(f"batches_done {batches_done} out of range 0..{self.num_batches}")
        return PlanState(
            epoch=self.epoch,
            seed=self.seed,
            world_size=self.world_size,
            rank=self.rank,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            shuffle=self.shuffle,
            data_fingerprint=self.fingerprint,
            batches_done=batches_done,
        )

    @classmethod
    def from_state(cls, data: Manifest | Sequence[int] | np.ndarray, state: PlanState) -> EpochPlan:
        """Rebuild the plan a state was saved from; refuses a state made for other data."""
        fingerprint = data_fingerprint(data)
        if fingerprint != state.data_fingerprint:
            raise ValueError(
                "resume state was saved for a different shard set (shard sizes, paths or "
                "checksums differ); start the epoch afresh or point the loader at the original shards"
            )
        plan = cls(
            data,
            epoch=state.epoch,
            seed=state.seed,
            batch_size=state.batch_size,
            world_size=state.world_size,
            rank=state.rank,
            drop_last=state.drop_last,
            shuffle=state.shuffle,
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
    state: PlanState | None = None,
) -> ReaderPlan:
    """The ordered (shard, sample) list of one reader, as a pure function of its arguments.

    With `state`, the plan continues the epoch that state was saved in; the other arguments
    must agree with it, and a mismatch is refused rather than silently resumed.
    """
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
    }
    differ = state.mismatches(**asked)
    if differ:
        raise ValueError("resume state does not match the plan asked for: " + ", ".join(differ))
    plan = EpochPlan.from_state(data, state)
    return plan.for_worker(num_workers, worker_id, start_batch=state.batches_done)


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

"""Cost of the epoch plan at ImageNet scale, against DistributedSampler's index generation.

Both compute one rank's sample order for an epoch of 1,281,167 samples (1,282 shards of ~1,000)
for 8 ranks; fastssl's plan also maps every entry to (shard, sample) and deals batches to
workers. Medians of `--repeats` interleaved runs, ratio against the baseline of the same run.

    python benchmarks/bench_plan.py [--repeats 7]

With `--shuffle`, the shuffle quality of the read orders instead, on the same plan (8 ranks on
2 nodes, batch 256 per rank): the shard-mixing ratio of rank 0's order, the mean number of
distinct shards in its batches, the shards each node reads in the epoch, and the most shards
any 5 consecutive batches of rank 0 touch (what must sit in its cache at once).

    python benchmarks/bench_plan.py --shuffle
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from fastssl.data.plan import EpochPlan, distinct_shards_per_batch, mixing_ratio

IMAGENET_TRAIN = 1_281_167


def imagenet_like_sizes() -> np.ndarray:
    sizes = np.full(IMAGENET_TRAIN // 1000, 1000, dtype=np.int64)
    sizes[-1] += IMAGENET_TRAIN - sizes.sum()
    return sizes


def time_fastssl(sizes: np.ndarray, epoch: int) -> float:
    started = time.perf_counter()
    plan = EpochPlan(sizes, epoch=epoch, seed=0, batch_size=256, world_size=8, rank=3)
    plan.for_worker(8, 5)
    return time.perf_counter() - started


def time_sampler(epoch: int) -> float:
    sampler = DistributedSampler(range(IMAGENET_TRAIN), num_replicas=8, rank=3, seed=0)
    sampler.set_epoch(epoch)
    started = time.perf_counter()
    list(iter(sampler))
    return time.perf_counter() - started


def shuffle_quality(sizes: np.ndarray) -> None:
    """The table of the read orders' shuffle figures (module docstring)."""
    layouts = [("global (local default)", {}), ("block, 2 buckets, blocks of 262,144", {"buckets": 2}),
               ("block, 8 buckets, blocks of 262,144", {"buckets": 8}),
               ("block, 2 buckets, blocks of 16,384", {"buckets": 2, "block_size": 16384})]  # fmt: skip
    print("| read order | mixing ratio | distinct shards per batch of 256 | shards per node | "
          "most shards in 5 consecutive batches |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, layout in layouts:
        order = {"order": "block", **layout} if layout else {}
        plans = [EpochPlan(sizes, epoch=1, seed=0, batch_size=256, world_size=8, rank=r, nodes=2, **order)
                 for r in (0, 4)]  # fmt: skip
        rank0 = plans[0]
        per_node = [len(np.unique(np.concatenate([
            EpochPlan(sizes, epoch=1, seed=0, batch_size=256, world_size=8, rank=r, nodes=2, **order).shard
            for r in range(4 * node, 4 * node + 4)]))) for node in (0, 1)]  # fmt: skip
        window = max(len(np.unique(rank0.shard[k * 256 : (k + 5) * 256])) for k in range(rank0.num_batches))
        print(f"| {name} | {mixing_ratio(rank0.shard):.2f} | {distinct_shards_per_batch(rank0):.1f} | "
              f"{per_node[0]}, {per_node[1]} | {window} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shuffle", action="store_true", help="the read orders' shuffle quality instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.shuffle:
        shuffle_quality(imagenet_like_sizes())
        return
    sizes = imagenet_like_sizes()
    ours, base = [], []
    for epoch in range(args.repeats):
        ours.append(time_fastssl(sizes, epoch))
        base.append(time_sampler(epoch))
    ours_ms, base_ms = statistics.median(ours) * 1e3, statistics.median(base) * 1e3
    print("| plan for one (rank, worker), ImageNet-1k train, 8 ranks | ms (median) | vs baseline |")
    print("| --- | ---: | ---: |")
    print(f"| torch DistributedSampler order (baseline) | {base_ms:.0f} | 1.00 |")
    print(f"| fastssl EpochPlan + for_worker | {ours_ms:.0f} | {ours_ms / base_ms:.2f} |")


if __name__ == "__main__":
    main()

"""Cost of the epoch plan at ImageNet scale, against DistributedSampler's index generation.

Both compute one rank's sample order for an epoch of 1,281,167 samples (1,282 shards of ~1,000)
for 8 ranks; fastssl's plan also maps every entry to (shard, sample) and deals batches to
workers. Medians of `--repeats` interleaved runs, ratio against the baseline of the same run.

    python benchmarks/bench_plan.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from fastssl.data.plan import EpochPlan

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
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

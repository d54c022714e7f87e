"""The host side alone: what building one batch's DALI inputs costs per sample, with its wall-clock split.

One process, one thread, no decoding: what a feeder process does per batch (`build_batch`: the
`BatchReader` reads bytes into a shared slot's rows, checks headers, parses labels, draws parameters;
`pack_params` writes the graph's parameter array) for every batch of an epoch, SimCLR with labels,
into as many slots, in turn, as a loader with the default prefetch uses.
The split times each stage with `time.perf_counter` around it (read, checks, labels, parameters,
packing); the total is measured without the timers. Median of `--repeats` epochs.
Beside it, in the same run, the floor any host side that touches the bytes pays: every shard read
once, whole, into one reused buffer (`os.preadv`), and every shard memory-mapped with its page
table filled (`MAP_POPULATE`, what a zero-copy read costs before the decoder touches a byte), per
sample of the data set.

Usage: python benchmarks/bench_host.py [DATA=demo_out/shards] [--batch-size 256] [--repeats 5]
       [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import time
from pathlib import Path

from fastssl.pipelines.dali_views import build_batch, slot_count, slot_shape

from fastssl.data.manifest import Manifest
from fastssl.data.plan import EpochPlan
from fastssl.data.source import ByteSource
from fastssl.host.reader import BatchReader
from fastssl.host.slots import Slot
from fastssl.recipes import get_recipe


def _epoch(reader: BatchReader, recipe, batches: int, slots: list[Slot]) -> float:
    start = time.perf_counter()
    for number in range(batches):
        build_batch(recipe, reader, number, slots[number % len(slots)])
    return time.perf_counter() - start


def _floors(manifest: Manifest, samples: int) -> dict[str, float]:
    """us per sample to bring every shard's bytes into this process once: copied, and mapped."""
    paths = [manifest.shard_path(i) for i in range(len(manifest.shards))]
    sizes = [os.path.getsize(p) for p in paths]
    buffer = memoryview(bytearray(max(sizes)))
    out = {}
    for name in ("copy", "map"):
        start = time.perf_counter()
        for path, size in zip(paths, sizes, strict=True):
            fd = os.open(path, os.O_RDONLY)
            try:
                if name == "copy":
                    os.preadv(fd, [buffer[:size]], 0)
                else:
                    flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
                    mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ).close()
            finally:
                os.close(fd)
        out[name] = (time.perf_counter() - start) / samples * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", type=Path, default=Path("demo_out/shards"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recipe", default="simclr")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    manifest = Manifest.load(args.data)
    if manifest.classes is None:
        parser.error(f"{args.data} is unlabelled; the benchmark measures SimCLR with labels")
    recipe = get_recipe(args.recipe)
    totals, splits, floors = [], [], []
    source = ByteSource(manifest)  # one for the run, as SSLLoader keeps one for its life
    slots = None
    for repeat in range(args.repeats + 1):  # the first epoch warms caches and compiles: not counted
        plan = EpochPlan(manifest, epoch=repeat, seed=0, batch_size=args.batch_size, world_size=1, rank=0)
        reader = BatchReader(manifest, plan, recipe, source=source)
        samples = len(plan.entries.shard)
        # as many slots, shaped as a loader with the default prefetch and one feeder makes them
        slots = slots or [
            Slot(*slot_shape(recipe, source, args.batch_size, labelled=True)) for _ in range(slot_count(2, 1))
        ]
        total = _epoch(reader, recipe, len(plan), slots)
        reader = BatchReader(manifest, plan, recipe, source=source, timings={})
        for number in range(len(plan)):
            build_batch(recipe, reader, number, slots[number % len(slots)])
        floor = _floors(manifest, samples)
        if repeat:
            floors.append(floor)
            totals.append(total / samples * 1e6)
            splits.append({k: v / samples * 1e6 for k, v in reader.timings.items()})
    median = statistics.median(totals)
    split = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
    print(
        f"host side, {args.recipe} with labels, batch {args.batch_size}, {samples} samples from {args.data}, "
        f"median of {args.repeats} epochs:"
    )
    runs = ", ".join(f"{t:.1f}" for t in totals)
    print(f"  total                    {median:8.2f} us/sample   (runs: {runs})")
    for name, value in split.items():
        print(f"  {name:<24} {value:8.2f} us/sample   {value / sum(split.values()):6.1%}")
    floor = {k: statistics.median(f[k] for f in floors) for k in floors[0]}
    copied, mapped = floor["copy"], floor["map"]
    print(f"  floor, shards copied once {copied:8.2f} us/sample   (mapped, populated: {mapped:.2f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {"us_per_sample": median, "runs": totals, "split_us_per_sample": split,
                  "batch_size": args.batch_size, "samples": samples, "recipe": args.recipe,
                  "floor_us_per_sample": floor}  # fmt: skip
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Write an ImageNet-like corpus as shards, in parallel: the GPU benchmarks' data (../shared/DATA.md).

Crops of the packaged photographs at shorter sides 350-500 px (about 110 KB a file, as ImageNet's
mean), written by `--workers` processes in ranges, then sharded by `fastssl.data.writer`.

Usage: python benchmarks/make_corpus.py OUT [--images 20000] [--workers 16] [--shard-size 1000]
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from fastssl.data.demo import IMAGENET_SIDES, build_demo_corpus
from fastssl.data.writer import write_shards


def _write_range(root: Path, first: int, count: int) -> int:
    corpus = build_demo_corpus(root, num_images=count, seed=0, first=first, sides=IMAGENET_SIDES)
    return sum(corpus.file_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args()
    images = args.out / "images"
    step = -(-args.images // args.workers)
    ranges = [(first, min(step, args.images - first)) for first in range(0, args.images, step)]
    with ProcessPoolExecutor(args.workers) as pool:
        written = sum(pool.map(partial(_write_range, images), *zip(*ranges, strict=True)))
    print(f"{args.images} JPEGs, {written / args.images / 1000:.1f} KB mean, in {images}")
    shards = args.out / "shards"
    write_shards(images, shards, shard_size=args.shard_size, workers=args.workers, progress=False)
    print(f"shards in {shards}")


if __name__ == "__main__":
    main()

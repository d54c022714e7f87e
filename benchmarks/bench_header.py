"""What the pre-decode checks cost: `check_image` (header, format, mode, pixel limit, JPEG completeness)
against the PIL header probe alone that the loader ran before, and against a full PIL decode, per
image of a shard set, in one run.

Usage: python benchmarks/bench_header.py [DATA=demo_out/shards] [--repeats 5] [--limit 2000]
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

from PIL import Image

from fastssl.data.header import check_image
from fastssl.data.manifest import Manifest
from fastssl.data.source import ByteSource


def _probe(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def _decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def _best_us(fn, images: list[bytes], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for data in images:
            fn(data)
        best = min(best, time.perf_counter() - start)
    return best / len(images) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", type=Path, default=Path("demo_out/shards"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--limit", type=int, default=2000)
    args = parser.parse_args()
    manifest = Manifest.load(args.data)
    images: list[bytes] = []
    with ByteSource(manifest) as source:
        for shard in range(len(manifest.shards)):
            for sample in range(len(source.index(shard))):
                if len(images) < args.limit:
                    images.append(source.read(shard, sample, ("jpg",)).members["jpg"])

    def checks(data: bytes) -> tuple[int, int]:
        return check_image(data, max_pixels=1 << 26, shard="s", key="k")

    probe = _best_us(_probe, images, args.repeats)
    check = _best_us(checks, images, args.repeats)
    decode = _best_us(_decode, images, max(1, args.repeats // 2))
    print(f"{len(images)} JPEGs from {args.data}, best of {args.repeats}, microseconds per image:")
    print(f"  PIL header probe only (before)       {probe:8.1f}")
    print(f"  check_image (all pre-decode checks)  {check:8.1f}   {check / probe:.2f}x the probe")
    print(f"  PIL full decode                      {decode:8.1f}   checks = {check / decode:.1%} of a decode")


if __name__ == "__main__":
    main()

"""Shard sets the tests build: the demo's real-photo corpus, written as shards with their indexes,
checksum sidecars and manifest."""

from __future__ import annotations

from pathlib import Path

from fastssl.data.demo import build_demo_corpus
from fastssl.data.writer import write_shards


def demo_shard_set(root: Path, *, num_images: int, seed: int, shard_size: int) -> Path:
    """`num_images` demo JPEGs under `root/corpus`, sharded into `root/shards` (returned)."""
    build_demo_corpus(root / "corpus", num_images=num_images, seed=seed)
    write_shards(root / "corpus", root / "shards", shard_size=shard_size, workers=1, progress=False)
    return root / "shards"

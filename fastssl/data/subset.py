"""Subsets of a shard set's samples, named by key: the few-label splits of semi-supervised
evaluation (SimCLR's `1percent.txt` / `10percent.txt`, one file name per line) and the balanced,
deterministic ones fastssl draws itself. The loader reads a subset through its epoch plan
(`SSLLoader(subset=...)`), exactly once per epoch like the whole set; nothing is copied."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fastssl.data.header import parse_label
from fastssl.data.index import split_member_name
from fastssl.data.source import ByteSource
from fastssl.kernels.labels import parse_labels

_LABEL_CHUNK = 4096  # samples per batched read of the labels


def sample_keys(source: ByteSource) -> list[str]:
    """Every sample's key, in global-id order (shard by shard, as the indexes list them)."""
    keys: list[str] = []
    for shard in range(len(source.manifest.shards)):
        keys.extend(source.index(shard).keys)
    return keys


def subset_ids(source: ByteSource, keys: Iterable[str]) -> np.ndarray:
    """The sorted global ids of the samples named by `keys`; a key the shard set lacks, or one
    named twice, is an error naming it."""
    where = {key: i for i, key in enumerate(sample_keys(source))}
    wanted = list(keys)
    missing = [k for k in wanted if k not in where]
    if missing:
        raise ValueError(f"{len(missing)} subset key(s) name no sample of this shard set, e.g. {missing[:5]}")
    ids = np.array([where[k] for k in wanted], dtype=np.int64)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        twice = [wanted[int(np.flatnonzero(ids == i)[0])] for i in unique[counts > 1][:5]]
        raise ValueError(f"the subset names samples more than once, e.g. {twice}")
    return unique


def read_labels(source: ByteSource) -> np.ndarray:
    """Every sample's class index (its `.cls` member), in global-id order: one batched read per
    chunk of samples, the per-sample reader (and its errors naming shard and key) only for what
    the batched pass cannot vouch for."""
    manifest = source.manifest
    if manifest.classes is None:
        raise ValueError("the shard set has no labels (a manifest with classes)")
    sizes = manifest.shard_sizes
    shards = np.repeat(np.arange(len(sizes)), sizes)
    samples = np.concatenate([np.arange(n) for n in sizes]) if len(sizes) else np.zeros(0, np.int64)
    labels = np.empty(len(shards), np.int64)
    for lo in range(0, len(shards), _LABEL_CHUNK):
        shard, sample = shards[lo : lo + _LABEL_CHUNK], samples[lo : lo + _LABEL_CHUNK]
        got = source.read_batch(shard, sample, ("cls",))
        chunk, parsed = parse_labels(got.buf, got.start[:, 0], got.size[:, 0])
        for i in np.flatnonzero(got.slow | ~parsed).tolist():
            read = source.read(int(shard[i]), int(sample[i]), ("cls",))
            chunk[i] = parse_label(read.members["cls"], shard=manifest.shards[shard[i]].path, key=read.key)
        labels[lo : lo + len(chunk)] = chunk
    return labels


def balanced_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted ids of `fraction` of the samples of every class (rounded, at least one per class
    present), drawn by a permutation seeded by `seed`: the same subset for the same labels."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([0x5B5E7, seed])))
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = max(1, round(fraction * len(members)))
        chosen.append(members[rng.permutation(len(members))[:take]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def write_subset(path: str | os.PathLike, keys: Sequence[str]) -> Path:
    """A subset file: one key per line, SimCLR's `1percent.txt` layout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}\n" for k in keys))
    return path


def read_subset(path: str | os.PathLike) -> list[str]:
    """The keys of a subset file: one sample per line, as a key or a file name whose key is the
    part before the first dot of its last path part (`n01440764_10026.JPEG`, as SimCLR's files
    and WebDataset name them); blank lines and `#` comments are skipped."""
    keys = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(split_member_name(line)[0])
    if not keys:
        raise ValueError(f"subset file {path} names no samples")
    return keys

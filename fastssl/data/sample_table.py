"""Every loaded shard's index as flat arrays over global sample ids, so that a batch's member
offsets, sizes, keys and refusals are gathered with NumPy indexing instead of a Python call per sample.

A shard's rows are written once, when its index is first needed; `ShardIndex` stays the per-shard
truth (and serves single-sample reads). Global id = the shard's first id (manifest order) + sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastssl.data.index import ShardIndex


@dataclass
class BatchBytes:
    """A batch's members read into one buffer: member j of position i lies at
    `buf[start[i, j]:start[i, j] + size[i, j]]`. `slow[i]` marks positions the batched read could not
    vouch for (an error, or a case only the per-sample reader handles); their bytes are not in `buf`."""

    buf: np.ndarray
    start: np.ndarray
    size: np.ndarray
    slow: np.ndarray
    keys: list[str]


class SampleTable:
    """Per-sample arrays of the shards loaded so far, indexed by global sample id."""

    def __init__(self, shard_sizes: np.ndarray) -> None:
        self.first = np.concatenate([[0], np.cumsum(shard_sizes)]).astype(np.int64)
        total = int(self.first[-1])
        self.loaded = np.zeros(len(shard_sizes), np.bool_)
        self.offsets: dict[str, np.ndarray] = {}  # ext -> data offset per sample, -1: no such member
        self.sizes: dict[str, np.ndarray] = {}
        self.refused = np.zeros(total, np.bool_)  # repeated or unsafe keys: the per-sample path says why
        self.keys = np.empty(total, dtype=object)
        self.name_at = np.zeros(total, np.int64)  # each key's UTF-8 bytes in `names`
        self.name_len = np.zeros(total, np.int64)
        self._names = np.zeros(1 << 16, np.uint8)
        self._names_used = 0

    @property
    def names(self) -> np.ndarray:
        return self._names[: self._names_used]

    def _column(self, ext: str, kind: dict[str, np.ndarray], fill: int) -> np.ndarray:
        if ext not in kind:
            kind[ext] = np.full(len(self.keys), fill, np.int64)
        return kind[ext]

    def add(self, shard: int, index: ShardIndex) -> None:
        """Write shard `shard`'s rows (its index has the manifest's sample count: checked by the caller)."""
        lo, hi = int(self.first[shard]), int(self.first[shard + 1])
        for j, ext in enumerate(index.exts):
            self._column(ext, self.offsets, -1)[lo:hi] = index.offsets[:, j]
            self._column(ext, self.sizes, 0)[lo:hi] = index.sizes[:, j]
        for ext in self.offsets:
            if ext not in index.exts:
                self.offsets[ext][lo:hi] = -1
        refused = np.zeros(hi - lo, np.bool_)
        refused[list(index.repeats) + list(index.unsafe_keys)] = True
        self.refused[lo:hi] = refused
        self.keys[lo:hi] = index.keys
        encoded = [key.encode("utf-8", "surrogateescape") for key in index.keys]
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        blob = b"".join(encoded)
        while self._names_used + len(blob) > len(self._names):
            self._names = np.concatenate([self._names, np.zeros_like(self._names)])
        self._names[self._names_used : self._names_used + len(blob)] = np.frombuffer(blob, np.uint8)
        self.name_at[lo:hi] = self._names_used + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.name_len[lo:hi] = lengths
        self._names_used += len(blob)
        self.loaded[shard] = True

    def columns(self, ext: str) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, sizes) of `ext` for every global id (-1 offsets where no loaded shard has it)."""
        return self._column(ext, self.offsets, -1), self._column(ext, self.sizes, 0)

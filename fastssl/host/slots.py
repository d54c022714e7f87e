"""Shared memory that batches are built into by feeder processes and read in place by the decoder.

A slot holds one batch: every sample's JPEG at the start of its own row of a dense (B, R) uint8
array, so that DALI takes the whole batch as one dense input (a list of B arrays costs DALI about
9 us per sample to take in, on the training thread), plus the batch's graph parameters (B, K)
float32 and JPEG sizes (B, 1) int32. The decoder reads a row up to the JPEG's end-of-image marker;
what follows it in the row is never read (GPU graphs cut rows to their sizes first).

Slots are anonymous shared mappings made before the feeders fork: nothing is named in /dev/shm (no
leftovers after a crash, no container /dev/shm limit), and only pages written are memory. Rows are
as long as the epoch's largest JPEG; a row that once held an outlier gives its pages back the next
time it holds a normal sample, so memory follows the usual sizes, not the largest.
"""

from __future__ import annotations

import mmap

import numpy as np

TAR_BLOCK = 512
PAGE = mmap.PAGESIZE
# Linux's MAP_NORESERVE (Python's mmap does not name it): rows are reserved address space, and
# only written pages should count against memory.
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
# A row keeps at most this much written beyond what it holds now. Simulated on 110 KB-mean JPEG
# sizes (a log-normal tail up to 2 MB), batch 256: 128 KiB gives slots of 1.3x the packed bytes
# but re-faults pages for 13% of samples (8 us each measured here), 256 KiB 2.1x and 3%, no limit
# 8.5x and none.
_RELEASE_ABOVE = 256 << 10


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


class Slot:
    """Room for one batch of up to `batch_size` samples whose JPEGs are at most `max_jpeg` bytes and
    whose other members (labels) at most `max_other` bytes each, and `columns` float32 parameters.

    The tar header read with each JPEG lands in the 512 bytes before its row: the end of the row
    above (which its own JPEG never reaches) or, for row 0, the slot's lead.
    """

    def __init__(self, batch_size: int, max_jpeg: int, max_other: int, columns: int, others: int = 1):
        self.batch_size = batch_size
        self.row = _round_up(max(max_jpeg, 1) + TAR_BLOCK, 64)
        self.other_row = _round_up(max(max_other, 1) + TAR_BLOCK, 64)
        self.others = others
        rows_at = TAR_BLOCK
        others_at = _round_up(rows_at + batch_size * self.row, PAGE)
        params_at = _round_up(others_at + batch_size * self.other_row * others, 64)
        sizes_at = params_at + batch_size * max(columns, 1) * 4
        held_at = _round_up(sizes_at + batch_size * 4, 8)
        total = held_at + (batch_size + 1) * 8
        self._map = mmap.mmap(-1, total, flags=mmap.MAP_SHARED | _MAP_NORESERVE)
        self.buf = np.frombuffer(self._map, np.uint8)
        self.rows = self.buf[rows_at : rows_at + batch_size * self.row].reshape(batch_size, self.row)
        self.params = self.buf[params_at:sizes_at].view(np.float32).reshape(batch_size, max(columns, 1))
        self.sizes = self.buf[sizes_at : sizes_at + batch_size * 4].view(np.int32).reshape(batch_size, 1)
        self._rows_at, self._others_at = rows_at, others_at
        # In the shared mapping too, so that whichever feeder fills a row next knows what it holds:
        # the JPEG bytes each row's pages hold at most, then the bytes given back so far.
        bookkeeping = self.buf[held_at:total].view(np.int64)
        self._held, self._released = bookkeeping[:batch_size], bookkeeping[batch_size:]

    @property
    def released(self) -> int:
        """Bytes of outlier rows given back so far, by every process."""
        return int(self._released[0])

    def fits(self, batch_size: int, max_jpeg: int, max_other: int, columns: int, others: int) -> bool:
        """Whether this slot can hold batches of that shape."""
        return (
            batch_size <= self.batch_size
            and max_jpeg + TAR_BLOCK <= self.row
            and max_other + TAR_BLOCK <= self.other_row
            and columns <= self.params.shape[1]
            and others <= self.others
        )

    def layout(self, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`ByteSource.read_batch`'s layout: header offsets putting member 0 (the JPEG) of position i
        at the start of row i and the other members in their own rows after the JPEG rows."""
        n, width = lengths.shape
        if n > self.batch_size or width - 1 > self.others:
            raise ValueError(f"batch of {n} x {width} members does not fit a slot of {self.batch_size}")
        too_long = len(lengths) and (
            lengths[:, 0].max() > self.row or (width > 1 and lengths[:, 1:].max() > self.other_row)
        )
        if too_long:
            raise ValueError("a member is larger than the index said when the slot was made")
        positions = np.arange(n, dtype=np.int64)
        at = np.empty((n, width), np.int64)
        at[:, 0] = self._rows_at - TAR_BLOCK + positions * self.row
        for j in range(1, width):
            at[:, j] = self._others_at + ((j - 1) * self.batch_size + positions) * self.other_row
        jpeg_bytes = np.maximum(lengths[:, 0] - TAR_BLOCK, 0)
        self._release(jpeg_bytes)
        self._held[:n] = np.maximum(self._held[:n], jpeg_bytes)
        return self.buf, at

    def put(self, position: int, jpeg: np.ndarray) -> None:
        """Write `jpeg` (bytes read by the per-sample path, or a placeholder) into its row."""
        if len(jpeg) > self.row - TAR_BLOCK:
            raise ValueError(f"{len(jpeg)} bytes do not fit a row of {self.row - TAR_BLOCK}")
        self.rows[position, : len(jpeg)] = jpeg
        self._held[position] = max(self._held[position], len(jpeg))

    def _release(self, needed: np.ndarray) -> None:
        """Give back the pages of rows that hold far less now than they once did (an outlier)."""
        n = len(needed)
        for i in np.flatnonzero(self._held[:n] - needed > _RELEASE_ABOVE).tolist():
            row_start = self._rows_at + i * self.row
            start = _round_up(row_start + int(needed[i]), PAGE)
            end = (row_start + int(self._held[i])) // PAGE * PAGE  # short of the next row's header
            if end > start:
                self._map.madvise(mmap.MADV_REMOVE, start, end - start)
                self._released[0] += end - start
            self._held[i] = needed[i]

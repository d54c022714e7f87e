"""Per-sample checksums beside a shard's index (`shard-000000.sums` next to `shard-000000.idx`): the
CRC-32 of every member's bytes, so that a sample read alone (an HTTP range request in the global
read order of a remote shard set) is checked without hashing its whole shard.

Text, one line per sample in index order after a header naming the format and the columns:
`fastssl-sums 1 crc32 <samples> <ext,ext,...>`, then one 8-digit hex CRC per column, `-` where the
sample lacks the member. CRC-32 (zlib) detects truncation and corruption in transit, which is its
job here; the shard's sha256 in the manifest stays the check against a changed shard.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from fastssl.data.index import ShardIndex
from fastssl.errors import IndexMismatchError, ShardError

SUMS_FORMAT = "fastssl-sums"
SUMS_VERSION = "1"
MISSING = -1


def sums_path(index_path: str | os.PathLike) -> Path:
    """Where the checksums of the shard indexed by `index_path` live."""
    return Path(index_path).with_suffix(".sums")


def member_sums(tar_path: str | os.PathLike, index: ShardIndex) -> np.ndarray:
    """(samples, exts) CRC-32 of every member the index lists, MISSING where there is none."""
    sums = np.full(index.offsets.shape, MISSING, dtype=np.int64)
    with open(tar_path, "rb") as f:
        for i in range(len(index)):
            for j in range(len(index.exts)):
                offset = int(index.offsets[i, j])
                if offset >= 0:
                    data = os.pread(f.fileno(), int(index.sizes[i, j]), offset)
                    sums[i, j] = zlib.crc32(data)
    return sums


def write_sums(sums: np.ndarray, exts: tuple[str, ...], path: str | os.PathLike) -> None:
    lines = [f"{SUMS_FORMAT} {SUMS_VERSION} crc32 {len(sums)} {','.join(exts)}"]
    lines += [" ".join("-" if v == MISSING else f"{v:08x}" for v in row) for row in sums.tolist()]
    Path(path).write_text("\n".join(lines) + "\n", encoding="ascii")


def read_sums(path: str | os.PathLike, index: ShardIndex, *, shard: str) -> np.ndarray:
    """The checksums at `path`, in the index's column order; refuses a file that does not match
    the index (other sample count or members)."""
    try:
        lines = Path(path).read_text(encoding="ascii").splitlines()
    except OSError as err:
        raise ShardError(f"cannot read checksums {path}: {err.strerror}", shard=shard) from err
    except UnicodeDecodeError as err:
        raise IndexMismatchError(f"checksums {path} are not text", shard=shard) from err
    head = lines[0].split() if lines else []
    if len(head) != 5 or head[:3] != [SUMS_FORMAT, SUMS_VERSION, "crc32"] or not head[3].isdigit():
        raise IndexMismatchError(f"{path} is not a {SUMS_FORMAT} {SUMS_VERSION} file", shard=shard)
    exts = tuple(head[4].split(",")) if head[4] else ()
    rows = lines[1:]
    if int(head[3]) != len(index) or len(rows) != len(index) or set(exts) != set(index.exts):
        raise IndexMismatchError(
            f"checksums {path} list {head[3]} samples of {exts}, the index {len(index)} of {index.exts} "
            "(rewrite them with `fastssl index`)",
            shard=shard,
        )
    try:
        table = np.array(
            [[MISSING if v == "-" else int(v, 16) for v in row.split()] for row in rows], dtype=np.int64
        ).reshape(len(index), len(exts))
    except ValueError as err:
        raise IndexMismatchError(f"malformed checksums in {path}: {err}", shard=shard) from err
    return table[:, [exts.index(ext) for ext in index.exts]]

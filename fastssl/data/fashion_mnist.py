"""Fashion-MNIST (Xiao et al. 2017) from Debian's `dataset-fashion-mnist` package to labelled shards.

The package installs the original IDX files under /usr/share/datasets/fashion-mnist. This writes
`OUT/train` and `OUT/test`, each an ImageFolder tree of 28x28 grayscale JPEGs (one folder per
class) turned into indexed shards by `fastssl.data.writer`, so the loader, `fastssl pretrain` and
`fastssl eval` read them like any other data set.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from fastssl.data.writer import write_shards

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
_SPLITS = {"train": "train", "test": "t10k"}


def available(root: str | os.PathLike = DEBIAN_ROOT) -> bool:
    """Whether the four IDX files are there (`apt-get install dataset-fashion-mnist`)."""
    root = Path(root)
    return all(
        (root / f"{p}-{kind}-ubyte.gz").is_file()
        for p in _SPLITS.values()
        for kind in ("images-idx3", "labels-idx1")
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzip) as a uint8 array: (N,) labels or (N, rows, cols) images."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {array.size} values for shape {shape}")
    return array.reshape(shape)


def load_split(split: str, root: str | os.PathLike = DEBIAN_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) of "train" (60,000) or "test" (10,000)."""
    prefix = Path(root) / _SPLITS[split]
    return read_idx(f"{prefix}-images-idx3-ubyte.gz"), read_idx(f"{prefix}-labels-idx1-ubyte.gz")


def write_fashion_mnist(
    out: str | os.PathLike,
    *,
    root: str | os.PathLike = DEBIAN_ROOT,
    limit: dict[str, int] | None = None,
    shard_size: int = 5000,
    workers: int | None = None,
    progress: bool = False,
) -> dict[str, Path]:
    """Write OUT/train and OUT/test shard folders; `limit` keeps the first N of a split (balanced
    enough for checks: the files interleave the classes). Returns the two folders."""
    if not available(root):
        raise FileNotFoundError(
            f"Fashion-MNIST not found under {root}; apt-get install dataset-fashion-mnist"
        )
    out = Path(out)
    written = {}
    for split in _SPLITS:
        images, labels = load_split(split, root)
        n = min(len(images), (limit or {}).get(split, len(images)))
        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
            tree = Path(tmp) / split
            for c in CLASSES:
                (tree / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(images[i], "L").save(
                    tree / CLASSES[labels[i]] / f"{split}_{i:05d}.jpg", quality=95
                )
            target = out / split
            if target.exists():
                shutil.rmtree(target)
            write_shards(tree, target, shard_size=shard_size, workers=workers, progress=progress)
        written[split] = target
    return written

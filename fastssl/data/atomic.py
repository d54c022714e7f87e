"""Atomic, durable replacement of a file: final names never point at partial content."""

from __future__ import annotations

import os
from pathlib import Path


def durable_replace(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target` after its bytes reach the disk, then persist the rename, so
    that a crash or power loss never leaves a final name over partial content."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

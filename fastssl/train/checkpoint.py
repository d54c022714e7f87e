"""Checkpoints written atomically (temporary file, fsync, rename) and read back with
`torch.load(weights_only=True)`, which refuses pickled code; stale temporaries of a killed writer
are found and removed by the next run."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch

from fastssl.data.atomic import durable_replace

_TMP_MARK = ".tmp-"


def _temporary_name(path: Path) -> Path:
    """`.NAME.tmp-PID@HOST`: the writer's pid and host, so that a later run can tell whether the
    writer of a leftover temporary is still alive (pids are only meaningful on their own host)."""
    return path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}@{socket.gethostname()}")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` (tensors, numbers, strings, lists, tuples, dicts) to `path` atomically: the
    final name only ever holds a whole checkpoint, the previous one until the new one is on disk.

    An error or exception removes the temporary file; a SIGKILL or power loss during the write can
    leave it behind (no code runs then), and `remove_stale_temporaries` clears it on the next start."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        torch.save(state, tmp)
        durable_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process holds the pid: alive
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """Remove the temporaries `save_checkpoint(path, ...)` left when its writer was killed.

    Returns (removed files, notes on temporaries kept). A temporary is removed only when its writer
    ran on this host and that process no longer exists; one written on another host, or whose
    writer is alive (a run still saving), is kept and named in the notes. Call it from the one
    process that writes checkpoints (rank 0) before it writes any."""
    path = Path(path)
    removed: list[Path] = []
    kept: list[str] = []
    host = socket.gethostname()
    for tmp in sorted(path.parent.glob(f".{path.name}{_TMP_MARK}*")):
        owner = tmp.name[len(f".{path.name}{_TMP_MARK}") :]
        pid_text, _, writer_host = owner.partition("@")  # no '@': written before hosts were recorded
        if not pid_text.isdigit():
            kept.append(f"{tmp}: not a checkpoint temporary (unknown writer {owner!r}), left alone")
        elif writer_host and writer_host != host:
            kept.append(f"{tmp}: written on host {writer_host}, whose processes this host cannot see")
        elif _writer_alive(int(pid_text)):
            kept.append(f"{tmp}: its writer (pid {pid_text}) is still running")
        else:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed, kept


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's state; a file that would need to unpickle code (a callable, a class
    instance) is refused with `pickle.UnpicklingError`, as `weights_only=True` does."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)

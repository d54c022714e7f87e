"""A bounded shard cache on local disk, safe to share between ranks, workers and jobs on one node.

Files live under the cache folder by name; each has a lock file beside it (`.NAME.lock`, kept for
the cache's life) that a reader holds shared while it has the file open (`pin`). Eviction is
least-recently-used by modification time (touched at every pin) and takes a file only when it can
lock it exclusively, that is when no process has it pinned; an evicted file is unlinked, never
truncated, so a reader that still has it open keeps valid bytes. Downloads are written under a
temporary name unique to the writer (`.NAME.SIZE.PID-THREAD.tmp`, the size counted against the
limit while it runs) and renamed into place; one writer per file at a time (`.NAME.fetch.lock`),
the others wait and then find the file. The byte limit counts finished files and downloads under
way; a download that cannot fit once everything unpinned is evicted raises `CacheFullError`.

Why by hand: fsspec's caching file systems (`filecache`, `blockcache`) keep no byte limit that
respects files in use by other processes, and have no cross-process eviction locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from fastssl.errors import DataError

_LOCK = ".cache.lock"  # the whole cache's accounting and eviction, one process at a time


class CacheFullError(DataError):
    """The cache's byte limit cannot hold what must be on disk at once."""


def _lock_name(name: str, kind: str = "lock") -> str:
    """The lock file of `name` beside the cache's files: `.NAME.lock` for its readers' pins,
    `.NAME.fetch.lock` for its one writer."""
    return f".{name.replace('/', '__')}.{kind}"


class ShardCache:
    """Files of at most `limit_bytes` in total (None: unbounded) under `folder`."""

    def __init__(self, folder: str | os.PathLike, limit_bytes: int | None = None) -> None:
        if limit_bytes is not None and limit_bytes < 1:
            raise ValueError(f"cache limit must be a positive number of bytes, got {limit_bytes}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.limit_bytes = limit_bytes
        self._pins: dict[str, int] = {}  # name -> descriptor of its lock file, held shared
        self._guard = threading.Lock()
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pins"], state["_guard"] = {}, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._guard = threading.Lock()
        self._pid = os.getpid()

    def path(self, name: str) -> Path:
        """Where file `name` lives (a relative path; subfolders allowed)."""
        return self.folder / name

    def _forget_inherited(self) -> None:
        """After a fork the pins' descriptors share the parent's locks: drop them unreleased."""
        if self._pid != os.getpid():
            self._pins, self._pid = {}, os.getpid()

    # -- pins ----------------------------------------------------------------------------------
    def pin(self, name: str) -> bool:
        """Hold `name` against eviction (a shared lock) and mark it recently used; False when the
        file is not in the cache (nothing is held then)."""
        self._forget_inherited()
        with self._guard:
            if name in self._pins:
                return True
            fd = os.open(self.folder / _lock_name(name), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_SH)
            target = self.path(name)
            if not target.is_file():
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                return False
            with contextlib.suppress(OSError):
                os.utime(target)  # least recently used is judged by this
            self._pins[name] = fd
            return True

    def unpin(self, name: str) -> None:
        """Let `name` be evicted again (by this process's say)."""
        self._forget_inherited()
        with self._guard:
            fd = self._pins.pop(name, None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def pinned(self) -> set[str]:
        return set(self._pins)

    def close(self) -> None:
        """Release every pin of this process."""
        for name in list(self._pins):
            self.unpin(name)

    # -- writing -------------------------------------------------------------------------------
    def fetch(self, name: str, size: int, write: Callable[[Path], None]) -> Path:
        """`name` in the cache, pinned: found there, or written by `write(temporary path)` (which
        must leave exactly the file's bytes; it may raise, and then nothing is kept), after room
        for `size` bytes is made by evicting unpinned files."""
        if self.pin(name):
            return self.path(name)
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.folder / _lock_name(name, "fetch.lock")):
            if self.pin(name):  # another process fetched it while we waited
                return target
            tmp = target.with_name(f".{target.name}.{size}.{os.getpid()}-{threading.get_ident()}.tmp")
            self._make_room(size, tmp)
            try:
                write(tmp)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        if not self.pin(name):  # evicted between the rename and the pin: only a tiny limit does it
            raise CacheFullError(f"the cache ({self.folder}) evicted {name} as soon as it was written")
        return target

    def _entries(self) -> Iterator[tuple[str, Path, int, float, bool]]:
        """(name, path, bytes, mtime, is a download under way) of every file in the cache."""
        for path in self.folder.rglob("*"):
            if not path.is_file() or path.name.endswith(".lock"):
                continue
            if path.name.startswith("."):
                parts = path.name.split(".")
                if path.name.endswith(".tmp") and len(parts) >= 4 and parts[-3].isdigit():
                    yield "", path, int(parts[-3]), 0.0, True
                continue
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                yield str(path.relative_to(self.folder)), path, st.st_size, st.st_mtime, False

    def used_bytes(self) -> int:
        """Bytes of the cache's files and of the downloads under way."""
        return sum(size for _, _, size, _, _ in self._entries())

    def trim(self) -> None:
        """Evict unpinned files, oldest first, until the cache is within its limit again (after a
        file whose size was not known before it was written); `CacheFullError` when the files in
        use alone exceed it."""
        self._make_room(0, None)

    def _make_room(self, size: int, reservation: Path | None) -> None:
        """Evict unpinned files, oldest first, until `size` more bytes fit; then reserve them by
        creating the download's temporary file (its name carries the size), all under the
        cache-wide lock."""
        with exclusive_lock(self.folder / _LOCK):
            if self.limit_bytes is not None:
                if size > self.limit_bytes:
                    raise CacheFullError(
                        f"a file of {size} bytes does not fit the cache limit of {self.limit_bytes} bytes "
                        f"({self.folder}); raise the limit"
                    )
                entries = list(self._entries())
                used = sum(e[2] for e in entries)
                for name, path, bytes_, _, partial in sorted(entries, key=lambda e: e[3]):
                    if used + size <= self.limit_bytes:
                        break
                    if partial or name in self._pins:
                        continue
                    if self._evict(name, path):
                        used -= bytes_
                if used + size > self.limit_bytes:
                    more = f"{size} more bytes: " if size else "what is in use: "
                    raise CacheFullError(
                        f"the cache limit of {self.limit_bytes} bytes ({self.folder}) cannot hold "
                        f"{more}{used} bytes are in files in use or being written; raise the limit "
                        "or lower the prefetch depth"
                    )
            if reservation is not None:
                reservation.touch()

    def _evict(self, name: str, path: Path) -> bool:
        """Unlink `name` if no process has it pinned (its lock file free for an exclusive lock)."""
        fd = os.open(self.folder / _lock_name(name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # someone reads it
            path.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)  # closing drops the lock


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if need be) for the `with` block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

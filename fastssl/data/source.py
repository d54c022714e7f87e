"""Read a planned sample's encoded bytes from its shard with one positional read through the index."""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from dataclasses import dataclass

from fastssl.data.index import ShardIndex, read_index
from fastssl.data.manifest import Manifest, sha256_file
from fastssl.errors import IndexMismatchError, MissingMemberError, ShardError

TAR_BLOCK = 512


@dataclass(frozen=True)
class SampleBytes:
    """A sample's encoded members (`{"jpg": b"...", "cls": b"3"}`) with the shard and key it came from."""

    shard: str
    key: str
    members: dict[str, bytes]


def _tar_header_fields(header: bytes) -> tuple[str, int] | None:
    """(name, size) from a ustar header block, or None when the block is not a valid header."""
    if len(header) != TAR_BLOCK:
        return None
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return None
    if stored != sum(header[:148]) + sum(header[156:]) + 8 * 32:
        return None
    name = header[:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    raw_size = header[124:136]
    if raw_size[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        size = int.from_bytes(raw_size[1:], "big")
    else:
        size = int(raw_size.split(b"\0", 1)[0].strip() or b"0", 8)
    return name.decode("utf-8", "replace"), size


class ByteSource:
    """Random access to the samples of a manifest's shards.

    Each read is one `os.pread` of the member's tar header and data; the header is checked
    against the index (name, size, checksum) so that an index that disagrees with its tar is
    reported, naming shard and key, instead of returning someone else's bytes. Indexes are
    loaded on first use; at most `max_open` shard files are held open at once.
    """

    def __init__(self, manifest: Manifest, *, max_open: int = 64, verify_checksums: bool = False):
        self.manifest = manifest
        self.max_open = max_open
        self.verify_checksums = verify_checksums
        self._indexes: dict[int, ShardIndex] = {}
        self._fds: OrderedDict[int, int] = OrderedDict()

    def index(self, shard: int) -> ShardIndex:
        """The shard's index, checked against the manifest's sample count."""
        if shard not in self._indexes:
            info = self.manifest.shards[shard]
            index = read_index(self.manifest.index_path(shard), shard=info.path)
            if len(index) != info.samples:
                raise IndexMismatchError(
                    f"index lists {len(index)} samples but the manifest says {info.samples}",
                    shard=info.path,
                )
            self._indexes[shard] = index
        return self._indexes[shard]

    def _fd(self, shard: int) -> int:
        if shard in self._fds:
            self._fds.move_to_end(shard)
            return self._fds[shard]
        info = self.manifest.shards[shard]
        path = self.manifest.shard_path(shard)
        if self.verify_checksums and sha256_file(path) != info.sha256:
            raise ShardError("checksum does not match the manifest", shard=info.path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise ShardError(f"cannot open shard: {err.strerror}", shard=info.path) from err
        self._fds[shard] = fd
        while len(self._fds) > self.max_open:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def read(self, shard: int, sample: int, exts: tuple[str, ...] = ("jpg", "cls")) -> SampleBytes:
        """The members `exts` of sample number `sample` in shard number `shard`.

        Raises `MissingMemberError` when the sample lacks one of `exts`, `IndexMismatchError`
        when the tar does not hold what the index says, `ShardError` when the shard is unreadable.
        """
        info = self.manifest.shards[shard]
        index = self.index(shard)
        if not 0 <= sample < len(index):
            raise IndexMismatchError(f"sample {sample} out of range 0..{len(index) - 1}", shard=info.path)
        key = index.keys[sample]
        fd = self._fd(shard)
        members: dict[str, bytes] = {}
        for ext in exts:
            where = index.member(sample, ext)
            if where is None:
                raise MissingMemberError(
                    f"sample has no .{ext} member (it has: {', '.join(index.exts_of(sample))})",
                    shard=info.path,
                    key=key,
                )
            offset, size = where
            if offset < TAR_BLOCK:
                raise IndexMismatchError(
                    f".{ext} offset {offset} lies inside the first header", shard=info.path, key=key
                )
            try:
                block = os.pread(fd, size + TAR_BLOCK, offset - TAR_BLOCK)
            except OSError as err:
                raise ShardError(f"read failed: {err.strerror}", shard=info.path, key=key) from err
            if len(block) < size + TAR_BLOCK:
                raise ShardError(
                    f".{ext} at offset {offset} with {size} bytes runs past the end of the file "
                    "(truncated shard?)",
                    shard=info.path,
                    key=key,
                )
            header = _tar_header_fields(block[:TAR_BLOCK])
            expected = f"{key}.{ext}"
            # Names over 100 bytes live in a long-name record; the header keeps a truncation.
            name_ok = header is not None and (
                header[0] == expected or (len(expected.encode()) > 100 and expected.startswith(header[0]))
            )
            if not name_ok or header[1] != size:
                found = (
                    "no valid tar header"
                    if header is None
                    else (f"member {header[0]!r} of {header[1]} bytes")
                )
                raise IndexMismatchError(
                    f"index says {expected!r} ({size} bytes) at offset {offset}, tar has {found}",
                    shard=info.path,
                    key=key,
                )
            members[ext] = block[TAR_BLOCK:]
        return SampleBytes(info.path, key, members)

    def close(self) -> None:
        """Close every open shard file."""
        while self._fds:
            os.close(self._fds.popitem()[1])

    def __enter__(self) -> ByteSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # At interpreter shutdown `os` may already be gone; nothing useful to report then.
        with contextlib.suppress(Exception):
            self.close()

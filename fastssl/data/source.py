"""Read planned samples' encoded bytes from their shards through the index: one positional read per
sample (`read`), or a whole batch in one compiled loop with its headers checked in one pass
(`read_batch`)."""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import tarfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from fastssl.data.index import ShardIndex, member_kind, read_index
from fastssl.data.manifest import Manifest, ShardInfo, sha256_file
from fastssl.data.sample_table import BatchBytes, SampleTable
from fastssl.data.store import RemoteShards
from fastssl.errors import (
    ChecksumError,
    DuplicateKeyError,
    IndexMismatchError,
    MissingMemberError,
    ShardError,
    UnsafeMemberError,
)

TAR_BLOCK = 512

# reads `length` bytes at `offset` of one shard: os.pread on its file, or a range request
Pread = Callable[[int, int], bytes]

# where read_batch puts a batch's members: (lengths (n, k) with headers) -> (buffer, header offsets)
Layout = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class SampleBytes:
    """A sample's encoded members (`{"jpg": b"...", "cls": b"3"}`) with the shard and key it came from."""

    shard: str
    key: str
    members: dict[str, bytes]


def _again(err: ShardError, key: str | None = None) -> ShardError:
    """A fresh copy of a kept verdict, naming `key`: raising the kept object itself again and
    again would grow its traceback with every sample of the shard."""
    return type(err)(err.reason, shard=err.shard, key=key, path=err.path)


def _parse_header(block: bytes) -> tarfile.TarInfo | None:
    """The tar header in `block` (checksum verified by tarfile), or None when it is not one."""
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None


def _header_matches(header: tarfile.TarInfo | None, expected: str, size: int) -> bool:
    """Whether the header is a regular file named `expected` with `size` bytes.

    Names over 100 bytes live in a long-name record before the header, which then keeps only a
    truncation of at least 99 bytes; such a truncation matches here, and the reader then checks
    the whole name in the record (`_long_name_before`).
    """
    if header is None or not header.isreg() or header.size != size:
        return False
    name = header.name
    return name == expected or (len(name.encode()) >= 99 and expected.startswith(name))


_PAX_SEARCH_BLOCKS = 16  # a pax record of up to 8 KiB before the header is found


def _long_name_before(pread: Pread, header_at: int, name_bytes: int) -> str | None:
    """The full member name that a GNU long-name record or a pax `path` record right before the
    header at `header_at` gives, or None when neither is there.

    Only needed for names of 100 bytes or more, whose header keeps a truncation: without it, two
    members whose names share their first 99 bytes and whose sizes agree could be confused.
    """
    # GNU: an 'L' header, then the name and a NUL in whole blocks
    blocks = -(-(name_bytes + 1) // TAR_BLOCK)
    start = header_at - (blocks + 1) * TAR_BLOCK
    if start >= 0:
        record = pread((blocks + 1) * TAR_BLOCK, start)
        head = _parse_header(record[:TAR_BLOCK])
        if head is not None and head.type == tarfile.GNUTYPE_LONGNAME:
            return record[TAR_BLOCK : TAR_BLOCK + head.size].rstrip(b"\0").decode("utf-8", "surrogateescape")
    # pax: an 'x' header, then "LEN key=value\n" records, one of them the path
    for blocks in range(1, _PAX_SEARCH_BLOCKS + 1):
        start = header_at - (blocks + 1) * TAR_BLOCK
        if start < 0:
            break
        head = _parse_header(pread(TAR_BLOCK, start))
        if head is None or head.type != tarfile.XHDTYPE or -(-head.size // TAR_BLOCK) != blocks:
            continue
        records = pread(head.size, start + TAR_BLOCK)
        while records:
            length, _, rest = records.partition(b" ")
            if not length.isdigit() or int(length) > len(records):
                return None
            field = records[len(length) + 1 : int(length) - 1]
            name, _, value = field.partition(b"=")
            if name == b"path":
                return value.decode("utf-8", "surrogateescape")
            records = records[int(length) :]
        return None
    return None


class ByteSource:
    """Random access to the samples of a manifest's shards.

    Each read is one `os.pread` of the member's tar header and data; the header is checked
    against the index (regular file, name, size, header checksum) so that an index that
    disagrees with its tar is reported, naming shard and key, instead of returning someone
    else's bytes. Indexes are loaded on first use; at most `max_open` shard files are held
    open at once. With `verify_checksums`, each shard's sha256 is checked once, on first use.
    A key's second occurrence in a shard, a member name with an absolute path or `..`, and an
    index entry that points at a link or device entry are refused per sample. A shard whose
    checksum or index is found wrong stays refused for the source's life (it is not re-hashed
    for each of its samples); errors of the file system are retried at the next read.

    One instance per thread. Copies, pickles (for worker processes) and forked children start
    with no open files of their own, so they never share or close another's descriptors.
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        max_open: int = 64,
        verify_checksums: bool = False,
        remote: RemoteShards | None = None,
    ):
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self.manifest = manifest
        self.max_open = max_open
        self.verify_checksums = verify_checksums
        # a remote shard set: shards come from its cache, downloaded and checked on first use
        self.remote = remote
        self._indexes: dict[int, ShardIndex] = {}
        self._verified: set[int] = set()
        self._refused: dict[int, ShardError] = {}  # shard -> its checksum verdict
        self._bad_index: dict[int, ShardError] = {}  # shard -> why its index is unusable
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()
        self._table: SampleTable | None = None  # built by the first read_batch
        self._fd_of = np.full(len(manifest.shards), -1, np.int32)  # mirrors _fds, for batched reads
        self._buffers = _BufferPool()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"] = OrderedDict()  # descriptors are per process and per instance
        state["_fd_of"] = np.full(len(self.manifest.shards), -1, np.int32)
        state["_buffers"] = _BufferPool()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def _info(self, shard: int) -> ShardInfo:
        if not 0 <= shard < len(self.manifest.shards):
            raise ShardError(f"shard number {shard} out of range 0..{len(self.manifest.shards) - 1}")
        return self.manifest.shards[shard]

    def default_exts(self) -> tuple[str, ...]:
        """`("jpg", "cls")` for labelled shard sets, `("jpg",)` for unlabelled ones."""
        return ("jpg", "cls") if self.manifest.classes is not None else ("jpg",)

    def index(self, shard: int) -> ShardIndex:
        """The shard's index, checked against the manifest's sample count."""
        if shard not in self._indexes:
            info = self._info(shard)
            if shard in self._bad_index:
                raise _again(self._bad_index[shard])
            try:
                index = read_index(self.manifest.index_path(shard), shard=info.path)
                if len(index) != info.samples:
                    raise IndexMismatchError(
                        f"index lists {len(index)} samples but the manifest says {info.samples}",
                        shard=info.path,
                    )
            except IndexMismatchError as err:  # the content is wrong: it will not get better
                self._bad_index[shard] = err
                raise
            self._indexes[shard] = index
        return self._indexes[shard]

    def verify(self, shards: Iterable[int]) -> None:
        """Check the sha256 of every shard in `shards` not checked yet, now. A mismatch is kept as
        the shard's verdict and raised by its reads; an unreadable file is left to the reads.
        Called before decode workers fork, so that they inherit the verdicts instead of each
        re-hashing the shards they touch."""
        if self.remote is not None:  # every download is checked against its size and sha256
            return
        for shard in shards:
            shard = int(shard)
            if shard in self._verified or shard in self._refused:
                continue
            with contextlib.suppress(ShardError):
                self._check_checksum(shard, self._info(shard), None)

    def verdicts(self) -> tuple[set[int], dict[int, ShardError]]:
        """The checksum verdicts so far, shards verified and shards refused with their error: for a
        process forked before some of them were reached to `adopt` (a long-lived feeder)."""
        return set(self._verified), dict(self._refused)

    def adopt(self, verdicts: tuple[set[int], dict[int, ShardError]]) -> None:
        """Take another source's `verdicts` for the same manifest as this one's own."""
        verified, refused = verdicts
        self._verified |= verified
        self._refused.update(refused)

    def _check_checksum(self, shard: int, info: ShardInfo, key: str | None) -> None:
        try:
            digest = sha256_file(self.manifest.shard_path(shard))
        except OSError as err:
            raise ShardError(f"cannot open shard: {err.strerror}", shard=info.path, key=key) from err
        if digest != info.sha256:
            self._refused[shard] = ChecksumError(
                "checksum does not match the manifest (the shard changed since it was "
                "written; rewrite it or its manifest entry)",
                shard=info.path,
            )
            raise _again(self._refused[shard], key)
        self._verified.add(shard)

    def _forget_inherited_fds(self) -> None:
        """After a fork, start with no open files: the inherited descriptors belong to the parent."""
        if self._pid != os.getpid():
            self._fds, self._pid = OrderedDict(), os.getpid()
            self._fd_of[:] = -1

    def _fd(self, shard: int, info: ShardInfo, key: str | None = None) -> int:
        self._forget_inherited_fds()
        if shard in self._fds:
            self._fds.move_to_end(shard)
            return self._fds[shard]
        if shard in self._refused:
            raise _again(self._refused[shard], key)
        if self.remote is not None:
            try:
                path = self.remote.ensure(shard)  # downloaded, checked and pinned in the cache
            except ShardError as err:  # retries are spent: the shard stays refused
                self._refused[shard] = err
                raise _again(err, key) from err
        else:
            path = self.manifest.shard_path(shard)
            if self.verify_checksums and shard not in self._verified:
                self._check_checksum(shard, info, key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            if self.remote is not None:
                self.remote.release(shard)
            raise ShardError(f"cannot open shard: {err.strerror}", shard=info.path, key=key) from err
        self._fds[shard] = fd
        self._fd_of[shard] = fd
        while len(self._fds) > self.max_open:
            evicted, old = self._fds.popitem(last=False)
            self._fd_of[evicted] = -1
            os.close(old)
            if self.remote is not None:
                self.remote.release(evicted)
        return fd

    def prefetch(self, shards: Iterable[int]) -> None:
        """Remote shard sets: start fetching `shards` (the current batch's and the plan's next),
        and close and unpin every other, so that the cache may evict what this reader is done with."""
        if not self.downloads_shards:
            return
        wanted = {int(s) for s in shards}
        self._forget_inherited_fds()
        for shard in [s for s in self._fds if s not in wanted]:
            os.close(self._fds.pop(shard))
            self._fd_of[shard] = -1
            self.remote.release(shard)
        self.remote.prefetch(sorted(wanted), keep=set(self._fds))

    def read(self, shard: int, sample: int, exts: tuple[str, ...] | None = None) -> SampleBytes:
        """The members `exts` (default: `default_exts()`) of sample `sample` in shard `shard`.

        Raises `MissingMemberError` when the sample lacks one of `exts`, `IndexMismatchError`
        when the tar does not hold what the index says, `DuplicateKeyError` for a key's second
        occurrence in the shard, `UnsafeMemberError` for a name or an entry that must never be
        read, `ShardError` (`ChecksumError`) when the shard is unreadable (or changed).
        """
        info = self._info(shard)
        index = self.index(shard)
        if not 0 <= sample < len(index):
            raise IndexMismatchError(f"sample {sample} out of range 0..{len(index) - 1}", shard=info.path)
        key = index.keys[sample]
        if sample in index.repeats:
            raise DuplicateKeyError(
                f"duplicate key: sample {sample} repeats the key of sample {index.repeats[sample]} "
                "(the first is read, this one is refused)",
                shard=info.path,
                key=key,
            )
        if sample in index.unsafe_keys:
            raise UnsafeMemberError(
                f"member name is {index.unsafe_keys[sample]}; refused", shard=info.path, key=key
            )
        pread = self._pread(shard, info, key)
        members: dict[str, bytes] = {}
        for ext in exts or self.default_exts():
            where = index.member(sample, ext)
            if where is None:
                raise MissingMemberError(
                    f"sample has no .{ext} member (it has: {', '.join(index.exts_of(sample))})",
                    shard=info.path,
                    key=key,
                )
            members[ext] = self._read_member(pread, info, key, ext, *where)
            if self._ranged and not self._sum_matches(shard, sample, ext, members[ext]):
                raise ChecksumError(
                    f".{ext} does not match its recorded checksum (read from "
                    f"{self.remote.shown_url(info)}; the shard changed, or the transfer broke)",
                    shard=info.path,
                    key=key,
                )
        return SampleBytes(info.path, key, members)

    def _sum_matches(self, shard: int, sample: int, ext: str, data: bytes | memoryview) -> bool:
        """Whether `data`, member `ext` of `sample` in `shard`, has the CRC-32 recorded for it."""
        index = self.index(shard)
        return zlib.crc32(data) == int(self.remote.sums(shard, index)[sample, index.exts.index(ext)])

    @property
    def downloads_shards(self) -> bool:
        """Whether shards are fetched whole before they are read (a remote set in block order);
        range reads keep nothing on disk."""
        return self.remote is not None and not self.remote.ranges

    @property
    def _ranged(self) -> bool:
        """Whether samples are read one by one with range requests (a remote set in global order)."""
        return self.remote is not None and self.remote.ranges

    def _pread(self, shard: int, info: ShardInfo, key: str) -> Pread:
        """How to read bytes of `shard`: from its (downloaded) file, or by range requests."""
        if self._ranged:
            if shard in self._refused:
                raise _again(self._refused[shard], key)
            return lambda length, offset: self.remote.read_range(shard, offset, length, key)
        fd = self._fd(shard, info, key)
        return lambda length, offset: os.pread(fd, length, offset)

    def _load_tables(self, distinct: np.ndarray) -> np.ndarray:
        """Load the indexes of `distinct` shards into the sample table; True where unusable."""
        if self._table is None:
            self._table = SampleTable(self.manifest.shard_sizes)
        table = self._table
        unusable = np.zeros(len(self.manifest.shards), np.bool_)
        for shard in distinct[~table.loaded[distinct]]:
            try:
                table.add(int(shard), self.index(int(shard)))
            except ShardError:
                unusable[shard] = True
        return unusable

    def largest_member(self, ext: str) -> int:
        """Index size of the largest `ext` member in the data set (refused keys aside), 0 if none;
        loads every index it has not yet (a feeder sizes its shared buffers from this)."""
        self._load_tables(np.arange(len(self.manifest.shards)))
        _, sizes = self._table.columns(ext)
        return int(sizes[~self._table.refused].max(initial=0))

    def read_batch(
        self,
        shards: np.ndarray,
        samples: np.ndarray,
        exts: tuple[str, ...],
        layout: Layout | None = None,
    ) -> BatchBytes:
        """The members `exts` of every (shards[i], samples[i]) in one buffer, each tar header checked
        against the index in the same pass (`fastssl.kernels.tar_members`).

        `layout(lengths)` chooses where they go: given the (n, len(exts)) bytes of every member with
        its 512-byte tar header before it (0 for a slow position), it returns the buffer and the
        offset of each header in it (a feeder's shared rows). By default members are packed, in
        order, into a buffer reused once nothing refers to it.

        Positions the batched read cannot vouch for are marked `slow` and left out of the buffer: a
        shard whose index or file is unusable, a refused key, a missing member, a header that does not
        match, a short read, or a case only `read` handles (long names, ustar prefixes). `read` of such
        a position gives its bytes or raises the exact error it always did. No Python runs per sample
        here except where a shard is seen for the first time."""
        from fastssl.kernels.tar_members import TAR_BLOCK, check_headers, read_members

        shards = np.asarray(shards, np.int64)
        samples = np.asarray(samples, np.int64)
        n, width = len(shards), len(exts)
        self._forget_inherited_fds()
        distinct = np.unique(shards)
        unusable = self._load_tables(distinct)
        table = self._table
        unusable[distinct[np.isin(distinct, list(self._refused))]] = True
        closed = distinct[(self._fd_of[distinct] < 0) & ~unusable[distinct]]
        if len(closed) and not self._ranged:
            # every file of one batch open at once, within the process's descriptor limit (a batch
            # over more shards reads the rest through `read`); its open files first move to the
            # recent end, so that opening the others never evicts them
            self.max_open = min(max(self.max_open, len(distinct)), _descriptor_budget())
            for shard in distinct[self._fd_of[distinct] >= 0].tolist():
                self._fds.move_to_end(shard)
            for shard in closed:
                try:
                    self._fd(int(shard), self._info(int(shard)))
                except ShardError:
                    unusable[shard] = True
        counts = table.first[shards + 1] - table.first[shards]
        known = table.loaded[shards] & (samples >= 0) & (samples < counts)  # its index gives its key
        gid = np.where(known, table.first[shards] + samples, 0)
        slow = unusable[shards] | ~known | table.refused[gid]
        offsets = np.empty((n, width), np.int64)
        sizes = np.empty((n, width), np.int64)
        for j, ext in enumerate(exts):
            column_offsets, column_sizes = table.columns(ext)
            offsets[:, j], sizes[:, j] = column_offsets[gid], column_sizes[gid]
        slow |= (offsets < TAR_BLOCK).any(axis=1)
        lengths = np.where(slow[:, None], 0, sizes + TAR_BLOCK)
        if layout is None:
            ends = np.cumsum(lengths.ravel())
            at = (ends - lengths.ravel()).reshape(n, width)
            buf = self._buffers.take(int(ends[-1]) if len(ends) else 0)
        else:
            buf, at = layout(lengths)
        fast = ~slow
        member_shards = np.repeat(shards, width).reshape(n, width)[fast].ravel()
        if self._ranged:  # one range request per member, all of the batch's at once
            starts = (offsets[fast] - TAR_BLOCK).ravel()
            got = self.remote.read_ranges(member_shards, starts, lengths[fast].ravel(), buf, at[fast].ravel())
        else:
            got = read_members(
                self._fd_of[member_shards].astype(np.int64),
                (offsets[fast] - TAR_BLOCK).ravel(),
                lengths[fast].ravel(),
                buf,
                at[fast].ravel(),
            )
        suffixes = np.zeros((width, 16), np.uint8)
        for j, ext in enumerate(exts):
            dotted = ("." + ext).encode("utf-8", "surrogateescape")[:16]
            suffixes[j, : len(dotted)] = np.frombuffer(dotted, np.uint8)
        rows = np.repeat(np.arange(width)[None, :], n, axis=0)[fast].ravel()
        member_gid = np.repeat(gid, width).reshape(n, width)[fast].ravel()
        ok = (got == lengths[fast].ravel()) & check_headers(
            buf, at[fast].ravel(), sizes[fast].ravel(), table.names, table.name_at[member_gid],
            table.name_len[member_gid], suffixes[rows],
        )  # fmt: skip
        if self._ranged:  # each member against its recorded checksum; a mismatch takes the slow path
            ok &= self._sums_match(
                member_shards, np.repeat(samples[fast], width), [exts[j] for j in rows.tolist()], buf,
                (at[fast] + TAR_BLOCK).ravel(), sizes[fast].ravel(),
            )  # fmt: skip
        slow[np.flatnonzero(fast)[~ok.reshape(-1, width).all(axis=1)]] = True
        sizes = np.where(slow[:, None], 0, sizes)  # a slow row has no bytes in buf: nothing to scan
        keys = table.keys[gid]
        keys[~known] = [f"#{sample}" for sample in samples[~known].tolist()]  # the read says what is wrong
        keys = keys.tolist()
        return BatchBytes(buf, np.where(slow[:, None], 0, at + TAR_BLOCK), sizes, slow, keys)

    def _sums_match(
        self, shards: np.ndarray, samples: np.ndarray, exts: list[str], buf: np.ndarray, starts: np.ndarray,
        sizes: np.ndarray,
    ) -> np.ndarray:  # fmt: skip
        """Whether each member's bytes in `buf` have the CRC-32 recorded for it. A Python loop per
        member, only on range reads, where the network costs far more (zlib releases the GIL)."""
        ok = np.zeros(len(shards), np.bool_)
        view = memoryview(buf)
        for m, (shard, sample, ext, start, size) in enumerate(
            zip(shards.tolist(), samples.tolist(), exts, starts.tolist(), sizes.tolist(), strict=True)
        ):
            ok[m] = self._sum_matches(shard, sample, ext, view[start : start + size])
        return ok

    @staticmethod
    def _read_member(pread: Pread, info: ShardInfo, key: str, ext: str, offset: int, size: int) -> bytes:
        if offset < TAR_BLOCK:
            raise IndexMismatchError(
                f".{ext} offset {offset} lies inside the first header", shard=info.path, key=key
            )
        try:
            block = pread(size + TAR_BLOCK, offset - TAR_BLOCK)
        except OSError as err:
            raise ShardError(f"read failed: {err.strerror}", shard=info.path, key=key) from err
        if len(block) < size + TAR_BLOCK:
            raise ShardError(
                f".{ext} at offset {offset} with {size} bytes runs past the end of the file "
                "(truncated shard?)",
                shard=info.path,
                key=key,
            )
        header = _parse_header(block[:TAR_BLOCK])
        expected = f"{key}.{ext}"
        if header is not None and not header.isreg() and not header.isdir():
            raise UnsafeMemberError(
                f"index points .{ext} at a {member_kind(header)} entry {header.name!r}; links and "
                "device files are never read",
                shard=info.path,
                key=key,
            )
        if _header_matches(header, expected, size) and header.name != expected:
            full = _long_name_before(pread, offset - TAR_BLOCK, len(expected.encode()))
            if full != expected:  # the header's truncated name agrees, the whole name does not
                raise IndexMismatchError(
                    f"index says {expected!r} at offset {offset}, the tar's long-name record there "
                    f"gives {full!r}",
                    shard=info.path,
                    key=key,
                )
        elif not _header_matches(header, expected, size):
            if header is None:
                found = "no valid tar header"
            else:
                kind = "member" if header.isreg() else "non-file entry"
                found = f"{kind} {header.name!r} of {header.size} bytes"
            raise IndexMismatchError(
                f"index says {expected!r} ({size} bytes) at offset {offset}, tar has {found}",
                shard=info.path,
                key=key,
            )
        return block[TAR_BLOCK:]

    def close(self) -> None:
        """Close every shard file this instance opened in this process."""
        fds, self._fds = self._fds, OrderedDict()
        self._fd_of[:] = -1
        if self._pid == os.getpid():
            for fd in fds.values():
                os.close(fd)
            if self.remote is not None:
                self.remote.close()

    def __enter__(self) -> ByteSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # At interpreter shutdown `os` may already be gone; nothing useful to report then.
        with contextlib.suppress(Exception):
            self.close()


class _BufferPool:
    """Batch buffers used again once nothing refers to them (no view of one is alive), so that a
    batch of encoded images does not fault in fresh pages every time. Holds at most `keep`."""

    def __init__(self, keep: int = 16) -> None:
        self.keep = keep
        self._free: list[np.ndarray] = []
        # what getrefcount says of a buffer only the pool refers to, measured the way `take` looks
        # (interpreters differ: 3.14 may borrow the loop variable's reference)
        probe = [np.empty(1, np.uint8)]
        self._alone = next(sys.getrefcount(buffer) for buffer in probe)

    def take(self, size: int) -> np.ndarray:
        for buffer in self._free:
            if len(buffer) >= size and sys.getrefcount(buffer) <= self._alone:
                return buffer[:size] if len(buffer) > size else buffer
        buffer = np.empty(max(size, 1), np.uint8)
        if len(self._free) < self.keep:
            self._free.append(buffer)
        return buffer[:size] if len(buffer) > size else buffer


def _descriptor_budget() -> int:
    """Shard files one source may hold open: half the process's descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft if soft != resource.RLIM_INFINITY else 65536) // 2)

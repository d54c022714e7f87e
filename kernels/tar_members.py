"""Read a batch's tar members, each with its 512-byte header, in one compiled loop of `pread` calls,
and check every header against the index, without a Python call per member.

Reading a member took a Python `os.pread` (a fresh bytes object) and a `tarfile.TarInfo.frombuf`
parse per sample: over half of the host side's time. Here one `pread` per member lands header and data
in the batch's one buffer, and `check_headers` verifies what `fastssl.data.source` verified per
member: a valid header checksum, a regular file, the size the index gives and the exact name
`KEY.EXT`. A member that does not pass (or that needs more than this kernel reads: a ustar prefix,
a long name, a base-256 size) is left to the caller's per-member path, whose error names it. libc's
pread is called from the compiled loop because no library offers a batched positional read to
Python (io_uring bindings are not in the registries the project may use); a short read is reported,
never hidden.
Plain-Python references sit beside both, for tests.
"""

from __future__ import annotations

import os
import tarfile

import numba
import numpy as np
from numba import types

TAR_BLOCK = 512

# libc's pread, bound by name when the kernel is loaded (so the compiled kernel can be cached, which
# a ctypes function address cannot). The buffer address goes as an integer (uintp, the width of a
# pointer): Numba hands NumPy data pointers to external functions as integers.
_pread = types.ExternalFunction("pread", types.intp(types.int32, types.uintp, types.uintp, types.int64))


@numba.njit(cache=True, nogil=True)
def _read_members(
    fds: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, buf: np.ndarray, at: np.ndarray
) -> np.ndarray:
    base = buf.ctypes.data
    got = np.zeros(len(fds), np.int64)
    for i in range(len(fds)):
        done = 0
        while done < lengths[i]:
            n = _pread(fds[i], base + at[i] + done, lengths[i] - done, offsets[i] + done)
            if n <= 0:  # end of file (a truncated shard) or an error: the caller looks again
                break
            done += n
        got[i] = done
    return got


def read_members(
    fds: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, buf: np.ndarray, at: np.ndarray
) -> np.ndarray:
    """`pread(fds[i], lengths[i] bytes at offsets[i])` into `buf[at[i]:]` for every i; returns the bytes
    each read got (less than asked: end of file or an error). `buf` must be a writable contiguous
    uint8 array holding every target range (checked here: the kernel writes through a raw pointer)."""
    if not len(fds) == len(offsets) == len(lengths) == len(at):
        raise ValueError("fds, offsets, lengths and at must have one entry per member")
    if buf.dtype != np.uint8 or not buf.flags.c_contiguous or not buf.flags.writeable:
        raise ValueError("buf must be a writable contiguous uint8 array")
    if len(at) and (int((at + lengths).max()) > len(buf) or int(at.min()) < 0 or int(lengths.min()) < 0):
        raise ValueError("a target range lies outside buf")
    return _read_members(
        fds.astype(np.int32, copy=False), offsets.astype(np.int64, copy=False),
        lengths.astype(np.int64, copy=False), buf, at.astype(np.int64, copy=False),
    )  # fmt: skip


def read_members_reference(fd: int, offset: int, length: int) -> bytes:
    """One member's bytes, the plain way."""
    return os.pread(fd, length, offset)


@numba.njit(inline="always")
def _octal(buf: np.ndarray, start: int, width: int) -> int:
    """An octal tar number field (digits, ended by NUL or space), or -1 when it is not one."""
    value, digits, k = 0, 0, 0
    while k < width and buf[start + k] == 0x20:  # leading spaces
        k += 1
    while k < width:
        c = buf[start + k]
        if 0x30 <= c <= 0x37:
            value = value * 8 + (c - 0x30)
            digits += 1
        elif c == 0 or c == 0x20:
            break
        else:
            return -1
        k += 1
    return value if digits else -1


@numba.njit(cache=True, nogil=True)
def check_headers(
    buf: np.ndarray,
    header_at: np.ndarray,
    sizes: np.ndarray,
    names: np.ndarray,
    name_at: np.ndarray,
    name_len: np.ndarray,
    suffix: np.ndarray,
) -> np.ndarray:
    """Whether the 512-byte header at `buf[header_at[i]:]` is that of a regular file of `sizes[i]`
    bytes named `names[name_at[i]:name_at[i] + name_len[i]]` followed by `suffix[i]` (b".jpg", as
    bytes padded with zeros), with a valid checksum and no ustar prefix."""
    ok = np.zeros(len(header_at), np.bool_)
    for i in range(len(header_at)):
        h = header_at[i]
        # checksum: the sum of the header's bytes with its own field read as spaces (unsigned or signed)
        unsigned, signed = 0, 0
        for k in range(TAR_BLOCK):
            c = 0x20 if 148 <= k < 156 else buf[h + k]
            unsigned += c
            signed += c - 256 if c > 127 else c
        recorded = _octal(buf, h + 148, 8)
        if recorded < 0 or (recorded != unsigned and recorded != signed):
            continue
        kind = buf[h + 156]
        if kind != 0x30 and kind != 0:  # '0' or NUL: a regular file
            continue
        if _octal(buf, h + 124, 12) != sizes[i] or buf[h + 345] != 0:  # size; empty ustar prefix
            continue
        n = name_len[i]
        tail = 0
        while tail < suffix.shape[1] and suffix[i, tail] != 0:
            tail += 1
        if n + tail > 100 or (n + tail < 100 and buf[h + n + tail] != 0):
            continue
        same = True
        for k in range(n):
            if buf[h + k] != names[name_at[i] + k]:
                same = False
                break
        for k in range(tail):
            if buf[h + n + k] != suffix[i, k]:
                same = False
                break
        ok[i] = same
    return ok


def check_header_reference(header: bytes, name: str, size: int) -> bool:
    """`check_headers` for one header, through tarfile."""
    try:
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return (
        info.type in (tarfile.REGTYPE, tarfile.AREGTYPE)
        and header[345] == 0
        and info.size == size
        and info.name == name
        and len(name.encode("utf-8", "surrogateescape")) <= 100
    )

"""Per-shard sample index in the format of DALI's `wds2idx` (v1.2), built by scanning tar headers.

The index lets a reader fetch any sample's members with one positional read, without scanning
the tar, and `fn.readers.webdataset(index_paths=...)` accepts the same files.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath

import numpy as np

from fastssl.errors import IndexMismatchError, ShardError, UnsafeMemberError

INDEX_VERSION = "v1.2"


def unsafe_name(name: str) -> str | None:
    """Why a member name must never be read or extracted (an absolute path or a `..` part), or None."""
    path = PurePosixPath(name)
    if path.is_absolute():
        return "an absolute path"
    if ".." in path.parts:
        return "a '..' path component"
    return None


def member_kind(info: tarfile.TarInfo) -> str:
    """A readable name for a tar entry's type ("regular file", "symbolic link", ...)."""
    for test, kind in (
        (info.isreg, "regular file"),
        (info.isdir, "directory"),
        (info.issym, "symbolic link"),
        (info.islnk, "hard link"),
        (info.ischr, "character device"),
        (info.isblk, "block device"),
        (info.isfifo, "FIFO"),
    ):
        if test():
            return kind
    return "special entry"


def split_member_name(name: str) -> tuple[str, str]:
    """Split a member name into (key, extension) at the first dot of its last path part, as DALI does."""
    dot = name.find(".", name.rfind("/") + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


@dataclass(frozen=True)
class ShardIndex:
    """Where each sample's members lie in one tar: `offsets[i, j]`/`sizes[i, j]` for key i, ext j.

    Offsets point at member data (after the 512-byte header); -1 marks a member the sample lacks.
    Kept as arrays rather than objects so that an ImageNet-sized index stays small in every worker.
    """

    keys: tuple[str, ...]
    exts: tuple[str, ...]
    offsets: np.ndarray
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    @cached_property
    def repeats(self) -> dict[int, int]:
        """{sample: earlier sample with the same key}: every occurrence of a key after its first."""
        first: dict[str, int] = {}
        found = {}
        for sample, key in enumerate(self.keys):
            if key in first:
                found[sample] = first[key]
            else:
                first[key] = sample
        return found

    @cached_property
    def unsafe_keys(self) -> dict[int, str]:
        """{sample: why its key must never be read}, for keys with an absolute path or a `..` part:
        worked out once per index, not at every read."""
        return {sample: why for sample, key in enumerate(self.keys) if (why := unsafe_name(key))}

    def member(self, sample: int, ext: str) -> tuple[int, int] | None:
        """(offset, size) of `ext` for sample number `sample`, or None when the sample lacks it."""
        try:
            j = self.exts.index(ext)
        except ValueError:
            return None
        offset = int(self.offsets[sample, j])
        return None if offset < 0 else (offset, int(self.sizes[sample, j]))

    def exts_of(self, sample: int) -> list[str]:
        """The extensions sample number `sample` has, in index order."""
        return [e for j, e in enumerate(self.exts) if self.offsets[sample, j] >= 0]

    def to_text(self) -> str:
        """The index as DALI's v1.2 text: a header line, then `ext offset size name ...` per sample."""
        lines = [f"{INDEX_VERSION} {len(self.keys)}"]
        order = np.argsort(self.offsets, axis=1, kind="stable")
        for i, key in enumerate(self.keys):
            fields = []
            for j in order[i]:
                if self.offsets[i, j] >= 0:
                    ext = self.exts[j]
                    fields.append(f"{ext} {self.offsets[i, j]} {self.sizes[i, j]} {key}.{ext}")
            lines.append(" ".join(fields))
        return "\n".join(lines) + "\n"


def _from_rows(rows: list[tuple[str, list[tuple[str, int, int]]]]) -> ShardIndex:
    exts = sorted({ext for _, members in rows for ext, _, _ in members})
    col = {ext: j for j, ext in enumerate(exts)}
    offsets = np.full((len(rows), len(exts)), -1, dtype=np.int64)
    sizes = np.zeros((len(rows), len(exts)), dtype=np.int64)
    for i, (_, members) in enumerate(rows):
        for ext, offset, size in members:
            offsets[i, col[ext]] = offset
            sizes[i, col[ext]] = size
    return ShardIndex(tuple(key for key, _ in rows), tuple(exts), offsets, sizes)


def build_index(tar_path: str | os.PathLike) -> ShardIndex:
    """Scan a tar's headers (not its data) and index its samples.

    Follows `wds2idx`: members without a key or extension are skipped, and consecutive members
    with the same key form one sample (a member whose extension the sample already has starts a
    new sample with the same key, which readers then refuse as a duplicate). Unlike `wds2idx`,
    links, device files and FIFOs, and names with an absolute path or a `..` part, are refused
    with `UnsafeMemberError` rather than passed over: such a tar was not written as a shard.
    Directory entries are passed over.
    """
    tar_path = Path(tar_path)
    rows: list[tuple[str, list[tuple[str, int, int]]]] = []
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            for info in tar:
                if info.isdir():
                    continue
                if not info.isreg():
                    raise UnsafeMemberError(
                        f"member {info.name!r} is a {member_kind(info)}; links and device files "
                        "are refused, never read or extracted",
                        shard=str(tar_path),
                    )
                why = unsafe_name(info.name)
                if why is not None:
                    raise UnsafeMemberError(
                        f"member name {info.name!r} is {why}; refused, never read or extracted",
                        shard=str(tar_path),
                    )
                key, ext = split_member_name(info.name)
                if not key or key.endswith("/") or not ext:
                    continue
                if any(c.isspace() for c in info.name):
                    raise ShardError(
                        f"member name {info.name!r} contains whitespace, which the index format "
                        "cannot represent",
                        shard=str(tar_path),
                        key=key,
                    )
                if rows and rows[-1][0] == key and ext not in {e for e, _, _ in rows[-1][1]}:
                    rows[-1][1].append((ext, info.offset_data, info.size))
                else:
                    rows.append((key, [(ext, info.offset_data, info.size)]))
            _check_complete(tar_path, tar.offset, rows)
    except (tarfile.TarError, EOFError) as err:
        raise ShardError(
            f"not a readable tar file (truncated or corrupt): {err}", shard=str(tar_path)
        ) from err
    except OSError as err:
        raise ShardError(f"cannot read tar file: {err.strerror or err}", shard=str(tar_path)) from err
    return _from_rows(rows)


def _check_complete(tar_path: Path, end: int, rows: list) -> None:
    """Refuse a tar that tarfile stopped reading early: tarfile ends quietly at the first bad
    header after the first one, and does not look at data it seeks over."""
    file_size = tar_path.stat().st_size
    last_end = max((offset + size for _, members in rows for _, offset, size in members), default=0)
    if last_end > file_size:
        raise ShardError(
            f"truncated: a member's data ends at byte {last_end}, the file has {file_size}",
            shard=str(tar_path),
        )
    with open(tar_path, "rb") as f:
        f.seek(end)
        while chunk := f.read(1 << 20):
            if chunk.strip(b"\0"):
                raise ShardError(
                    f"unreadable tar header at byte {end}: the members after it cannot be indexed",
                    shard=str(tar_path),
                )


def _is_count(text: str) -> bool:
    """ASCII digits only (str.isdigit also accepts '²' and other digits int() refuses)."""
    return text.isascii() and text.isdigit()


def write_index(index: ShardIndex, path: str | os.PathLike) -> None:
    """Write `index` as a DALI v1.2 index file."""
    Path(path).write_text(index.to_text(), encoding="utf-8")


def read_index(path: str | os.PathLike, *, shard: str | None = None) -> ShardIndex:
    """Parse a DALI v1.2 index file; malformed content raises `IndexMismatchError` naming the file."""
    path = Path(path)
    shard_name = shard or str(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ShardError(f"cannot read index {path}: {err.strerror}", shard=shard_name) from err
    except UnicodeDecodeError as err:
        raise IndexMismatchError(f"index {path} is not UTF-8 text", shard=shard_name) from err
    header = lines[0].split() if lines else []
    if len(header) != 2 or header[0] != INDEX_VERSION or not _is_count(header[1]):
        raise IndexMismatchError(
            f"index {path} does not start with '{INDEX_VERSION} <count>' (rebuild it with `fastssl index`)",
            shard=shard_name,
        )
    count = int(header[1])
    body = [line for line in lines[1:] if line.strip()]
    if len(body) != count:
        raise IndexMismatchError(
            f"index {path} declares {count} samples but lists {len(body)}", shard=shard_name
        )
    rows: list[tuple[str, list[tuple[str, int, int]]]] = []
    for lineno, line in enumerate(body, start=2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise IndexMismatchError(
                f"index {path} line {lineno} is not 'ext offset size name' groups", shard=shard_name
            )
        members = []
        key = None
        for g in range(0, len(fields), 4):
            ext, offset, size, name = fields[g : g + 4]
            member_key, _ = split_member_name(name)
            if key is not None and member_key != key:
                raise IndexMismatchError(
                    f"index {path} line {lineno} mixes keys {key!r} and {member_key!r}",
                    shard=shard_name,
                )
            key = member_key
            if not (_is_count(offset) and _is_count(size)):
                raise IndexMismatchError(
                    f"index {path} line {lineno} has a non-numeric offset or size",
                    shard=shard_name,
                    key=key,
                )
            if any(ext == e for e, _, _ in members):
                # a key repeated in consecutive members (wds2idx writes one line for it): a new
                # sample with the same key, as `build_index` makes, which readers refuse alone
                rows.append((key, members))
                members = []
            members.append((ext, int(offset), int(size)))
        rows.append((key, members))
    return _from_rows(rows)

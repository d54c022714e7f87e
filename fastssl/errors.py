"""Exception types for bad input data, each naming the file, shard and sample key involved."""

from __future__ import annotations


def _rebuild(cls: type, reason: str, shard: str | None, key: str | None, path: str | None) -> DataError:
    return cls(reason, shard=shard, key=key, path=path)


class DataError(Exception):
    """Bad input data. The message names the file, shard and sample key where known.

    `reason` is the message without the location; `shard`, `key` and `path` are kept as
    attributes, and survive pickling (a decode worker's error reaches the main process whole).
    """

    def __init__(
        self,
        message: str,
        *,
        shard: str | None = None,
        key: str | None = None,
        path: str | None = None,
    ) -> None:
        self.shard = shard
        self.key = key
        self.path = path
        where = [
            f"{name} {value!r}"
            for name, value in (("shard", shard), ("key", key), ("file", path))
            if value is not None
        ]
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.reason = message

    def __reduce__(self) -> tuple:
        return _rebuild, (type(self), self.reason, self.shard, self.key, self.path)


class ShardError(DataError):
    """A shard, its index or the manifest entry for it is unusable."""


class ChecksumError(ShardError):
    """A shard's sha256 no longer matches its manifest entry."""


class IndexMismatchError(ShardError):
    """A shard's index disagrees with the tar file it describes."""


class MissingMemberError(DataError):
    """A sample lacks a member (for example its `.jpg`) that the reader needs."""


class DuplicateKeyError(DataError):
    """A key occurs twice in one shard (or a sample has two members of one extension)."""


class UnsafeMemberError(DataError):
    """A tar member that must never be read or extracted: an absolute path, a `..` component,
    a link or a device file."""


class UnsafeSourceError(DataError):
    """A shard location that would run a command (`pipe:`) without the user allowing it."""


class ManifestError(DataError):
    """A manifest file is missing, malformed or of an unsupported version."""


class ImageHeaderError(DataError):
    """An image's header cannot be read, is not an RGB or grayscale JPEG, the file ends before its
    end-of-image marker, or it announces more pixels than the limit allows."""


class DecodeError(DataError):
    """A sample's image bytes could not be decoded."""


class LabelError(DataError):
    """A sample's `.cls` member is not a non-negative integer."""


class WorkerError(RuntimeError):
    """A loader worker (a decode process or the host read-ahead thread) died or failed outside
    the data: the cause is chained and named in the message."""

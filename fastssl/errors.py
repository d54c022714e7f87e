"""Exception types for bad input data, each naming the file, shard and sample key involved."""

from __future__ import annotations


class DataError(Exception):
    """Bad input data. The message names the file, shard and sample key where known."""

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


class ShardError(DataError):
    """A shard, its index or the manifest entry for it is unusable."""


class IndexMismatchError(ShardError):
    """A shard's index disagrees with the tar file it describes."""


class MissingMemberError(DataError):
    """A sample lacks a member (for example its `.jpg`) that the reader needs."""


class ManifestError(DataError):
    """A manifest file is missing, malformed or of an unsupported version."""

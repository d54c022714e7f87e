"""Shard locations that are not plain local paths: `pipe:` commands (WebDataset's URL form), run only
when the user allows it, and copied once into the node's bounded shard cache where they are indexed
like any shard.

A `pipe:` URL runs a shell command, so a list of shard URLs from someone else is code from someone
else: it is refused unless `allow_pipe=True`. Once allowed, the command's output is streamed
through WebDataset's `gopen` (which checks the command's exit status) into the cache under a name
derived from the URL, written atomically, indexed, and from then on read with positional reads like
a local shard, so exact-once epochs and resumption hold for it too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from fastssl.data.atomic import durable_replace
from fastssl.data.cache import CacheFullError, ShardCache
from fastssl.data.index import build_index, write_index
from fastssl.errors import DataError, ShardError, UnsafeSourceError

# URL schemes that name something other than a local file; anything else before a colon is part
# of a local path (a folder named "imagenet:train" stays a folder)
URL_SCHEMES = ("pipe", "file", "http", "https", "ftp", "sftp", "s3", "gs", "gcs", "hf", "ais")


def url_scheme(location: str) -> str | None:
    """`"pipe"`, `"file"`, `"http"`... (lower case) for a URL, None for a local path."""
    head, colon, _ = location.partition(":")
    return head.lower() if colon and head.lower() in URL_SCHEMES else None


def default_cache_dir() -> Path:
    """`$FASTSSL_CACHE` or `~/.cache/fastssl/shards`."""
    return Path(os.environ.get("FASTSSL_CACHE", Path.home() / ".cache" / "fastssl" / "shards"))


def check_location(location: str, *, allow_pipe: bool) -> None:
    """Refuse a `pipe:` URL unless allowed, and any scheme fastssl does not read."""
    scheme = url_scheme(location)
    if scheme == "pipe" and not allow_pipe:
        raise UnsafeSourceError(
            "a pipe: shard URL runs a shell command; refused unless pipe URLs are allowed "
            "(SSLLoader(allow_pipe=True), or --allow-pipe)",
            shard=location,
        )
    if scheme not in (None, "pipe", "file"):
        raise DataError(
            f"{scheme}: URLs of single shards are not read by fastssl; give the URL of the shard "
            "set's folder (s3://, gs:// or https://, holding manifest.json; see README, \"Data in "
            'object storage"), or stream single shards with a pipe: URL and allow_pipe=True',
            shard=_redacted(location),
        )


def _redacted(url: str) -> str:
    from fastssl.data.store import redact  # store imports the manifest, which imports this module

    return redact(url)


class PipeShards:
    """The outputs of `pipe:` commands in the node's bounded shard cache (`ShardCache` under
    `cache_dir/shards`, shared with remote shard sets, limited to `cache_limit` bytes), their
    indexes beside the cache's metadata (`cache_dir/meta/pipe`, small, never evicted).

    A shard this object fetched stays pinned (no process evicts it) until `close()`: the loader
    reads its shards in the global order, so every one of them is needed all epoch. A limit that
    cannot hold them all raises `CacheFullError` when they are fetched, before the first batch;
    shards of earlier runs and other sets that nobody reads are evicted, least recently used
    first, to make room.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, cache_limit: int | None = None) -> None:
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache = ShardCache(root / "shards", cache_limit)
        self.meta = root / "meta" / "pipe"

    def fetch(self, url: str) -> tuple[Path, Path]:
        """(shard, index) of pipe URL `url` on local disk, the shard pinned: found in the cache,
        or the command run now (once per node: other processes wait for it and find the result).
        Raises `ShardError` when the command fails (naming its exit status) or its output is not
        a readable tar."""
        command = url.partition(":")[2]
        name = hashlib.sha256(f"pipe:{command}".encode()).hexdigest()[:32]
        index_path = self.meta / f"{name}.idx"

        def write(tmp: Path) -> None:  # the cache renames tmp into place once this returns
            from webdataset.gopen import gopen  # imports torch: only paid by users of pipe: URLs

            try:
                with gopen(f"pipe:{command}", "rb") as stream, open(tmp, "wb") as out:
                    shutil.copyfileobj(stream, out, 1 << 20)
            except (OSError, ValueError) as err:
                raise ShardError(f"the pipe command failed: {err}", shard=url) from err
            self._write_index(url, tmp, index_path)  # before the shard: a shard in place has its index

        # the command's output size is unknown until it ran: nothing is reserved for it, and the
        # cache is brought back within its limit once it is in (evicting files nobody reads)
        try:
            shard = self.cache.fetch(f"pipe-{name}.tar", 0, write)
            self.cache.trim()
        except CacheFullError as err:
            raise CacheFullError(
                f"{err.reason}; a loader keeps all its pipe: shards on disk for the epoch", shard=url
            ) from err
        if not index_path.is_file():  # the metadata was removed, the shard kept: index it again
            self._write_index(url, shard, index_path)
        return shard, index_path

    def _write_index(self, url: str, shard: Path, target: Path) -> None:
        try:
            index = build_index(shard)
        except DataError as err:  # named after the URL, not the cache's file
            raise type(err)(f"in the pipe command's output: {err.reason}", shard=url, key=err.key) from err
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)[1])
        try:
            write_index(index, tmp)
            durable_replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        """Let the shards this object fetched be evicted again."""
        self.cache.close()


def local_shard(url: str, pipes: PipeShards | None = None, *, allow_pipe: bool = False) -> tuple[Path, Path]:
    """(shard, index) on local disk for a local path, a `file:` URL or (with `allow_pipe` and a
    `PipeShards`) a `pipe:` command. Raises `UnsafeSourceError` for a pipe URL without `allow_pipe`."""
    check_location(url, allow_pipe=allow_pipe)
    scheme = url_scheme(url)
    if scheme == "pipe":
        return (pipes if pipes is not None else PipeShards()).fetch(url)
    path = Path(url.partition(":")[2] if scheme == "file" else url)
    return path, path.with_suffix(".idx")

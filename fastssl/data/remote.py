"""Shard locations that are not plain local paths: `pipe:` commands (WebDataset's URL form), run only
when the user allows it, and copied once into a local cache where they are indexed like any shard.

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
from fastssl.data.cache import exclusive_lock
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


def fetch_shard(url: str, cache_dir: str | os.PathLike | None = None, *, allow_pipe: bool = False) -> Path:
    """A local, indexed copy of shard `url` (a `pipe:` command, a `file:` URL), made on first use.

    The copy is `cache_dir/<sha256 of the URL>.tar` with its `.idx` beside it; both are written
    under temporary names and renamed, one process at a time (a lock file beside them), so ranks
    sharing a cache run the command once and never see a partial file.
    Raises `UnsafeSourceError` for a pipe URL without `allow_pipe`, `ShardError` when the command
    fails (naming its exit status) or its output is not a readable tar.
    """
    check_location(url, allow_pipe=allow_pipe)
    scheme = url_scheme(url)
    if scheme != "pipe":
        return Path(url.partition(":")[2] if scheme == "file" else url)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    command = url.partition(":")[2]
    name = hashlib.sha256(f"pipe:{command}".encode()).hexdigest()[:32]
    tar, idx = cache / f"{name}.tar", cache / f"{name}.idx"
    # one fetch at a time per cache entry (ranks of a node share the cache): the others wait, then
    # find the pair written; temporary names are unique, so even hosts sharing a cache never mix
    with exclusive_lock(cache / f".{name}.lock"):
        if tar.is_file() and idx.is_file():
            return tar
        from webdataset.gopen import gopen  # imports torch: only paid by users of pipe: URLs

        tmp_tar = Path(tempfile.mkstemp(prefix=f".{name}.", suffix=".tar.tmp", dir=cache)[1])
        tmp_idx = tmp_tar.with_suffix(".idx.tmp")
        try:
            try:
                with gopen(f"pipe:{command}", "rb") as stream, open(tmp_tar, "wb") as out:
                    shutil.copyfileobj(stream, out, 1 << 20)
            except (OSError, ValueError) as err:
                raise ShardError(f"the pipe command failed: {err}", shard=url) from err
            try:
                index = build_index(tmp_tar)
            except DataError as err:  # named after the URL, not the temporary file
                raise type(err)(
                    f"in the pipe command's output: {err.reason}", shard=url, key=err.key
                ) from err
            write_index(index, tmp_idx)
            durable_replace(tmp_idx, idx)  # index first: a tar under its final name has its index
            durable_replace(tmp_tar, tar)
        finally:
            tmp_tar.unlink(missing_ok=True)
            tmp_idx.unlink(missing_ok=True)
    return tar

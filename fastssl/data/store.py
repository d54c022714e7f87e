"""Shard sets in object storage (`s3://`, `gs://`, `http(s)://` folders holding `manifest.json`),
read through fsspec with the clients' own configuration (AWS environment and profiles,
`AWS_ENDPOINT_URL` for S3-compatible stores, GCS credentials).

The manifest and every index come first, into the cache's metadata folder (small, never evicted);
shards are then downloaded whole when the plan needs them, ahead of the reader (`prefetch`, threads
of the process that reads: a feeder or decode worker, never the training thread), into a bounded
`ShardCache` under their sha256, and checked against the manifest's size and sha256 before they
are used. Transient failures (connection errors, timeouts, HTTP 5xx and 429, truncated bodies) are
retried with exponential backoff; what will not get better (404, 403, a checksum that keeps
failing) raises a `ShardError` naming the URL and the shard. URLs in messages never carry
credentials or query strings (presigned URLs).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from fastssl.data.cache import CacheFullError, ShardCache
from fastssl.data.index import ShardIndex
from fastssl.data.manifest import MANIFEST_NAME, Manifest, ShardInfo
from fastssl.data.sums import read_sums, sums_path
from fastssl.errors import ChecksumError, ManifestError, ShardError

REMOTE_SCHEMES = ("s3", "gs", "gcs", "http", "https")
_CHUNK = 8 << 20
_MERGE_GAP = 4096  # range reads of one shard this close together go in one request


def is_remote(location: object) -> bool:
    """Whether `location` is a URL of a remote shard set fastssl streams."""
    if not isinstance(location, str) or ":" not in location:
        return False
    return location.partition(":")[0].lower() in REMOTE_SCHEMES


def redact(url: str) -> str:
    """`url` without user, password, query string or fragment: what errors and logs may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _join(base: str, relative: str) -> str:
    return base.rstrip("/") + "/" + relative.lstrip("/")


class RemoteShards:
    """The shards of one remote shard set, fetched into `cache` on demand and checked.

    `retries` more tries after the first for transient failures, waiting `backoff * 2**k` seconds
    before try k + 1; `timeout` seconds for a connection or a read to make progress;
    `threads` parallel downloads for `prefetch`. `storage_options` go to fsspec unchanged.
    """

    def __init__(
        self,
        url: str,
        cache_dir: str | os.PathLike,
        *,
        cache_limit: int | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 60.0,
        threads: int = 4,
        storage_options: dict[str, Any] | None = None,
        ranges: bool = False,
    ) -> None:
        if not is_remote(url):
            raise ValueError(f"not a remote shard set URL: {redact(url)}")
        if retries < 0 or backoff < 0 or timeout <= 0 or threads < 1:
            raise ValueError("retries and backoff must be >= 0, timeout > 0, threads >= 1")
        self.url = url.removesuffix(MANIFEST_NAME)
        self.shown = redact(self.url)
        self.retries, self.backoff, self.timeout, self.threads = retries, backoff, timeout, threads
        self.storage_options = dict(storage_options or {})
        root = Path(cache_dir)
        self.cache = ShardCache(root / "shards", cache_limit)
        self.meta = root / "meta" / hashlib.sha256(redact(self.url).encode()).hexdigest()[:24]
        self.manifest: Manifest | None = None
        # global read order: every sample by a range request, checked against its recorded CRC-32
        self.ranges = ranges
        self._sums: dict[int, np.ndarray] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pool"], state["_pending"], state["_lock"], state["_sums"] = None, {}, None, {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._pid = os.getpid()

    # -- the file system -----------------------------------------------------------------------
    def _fs(self) -> tuple[Any, str]:
        """fsspec's file system for the URL and the URL's path in it (the URL itself for http);
        fsspec keeps one instance per process and thread, so forked feeders and download threads
        never share a session."""
        import fsspec

        scheme = self.url.partition(":")[0].lower()
        options = dict(self.storage_options)
        if scheme in ("http", "https"):
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout)
            options.setdefault("client_kwargs", {}).setdefault("timeout", timeout)
        elif scheme == "s3":
            config = options.setdefault("config_kwargs", {})
            config.setdefault("connect_timeout", self.timeout)
            config.setdefault("read_timeout", self.timeout)
            config.setdefault("retries", {"max_attempts": 1})  # fastssl's own retries, counted
        try:
            if scheme in ("gs", "gcs"):
                # gcsfs's classic JSON-API client: its newer default probes each bucket over gRPC,
                # whose state does not survive the fork of a feeder process (the child aborts)
                from gcsfs.core import GCSFileSystem

                fs = GCSFileSystem(**options)
                return fs, fs._strip_protocol(self.url)
            fs, path = fsspec.core.url_to_fs(self.url, **options)
        except ImportError as err:  # fsspec names the client package; say which extra brings it
            extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(scheme, "http")
            raise ImportError(
                f"reading {scheme}:// shard sets needs fsspec's client for it: "
                f"pip install 'fastssl-engine[{extra}]' ({err})"
            ) from err
        return fs, path

    def _attempt(self, what: str, url: str, call: Any, shard: str | None = None) -> Any:
        """`call()` with bounded retries for transient failures; a `ShardError` naming `url`
        (redacted) and `shard` for the rest."""
        shown = redact(url)
        for attempt in range(self.retries + 1):
            try:
                return call()
            except (ShardError, CacheFullError):
                raise
            except FileNotFoundError as err:
                raise ShardError(f"{what}: not found at {shown}", shard=shard) from err
            except PermissionError as err:
                raise ShardError(f"{what}: access denied at {shown} (credentials?)", shard=shard) from err
            except _Corrupt as err:
                failure: BaseException = err
            except Exception as err:  # noqa: BLE001 - sorted into transient and not below
                status = _status(err)
                if status in (401, 403):
                    raise ShardError(
                        f"{what}: access denied (HTTP {status}) at {shown}", shard=shard
                    ) from err
                if status in (404, 410):
                    raise ShardError(f"{what}: not found (HTTP {status}) at {shown}", shard=shard) from err
                if status is not None and status < 500 and status != 429:
                    raise ShardError(f"{what}: HTTP {status} at {shown}", shard=shard) from err
                failure = err
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        if isinstance(failure, _Corrupt):
            raise ChecksumError(f"{what}: {failure} at {shown}, {self.retries + 1} tries", shard=shard)
        raise ShardError(
            f"{what}: gave up after {self.retries + 1} tries at {shown}: {type(failure).__name__}: "
            f"{_without_urls(str(failure), url)}",
            shard=shard,
        ) from failure

    # -- metadata ------------------------------------------------------------------------------
    def open(self) -> Manifest:
        """The remote manifest, with every index copied into the metadata folder (refreshed when
        the manifest changes), as a `Manifest` whose index paths are those local copies."""
        fs, base = self._fs()
        manifest_url = _join(self.url, MANIFEST_NAME)
        where = _join(base, MANIFEST_NAME)
        text = self._attempt("manifest", manifest_url, lambda: fs.cat_file(where))
        try:
            json.loads(text)  # Manifest.load says what is wrong in a JSON manifest; this, that it is none
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ManifestError(f"cannot read manifest: {err}", path=redact(manifest_url)) from err
        folder = self.meta / hashlib.sha256(text).hexdigest()[:24]
        folder.mkdir(parents=True, exist_ok=True)
        local = folder / MANIFEST_NAME
        if not local.is_file():
            _put(local, text)
        manifest = Manifest.load(local)
        for info in manifest.shards:
            for relative in (info.path, info.index):
                parts = PurePosixPath(relative).parts
                if relative.startswith("/") or ".." in parts:
                    raise ManifestError(
                        f"shard path {relative!r} leaves the shard set's folder; a remote manifest names "
                        "files inside it only",
                        path=redact(manifest_url),
                    )
            if not info.sha256 or not info.bytes:
                raise ManifestError(
                    f"shard {info.path!r} has no recorded size and sha256; remote shards are checked "
                    "against them (write the manifest with `fastssl shards`)",
                    path=redact(manifest_url),
                )
        wanted = [info.index for info in manifest.shards]
        if self.ranges:  # and the per-sample checksums each range read is checked against
            wanted += [str(PurePosixPath(info.index).with_suffix(".sums")) for info in manifest.shards]
        missing = [relative for relative in wanted if not (folder / relative).is_file()]
        if missing:  # all at once, concurrently; what failed is fetched again with its retries
            paths = [_join(base, relative) for relative in missing]
            texts = self._attempt("indexes", self.url, lambda: fs.cat(paths, on_error="return"))
            for relative, path in zip(missing, paths, strict=True):
                got = texts[path]
                if isinstance(got, FileNotFoundError) and relative.endswith(".sums"):
                    raise ShardError(
                        f"the global read order reads samples by range requests and checks each against "
                        f"its recorded checksum, and {redact(_join(self.url, relative))} is missing; write "
                        "the checksums with `fastssl index` (new shards have them), or read in blocks "
                        "(read_order='block')",
                        shard=relative.removesuffix(".sums") + ".tar",
                    )
                if isinstance(got, BaseException):
                    fetch = lambda path=path: fs.cat_file(path)  # noqa: E731 - retried by _attempt
                    got = self._attempt("index", _join(self.url, relative), fetch)
                _put(folder / relative, got)
        self.manifest = manifest
        return manifest

    # -- samples by range requests (global read order) ------------------------------------------
    def sums(self, shard: int, index: ShardIndex) -> np.ndarray:
        """The recorded CRC-32 of every member of `shard`, (samples, index exts), read once."""
        table = self._sums.get(shard)
        if table is None:
            info = self.manifest.shards[shard]
            table = read_sums(sums_path(self.manifest.index_path(shard)), index, shard=info.path)
            self._sums[shard] = table
        return table

    def shown_url(self, info: ShardInfo) -> str:
        return redact(self.shard_url(info))

    def read_range(self, shard: int, offset: int, length: int, key: str | None = None) -> bytes:
        """`length` bytes at `offset` of `shard` by one range request, with retries; fewer at the
        end of the file, as `os.pread` gives."""
        info = self.manifest.shards[shard]
        fs, base = self._fs()
        path = _join(base, info.path)
        end = min(offset + length, info.bytes)
        if end <= offset:
            return b""
        try:
            return self._attempt(
                "sample", self.shard_url(info), lambda: fs.cat_file(path, offset, end), shard=info.path
            )
        except ShardError as err:
            raise type(err)(err.reason, shard=info.path, key=key) from err

    def read_ranges(
        self, shards: np.ndarray, starts: np.ndarray, lengths: np.ndarray, buf: np.ndarray, at: np.ndarray
    ) -> np.ndarray:
        """Every (shard, start, length) range into `buf` at `at`, requested concurrently (fsspec's
        `cat_ranges`); bytes received per range, 0 for a range whose request failed (its sample
        then takes the per-sample path, with retries and the exact error). Ranges of one shard less
        than `_MERGE_GAP` bytes apart (a sample's `.cls` and `.jpg`, which the tar keeps side by
        side) share one request: the store's cost is per request far more than per byte."""
        got = np.zeros(len(shards), np.int64)
        if not len(shards):
            return got
        fs, base = self._fs()
        infos = self.manifest.shards
        sizes = np.array([infos[s].bytes for s in shards.tolist()], np.int64)
        ends = np.minimum(starts + lengths, sizes)
        order = np.lexsort((starts, shards)).tolist()
        groups: list[list[int]] = []  # members per request, in file order
        for m in order:
            last = groups[-1][-1] if groups else None
            if last is not None and shards[m] == shards[last] and starts[m] - ends[last] <= _MERGE_GAP:
                groups[-1].append(m)
            else:
                groups.append([m])
        paths = [_join(base, infos[int(shards[g[0]])].path) for g in groups]
        lo = [int(starts[g[0]]) for g in groups]
        hi = [int(max(ends[m] for m in g)) for g in groups]
        try:
            parts = fs.cat_ranges(paths, lo, hi, on_error="return")
        except Exception:  # noqa: BLE001 - the whole batch failed: every sample goes by itself
            return got
        for group, begin, part in zip(groups, lo, parts, strict=True):
            if not isinstance(part, (bytes, bytearray)):
                continue
            data = np.frombuffer(part, np.uint8)
            for m in group:
                offset = int(starts[m]) - begin
                size = max(0, min(len(data) - offset, int(lengths[m])))
                buf[at[m] : at[m] + size] = data[offset : offset + size]
                got[m] = size
        return got

    # -- shards --------------------------------------------------------------------------------
    def cache_name(self, info: ShardInfo) -> str:
        return f"{info.sha256[:40]}.tar"

    def shard_url(self, info: ShardInfo) -> str:
        return _join(self.url, info.path)

    def ensure(self, shard: int) -> Path:
        """Shard `shard` on local disk, checked and pinned: from the cache, from a prefetch under
        way, or downloaded now."""
        self._after_fork()
        with self._lock:
            pending = self._pending.pop(shard, None)
        if pending is not None:
            return pending.result()
        return self._download(shard)

    def release(self, shard: int) -> None:
        """The reader closed the shard: it may be evicted again."""
        self.cache.unpin(self.cache_name(self.manifest.shards[shard]))

    def prefetch(self, shards: list[int], keep: set[int] = frozenset()) -> None:
        """Start downloading `shards` (the plan's next ones) in the background; shards pinned for
        an earlier prefetch that are neither in `shards` nor in `keep` (open) are let go."""
        self._after_fork()
        wanted = {self.cache_name(self.manifest.shards[s]) for s in set(shards) | set(keep)}
        for name in self.cache.pinned() - wanted:
            self.cache.unpin(name)
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, "fastssl-download")
            for shard in shards:
                cached = self.cache.path(self.cache_name(self.manifest.shards[shard])).is_file()
                if shard not in self._pending and not cached:
                    self._pending[shard] = self._pool.submit(self._download, shard)

    def _after_fork(self) -> None:
        if self._pid != os.getpid():
            self._pool, self._pending, self._pid = None, {}, os.getpid()
            self._lock = threading.Lock()

    def _download(self, shard: int) -> Path:
        info = self.manifest.shards[shard]
        url = self.shard_url(info)

        def write(tmp: Path) -> None:
            fs, base = self._fs()
            digest, size = hashlib.sha256(), 0
            # the size is known: no HEAD request first (fsspec reads any failed HEAD as "not found")
            source = fs.open(_join(base, info.path), "rb", block_size=_CHUNK, size=info.bytes)
            with source as remote, open(tmp, "wb") as out:
                while chunk := remote.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            if size != info.bytes:
                raise _Corrupt(f"{size} bytes received, the manifest says {info.bytes} (truncated?)")
            if digest.hexdigest() != info.sha256:
                raise _Corrupt("the sha256 does not match the manifest's")

        return self._attempt(
            "shard", url, lambda: self.cache.fetch(self.cache_name(info), info.bytes, write), shard=info.path
        )

    def close(self) -> None:
        """Stop prefetching and release every pin of this process."""
        if self._pool is not None and self._pid == os.getpid():
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool, self._pending = None, {}
        self.cache.close()


class _Corrupt(Exception):
    """A body that arrived but is not the shard (short, or another checksum): retried, then a
    `ChecksumError`."""


def _put(target: Path, data: bytes) -> None:
    """`data` at `target` under a temporary name first, then renamed: readers in other processes
    never see part of a manifest or an index."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _status(err: BaseException) -> int | None:
    """The HTTP status an fsspec client's error carries, if any."""
    for name in ("status", "code", "status_code"):
        value = getattr(err, name, None)
        if isinstance(value, int):
            return value
    response = getattr(err, "response", None)
    if isinstance(response, dict):  # botocore's ClientError
        value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(value, int):
            return value
    return None


_URL_SECRETS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?:[^/@\s]+@)?(?P<rest>[^\s?#'\"]*)[?#][^\s'\"]*")
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@")


def _without_urls(text: str, url: str) -> str:
    """An error text with every URL's user, password and query string taken out."""
    text = text.replace(url, redact(url))
    return _USERINFO.sub(r"\g<scheme>", _URL_SECRETS.sub(r"\g<scheme>\g<rest>", text))

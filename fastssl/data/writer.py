"""Write a folder of images into WebDataset shards with DALI indexes, a manifest and a rejects list."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fastssl.data.atomic import durable_replace
from fastssl.data.images import (
    DEFAULT_MAX_PIXELS,
    PreparedImage,
    RejectedInput,
    read_and_prepare,
    read_regular_file,
)
from fastssl.data.index import build_index, write_index
from fastssl.data.keys import make_keys
from fastssl.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, sha256_file
from fastssl.data.parallel import ordered_map
from fastssl.data.scan import scan_source
from fastssl.data.sums import member_sums, sums_path, write_sums
from fastssl.errors import ShardError

REJECTS_NAME = "rejects.jsonl"
SHARD_PATTERN = "shard-{:06d}.tar"
# Fixed member mtime so the same inputs give byte-identical shards (and checksums);
# SOURCE_DATE_EPOCH overrides it, as in reproducible-build tooling.
DEFAULT_MTIME = 0


class OutputError(RuntimeError):
    """The output folder cannot be used: not writable, or it holds shards and overwrite is off."""


@dataclass
class WriteReport:
    """What a shard run did; `written + rejected == inputs` always holds."""

    out: Path
    inputs: int = 0
    written: int = 0
    reencoded: int = 0
    rejects: Counter = field(default_factory=Counter)
    shards: list[ShardInfo] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        return sum(self.rejects.values())

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def files_per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"inputs   {self.inputs}",
            f"written  {self.written} samples ({self.reencoded} re-encoded) in "
            f"{len(self.shards)} shards, {self.bytes / 1e6:.1f} MB, to {self.out}",
            f"rejected {self.rejected}" + (f" (see {self.out / REJECTS_NAME})" if self.rejected else ""),
        ]
        lines += [f"  {count:6d}  {kind}" for kind, count in sorted(self.rejects.items())]
        accounted = self.written + self.rejected
        lines.append(
            f"time     {self.seconds:.1f} s, {self.files_per_second:.0f} files/s "
            f"(written + rejected = {accounted} {'=' if accounted == self.inputs else '!='} "
            f"{self.inputs} inputs)"
        )
        return "\n".join(lines)


class _ShardSink:
    """Fills shards of `shard_size` samples under temporary names and renames each when complete."""

    def __init__(self, out: Path, shard_size: int, mtime: int) -> None:
        self.out, self.shard_size, self.mtime = out, shard_size, mtime
        self.shards: list[ShardInfo] = []
        self._keys: list[str] = []
        self._tar: tarfile.TarFile | None = None

    def _tmp(self, name: str) -> Path:
        return self.out / f".{name}.{os.getpid()}.tmp"

    def _names(self) -> tuple[str, str]:
        tar_name = SHARD_PATTERN.format(len(self.shards))
        return tar_name, tar_name[: -len(".tar")] + ".idx"

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), self.mtime, 0o444
        self._tar.addfile(info, io.BytesIO(data))

    def add(self, key: str, jpeg: bytes, label: int | None) -> None:
        # The stdlib tarfile, not webdataset.TarWriter: the writer is tarfile plus sample
        # grouping, and importing webdataset pulls in torch (~1.5 s per process start).
        # ustar with an integer mtime gives one 512-byte header per member; tarfile's default
        # pax format (or a float mtime) adds a 1 KiB pax record to each.
        if self._tar is None:
            tmp = self._tmp(self._names()[0])
            self._tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (spans calls)
        if label is not None:
            self._member(f"{key}.cls", str(label).encode("ascii"))
        self._member(f"{key}.jpg", jpeg)
        self._keys.append(key)
        if len(self._keys) == self.shard_size:
            self._finish()

    def _finish(self) -> None:
        tar_name, idx_name = self._names()
        self._tar.close()
        self._tar = None
        tmp_tar, tmp_idx = self._tmp(tar_name), self._tmp(idx_name)
        index = build_index(tmp_tar)
        if list(index.keys) != self._keys:
            raise ShardError("index of the shard just written does not list its keys", shard=tar_name)
        write_index(index, tmp_idx)
        tmp_sums = self._tmp(sums_path(idx_name).name)
        write_sums(member_sums(tmp_tar, index), index.exts, tmp_sums)
        info = ShardInfo(
            path=tar_name,
            index=idx_name,
            samples=len(self._keys),
            bytes=tmp_tar.stat().st_size,
            sha256=sha256_file(tmp_tar),
        )
        # Index first: a tar under its final name always has its index (and checksums) beside it.
        durable_replace(tmp_sums, self.out / sums_path(idx_name).name)
        durable_replace(tmp_idx, self.out / idx_name)
        durable_replace(tmp_tar, self.out / tar_name)
        self.shards.append(info)
        self._keys = []

    def close(self) -> None:
        if self._tar is not None:
            self._finish()

    def abort(self) -> None:
        """Drop the shard in progress; complete shards stay."""
        if self._tar is not None:
            self._tar.fileobj.close()
            self._tar = None
        for name in (*self._names(), sums_path(self._names()[1]).name):
            self._tmp(name).unlink(missing_ok=True)


_TMP_GLOBS = (".shard-*.tmp", f".{MANIFEST_NAME}.*.tmp", f".{REJECTS_NAME}.*.tmp")


def _owned_outputs(out: Path) -> list[Path]:
    """Final-named files of an earlier shard run in `out` (never anything else)."""
    names = [out / MANIFEST_NAME, out / REJECTS_NAME]
    globs = ["shard-*.tar", "shard-*.idx", "shard-*.sums"]
    return [p for p in names if p.exists()] + sorted(p for g in globs for p in out.glob(g))


def _prepare_output(src: Path, out: Path, overwrite: bool) -> None:
    if out.resolve() == src.resolve() or out.resolve().is_relative_to(src.resolve()):
        raise OutputError(
            f"output folder {out} lies inside the source folder {src}; the next run would read "
            "its own shards as inputs"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".fastssl-write-probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"output folder {out} is not writable: {err.strerror or err}") from err
    existing = _owned_outputs(out)
    if existing and not overwrite:
        raise OutputError(
            f"{out} already holds shard output ({existing[0].name}, ...); pass --overwrite to replace it"
        )
    # Temporary files of an interrupted run hold nothing final; they never block a new run.
    for path in existing + sorted(p for g in _TMP_GLOBS for p in out.glob(g)):
        path.unlink()


def source_date_epoch() -> int:
    """Member mtime for shards: SOURCE_DATE_EPOCH when set (reproducible-build convention), else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", str(DEFAULT_MTIME))
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"SOURCE_DATE_EPOCH must be a non-negative integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class _Kept:
    """A worker's answer for an input stored byte for byte: just its size and CRC.

    The main process re-reads the file (a page-cache hit) instead of receiving ~100 KB per image
    through the pool's pipe, which on 2 cores cost more than the decode it parallelised; size
    and CRC catch a file that changed in between.
    """

    size: int
    crc32: int
    width: int
    height: int


def _check_in_worker(path: str, **options) -> PreparedImage | RejectedInput | _Kept:
    result = read_and_prepare(path, **options)
    if isinstance(result, PreparedImage) and not result.reencoded:
        return _Kept(len(result.data), zlib.crc32(result.data), result.width, result.height)
    return result


def _reload(path: str, kept: _Kept) -> PreparedImage | RejectedInput:
    data = read_regular_file(path)
    if isinstance(data, RejectedInput):
        return data
    if len(data) != kept.size or zlib.crc32(data) != kept.crc32:
        return RejectedInput("changed", "file changed while it was being sharded")
    return PreparedImage(data, kept.width, kept.height, reencoded=False)


def _prepared(paths: list[str], workers: int, **options) -> Iterator[PreparedImage | RejectedInput]:
    """Prepare inputs in order, in `workers` processes (in this process when workers == 1)."""
    if workers <= 1:
        yield from (read_and_prepare(path, **options) for path in paths)
        return
    results = ordered_map(partial(_check_in_worker, **options), paths, workers, on_worker_death=_worker_died)
    for path, result in zip(paths, results, strict=True):
        yield _reload(path, result) if isinstance(result, _Kept) else result


def _worker_died(path: str) -> RejectedInput:
    return RejectedInput(
        "crashed", "the decoding process died on this file, and again on a retry (crash or kill)"
    )


def default_workers() -> int:
    """All cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def write_shards(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    shard_size: int = 1000,
    workers: int | None = None,
    max_side: int | None = None,
    quality: int | None = None,
    shuffle_seed: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    progress: bool = True,
) -> WriteReport:
    """Shard the images under `src` into `out`.

    Every input is decoded fully; bad ones are listed in `out/rejects.jsonl` with a reason and
    never stop the run. Shards hold `<key>.jpg` (and `<key>.cls` for ImageFolder trees), each
    with a DALI v1.2 index; `out/manifest.json` is written last. `shuffle_seed` spreads classes
    across shards; without it inputs keep their sorted order.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    if quality is not None and not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    mtime = source_date_epoch()
    src, out = Path(src), Path(out)
    listing = scan_source(src)
    _prepare_output(src, out, overwrite)
    workers = workers or default_workers()
    started = time.perf_counter()

    report = WriteReport(out=out)
    rejects: list[dict] = []

    def reject(relpath: str, kind: str, reason: str) -> None:
        report.rejects[kind] += 1
        rejects.append({"path": str(src / relpath), "kind": kind, "reason": reason})

    for relpath in listing.hidden:
        reject(relpath, "hidden", "hidden name (leading dot) is not read")
    for relpath, kind, reason in listing.refused:
        reject(relpath, kind, reason)
    report.inputs = len(listing.hidden) + len(listing.refused) + len(listing.inputs)

    keys = make_keys(f.relpath for f in listing.inputs)
    order = np.arange(len(listing.inputs))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(listing.inputs))
    ordered = [listing.inputs[i] for i in order]
    paths = [str(src / f.relpath) for f in ordered]

    sink = _ShardSink(out, shard_size, mtime)
    bar = tqdm(total=len(paths), unit="file", desc="sharding", disable=not progress, smoothing=0.1)
    try:
        results = _prepared(paths, workers, max_side=max_side, quality=quality, max_pixels=max_pixels)
        for i, result in zip(order, results, strict=True):
            item = listing.inputs[i]
            if isinstance(result, RejectedInput):
                reject(item.relpath, result.kind, result.reason)
            else:
                sink.add(keys[i], result.data, item.label)
                report.written += 1
                report.reencoded += result.reencoded
            bar.update()
        sink.close()
    except BaseException:
        sink.abort()
        raise
    finally:
        bar.close()

    report.shards = sink.shards
    report.seconds = time.perf_counter() - started
    _write_rejects(out, rejects)
    Manifest(
        shards=tuple(sink.shards),
        classes=listing.classes,
        extra={
            "source": str(src.resolve()),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "writer": {
                "shard_size": shard_size,
                "max_side": max_side,
                "quality": quality,
                "shuffle_seed": shuffle_seed,
                "max_pixels": max_pixels,
            },
            "counts": {
                "inputs": report.inputs,
                "written": report.written,
                "reencoded": report.reencoded,
                "rejected": report.rejected,
            },
        },
    ).save(out)
    return report


def _write_rejects(out: Path, rejects: list[dict]) -> None:
    tmp = out / f".{REJECTS_NAME}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rejects:
            f.write(json.dumps(row) + "\n")
    durable_replace(tmp, out / REJECTS_NAME)

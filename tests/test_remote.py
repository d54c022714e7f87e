"""Shard sets in object storage: an HTTP server with range requests and moto's S3 server, both real
and on 127.0.0.1; exact epochs in block order, the bounded cache, retries, and errors that name URL,
shard and key without credentials."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fastssl import SSLLoader
from fastssl.data.cache import CacheFullError, ShardCache
from fastssl.data.manifest import Manifest
from fastssl.data.store import RemoteShards, redact
from fastssl.errors import ChecksumError, ShardError
from fastssl.recipes import Crop
from tests.servers import gcs_server, http_server, s3_server, upload_folder
from tests.shardsets import demo_shard_set

NUM_IMAGES = 48


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("remote")
    return demo_shard_set(root, num_images=NUM_IMAGES, seed=5, shard_size=8)


def _keys(loader: SSLLoader) -> Counter:
    seen = Counter()
    for batch in loader:
        seen.update(k for k, ok in zip(batch["key"], batch["valid"].tolist(), strict=True) if ok)
    return seen


def _loader(url: str, cache: Path, **kw) -> SSLLoader:
    kw.setdefault("batch_size", 8)
    return SSLLoader(url, Crop(size=32), num_threads=1, cache_dir=cache, retries=2, timeout=10.0, **kw)


def test_http_shard_set_streams_every_sample_once_in_block_order(shard_folder, tmp_path):
    local = Manifest.load(shard_folder)
    with http_server(shard_folder.parent) as (base, faults):
        with _loader(base + "shards/", tmp_path / "cache") as loader:
            assert loader.read_order == "block"
            seen = _keys(loader)
        fetched = Counter(r for r in faults.requests if r.endswith(".tar"))
        assert sorted(fetched) == sorted(f"/shards/{s.path}" for s in local.shards)  # every shard
        assert len(list((tmp_path / "cache" / "shards").glob("*.tar"))) == len(local.shards)
        with SSLLoader(shard_folder, Crop(size=32), batch_size=8, num_threads=1, read_order="block") as ref:
            expected = _keys(ref)
        assert seen == expected and len(seen) == NUM_IMAGES and set(seen.values()) == {1}
        # a second loader finds every shard in the cache: no shard is downloaded again
        before = sum(1 for r in faults.requests if r.endswith(".tar"))
        with _loader(base + "shards", tmp_path / "cache") as again:
            assert _keys(again) == expected
        assert sum(1 for r in faults.requests if r.endswith(".tar")) == before


def test_s3_bucket_through_the_aws_environment_with_a_bounded_cache(shard_folder, tmp_path, monkeypatch):
    local = Manifest.load(shard_folder)
    largest = max(s.bytes for s in local.shards)
    limit = 3 * largest  # half the shard set: shards are evicted as the epoch goes on
    with s3_server(monkeypatch) as endpoint:
        upload_folder(endpoint, shard_folder, "train-bucket", "imagenet/train")
        with _loader("s3://train-bucket/imagenet/train", tmp_path / "cache", cache_limit=limit,
                     download_ahead=0, block_size=16) as loader:  # fmt: skip
            seen = _keys(loader)
            cache = loader.remote.cache
            assert cache.used_bytes() <= limit
        assert len(seen) == NUM_IMAGES and set(seen.values()) == {1}
        left = list((tmp_path / "cache" / "shards").glob("*.tar"))
        assert len(left) < len(local.shards)  # the cache evicted shards as the epoch went on


def test_a_cache_too_small_for_the_batches_in_flight_is_refused_at_start(shard_folder, tmp_path):
    with (
        http_server(shard_folder.parent) as (base, _),
        _loader(base + "shards", tmp_path / "cache", cache_limit=1000) as loader,
        pytest.raises(CacheFullError, match="cannot hold the .* bytes of shards"),
    ):
        next(iter(loader))


def test_transient_server_errors_are_retried(shard_folder, tmp_path):
    with http_server(shard_folder.parent) as (base, faults):
        faults.fail["shard-000002.tar"] = [503, 2]  # two 503s, then the shard
        faults.fail["manifest.json"] = [500, 1]
        with _loader(base + "shards", tmp_path / "cache") as loader:
            assert len(_keys(loader)) == NUM_IMAGES
        assert faults.fail["shard-000002.tar"][1] == 0 and faults.fail["manifest.json"][1] == 0


def test_a_lost_shard_is_an_error_naming_url_and_shard_or_every_sample_is_listed(shard_folder, tmp_path):
    manifest = Manifest.load(shard_folder)
    lost = manifest.shards[3]
    with http_server(shard_folder.parent) as (base, faults):
        faults.fail[lost.path] = [404, 10**6]
        with _loader(base + "shards", tmp_path / "a") as loader, pytest.raises(ShardError) as caught:
            list(loader)
        assert "not found (HTTP 404)" in str(caught.value) and lost.path in str(caught.value)
        assert base + "shards/" + lost.path in str(caught.value)
        with _loader(base + "shards", tmp_path / "b", on_error="skip") as loader:
            seen = _keys(loader)
            skipped = loader.skipped
        assert len(seen) == NUM_IMAGES - lost.samples
        assert len(skipped) == lost.samples and {s["shard"] for s in skipped} == {lost.path}
        assert all("not found" in s["reason"] for s in skipped)


def test_a_corrupt_or_truncated_shard_is_refused_after_its_retries(shard_folder, tmp_path):
    manifest = Manifest.load(shard_folder)
    with http_server(shard_folder.parent) as (base, faults):
        faults.corrupt[manifest.shards[1].path] = -600
        faults.truncate[manifest.shards[4].path] = 1000
        remote = RemoteShards(base + "shards", tmp_path / "cache", retries=1, backoff=0.0, timeout=5.0)
        remote.open()
        with pytest.raises(ChecksumError, match="sha256 does not match"):
            remote.ensure(1)
        with pytest.raises(ShardError, match=r"shard-000004\.tar"):
            remote.ensure(4)
        assert not list((tmp_path / "cache" / "shards").glob("*.tmp"))  # nothing partial kept
        assert remote.ensure(0).is_file()
        remote.close()


def test_credentials_and_query_strings_never_appear_in_errors(tmp_path):
    url = "https://user:secret@127.0.0.1:9/bucket/train/?X-Amz-Signature=abc123&token=t"
    assert redact(url) == "https://127.0.0.1:9/bucket/train/"
    remote = RemoteShards(url, tmp_path, retries=0, timeout=2.0)
    with pytest.raises(ShardError) as caught:
        remote.open()
    text = str(caught.value)
    assert "secret" not in text and "abc123" not in text and "user:" not in text
    assert "127.0.0.1:9" in text


def _pin_and_wait(folder: str, name: str, ready, done) -> None:
    cache = ShardCache(folder)
    assert cache.pin(name)
    ready.set()
    done.wait(30)
    cache.close()


def test_the_cache_never_evicts_what_another_process_has_open(tmp_path):
    cache = ShardCache(tmp_path, limit_bytes=250)
    for name in ("a.tar", "b.tar"):
        cache.fetch(name, 100, lambda tmp: tmp.write_bytes(b"x" * 100))
        cache.unpin(name)
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    other = context.Process(target=_pin_and_wait, args=(str(tmp_path), "a.tar", ready, done))
    other.start()
    try:
        assert ready.wait(30)
        opened = open(cache.path("a.tar"), "rb")  # noqa: SIM115 - held across the eviction
        cache.fetch("c.tar", 100, lambda tmp: tmp.write_bytes(b"y" * 100))  # evicts b, not a
        assert cache.path("a.tar").is_file() and not cache.path("b.tar").exists()
        with pytest.raises(CacheFullError, match="cannot hold 100 more bytes"):
            cache.fetch("d.tar", 100, lambda tmp: tmp.write_bytes(b"z" * 100))  # a and c in use
        cache.unpin("c.tar")
        cache.fetch("d.tar", 100, lambda tmp: tmp.write_bytes(b"z" * 100))  # c goes
        assert opened.read() == b"x" * 100
        opened.close()
    finally:
        done.set()
        other.join(30)
    assert cache.used_bytes() <= 250 and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(CacheFullError, match="does not fit the cache limit"):
        cache.fetch("huge.tar", 1000, lambda tmp: tmp.write_bytes(b"h" * 1000))


def test_block_order_deals_buckets_to_nodes(shard_folder):
    manifest = Manifest.load(shard_folder)
    # the plan, not the files, decides what a node reads: two nodes of one rank each
    from fastssl.data.plan import EpochPlan

    plans = [
        EpochPlan(manifest, epoch=0, seed=0, batch_size=4, world_size=2, rank=r, order="block", buckets=2,
                  nodes=2)
        for r in range(2)
    ]  # fmt: skip
    shards = [set(np.unique(p.shard).tolist()) for p in plans]
    assert len(shards[0] & shards[1]) <= 1  # at most the shard on the buckets' boundary is shared


def test_global_order_reads_samples_by_range_requests_checked_against_their_sums(shard_folder, tmp_path):
    """The exact global shuffle of local shards, over HTTP range requests: nothing but indexes and
    checksums on disk, and a sample changed in transit is refused by its CRC-32, naming its key."""
    with SSLLoader(shard_folder, Crop(size=32), batch_size=8, num_threads=1) as ref:
        expected = [b["key"] for b in ref]
    manifest = Manifest.load(shard_folder)
    with http_server(shard_folder.parent) as (base, faults):
        with _loader(base + "shards", tmp_path / "cache", read_order="global") as loader:
            got = [b["key"] for b in loader]
        assert got == expected  # the same global permutation as the local shards
        assert not list((tmp_path / "cache" / "shards").rglob("*.tar"))  # no shard downloaded whole
        from fastssl.data.index import read_index

        index = read_index(shard_folder / manifest.shards[2].index)
        offset, size = index.member(5, "jpg")
        faults.corrupt[manifest.shards[2].path] = offset + size // 2
        with (
            _loader(base + "shards", tmp_path / "c2", read_order="global") as loader,
            pytest.raises(ChecksumError, match="does not match its recorded checksum") as caught,
        ):
            list(loader)
        assert caught.value.key == index.keys[5] and caught.value.shard == manifest.shards[2].path


def test_global_order_needs_the_checksum_sidecars(shard_folder, tmp_path):
    stripped = tmp_path / "stripped"
    import shutil

    shutil.copytree(shard_folder, stripped)
    for sums in stripped.glob("*.sums"):
        sums.unlink()
    with http_server(tmp_path) as (base, _), pytest.raises(ShardError, match="fastssl index"):
        _loader(base + "stripped", tmp_path / "cache", read_order="global")


def test_gcs_bucket_through_the_storage_emulator(shard_folder, tmp_path, monkeypatch):
    with gcs_server(monkeypatch, "gcs-train") as _:
        from gcsfs.core import GCSFileSystem  # the JSON-API client fastssl uses (no gRPC)

        fs = GCSFileSystem(token="anon", project="test")
        fs.put(str(shard_folder), "gcs-train/sets/demo", recursive=True)
        options = {"token": "anon", "project": "test"}
        with _loader("gs://gcs-train/sets/demo", tmp_path / "cache", storage_options=options) as loader:
            seen = _keys(loader)
        assert len(seen) == NUM_IMAGES and set(seen.values()) == {1}
        with _loader("gs://gcs-train/sets/demo", tmp_path / "c2", storage_options=options,
                     read_order="global") as loader:  # fmt: skip
            assert len(_keys(loader)) == NUM_IMAGES


def test_a_stalled_response_times_out_and_is_retried_then_named(shard_folder, tmp_path):
    manifest = Manifest.load(shard_folder)
    with http_server(shard_folder.parent) as (base, faults):
        faults.stall[manifest.shards[2].path] = 5.0  # longer than the 1 s timeout, every time
        remote = RemoteShards(base + "shards", tmp_path / "cache", retries=1, backoff=0.0, timeout=1.0)
        remote.open()
        with pytest.raises(ShardError, match=r"gave up after 2 tries .*shard-000002\.tar") as caught:
            remote.ensure(2)
        assert caught.value.shard == manifest.shards[2].path
        assert sum(r.endswith("shard-000002.tar") for r in faults.requests) == 2
        del faults.stall[manifest.shards[2].path]
        assert remote.ensure(2).is_file()  # once the server answers again, the shard comes
        remote.close()


def test_the_kornia_backend_streams_a_remote_set_too(shard_folder, tmp_path):
    """Its decode workers read through the same source (pickled, with the cache and the client)."""
    with http_server(shard_folder.parent) as (base, _), _loader(
        base + "shards", tmp_path / "cache", backend="kornia"
    ) as loader:  # fmt: skip
        seen = _keys(loader)
    assert len(seen) == NUM_IMAGES and set(seen.values()) == {1}

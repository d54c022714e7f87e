"""Epoch throughput and loader-wait share from a local S3-compatible server (moto), cold and warm
cache, against local disk and against WebDataset's own streaming of the same objects, in one run.

moto's server runs as its own process on 127.0.0.1 (it shares this machine's cores: a remote
store would not); the shards are uploaded with boto3 and read by fastssl as s3:// URLs
(AWS_ENDPOINT_URL), by WebDataset as the same objects' http:// URLs (path-style, through curl),
with WebDataset's README loader (shard shuffle, a 1,000-sample shuffle buffer, `decode("pil")`,
the recipe's views as the `fastssl bench` baseline writes them, the same worker count).

Each contestant reads whole epochs, epoch boundaries and the loader's start included (an untimed
epoch on local disk first compiles the kernels and fills the page cache). img/s: a consumer that does
nothing. Wait share: a consumer that spends `step` seconds per batch (1.25x fastssl's per-batch time
on local disk, measured first), and the fraction of the time from its first batch on that it spent
inside `next(loader)`; the seconds to that first batch (the loader's start) beside it.

    python benchmarks/bench_remote.py SHARDS [--recipe crop --size 112 --batch-size 64 --workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastssl import SSLLoader
from fastssl.data.manifest import Manifest
from fastssl.recipes import get_recipe


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3(shards: Path, bucket: str = "bench", prefix: str = "train") -> tuple[subprocess.Popen, str]:
    """moto_server in its own process, the shard folder uploaded; returns (process, endpoint)."""
    import boto3

    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for _ in range(100):
        try:
            client.create_bucket(Bucket=bucket)
            break
        except Exception:  # noqa: BLE001 - the server is still starting
            time.sleep(0.1)
    for path in sorted(shards.iterdir()):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    return server, endpoint


def epochs(make, step: float, count: int) -> tuple[float, float, float]:
    """(images per second, share of time spent waiting on the loader, seconds to the first batch)
    over `count` epochs of the loader `make()` builds; the consumer spends `step` seconds per
    batch. The wait share counts from the first batch on (epoch boundaries included): the loader's
    start is the third figure."""
    images, waited, first = 0, 0.0, None
    start = time.perf_counter()
    for batches in make(count):
        it = iter(batches)
        while True:
            asked = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                waited += now - asked
            images += len(batch["key"]) if isinstance(batch, dict) else len(batch[0])
            if step:
                time.sleep(step)
    end = time.perf_counter()
    return images / (end - start), waited / (end - first), first - start


def fastssl_epochs(data, recipe, args, **options):
    def make(count):
        with SSLLoader(data, recipe, args.batch_size, num_threads=args.workers, **options) as loader:
            for _ in range(count):
                yield loader

    return make


def webdataset_epochs(manifest: Manifest, urls: list[str], recipe, args):
    from fastssl.bench.webdataset_pipeline import webdataset_batches

    per_epoch = manifest.num_samples // args.batch_size  # WebDataset has no epoch of its own

    def make(count):
        batches = webdataset_batches(manifest, recipe, args.batch_size, args.workers, urls=urls)
        for _ in range(count):
            yield (next(batches) for _ in range(per_epoch))

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", type=Path)
    parser.add_argument("--recipe", default="crop")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement (2)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    recipe = get_recipe(args.recipe).replace(size=args.size)
    manifest = Manifest.load(args.shards)
    server, endpoint = start_s3(args.shards)
    cache = Path(tempfile.mkdtemp(prefix="fastssl-bench-cache-"))
    url = "s3://bench/train"
    http_urls = [f"{endpoint}/bench/train/{info.path}" for info in manifest.shards]
    try:
        local = fastssl_epochs(args.shards, recipe, args)
        epochs(local, 0.0, 1)  # untimed: compiles the kernels and warms the page cache for everyone
        rate = epochs(local, 0.0, args.epochs)[0]
        step = 1.25 * args.batch_size / rate
        rows = [("fastssl, local disk (global order)", rate, *epochs(local, step, args.epochs)[1:])]
        warm = fastssl_epochs(url, recipe, args, cache_dir=cache)
        epochs(warm, 0.0, 1)  # fills the cache: the warm contestant's epochs find every shard there
        contestants = [
            ("fastssl, local disk, block order", fastssl_epochs(args.shards, recipe, args, read_order="block")),  # noqa: E501
            ("fastssl, S3, block order, cold cache", None),
            ("fastssl, S3, block order, warm cache", warm),
            ("fastssl, S3, global order (range reads)", fastssl_epochs(url, recipe, args, read_order="global",
                                                                      cache_dir=cache / "ranges")),
            ("WebDataset, the same objects over HTTP", webdataset_epochs(manifest, http_urls, recipe, args)),
        ]  # fmt: skip
        for name, make in contestants:
            if make is None:  # cold: a fresh cache for each of the two measurements
                cold = [fastssl_epochs(url, recipe, args, cache_dir=cache / f"cold{i}") for i in (0, 1)]
                rows.append((name, epochs(cold[0], 0.0, 1)[0], *epochs(cold[1], step, 1)[1:]))
                continue
            rows.append((name, epochs(make, 0.0, args.epochs)[0], *epochs(make, step, args.epochs)[1:]))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(cache, ignore_errors=True)
    base = rows[0][1]
    print(
        f"{args.recipe} at {args.size} px, batch {args.batch_size}, {args.workers} workers, "
        f"{manifest.num_samples} samples in {len(manifest.shards)} shards; consumer step {step * 1e3:.0f} ms"
    )
    print("| contestant | img/s | vs local disk | loader-wait share | first batch (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, rate, wait, first in rows:
        print(f"| {name} | {rate:.0f} | {rate / base:.2f} | {wait:.1%} | {first:.1f} |")
    if args.json:
        fields = ("name", "img_s", "wait", "first_batch_s")
        args.json.write_text(json.dumps([dict(zip(fields, r, strict=True)) for r in rows]))


if __name__ == "__main__":
    main()

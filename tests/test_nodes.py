"""Two nodes on one machine: two torchrun launchers (`--nnodes 2 --nproc-per-node 2`, c10d rendezvous on
127.0.0.1) pretrain from a shard set behind a real HTTP server. In block order each node downloads
only its own buckets' shards and the four ranks together read every sample once; a launcher that
dies makes the other fail within --dist-timeout instead of hanging."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fastssl.data.manifest import Manifest
from fastssl.data.plan import bucket_ranges
from tests.servers import free_port, http_server
from tests.shardsets import demo_shard_set

SMALL = ["--backbone", "small_cnn", "--width", "8", "--size", "32", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nodes")
    demo_shard_set(root, num_images=96, seed=8, shard_size=8)
    return root


def _launch(url: str, out: Path, cache: Path, port: int, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "fastssl-nodes",
        "-m", "fastssl.cli", "pretrain", url, "--out", str(out), "--method", "simclr", "--log-keys",
        "--workers", "1", "--cache-dir", str(cache), *SMALL, *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _kill_processes_of(marker: Path) -> int:
    """SIGKILL every process whose command line names `marker` (a node's cache folder: its launcher,
    its ranks and their feeders; torchrun starts ranks in sessions of their own, so no process
    group holds them all). Returns how many were found."""
    found = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(marker).encode() in word for word in words) and int(cmdline.parent.name) != os.getpid():
            found += 1
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
    return found


def _cached_shards(cache: Path, manifest: Manifest) -> set[int]:
    by_name = {f"{info.sha256[:40]}.tar": i for i, info in enumerate(manifest.shards)}
    return {by_name[p.name] for p in (cache / "shards").glob("*.tar")}


def test_two_nodes_each_download_only_their_buckets_and_read_every_sample_once(shard_root, tmp_path):
    manifest = Manifest.load(shard_root / "shards")
    port = free_port()
    with http_server(shard_root) as (base, _):
        url = base + "shards/"
        run = tmp_path / "run"
        nodes = [_launch(url, run, tmp_path / f"cache{n}", port, "--epochs", "1") for n in (0, 1)]
        try:
            logs = [node.communicate(timeout=400)[0] for node in nodes]
        finally:
            for n, node in enumerate(nodes):
                if node.poll() is None:
                    _kill_processes_of(tmp_path / f"cache{n}")
                node.wait()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    keys = Counter()
    for rank in range(4):
        for line in (tmp_path / "run" / f"keys-rank{rank}.jsonl").read_text().splitlines():
            keys.update(json.loads(line)["keys"])
    assert len(keys) == 96 and set(keys.values()) == {1}  # every sample once, over both nodes
    ends = np.cumsum(manifest.shard_sizes)
    buckets = [set(np.searchsorted(ends, ids, side="right").tolist()) for ids in
               bucket_ranges(manifest.shard_sizes, 0, 2)]  # fmt: skip
    downloaded = [_cached_shards(tmp_path / f"cache{n}", manifest) for n in (0, 1)]
    assert sorted(map(sorted, downloaded)) == sorted(map(sorted, buckets))  # each its own bucket, whole
    assert not downloaded[0] & downloaded[1]


def test_a_launcher_that_dies_makes_the_other_fail_within_the_timeout(shard_root, tmp_path):
    port = free_port()
    with http_server(shard_root) as (base, _):
        url = base + "shards/"
        long_run = ("--epochs", "1000", "--dist-timeout", "20")
        nodes = [_launch(url, tmp_path / "run", tmp_path / f"cache{n}", port, *long_run) for n in (0, 1)]
        try:
            deadline = time.monotonic() + 300
            while not any(p.stat().st_size for p in (tmp_path / "run").glob("keys-rank*.jsonl")):
                assert time.monotonic() < deadline, "training never started"
                assert all(node.poll() is None for node in nodes)
                time.sleep(0.5)
            assert _kill_processes_of(tmp_path / "cache1") >= 3  # the whole node: launcher, ranks, feeders
            killed_at = time.monotonic()
            nodes[0].communicate(timeout=200)
            assert nodes[0].returncode != 0
            assert time.monotonic() - killed_at < 20 + 90  # the timeout, and torchrun's own teardown
        finally:
            for n, node in enumerate(nodes):  # nothing of either node outlives the test
                _kill_processes_of(tmp_path / f"cache{n}")
                node.wait()

"""DeepCluster: the draw uniform over clusters (balanced, deterministic, counted), the epoch plan
reading it on any number of ranks, the loop's clustering (broadcast to every rank, stored in the
checkpoint, the same after resume), and learning on Fashion-MNIST against random initialisation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastssl.data import fashion_mnist
from fastssl.data.plan import EpochPlan
from fastssl.train import PretrainConfig, pretrain
from fastssl.train.checkpoint import load_checkpoint
from fastssl.train.deepcluster import draw_coverage, uniform_draw
from tests.shardsets import demo_shard_set


@settings(max_examples=60, deadline=None)
@given(
    assignments=st.lists(st.integers(-1, 6), min_size=1, max_size=200).filter(lambda a: max(a) >= 0),
    seed=st.integers(0, 5),
    epoch=st.integers(0, 5),
)
def test_the_draw_is_uniform_over_clusters_and_counted(assignments, seed, epoch) -> None:
    labels = np.array(assignments)
    draw = uniform_draw(labels, seed, epoch)
    assert np.array_equal(draw, uniform_draw(labels, seed, epoch))  # from (seed, epoch) alone
    clustered = np.flatnonzero(labels >= 0)
    assert len(draw) == len(clustered) and set(draw.tolist()) <= set(clustered.tolist())
    shares = Counter(labels[draw].tolist())
    assert set(shares) == set(labels[clustered].tolist())  # every populated cluster drawn from
    assert max(shares.values()) - min(shares.values()) <= 1  # equal shares
    for cluster, members in Counter(labels[clustered].tolist()).items():
        drawn = draw[labels[draw] == cluster]
        if members >= shares[cluster]:  # a big enough cluster gives distinct members
            assert len(np.unique(drawn)) == len(drawn)
        else:  # a small one gives all of them, then repeats
            assert len(np.unique(drawn)) == members
    coverage = draw_coverage(draw, labels)
    assert coverage["repeated"] == coverage["omitted"] == len(draw) - len(np.unique(draw))


def test_the_draw_changes_with_the_epoch() -> None:
    labels = np.repeat(np.arange(4), [50, 20, 20, 10])
    assert not np.array_equal(uniform_draw(labels, 0, 0), uniform_draw(labels, 0, 1))
    with pytest.raises(ValueError, match="no sample has a cluster"):
        uniform_draw(np.full(5, -1), 0, 0)


@settings(max_examples=30, deadline=None)
@given(world=st.integers(1, 4), batch=st.integers(1, 5), epoch=st.integers(0, 3))
def test_the_plan_reads_a_draw_entry_by_entry_on_every_rank_count(world, batch, epoch) -> None:
    sizes = np.array([9, 4, 11])
    labels = np.random.default_rng(0).integers(0, 5, int(sizes.sum()))
    draw = uniform_draw(labels, 1, epoch)
    plans = [
        EpochPlan(
            sizes, epoch=epoch, seed=1, batch_size=batch, world_size=world, rank=r, subset=draw, repeats=True
        )
        for r in range(world)
    ]
    assert len({len(p) for p in plans}) == 1
    read = np.concatenate([p.global_id[p.valid] for p in plans])
    assert Counter(read.tolist()) == Counter(draw.tolist())  # each entry of the draw read once
    with pytest.raises(ValueError, match="more than once"):
        EpochPlan(sizes, epoch=epoch, seed=1, batch_size=batch, subset=draw)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_shard_set(tmp_path_factory.mktemp("deepcluster"), num_images=64, seed=3, shard_size=16)


def _config(shards: Path, out: Path, **changes) -> PretrainConfig:
    fields = dict(
        data=str(shards), out=str(out), method="deepcluster", backbone="small_cnn", width=8, size=32,
        batch_size=16, epochs=3, num_threads=1, progress=False, log_keys=True, log_every=1,
        method_options={"clusters": 6},
    )  # fmt: skip
    return PretrainConfig(**{**fields, **changes})


def _keys(run: Path) -> dict[int, list[str]]:
    lines = (run / "keys-rank0.jsonl").read_text().splitlines()
    return {r["step"]: r["keys"] for r in map(json.loads, lines)}


def _cluster_events(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("event") == "clusters"]


def test_each_epoch_reads_its_clusters_draw_and_a_resumed_run_the_same(shards, tmp_path) -> None:
    whole = tmp_path / "whole"
    pretrain(_config(shards, whole))
    events = _cluster_events(whole)
    assert [e["epoch"] for e in events] == [0, 1, 2]
    assert all(e["drawn"] == 64 and e["repeated"] == e["omitted"] and e["empty"] == 0 for e in events)
    state = load_checkpoint(whole / "checkpoint.pt")
    assignments = state["clusters"]["assignments"].numpy()
    assert state["clusters"]["epoch"] == 2 and assignments.shape == (64,) and assignments.min() >= 0
    keys = _keys(whole)
    last_epoch = [k for step in (9, 10, 11, 12) for k in keys[step]]  # 4 steps of 16 per epoch
    from fastssl.loader import SSLLoader

    with SSLLoader(shards, "crop", 16, rank=0, world_size=1) as loader:
        names = loader.sample_keys()
    expected = Counter(names[i] for i in uniform_draw(assignments, 0, 2))
    assert Counter(last_epoch) == expected  # the epoch read its draw, repeats and all
    # stopped in the middle of epoch 1, resumed: the same labels, draws and final weights
    broken = tmp_path / "broken"
    pretrain(_config(shards, broken, max_steps=6))
    assert load_checkpoint(broken / "checkpoint.pt")["clusters"]["epoch"] == 1
    pretrain(_config(shards, broken, resume=True))
    assert _keys(broken) == keys
    assert [e["epoch"] for e in _cluster_events(broken)] == [0, 1, 2]  # epoch 1 not clustered again
    final = load_checkpoint(broken / "checkpoint.pt")
    assert torch.equal(final["clusters"]["assignments"], state["clusters"]["assignments"])
    for name, value in state["model"].items():
        torch.testing.assert_close(final["model"][name], value, msg=name)


def test_two_ranks_share_rank_zeros_clusters(shards, tmp_path) -> None:
    run = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "fastssl.cli", "pretrain", str(shards), "--out", str(run), "--method", "deepcluster",
        "--method-option", "clusters=6", "--epochs", "1", "--log-keys", "--workers", "1",
        "--backbone", "small_cnn", "--width", "8", "--size", "32", "--batch-size", "8", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(run / "checkpoint.pt")
    read: list[str] = []
    steps = []
    for rank in (0, 1):
        lines = (run / f"keys-rank{rank}.jsonl").read_text().splitlines()
        steps.append(len(lines))
        read += [k for line in lines for k in json.loads(line)["keys"]]
    assert steps[0] == steps[1] == 4
    from fastssl.loader import SSLLoader

    with SSLLoader(shards, "crop", 8, rank=0, world_size=1) as loader:
        names = loader.sample_keys()
    draw = uniform_draw(state["clusters"]["assignments"].numpy(), 0, 0)
    assert Counter(read) == Counter(names[i] for i in draw)  # both ranks read one draw, once


FASHION = pytest.mark.skipif(
    not fashion_mnist.available(),
    reason="Fashion-MNIST absent: apt-get install dataset-fashion-mnist (.ci/run does it where it can)",
)


@FASHION
def test_deepcluster_beats_random_init_on_fashion_mnist(tmp_path: Path) -> None:
    """2,000 training images, 30 clusters re-made every 4 epochs (a fresh classifier needs more
    than an epoch's 31 steps), 12 epochs; kNN on 1,000 test images."""
    from tests.learning import COMMON, baseline_scores, scores

    data = fashion_mnist.write_fashion_mnist(tmp_path / "fm", limit={"train": 2000, "test": 1000}, workers=1)
    config = PretrainConfig(
        data=str(data["train"]), out=str(tmp_path / "dc"), method="deepcluster", epochs=12, progress=False,
        method_options={"clusters": 30, "reassign": 4}, recipe_options={"scale": (0.3, 1.0)}, **COMMON,
    )  # fmt: skip
    pretrain(config)
    events = _cluster_events(tmp_path / "dc")
    assert [e["epoch"] for e in events] == [0, 4, 8] and all("nmi" in e for e in events)
    got, random_init = scores(tmp_path / "dc", data), baseline_scores(data)
    print(f"DeepCluster {got}, random init {random_init}, clusterings {events}")
    assert got["knn"] > random_init["knn"] + 0.04, (got, random_init)

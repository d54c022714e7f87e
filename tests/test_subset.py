"""Sample subsets: read through the epoch plan exactly once per epoch across ranks, resumable,
refused when malformed; balanced few-label draws; subset files in SimCLR's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastssl import SSLLoader
from fastssl.data.manifest import Manifest
from fastssl.data.plan import EpochPlan
from fastssl.data.source import ByteSource
from fastssl.data.subset import (
    balanced_subset,
    read_labels,
    read_subset,
    sample_keys,
    subset_ids,
    write_subset,
)
from fastssl.recipes import Crop
from tests.shardsets import demo_shard_set

SIZES = np.array([7, 0, 12, 5, 9])


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    world=st.integers(1, 4),
    batch=st.integers(1, 6),
    drop_last=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_a_subset_is_read_once_per_epoch_on_every_rank_count(data, world, batch, drop_last, epoch) -> None:
    total = int(SIZES.sum())
    subset = data.draw(st.sets(st.integers(0, total - 1), min_size=1, max_size=total))
    ids = np.array(sorted(subset))
    plans = [
        EpochPlan(
            SIZES,
            epoch=epoch,
            seed=3,
            batch_size=batch,
            world_size=world,
            rank=r,
            drop_last=drop_last,
            subset=ids,
        )  # fmt: skip
        for r in range(world)
    ]
    assert len({len(p) for p in plans}) == 1  # the same batch count on every rank
    read = np.concatenate([p.global_id[p.valid] for p in plans])
    assert len(read) == len(np.unique(read))  # nobody reads a sample twice
    assert set(read.tolist()) <= subset  # nor one outside the subset
    if not drop_last:
        assert set(read.tolist()) == subset
    else:
        assert len(read) == len(ids) // (batch * world) * batch * world


def test_a_subset_order_depends_on_seed_and_epoch_and_resumes_only_with_its_subset() -> None:
    ids = np.arange(0, 33, 2)
    first = EpochPlan(SIZES, epoch=0, seed=1, batch_size=4, subset=ids)
    second = EpochPlan(SIZES, epoch=1, seed=1, batch_size=4, subset=ids)
    assert sorted(first.global_id.tolist()) == sorted(second.global_id.tolist()) == ids.tolist()
    assert first.global_id.tolist() != second.global_id.tolist()
    state = first.state(2)
    again = EpochPlan.from_state(SIZES, state, subset=ids[::-1])  # the same ids in any order
    assert again.global_id.tolist() == first.global_id.tolist()
    with pytest.raises(ValueError, match="another sample subset"):
        EpochPlan.from_state(SIZES, state)
    with pytest.raises(ValueError, match="another sample subset"):
        EpochPlan.from_state(SIZES, state, subset=ids[1:])
    # the whole set's state is the one it always was
    whole = EpochPlan(SIZES, epoch=0, seed=1, batch_size=4)
    assert EpochPlan.from_state(SIZES, whole.state(1)).global_id.tolist() == whole.global_id.tolist()


@pytest.mark.parametrize(
    ("subset", "message"),
    [([], "empty"), ([3, 3], "more than once"), ([40], "must lie in"), ([-1], "must lie in")],
)
def test_malformed_subsets_are_refused(subset, message) -> None:
    with pytest.raises(ValueError, match=message):
        EpochPlan(SIZES, epoch=0, seed=0, batch_size=2, subset=np.array(subset, dtype=np.int64))


def test_a_subset_needs_the_global_read_order() -> None:
    with pytest.raises(ValueError, match="global order"):
        EpochPlan(SIZES, epoch=0, seed=0, batch_size=4, order="block", subset=np.arange(4))


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=300),
    fraction=st.floats(0.01, 1.0),
    seed=st.integers(0, 5),
)
def test_balanced_subsets_take_the_fraction_of_every_class(labels, fraction, seed) -> None:
    labels = np.array(labels)
    chosen = balanced_subset(labels, fraction, seed)
    assert np.array_equal(chosen, balanced_subset(labels, fraction, seed))  # deterministic
    assert np.array_equal(chosen, np.unique(chosen))  # sorted, each once
    for label in np.unique(labels):
        count = int((labels == label).sum())
        assert int((labels[chosen] == label).sum()) == max(1, round(fraction * count))


def test_balanced_subsets_differ_by_seed_and_refuse_bad_fractions() -> None:
    labels = np.repeat(np.arange(4), 50)
    assert not np.array_equal(balanced_subset(labels, 0.1, 0), balanced_subset(labels, 0.1, 1))
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            balanced_subset(labels, bad)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_shard_set(tmp_path_factory.mktemp("subset"), num_images=40, seed=5, shard_size=12)


def test_labels_and_keys_of_a_shard_set(shards) -> None:
    manifest = Manifest.load(shards)
    with ByteSource(manifest) as source:
        keys, labels = sample_keys(source), read_labels(source)
        assert len(keys) == len(labels) == manifest.num_samples == len(set(keys))
        for shard, sample in [(0, 0), (1, 5), (3, 3)]:
            got = source.read(shard, sample, ("cls",))
            gid = int(manifest.shard_sizes[:shard].sum()) + sample
            assert keys[gid] == got.key and labels[gid] == int(got.members["cls"])
        with pytest.raises(ValueError, match="name no sample"):
            subset_ids(source, [keys[0], "not-a-key"])
        with pytest.raises(ValueError, match="more than once"):
            subset_ids(source, [keys[1], keys[1]])


def test_the_loader_reads_exactly_the_subset_file(shards, backend, tmp_path) -> None:
    manifest = Manifest.load(shards)
    with ByteSource(manifest) as source:
        keys = sample_keys(source)
    chosen = keys[::3]
    # SimCLR's layout: file names, the key before the first dot of the last path part
    path = tmp_path / "1percent.txt"
    path.write_text("# few labels\n\n" + "".join(f"{k}.JPEG\n" for k in chosen))
    assert read_subset(write_subset(tmp_path / "plain.txt", chosen)) == chosen
    name, device = backend

    def loader(**kw) -> SSLLoader:  # noqa: ANN003
        return SSLLoader(shards, Crop(size=32), 4, backend=name, device=device, num_threads=1, **kw)

    with loader(subset=chosen) as first:
        epochs = [_valid_keys(first) for _ in range(2)]
        iterator = iter(first)
        next(iterator)
        state_after_one = first.state_dict()
        rest = _valid_keys(iterator)
    for epoch in epochs:
        assert sorted(epoch) == sorted(chosen)
    assert epochs[0] != epochs[1]
    with loader(subset=chosen) as resumed:
        resumed.load_state_dict(state_after_one)
        assert _valid_keys(resumed) == rest
    with loader() as whole, pytest.raises(ValueError, match="another sample subset"):
        whole.load_state_dict(state_after_one)
    with loader(subset=path) as from_file:
        assert sorted(_valid_keys(from_file)) == sorted(chosen)


def _valid_keys(batches) -> list[str]:  # noqa: ANN001
    return [k for b in batches for k, ok in zip(b["key"], b["valid"].tolist(), strict=True) if ok]

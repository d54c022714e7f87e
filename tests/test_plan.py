"""The epoch plan: exact-once coverage, equal batches per rank, determinism, mixing, resumption."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastssl.data.manifest import Manifest, ShardInfo
from fastssl.data.plan import EpochPlan, PlanState, locate, mixing_ratio, reader_plan

shard_sizes = st.lists(st.integers(0, 40), min_size=1, max_size=12)
plan_args = st.fixed_dictionaries(
    {
        "sizes": shard_sizes,
        "world_size": st.integers(1, 16),
        "num_workers": st.integers(0, 8),
        "batch_size": st.integers(1, 16),
        "drop_last": st.booleans(),
        "seed": st.integers(0, 2**32 - 1),
        "epoch": st.integers(0, 10_000),
    }
)


def all_readers(a: dict) -> list[list]:
    """readers[rank][worker] for every reader of the epoch."""
    return [
        [
            reader_plan(
                a["sizes"],
                epoch=a["epoch"],
                seed=a["seed"],
                world_size=a["world_size"],
                rank=rank,
                num_workers=a["num_workers"],
                worker_id=worker,
                batch_size=a["batch_size"],
                drop_last=a["drop_last"],
            )
            for worker in range(max(1, a["num_workers"]))
        ]
        for rank in range(a["world_size"])
    ]


def rank_batches(readers: list) -> dict[int, object]:
    """The rank's batches keyed by batch number, gathered from all its workers."""
    found = {}
    for reader in readers:
        for batch in reader.batches():
            assert batch.index not in found
            found[batch.index] = batch
    return found


@settings(max_examples=150, deadline=None)
@given(plan_args)
def test_every_sample_exactly_once_and_equal_batches_per_rank(a):
    sizes = np.array(a["sizes"])
    total, world, batch = int(sizes.sum()), a["world_size"], a["batch_size"]
    readers = all_readers(a)
    per_rank = [rank_batches(r) for r in readers]
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1  # every rank has the same number of batches: no DDP hang
    num_batches = counts.pop()
    for number in range(num_batches):  # and the same batch sizes, batch for batch
        assert len({len(b[number]) for b in per_rank}) == 1
    valid = Counter()
    invalid = 0
    for batches in per_rank:
        assert sorted(batches) == list(range(num_batches))
        for b in batches.values():
            assert 1 <= len(b) <= batch
            assert ((b.shard >= 0) & (b.shard < len(sizes))).all()
            assert (b.sample < sizes[b.shard]).all() and (b.sample >= 0).all()
            valid.update(b.global_id[b.valid].tolist())
            invalid += int((~b.valid).sum())
    assert set(valid.values()) <= {1}  # never twice
    if a["drop_last"]:
        assert num_batches == total // world // batch
        assert len(valid) == world * num_batches * batch and invalid == 0
    else:
        assert sorted(valid) == list(range(total))  # every sample, exactly once
        assert invalid == -(-total // world) * world - total < world


@settings(max_examples=100, deadline=None)
@given(plan_args)
def test_workers_deal_batches_round_robin_in_rank_order(a):
    rank = a["seed"] % a["world_size"]
    plan = EpochPlan(
        a["sizes"],
        epoch=a["epoch"],
        seed=a["seed"],
        batch_size=a["batch_size"],
        world_size=a["world_size"],
        rank=rank,
        drop_last=a["drop_last"],
    )
    readers = [plan.for_worker(a["num_workers"], w) for w in range(max(1, a["num_workers"]))]
    for w, reader in enumerate(readers):
        assert (reader.batch_numbers % max(1, a["num_workers"]) == w).all()
    merged = rank_batches(readers)
    for number in range(plan.num_batches):
        expected = plan.batch(number)
        assert np.array_equal(merged[number].global_id, expected.global_id)
        assert np.array_equal(merged[number].valid, expected.valid)


@settings(max_examples=100, deadline=None)
@given(plan_args, st.integers(0, 8), st.data())
def test_resume_yields_exactly_the_rest_of_the_epoch(a, new_workers, data):
    rank = data.draw(st.integers(0, a["world_size"] - 1))
    common = dict(
        epoch=a["epoch"],
        seed=a["seed"],
        batch_size=a["batch_size"],
        world_size=a["world_size"],
        rank=rank,
        drop_last=a["drop_last"],
    )
    plan = EpochPlan(a["sizes"], **common)
    done = data.draw(st.integers(0, plan.num_batches))
    state = PlanState.from_dict(json.loads(json.dumps(plan.state(done).to_dict())))
    resumed = [
        reader_plan(a["sizes"], state=state, num_workers=new_workers, worker_id=w, **common)
        for w in range(max(1, new_workers))
    ]
    merged = rank_batches(resumed)
    assert sorted(merged) == list(range(done, plan.num_batches))
    for number, batch in merged.items():
        expected = plan.batch(number)
        for name in ("global_id", "shard", "sample", "valid"):
            assert np.array_equal(getattr(batch, name), getattr(expected, name)), name


@settings(max_examples=100, deadline=None)
@given(plan_args)
def test_order_is_a_function_of_seed_and_epoch(a):
    if sum(a["sizes"]) < 10:
        a["sizes"] = a["sizes"] + [10]

    def order(**change):
        args = {**a, **change}
        return EpochPlan(args["sizes"], epoch=args["epoch"], seed=args["seed"], batch_size=4).global_id

    assert np.array_equal(order(), order())
    assert not np.array_equal(order(), order(epoch=a["epoch"] + 1))
    assert not np.array_equal(order(), order(seed=a["seed"] + 1))


def test_order_mixes_shards():
    sizes = [100] * 64
    shuffled = EpochPlan(sizes, epoch=0, seed=0, batch_size=32)
    assert 0.9 < mixing_ratio(shuffled.shard) < 1.1
    sequential = EpochPlan(sizes, epoch=0, seed=0, batch_size=32, shuffle=False)
    assert mixing_ratio(sequential.shard) < 0.02
    # each batch draws from many shards, not one or two
    assert np.mean([len(set(shuffled.batch(i).shard.tolist())) for i in range(10)]) > 20


@settings(max_examples=100, deadline=None)
@given(shard_sizes, st.integers(0, 2**32 - 1), st.integers(1, 4))
def test_every_rank_order_mixes_shards(sizes, seed, world):
    plan = EpochPlan(sizes, epoch=1, seed=seed, batch_size=8, world_size=world)
    counts = np.array(sizes, dtype=float)
    n = counts.sum()
    if n < 60 or (counts * (counts - 1)).sum() / (n * (n - 1)) > 0.6:
        return  # too few samples, or one shard dominates: few switches are expected anyway
    assert mixing_ratio(plan.shard) > 0.5


def test_mixing_ratio_edge_cases():
    assert mixing_ratio(np.array([3])) == 1.0
    assert mixing_ratio(np.zeros(50, dtype=int)) == 1.0
    assert mixing_ratio(np.repeat(np.arange(5), 20)) == pytest.approx(4 / (99 * 0.808), rel=1e-3)


def test_locate_steps_over_empty_shards():
    shard, sample = locate(np.array([0, 2, 0, 0, 3, 0]), np.arange(5))
    assert shard.tolist() == [1, 1, 4, 4, 4]
    assert sample.tolist() == [0, 1, 0, 1, 2]


def test_plan_accepts_a_manifest():
    manifest = Manifest(tuple(ShardInfo(f"s{i}.tar", f"s{i}.idx", n, 0, "") for i, n in enumerate([3, 0, 5])))
    plan = EpochPlan(manifest, epoch=0, seed=0, batch_size=2)
    assert sorted(plan.global_id.tolist()) == list(range(8))


def test_empty_dataset_has_no_batches():
    plan = EpochPlan([0, 0], epoch=0, seed=0, batch_size=4, world_size=3, rank=2)
    assert plan.num_batches == 0 and len(plan.for_worker(2, 1)) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"seed": -1}, "non-negative"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    args = {"epoch": 0, "seed": 0, "batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        EpochPlan([5, 5], **args)


def manifest_of(sizes: list[int], checksum: str = "") -> Manifest:
    return Manifest(
        tuple(ShardInfo(f"s{i}.tar", f"s{i}.idx", n, 0, checksum or f"sum{i}") for i, n in enumerate(sizes))
    )


def test_resume_refuses_reshuffled_shards_of_the_same_sizes():
    plan = EpochPlan(manifest_of([4, 4]), epoch=0, seed=0, batch_size=2)
    state = plan.state(1)
    EpochPlan.from_state(manifest_of([4, 4]), state)  # the same shard set resumes
    with pytest.raises(ValueError, match="different shard set"):
        EpochPlan.from_state(manifest_of([4, 4], checksum="other"), state)


def test_state_dict_with_wrong_keys_is_named():
    state = EpochPlan([3], epoch=0, seed=0, batch_size=1).state(0).to_dict()
    state.pop("seed")
    state["extra"] = 1
    with pytest.raises(ValueError, match=r"missing \['seed'\], unknown \['extra'\]"):
        PlanState.from_dict(state)


def test_non_integer_sizes_and_negative_workers_are_refused():
    with pytest.raises(ValueError, match="non-negative integers"):
        EpochPlan([2.9, 3.7], epoch=0, seed=0, batch_size=2)
    with pytest.raises(ValueError, match="num_workers"):
        EpochPlan([4], epoch=0, seed=0, batch_size=2).for_worker(-3, 0)


def test_resume_refuses_other_data_or_other_arguments():
    plan = EpochPlan([5, 5], epoch=2, seed=1, batch_size=2)
    state = plan.state(3)
    with pytest.raises(ValueError, match="different shard set"):
        EpochPlan.from_state([5, 6], state)
    with pytest.raises(ValueError, match=r"epoch=3 \(state has 2\)"):
        reader_plan(
            [5, 5],
            epoch=3,
            seed=1,
            world_size=1,
            rank=0,
            num_workers=0,
            worker_id=0,
            batch_size=2,
            state=state,
        )
    with pytest.raises(ValueError, match="worker_id"):
        plan.for_worker(2, 2)

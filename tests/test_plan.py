"""The epoch plan: exact-once coverage, equal batches per rank, determinism, mixing, resumption."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastssl.data.manifest import Manifest, ShardInfo
from fastssl.data.plan import (
    EpochPlan,
    PlanState,
    bucket_ranges,
    distinct_shards_per_batch,
    locate,
    mixing_ratio,
    reader_plan,
)

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
        assert num_batches == total // (world * batch)
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


def global_batches(sizes, world: int, global_batch: int, **kwargs) -> list[list[tuple[int, bool]]]:
    """Every global batch of an epoch as (global id, valid) pairs in stream order, gathered from
    `world` ranks: ranks take interleaved entries of their node's segment."""
    plans = [
        EpochPlan(sizes, batch_size=global_batch // world, world_size=world, rank=r, **kwargs)
        for r in range(world)
    ]
    out = []
    for k in range(plans[0].num_batches):
        pairs = []
        for r, plan in enumerate(plans):
            b = plan.batch(k)
            pairs += [(int(g), bool(v), r) for g, v in zip(b.global_id, b.valid, strict=True)]
        out.append(sorted((g, v) for g, v, _ in pairs))
    return out


@settings(max_examples=80, deadline=None)
@given(
    shard_sizes,
    st.integers(0, 2**32 - 1),
    st.integers(1, 4),
    st.booleans(),
    st.sampled_from(["global", "block"]),
)
def test_global_batches_do_not_depend_on_the_world_size(sizes, seed, unit, drop_last, order):
    """4 -> 2 -> 1 -> 4 ranks: the same global batches (keys and thus parameters), batch for batch;
    only the padding of the short last one (valid=False) follows the world size."""
    common = dict(epoch=3, seed=seed, drop_last=drop_last, order=order, buckets=2, block_size=7)

    def valid_only(batches):
        return [[pair for pair in b if pair[1]] for b in batches]

    reference = valid_only(global_batches(sizes, 4, 4 * unit * 2, **common))
    for world in (2, 1, 4):
        assert valid_only(global_batches(sizes, world, 4 * unit * 2, **common)) == reference


@settings(max_examples=60, deadline=None)
@given(shard_sizes, st.integers(0, 2**32 - 1), st.data())
def test_elastic_resume_continues_the_global_stream(sizes, seed, data):
    """A state saved by 4 ranks after k global batches resumes on 2, then on 1, then on 4 ranks;
    the batches read across the three resumptions are the uninterrupted run's."""
    order = data.draw(st.sampled_from(["global", "block"]))
    common = dict(epoch=1, seed=seed, order=order, buckets=2, block_size=5)
    g = 8
    full = [[pair for pair in b if pair[1]] for b in global_batches(sizes, 4, g, **common)]
    plan = EpochPlan(sizes, batch_size=2, world_size=4, rank=3, **common)
    first = data.draw(st.integers(0, plan.num_batches))
    state, stop, seen = plan.state(first), first, []
    for world in (2, 1, 4):
        state = PlanState.from_dict(json.loads(json.dumps(state.to_dict())))
        resumed = [EpochPlan.from_state(sizes, state, world_size=world, rank=r) for r in range(world)]
        assert {p.batch_size for p in resumed} == {g // world}
        stop = data.draw(st.integers(state.batches_done, plan.num_batches))
        for k in range(state.batches_done, stop):
            batches = [p.batch(k) for p in resumed]
            pairs = [(int(x), bool(v)) for b in batches for x, v in zip(b.global_id, b.valid, strict=True)]
            seen.append(sorted(pair for pair in pairs if pair[1]))  # the padding follows the world size
        state = resumed[0].state(stop)
    assert seen == full[first:stop]


def test_resume_needs_a_world_size_that_divides_the_global_batch():
    state = EpochPlan([10, 10], epoch=0, seed=0, batch_size=3, world_size=2).state(1)
    with pytest.raises(ValueError, match="global batch of 6 does not divide by 4"):
        EpochPlan.from_state([10, 10], state, world_size=4, rank=0)
    differ = state.mismatches(batch_size=3, world_size=3)
    assert differ and "with 3 ranks each takes 2" in differ[0]


def test_version_1_states_resume_at_their_own_world_size_with_their_padding():
    """A state written before the global stream existed keeps the padding it was made with: the
    order padded to a multiple of the world size, a short last batch."""
    fingerprint = EpochPlan([7, 6], epoch=0, seed=0, batch_size=1).fingerprint
    legacy = {"epoch": 2, "seed": 5, "world_size": 3, "rank": 1, "batch_size": 4, "drop_last": False,
              "shuffle": True, "data_fingerprint": fingerprint, "batches_done": 1}  # fmt: skip
    state = PlanState.from_dict(legacy)
    assert state.version == 1 and state.global_batch == 12
    plan = EpochPlan.from_state([7, 6], state, world_size=3, rank=1)
    assert plan.num_batches == 2 and len(plan.batch(1)) == 1  # 13 -> 15 entries, 5 per rank
    assert plan.valid.tolist() == [True] * 4 + [False]  # entry 13 of 15 pads: fewer than 3 pad
    order = EpochPlan([7, 6], epoch=2, seed=5, batch_size=13).global_id
    assert plan.global_id.tolist() == np.resize(order, 15)[1::3].tolist()
    with pytest.raises(ValueError, match="resumes only on 3 ranks"):
        EpochPlan.from_state([7, 6], state, world_size=2, rank=0)
    assert state.mismatches(batch_size=4, world_size=2, rank=0)


def test_block_order_reads_each_nodes_buckets_only_and_mixes_within_blocks():
    sizes = [50] * 16
    plans = [
        EpochPlan(sizes, epoch=0, seed=1, batch_size=16, world_size=4, rank=r, order="block", buckets=4,
                  block_size=100, nodes=2)
        for r in range(4)
    ]  # fmt: skip
    ends = np.cumsum(sizes)
    bucket_shards = [
        set(np.searchsorted(ends, ids, side="right").tolist()) for ids in bucket_ranges(np.array(sizes), 1, 4)
    ]
    for r, plan in enumerate(plans):
        node = r // 2
        allowed = bucket_shards[2 * node] | bucket_shards[2 * node + 1]
        assert set(plan.shard.tolist()) <= allowed  # a node downloads only its buckets' shards
    covered = Counter(g for p in plans for g in p.global_id[p.valid].tolist())
    assert sorted(covered) == list(range(800)) and set(covered.values()) == {1}
    # a block of 100 samples spans 2-3 shards of 50, and a rank's batch comes from its node's two
    # buckets: a few shards per batch, where the global order draws from nearly every shard
    assert 2.0 <= distinct_shards_per_batch(plans[0]) <= 6.0
    shuffled = EpochPlan(sizes, epoch=0, seed=1, batch_size=16, world_size=4, rank=0)
    assert distinct_shards_per_batch(shuffled) > 10
    # the blocks change from epoch to epoch
    later = EpochPlan(sizes, epoch=1, seed=1, batch_size=16, world_size=4, rank=0, order="block", buckets=4,
                      block_size=100, nodes=2)  # fmt: skip
    assert not np.array_equal(later.global_id, plans[0].global_id)


def test_global_order_is_the_same_stream_on_any_number_of_nodes():
    """Nodes matter to block order only: in global order (range reads of remote samples, or local
    shards) two nodes of two ranks read what one node of four reads, each sample once, and a
    checkpoint taken on two nodes resumes on one node of two ranks with the same global batches."""
    sizes = [37, 50, 21, 44]
    common = dict(epoch=3, seed=2, batch_size=8, world_size=4)
    two = [EpochPlan(sizes, rank=r, nodes=2, **common) for r in range(4)]
    one = [EpochPlan(sizes, rank=r, nodes=1, **common) for r in range(4)]
    for a, b in zip(two, one, strict=True):
        assert np.array_equal(a.global_id, b.global_id) and np.array_equal(a.valid, b.valid)
    covered = Counter(g for p in two for g in p.global_id[p.valid].tolist())
    assert sorted(covered) == list(range(sum(sizes))) and set(covered.values()) == {1}
    state = PlanState.from_dict(json.loads(json.dumps(two[1].state(2).to_dict())))
    assert state.nodes == 2
    resumed = [EpochPlan.from_state(sizes, state, world_size=2, rank=r, nodes=1) for r in range(2)]
    for k in range(2, two[0].num_batches):
        before = sorted(int(g) for p in two for g in p.batch(k).global_id[p.batch(k).valid])
        after = sorted(int(g) for p in resumed for g in p.batch(k).global_id[p.batch(k).valid])
        assert after == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"buckets": 3, "nodes": 2, "world_size": 2}, "buckets do not divide among 2 nodes"),
        ({"buckets": 3, "batch_size": 4}, "multiple of the number of buckets"),
        ({"nodes": 3, "world_size": 4, "buckets": 3}, "do not split evenly over 3 nodes"),
    ],
)
def test_block_order_refuses_layouts_it_cannot_deal(kwargs, message):
    args = {"epoch": 0, "seed": 0, "batch_size": 6, "order": "block", **kwargs}
    with pytest.raises(ValueError, match=message):
        EpochPlan([30, 30], **args)

"""Permutation sets: the Numba kernels choose exactly what the NumPy reference chooses, the sets keep
the distances they claim, files load 0- or 1-based, and `fastssl perms` writes a valid set."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from fastssl.kernels.permutations import (
    all_permutations,
    candidate_pool,
    describe,
    hamming_matrix,
    load_permutations,
    pack,
    permutation_set,
    save_permutations,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from fastssl.cli import main


def assert_valid_set(perms: np.ndarray, n_tiles: int, count: int) -> None:
    assert perms.shape == (count, n_tiles)
    assert np.all(np.sort(perms, axis=1) == np.arange(n_tiles)), "every row is a permutation"
    assert len(np.unique(perms, axis=0)) == count, "rows are distinct"


def test_all_permutations_are_itertools_in_lexicographic_order():
    for n in (1, 2, 5, 7):
        expected = np.array(list(itertools.permutations(range(n))), dtype=np.int8)
        np.testing.assert_array_equal(all_permutations(n), expected)


def test_random_pool_has_no_duplicates_and_keeps_its_seeded_order():
    pool = candidate_pool(12, seed=4, candidates=5000)
    assert len(np.unique(pack(pool))) == len(pool)
    np.testing.assert_array_equal(pool, candidate_pool(12, seed=4, candidates=5000))
    assert not np.array_equal(pool[:50], candidate_pool(12, seed=5, candidates=5000)[:50])
    small = candidate_pool(3, seed=0, candidates=2)  # fewer than 3! asked: a random pool
    assert len(small) <= 2


def test_packed_hamming_distance_counts_differing_positions_up_to_16():
    rng = np.random.default_rng(0)
    for n in (2, 9, 15, 16):
        perms = np.stack([rng.permutation(n) for _ in range(40)])
        perms[1] = np.roll(perms[0], 1)  # all n positions differ
        from fastssl.kernels.permutations import _hamming

        packed = pack(perms)
        got = np.array([[_hamming(a, b) for b in packed] for a in packed])
        np.testing.assert_array_equal(got, hamming_matrix(perms))
        assert got[0, 1] == n


@pytest.mark.parametrize(
    ("n_tiles", "count", "criterion", "candidates"),
    [
        (9, 100, "max_min", None),
        (9, 100, "max_avg", None),
        (7, 120, "max_min", None),
        (5, 40, "max_avg", None),
        (16, 60, "max_min", 3000),
        (16, 60, "max_avg", 3000),
        (10, 30, "max_min", 20000),
    ],
)
@pytest.mark.parametrize("seed", [0, 7])
def test_numba_and_numpy_choose_the_identical_set(n_tiles, count, criterion, candidates, seed):
    kwargs = dict(criterion=criterion, seed=seed, candidates=candidates)
    fast = permutation_set(n_tiles, count, engine="numba", **kwargs)
    reference = permutation_set(n_tiles, count, engine="numpy", **kwargs)
    np.testing.assert_array_equal(fast, reference)
    assert_valid_set(fast, n_tiles, count)


@settings(max_examples=25, deadline=None)
@given(
    n_tiles=st.integers(3, 7),
    count=st.integers(1, 30),
    criterion=st.sampled_from(["max_min", "max_avg"]),
    min_distance=st.one_of(st.none(), st.integers(1, 3)),
    seed=st.integers(0, 2**31),
)
def test_kernels_agree_with_the_reference_everywhere(n_tiles, count, criterion, min_distance, seed):
    count = min(count, math.factorial(n_tiles))
    args = (n_tiles, count, criterion, min_distance, seed)
    try:
        fast = permutation_set(*args, engine="numba")
    except ValueError as err:
        with pytest.raises(ValueError, match="only"):
            permutation_set(*args, engine="numpy")
        assert "only" in str(err)
        return
    np.testing.assert_array_equal(fast, permutation_set(*args, engine="numpy"))
    assert_valid_set(fast, n_tiles, count)
    if min_distance is not None and count > 1:
        assert describe(fast).min_distance >= min_distance


def test_max_min_1000_of_9_reaches_minimum_distance_5_and_beats_random_sets():
    perms = permutation_set(9, 1000, "max_min", seed=0)
    assert_valid_set(perms, 9, 1000)
    found = describe(perms)
    assert found.min_distance >= 5
    # the claimed figures are the set's own, recomputed from scratch
    d = hamming_matrix(perms)[np.triu_indices(1000, k=1)]
    assert found.min_distance == d.min() and found.mean_distance == pytest.approx(d.mean())
    random_set = np.random.default_rng(0).permuted(np.tile(np.arange(9), (1000, 1)), axis=1)
    assert describe(random_set).min_distance <= 2 < found.min_distance


def test_max_avg_has_a_larger_mean_than_max_min_and_honours_min_distance():
    by_min = describe(permutation_set(9, 300, "max_min"))
    by_avg = describe(permutation_set(9, 300, "max_avg", min_distance=3))
    assert by_avg.min_distance >= 3
    assert by_avg.mean_distance >= by_min.mean_distance - 1e-9
    # Jigsaw++'s set: 701 permutations with minimum distance 3
    assert describe(permutation_set(9, 701, "max_avg", min_distance=3)).min_distance >= 3


def test_seed_changes_the_set_and_repeats_it():
    a, b = permutation_set(9, 50, seed=1), permutation_set(9, 50, seed=2)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, permutation_set(9, 50, seed=1))


def test_unreachable_bounds_and_bad_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match=r"only \d+ of 1000 permutations .* distance >= 6"):
        permutation_set(9, 1000, "max_min", min_distance=6)
    with pytest.raises(ValueError, match="pool holds only 6"):
        permutation_set(3, 7)
    with pytest.raises(ValueError, match="criterion"):
        permutation_set(9, 10, "max_sum")
    with pytest.raises(ValueError, match="n_tiles"):
        permutation_set(17, 10)
    with pytest.raises(ValueError, match="min_distance"):
        permutation_set(4, 3, min_distance=5)


def test_files_load_zero_or_one_based_and_bad_tables_are_refused(tmp_path):
    perms = permutation_set(9, 20)
    one_based = tmp_path / "published.npy"
    np.save(one_based, (perms + 1).astype(np.float64))  # as MATLAB exports are
    np.testing.assert_array_equal(load_permutations(one_based), perms)
    text = tmp_path / "perms.txt"
    text.write_text("\n".join(",".join(str(v) for v in row) for row in perms + 1))
    np.testing.assert_array_equal(load_permutations(text), perms)
    written = save_permutations(tmp_path / "mine", perms)
    assert written.suffix == ".npy"
    np.testing.assert_array_equal(np.load(written), perms)
    bad = perms.copy()
    bad[3, 0] = bad[3, 1]
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match=r"bad\.npy: row 3 is not a permutation"):
        load_permutations(tmp_path / "bad.npy")
    np.save(tmp_path / "dup.npy", np.vstack([perms, perms[:2]]))
    with pytest.raises(ValueError, match="2 duplicate rows"):
        load_permutations(tmp_path / "dup.npy")
    np.save(tmp_path / "two.npy", perms + 2)
    with pytest.raises(ValueError, match="smallest is 2"):
        load_permutations(tmp_path / "two.npy")


def test_cli_writes_a_zero_based_set_and_reports_its_distances(tmp_path, capsys):
    out = tmp_path / "perms.npy"
    assert main(["perms", "--tiles", "9", "--count", "100", "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    perms = np.load(out)
    np.testing.assert_array_equal(perms, permutation_set(9, 100, seed=3))
    assert perms.min() == 0 and perms.max() == 8
    assert f"minimum Hamming distance {describe(perms).min_distance}" in printed
    assert main(["perms", "--count", "1000", "--min-distance", "6", "--out", str(out)]) == 2
    assert "only" in capsys.readouterr().err

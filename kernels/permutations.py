"""Permutation sets of maximal Hamming distance for jigsaw pretext tasks (Noroozi & Favaro 2016).

Greedy selection: start from one permutation of a seeded candidate pool, then repeatedly add the
candidate whose minimum ("max_min") or mean ("max_avg") Hamming distance to the chosen set is
largest, updating every candidate's distance incrementally with the one just chosen. The pool is
every permutation of up to 10 tiles (n! rows), or a seeded random pool for larger grids.

The pool is put in a seeded random order and ties go to the earliest candidate in that order, so
the seed decides both the start and the tie-breaks, and the Numba kernel and the NumPy reference
choose the identical set. No library offers this selection, hence the hand-written kernels: they pack
each permutation into one uint64 (4 bits per position, up to 16 tiles), so a Hamming distance is a
XOR and a nibble count. "max_min" runs a lazy greedy (serial; a candidate is compared only with the
permutations chosen since it was last looked at); "max_avg" needs every candidate's sum after every
step, so its sweep is eager and split across threads.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numba
import numpy as np

Criterion = Literal["max_min", "max_avg"]
CRITERIA = ("max_min", "max_avg")
MAX_TILES = 16  # 4 bits per position in one uint64
EXHAUSTIVE_TILES = 10  # 10! = 3,628,800 candidates; beyond that a random pool
DEFAULT_POOL = 100_000

_NIBBLE_LOW = np.uint64(0x1111111111111111)
_BYTE_LOW = np.uint64(0x0101010101010101)


@dataclass(frozen=True)
class PermutationSet:
    """Chosen permutations (count, n_tiles), 0-based, with their pairwise Hamming distances."""

    permutations: np.ndarray
    min_distance: int
    mean_distance: float


# -- candidate pools -------------------------------------------------------------------------------
def all_permutations(n_tiles: int) -> np.ndarray:
    """Every permutation of `n_tiles` positions, (n!, n) int8, lexicographic."""
    if not 1 <= n_tiles <= EXHAUSTIVE_TILES:
        raise ValueError(f"all permutations only up to {EXHAUSTIVE_TILES} tiles, got {n_tiles}")
    perms = np.zeros((1, 0), dtype=np.int8)
    for k in range(1, n_tiles + 1):  # permutations of k from those of k - 1: each first element f,
        rows = len(perms)  # then the (k-1)-permutations renumbered to skip f; stays lexicographic
        out = np.empty((k * rows, k), dtype=np.int8)
        for first in range(k):
            block = out[first * rows : (first + 1) * rows]
            block[:, 0] = first
            block[:, 1:] = perms + (perms >= first)
        perms = out
    return perms


def candidate_pool(n_tiles: int, *, seed: int = 0, candidates: int | None = None) -> np.ndarray:
    """The greedy search's candidates in their seeded order, (N, n) int8, no duplicates.

    Every permutation when `candidates` is None and `n_tiles` <= 10 (or `candidates` >= n!), else
    `candidates` random permutations (duplicates dropped, first occurrence kept).
    """
    if not 2 <= n_tiles <= MAX_TILES:
        raise ValueError(f"n_tiles must lie in 2..{MAX_TILES}, got {n_tiles}")
    rng = np.random.default_rng(seed)
    exhaustive = n_tiles <= EXHAUSTIVE_TILES and (candidates is None or candidates >= math.factorial(n_tiles))
    if exhaustive:
        pool = all_permutations(n_tiles)
        return pool[rng.permutation(len(pool))]
    size = DEFAULT_POOL if candidates is None else candidates
    if size < 1:
        raise ValueError(f"candidates must be positive, got {size}")
    pool = rng.permuted(np.tile(np.arange(n_tiles, dtype=np.int8), (size, 1)), axis=1)
    _, first = np.unique(pack(pool), return_index=True)
    return pool[np.sort(first)]


def pack(perms: np.ndarray) -> np.ndarray:
    """Each permutation as one uint64, position k in bits 4k..4k+3."""
    perms = np.asarray(perms)
    if perms.shape[1] > MAX_TILES:
        raise ValueError(f"at most {MAX_TILES} tiles can be packed, got {perms.shape[1]}")
    shifts = (4 * np.arange(perms.shape[1])).astype(np.uint64)
    return np.bitwise_or.reduce(perms.astype(np.uint64) << shifts, axis=1)


# -- the greedy kernel -----------------------------------------------------------------------------
@numba.njit(inline="always")
def _hamming(a: np.uint64, b: np.uint64) -> np.int64:
    """Positions whose 4-bit fields differ: fold each field to its low bit, then add the bits by
    bytes (a byte can hold 16, a nibble could not)."""
    x = a ^ b
    x = (x | (x >> np.uint64(1)) | (x >> np.uint64(2)) | (x >> np.uint64(3))) & _NIBBLE_LOW
    x = (x & _BYTE_LOW) + ((x >> np.uint64(4)) & _BYTE_LOW)
    return np.int64((x * _BYTE_LOW) >> np.uint64(56))


@numba.njit(cache=True)
def _lazy_max_min_kernel(packed: np.ndarray, count: int, floor: int, n_tiles: int) -> np.ndarray:
    """max_min selection with lazy updates: the same choices as the eager sweep, far less work.

    A candidate's minimum distance only falls as the set grows, and the best value (`level`) never
    rises. So at a level, candidates are visited in pool order with a pointer that never moves
    back (those behind it are below the level for good); each visited candidate is compared only
    with the permutations chosen since it was last visited, and the first one still at the level
    is the earliest candidate of maximal distance, which is the eager sweep's pick.
    """
    n = packed.shape[0]
    nearest = np.full(n, n_tiles, dtype=np.int64)  # an upper bound until brought up to date
    seen = np.zeros(n, dtype=np.int64)  # chosen permutations already compared with
    chosen = np.empty(count, dtype=np.int64)
    chosen[0] = 0
    nearest[0] = 0
    k = 1
    level = n_tiles
    pointer = 0
    while k < count and level >= floor:
        if pointer == n:
            level -= 1
            pointer = 0
            continue
        c = pointer
        if nearest[c] >= level:
            value = nearest[c]
            for j in range(seen[c], k):
                d = _hamming(packed[c], packed[chosen[j]])
                if d < value:
                    value = d
                    if value < level:
                        seen[c] = j + 1
                        break
            else:
                seen[c] = k
            nearest[c] = value
            if value >= level:
                chosen[k] = c
                nearest[c] = 0
                k += 1
        pointer += 1
    return chosen[:k]


@numba.njit(parallel=True, cache=True)
def _max_avg_kernel(packed: np.ndarray, count: int, floor: int, chunks: int) -> np.ndarray:
    """max_avg selection, eager: indices of the chosen candidates in the order chosen; stops early
    (fewer than `count`) when no candidate is left at distance >= `floor` from every chosen one."""
    n = packed.shape[0]
    nearest = np.full(n, 255, dtype=np.int64)  # min distance to the chosen set
    total = np.zeros(n, dtype=np.int64)  # sum of distances to the chosen set
    chosen = np.empty(count, dtype=np.int64)
    best_value = np.empty(chunks, dtype=np.int64)
    best_index = np.empty(chunks, dtype=np.int64)
    step = (n + chunks - 1) // chunks
    pick = 0
    for k in range(count):
        chosen[k] = pick
        if k + 1 == count:
            break
        new = packed[pick]
        for chunk in numba.prange(chunks):
            value, index = np.int64(-1), np.int64(-1)
            for c in range(chunk * step, min(n, (chunk + 1) * step)):
                d = _hamming(packed[c], new)
                if d < nearest[c]:
                    nearest[c] = d
                total[c] += d
                if nearest[c] >= floor and total[c] > value:
                    value, index = total[c], c
            best_value[chunk], best_index[chunk] = value, index
        value, pick = np.int64(-1), np.int64(-1)
        for chunk in range(chunks):  # chunks in pool order: ties go to the earliest candidate
            if best_value[chunk] > value:
                value, pick = best_value[chunk], best_index[chunk]
        if pick < 0:
            return chosen[: k + 1]
    return chosen


def _greedy_reference(pool: np.ndarray, count: int, use_min: bool, floor: int) -> np.ndarray:
    """The same selection in plain NumPy, on unpacked rows: the kernel's test oracle."""
    nearest = np.full(len(pool), 255, dtype=np.int64)
    total = np.zeros(len(pool), dtype=np.int64)
    chosen = [0]
    while True:
        d = (pool != pool[chosen[-1]]).sum(axis=1)
        nearest = np.minimum(nearest, d)
        total += d
        if len(chosen) == count:
            return np.asarray(chosen)
        score = np.where(nearest >= floor, nearest if use_min else total, -1)
        pick = int(np.argmax(score))  # first maximum: ties go to the earliest candidate
        if score[pick] < 0:
            return np.asarray(chosen)
        chosen.append(pick)


def permutation_set(
    n_tiles: int = 9,
    count: int = 1000,
    criterion: Criterion = "max_min",
    min_distance: int | None = None,
    seed: int = 0,
    candidates: int | None = None,
    *,
    engine: Literal["numba", "numpy"] = "numba",
) -> np.ndarray:
    """`count` permutations of `n_tiles` positions, far apart in Hamming distance, (count, n) int64.

    `criterion` "max_min" adds the candidate farthest from its nearest chosen permutation (the
    set's minimum distance is as large as the greedy can make it); "max_avg" the one with the
    largest mean distance to the chosen set. `min_distance` is a bound every pair must keep: with
    "max_min" the search fails when the best candidate falls below it, with "max_avg" candidates
    below it are passed over (Jigsaw++: 701 permutations, minimum distance 3). Exhaustive over all
    n! permutations up to 10 tiles, else over `candidates` seeded random ones (default 100,000).
    `engine="numpy"` runs the plain reference (slow; for tests and comparisons).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    if min_distance is not None and not 1 <= min_distance <= n_tiles:
        raise ValueError(f"min_distance must lie in 1..{n_tiles}, got {min_distance}")
    pool = candidate_pool(n_tiles, seed=seed, candidates=candidates)
    if count > len(pool):
        raise ValueError(f"asked for {count} permutations but the candidate pool holds only {len(pool)}")
    floor = max(1, min_distance or 1)  # distance 0 is a permutation already chosen
    use_min = criterion == "max_min"
    if engine == "numba" and use_min:
        chosen = _lazy_max_min_kernel(pack(pool), count, floor, n_tiles)
    elif engine == "numba":
        chunks = 4 * max(1, numba.get_num_threads())
        chosen = _max_avg_kernel(pack(pool), count, floor, chunks)
    elif engine == "numpy":
        chosen = _greedy_reference(pool, count, use_min, floor)
    else:
        raise ValueError(f"engine must be 'numba' or 'numpy', got {engine!r}")
    if len(chosen) < count:
        bound = f"distance >= {floor} from every chosen one" if min_distance else "distinct candidates"
        raise ValueError(
            f"only {len(chosen)} of {count} permutations of {n_tiles} tiles found with {bound} "
            f"({criterion}, pool of {len(pool)}); lower count or min_distance, or enlarge candidates"
        )
    return pool[chosen].astype(np.int64)


# -- distances, files ------------------------------------------------------------------------------
def hamming_matrix(perms: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances (count, count)."""
    perms = np.asarray(perms)
    return (perms[:, None, :] != perms[None, :, :]).sum(axis=2)


def describe(perms: np.ndarray) -> PermutationSet:
    """The set with its minimum and mean pairwise Hamming distance (over distinct pairs)."""
    perms = np.asarray(perms, dtype=np.int64)
    if len(perms) < 2:
        return PermutationSet(perms, 0, 0.0)
    d = hamming_matrix(perms)[np.triu_indices(len(perms), k=1)]
    return PermutationSet(perms, int(d.min()), float(d.mean()))


def validate_permutations(perms: np.ndarray, *, source: str = "permutations") -> np.ndarray:
    """Rows that are permutations of 0..n-1 (or of 1..n, converted to 0-based), as int64.

    Published sets (Noroozi & Favaro's `.npy`, MATLAB exports) are 1-based; fastssl's are 0-based.
    """
    perms = np.asarray(perms)
    if perms.ndim != 2 or perms.shape[0] < 1 or not 2 <= perms.shape[1] <= MAX_TILES:
        raise ValueError(
            f"{source}: expected a (count, n_tiles) table with 2..{MAX_TILES} tiles, got {perms.shape}"
        )
    if not np.issubdtype(perms.dtype, np.integer) and not np.all(np.mod(perms, 1) == 0):
        raise ValueError(f"{source}: entries must be integers")
    perms = perms.astype(np.int64)
    n = perms.shape[1]
    base = int(perms.min())
    if base not in (0, 1):
        raise ValueError(f"{source}: entries must be 0..{n - 1} (or 1..{n}), smallest is {base}")
    perms = perms - base
    ok = np.all(np.sort(perms, axis=1) == np.arange(n), axis=1)
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"{source}: row {bad} is not a permutation of {base}..{n - 1 + base}: {perms[bad] + base}"
        )
    distinct = len(np.unique(perms, axis=0))
    if distinct != len(perms):
        raise ValueError(f"{source}: {len(perms) - distinct} duplicate rows")
    return perms


def load_permutations(path: str | os.PathLike) -> np.ndarray:
    """A permutation set from `.npy` or a text table (whitespace or comma separated), 0- or 1-based."""
    path = Path(path)
    if path.suffix == ".npy":
        table = np.load(path, allow_pickle=False)
    else:
        text = path.read_text().replace(",", " ")
        table = np.loadtxt(text.splitlines(), ndmin=2)
    return validate_permutations(table, source=str(path))


def save_permutations(path: str | os.PathLike, perms: np.ndarray) -> Path:
    """Write a 0-based set as `.npy` (int64); `path` gains the suffix if it lacks it."""
    path = Path(path)
    if path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    np.save(path, validate_permutations(perms, source=str(path)))
    return path

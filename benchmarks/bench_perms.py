"""Time the permutation-set search: Numba kernels against the NumPy reference, in one run.

Usage: python benchmarks/bench_perms.py [--tiles 9] [--count 1000] [--repeats 3] [--json out.json]

For each criterion: the NumPy reference once, the Numba kernel `--repeats` times in this process
(compiled code already loaded), a fresh `fastssl perms` process (loading the cached compiled
kernel, as a user's first call does), and a fresh process with an empty Numba cache (compiling
first, as the very first call after installation does). Prints seconds, speed-up over the
reference and the set's minimum / mean Hamming distance.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastssl.kernels.permutations import describe, permutation_set

_CHILD = (
    "import time, sys; t = time.perf_counter(); "
    "from fastssl.kernels.permutations import permutation_set as p; "
    "p({tiles}, {count}, {criterion!r}, engine='numba'); "
    "print(time.perf_counter() - t)"
)


def _fresh_process(tiles: int, count: int, criterion: str, cache_dir: str | None) -> float:
    """Seconds from import to result in a new interpreter (imports included)."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    code = _CHILD.format(tiles=tiles, count=count, criterion=criterion)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=9)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for criterion in ("max_min", "max_avg"):
        start = time.perf_counter()
        reference = permutation_set(args.tiles, args.count, criterion, engine="numpy")
        numpy_s = time.perf_counter() - start
        permutation_set(args.tiles, args.count, criterion)  # loads or compiles the kernel
        warm = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fast = permutation_set(args.tiles, args.count, criterion)
            warm.append(time.perf_counter() - start)
        assert (fast == reference).all(), "kernel and reference disagree"
        cached_s = _fresh_process(args.tiles, args.count, criterion, None)
        with tempfile.TemporaryDirectory() as empty:
            cold_s = _fresh_process(args.tiles, args.count, criterion, empty)
        found = describe(fast)
        rows.append(
            {
                "criterion": criterion,
                "tiles": args.tiles,
                "count": args.count,
                "numpy_s": numpy_s,
                "numba_warm_s": min(warm),
                "numba_new_process_s": cached_s,
                "numba_first_compile_s": cold_s,
                "speedup_warm": numpy_s / min(warm),
                "min_distance": found.min_distance,
                "mean_distance": found.mean_distance,
            }
        )
    print(
        f"{'criterion':<9} {'numpy s':>8} {'numba s':>8} {'x numpy':>8} {'new proc s':>10} "
        f"{'1st compile s':>13} {'min d':>5} {'mean d':>7}"
    )
    for r in rows:
        print(
            f"{r['criterion']:<9} {r['numpy_s']:8.3f} {r['numba_warm_s']:8.3f} {r['speedup_warm']:8.1f} "
            f"{r['numba_new_process_s']:10.3f} {r['numba_first_compile_s']:13.3f} "
            f"{r['min_distance']:5d} {r['mean_distance']:7.3f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

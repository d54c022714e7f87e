"""ordered_map: order kept, and a worker that dies costs one item, not the run (or a hang)."""

from __future__ import annotations

import os
import signal
from functools import partial

from fastssl.data.parallel import ordered_map


def square(x: int) -> int:
    return x * x


def square_or_die(x: int, fatal: frozenset[int], flaky_dir: str | None = None) -> int:
    """Kills its own process on `fatal` items; on a flaky item only the first time."""
    if x in fatal:
        marker = os.path.join(flaky_dir, str(x)) if flaky_dir else None
        if marker is None or not os.path.exists(marker):
            if marker:
                open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def died(x: int) -> str:
    return f"died on {x}"


def test_results_come_back_in_order():
    items = list(range(150))
    assert list(ordered_map(square, items, 2, on_worker_death=died, chunk_size=7)) == [x * x for x in items]


def test_an_item_that_kills_its_worker_is_reported_alone():
    items = list(range(100))
    fn = partial(square_or_die, fatal=frozenset({37, 81}))
    results = list(ordered_map(fn, items, 2, on_worker_death=died, chunk_size=8))
    expected = [x * x for x in items]
    expected[37], expected[81] = "died on 37", "died on 81"
    assert results == expected


def test_a_worker_killed_once_is_retried(tmp_path):
    fn = partial(square_or_die, fatal=frozenset({5}), flaky_dir=str(tmp_path))
    results = list(ordered_map(fn, list(range(40)), 2, on_worker_death=died, chunk_size=4))
    assert results == [x * x for x in range(40)]  # item 5 succeeded on its retry

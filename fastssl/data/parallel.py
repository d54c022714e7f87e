"""An ordered map over worker processes that survives a worker dying (OOM kill, decoder crash).

`multiprocessing.Pool.imap` waits forever for the results of a worker killed mid-task;
`concurrent.futures.ProcessPoolExecutor` notices (BrokenProcessPool) but then fails every task
in flight. This module adds what neither does: it re-runs the lost tasks one item at a time in
a fresh pool, so that an item that kills its worker again is reported on its own and the run
goes on with all the others.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def _run_chunk(fn: Callable[[Item], Result], items: list[Item]) -> list[Result]:
    return [fn(item) for item in items]


def _ready() -> bool:
    return True


class _Pool:
    """A ProcessPoolExecutor whose workers all exist before real work is submitted.

    With spawn, the executor starts workers lazily inside submit(); if a worker dies while
    submit() starts another, CPython 3.11's manager thread can fail mid-cleanup ("dictionary
    changed size during iteration") and leave a process behind. Starting them up front (the
    warm-up tasks are submitted faster than a worker can start) closes that window.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # spawn, not fork: the caller may hold threads (torch, DALI) that fork would copy half-alive.
        executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        for future in [executor.submit(_ready) for _ in range(self.workers)]:
            future.result()
        return executor

    def submit(self, fn: Callable, items: list) -> Future:
        return self.executor.submit(_run_chunk, fn, items)

    def renew(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = self._start()


def ordered_map(
    fn: Callable[[Item], Result],
    items: Sequence[Item],
    workers: int,
    *,
    on_worker_death: Callable[[Item], Result],
    chunk_size: int = 32,
) -> Iterator[Result]:
    """`fn(item)` for every item, in order, computed in `workers` spawned processes.

    `fn` must be picklable (a module-level function or a `functools.partial` of one). When a
    worker dies, the items it may have held are retried singly; an item whose retry kills a
    worker again yields `on_worker_death(item)`. At most 4 chunks per worker are in flight, so
    memory stays bounded however many items there are.
    """
    pool = _Pool(workers)
    pending = deque(range(0, len(items), chunk_size))
    in_flight: deque[tuple[int, Future]] = deque()
    try:
        while pending or in_flight:
            try:
                while pending and len(in_flight) < 4 * workers:
                    start = pending[0]
                    in_flight.append((start, pool.submit(fn, list(items[start : start + chunk_size]))))
                    pending.popleft()
                start, future = in_flight[0]
                results = future.result()
                in_flight.popleft()
            except BrokenProcessPool:
                # Chunks that finished before the break keep their results; the rest are retried
                # item by item in a fresh pool.
                lost = [(s, f if _succeeded(f) else None) for s, f in in_flight]
                in_flight.clear()
                pool.renew()
                for lost_start, done in lost:
                    if done is not None:
                        yield from done.result()
                        continue
                    for item in items[lost_start : lost_start + chunk_size]:
                        yield _retry_alone(pool, fn, item, on_worker_death)
                continue
            yield from results
    finally:
        pool.executor.shutdown(wait=True, cancel_futures=True)


def _retry_alone(pool: _Pool, fn: Callable, item: Item, on_worker_death: Callable) -> Result:
    try:
        return pool.submit(fn, [item]).result()[0]
    except BrokenProcessPool:
        pool.renew()
        return on_worker_death(item)


def _succeeded(future: Future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None

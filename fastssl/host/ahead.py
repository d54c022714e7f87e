"""Running an iterator in a thread of its own, a bounded number of items ahead of its consumer.

The CPU path of the DALI backend makes a batch's views with compiled kernels that release the GIL
(`pipelines.host_finish`) after DALI's graph, which waits in C++, has decoded it: run on the
training thread, that work is time the consumer waits, however long its own step takes. Run here,
it overlaps the consumer's step, and `next()` only takes a finished batch.

Why by hand: `concurrent.futures` has no bounded, ordered producer with an early stop, and a
`torch.utils.data.DataLoader` would move the batches between processes (the graph and its
buffers live in this one). Why two `queue.SimpleQueue`s (the items, and tokens for the room left)
rather than one bounded `queue.Queue`: the consumer's side is then two calls into C, where
`queue.Queue.get` runs a Python condition variable (a lock made per wait, notify, re-acquire). On
the 2-vCPU VM, with the view threads busy, the consumer spent a median of 51 us of CPU per batch
inside `queue.Queue.get`; see benchmarks/RESULTS.md.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

Item = TypeVar("Item")

_ITEM, _END, _ERROR = 0, 1, 2
_POLL = 0.05  # seconds between checks for a stop while the queue is full


class RunAhead(Generic[Item]):
    """Iterates `source` in a daemon thread, at most `depth` items ahead of the consumer.

    Items come out in order; an exception raised by `source` is raised by `next()` in its place,
    after the items before it. `close()` (also on leaving a `with` block, or when a consumer's
    `for` loop is abandoned and the generator holding this is closed) stops the thread after the
    item it is working on and closes `source` in that thread, so a generator's cleanup runs where
    the generator ran, and never while another thread is inside it.
    """

    def __init__(self, source: Iterator[Item], depth: int = 2, name: str = "fastssl-ahead") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._source = source
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # what the thread made, in order
        self._room: queue.SimpleQueue = queue.SimpleQueue()  # one token per item it may still queue
        for _ in range(depth):
            self._room.put(None)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _put(self, message: tuple[int, object]) -> bool:
        """Queue `message` unless asked to stop first; whether it was queued."""
        while not self._stop.is_set():
            try:
                self._room.get(timeout=_POLL)
            except queue.Empty:
                continue
            self._queue.put(message)
            return True
        return False

    def _work(self) -> None:
        try:
            for item in self._source:
                if not self._put((_ITEM, item)):
                    return
            self._put((_END, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            self._put((_ERROR, err))
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> RunAhead[Item]:
        return self

    def __next__(self) -> Item:
        if self._done:
            raise StopIteration
        # the thread always ends with a message: the end, an error, or close()'s own end
        kind, value = self._queue.get()
        if kind == _ITEM:
            self._room.put(None)
            return value  # type: ignore[return-value]
        self._done = True
        if kind == _ERROR:
            raise value  # type: ignore[misc]
        raise StopIteration

    def close(self) -> None:
        """Stop the thread and wait for it (it finishes the item it is making, then closes `source`)."""
        self._done = True
        self._stop.set()  # a thread waiting for room sees it within _POLL seconds
        self._thread.join()
        while True:  # what it made and nobody will take: let it go now
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put_nowait((_END, None))  # a consumer waiting in another thread wakes and stops

    def __enter__(self) -> RunAhead[Item]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

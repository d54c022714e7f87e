"""Feeder processes: build batches ahead of the consumer, into shared slots, in the plan's order.

The training process only hands a ready slot to the decoder: the host side of every batch (read,
header checks, labels, parameter draws, packing) runs in `workers` forked processes. Batch j of
a run goes to worker j % workers, into whichever slot is free, so each worker's results arrive in
order on its own pipe and the consumer reads them round robin. What is not an array (keys, shard
names, skips, parameter dicts: the `HostBatch` without its bytes) comes back pickled on that pipe
with the slot's number; the arrays the decoder reads stay in the slot.

A worker's exception is raised in the consumer (a `DataError` with its shard and key; any other
with the worker's traceback as a note); a worker that dies (OOM killer, a signal) raises
`WorkerError` as soon as the consumer waits for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from fastssl.errors import DataError, WorkerError
from fastssl.host.forking import collector_frozen
from fastssl.host.slots import Slot

# work(number, slot) -> what the consumer receives for batch `number`, built into `slot`
Work = Callable[[int, Slot], Any]

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when its parent dies (Linux), so none is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _serve(work: Work, slots: list[Slot], requests: Connection, parent: int) -> None:
    """A feeder's loop: (number, slot index) in, ("ok" | "error" | "crash", number, slot, payload)
    out, until None or the consumer's end closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the consumer's to handle
    _die_with_parent(parent)
    while True:
        try:
            request = requests.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        number, index = request
        try:
            reply = ("ok", number, index, work(number, slots[index]))
        except DataError as err:  # pickles whole: shard, key and reason reach the consumer
            reply = ("error", number, index, err)
        except BaseException as err:  # noqa: BLE001 - reported to the consumer, which raises it
            reply = ("crash", number, index, (_portable(err), traceback.format_exc()))
        requests.send(reply)


def _portable(err: BaseException) -> BaseException | None:
    """`err` if it survives pickling (the consumer then raises the same type), else None."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 - any failure means: send the traceback text only
        return None
    return err


class Feeders:
    """`workers` processes running `work` over `numbers`, at most `len(slots)` batches ahead."""

    def __init__(self, work: Work, numbers: Sequence[int], slots: list[Slot], workers: int) -> None:
        if workers < 1:
            raise ValueError(f"need at least one feeder process, got {workers}")
        self._numbers = list(numbers)
        self._slots = slots
        self._issued = 0  # requests sent, in number order
        self._received = 0
        self._free = list(range(len(slots)))
        context = multiprocessing.get_context("fork")  # inherits the slots, the reader and its indexes
        self._pipes: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        with collector_frozen():
            for _ in range(workers):
                ours, theirs = context.Pipe(duplex=True)
                process = context.Process(
                    target=_serve, args=(work, slots, theirs, os.getpid()), daemon=True,
                    name="fastssl-feeder",
                )  # fmt: skip
                process.start()
                theirs.close()
                self._pipes.append(ours)
                self._processes.append(process)
        while self._free and self._issued < len(self._numbers):
            self._request(self._free.pop(0))

    def _request(self, index: int) -> None:
        worker = self._issued % len(self._pipes)
        self._pipes[worker].send((self._numbers[self._issued], index))
        self._issued += 1

    def next(self) -> tuple[int, int, Any]:
        """(number, slot index, work's result) of the next batch in order; StopIteration after the
        last. The slot stays the caller's until `release`."""
        if self._received == len(self._numbers):
            raise StopIteration
        worker = self._received % len(self._pipes)
        pipe, process = self._pipes[worker], self._processes[worker]
        while not pipe.poll():
            ready = wait([pipe, process.sentinel])
            if pipe not in ready and process.sentinel in ready and not pipe.poll():
                raise WorkerError(_death(process))
        try:
            status, number, index, payload = pipe.recv()
        except (EOFError, OSError) as err:
            raise WorkerError(_death(process)) from err
        self._received += 1
        if status == "error":
            raise payload
        if status == "crash":
            err, trace = payload
            where = f"in a feeder process (pid {process.pid}) building batch {number}:\n{trace}"
            if err is None:
                raise WorkerError(f"failed {where}")
            err.add_note(f"raised {where}")
            raise err
        return number, index, payload

    def release(self, index: int) -> None:
        """Slot `index` is free again (the decoder is done with it): fill it with the next batch."""
        if self._issued < len(self._numbers):
            self._request(index)
        else:
            self._free.append(index)

    def close(self) -> None:
        """Stop every worker now (mid-batch ones included) and wait for them."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(None)
        for process in self._processes:
            process.join(timeout=1.0)
            if process.exitcode is None:
                process.kill()
                process.join()
        for pipe in self._pipes:
            pipe.close()
        self._pipes, self._processes = [], []


def _death(process: multiprocessing.process.BaseProcess) -> str:
    process.join(timeout=1.0)
    code = process.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return f"a feeder process (pid {process.pid}) died ({how}); it may have run out of memory"

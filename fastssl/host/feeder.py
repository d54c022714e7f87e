"""Feeder processes: build batches ahead of the consumer, into shared slots, in the plan's order.

The training process only hands a ready slot to the decoder: the host side of every batch (read,
header checks, labels, parameter draws, packing) runs in `workers` processes forked once and kept
for every epoch, each told the run's plan at its start. Batch j of a run goes to worker
j % workers, into whichever slot is free, so each worker's results arrive in
order on its own pipe and the consumer reads them round robin. What is not an array (keys, shard
names, skips, parameter dicts: the `HostBatch` without its bytes) comes back pickled on that pipe
with the slot's number; the arrays the decoder reads stay in the slot.

A worker's exception is raised in the consumer (a `DataError` with its shard and key; any other
with the worker's traceback as a note); a worker that dies (OOM killer, a signal) raises
`WorkerError` as soon as the consumer waits for it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from fastssl.errors import DataError, WorkerError
from fastssl.host.forking import collector_frozen
from fastssl.host.slots import Slot


class Job(Protocol):
    """What a feeder runs: `setup(message)` at the start of each run (the epoch's plan, say), then
    `job(number, slot)` per batch, whose result the consumer receives."""

    def setup(self, message: Any) -> None: ...

    def __call__(self, number: int, slot: Slot) -> Any: ...


_PARENT_CHECK_S = 1.0  # how often an idle feeder looks whether its parent still lives


def _serve(job: Job, slots: list[Slot], requests: Connection, parent: int) -> None:
    """A feeder's loop until None, the consumer's end closing or the parent's death (looked for
    every second while idle; the pipe's end stays open in sibling feeders, so it may never close):
    ("setup", run, message) prepares a run; (run, number, slot index) builds a batch and answers
    (status, run, number, slot, payload), status "ok", "error" (a DataError) or "crash"
    (anything else, with its traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the consumer's to handle
    failed_setup: BaseException | None = None  # raised for each batch of the run it was for
    while True:
        try:
            while not requests.poll(_PARENT_CHECK_S):
                if os.getppid() != parent:
                    return
            request = requests.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        if request[0] == "setup":
            try:
                job.setup(request[2])
                failed_setup = None
            except BaseException as err:  # noqa: BLE001 - reported with the run's first batch
                failed_setup = err
            continue
        run, number, index = request
        try:
            if failed_setup is not None:
                raise failed_setup
            reply = ("ok", run, number, index, job(number, slots[index]))
        except DataError as err:  # pickles whole: shard, key and reason reach the consumer
            reply = ("error", run, number, index, err)
        except BaseException as err:  # noqa: BLE001 - reported to the consumer, which raises it
            reply = ("crash", run, number, index, (_portable(err), traceback.format_exc()))
        try:
            requests.send(reply)
        except OSError:  # the consumer is gone
            return


def _portable(err: BaseException) -> BaseException | None:
    """`err` if it survives pickling (the consumer then raises the same type), else None."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 - any failure means: send the traceback text only
        return None
    return err


class Feeders:
    """`workers` processes running `job`, forked once and kept across runs (epochs): a fork per
    epoch would make the consumer pay copy-on-write faults on its reused memory every epoch (a
    third of the pages of each batch's views, measured). Each `start` begins a run over
    `numbers`, at most `len(slots)` batches ahead."""

    def __init__(self, job: Job, slots: list[Slot], workers: int) -> None:
        if workers < 1:
            raise ValueError(f"need at least one feeder process, got {workers}")
        self.slots = slots
        self._run = 0
        self._numbers: list[int] = []
        self._issued = self._received = 0
        self._free: list[int] = []
        self._outstanding = [0] * workers  # requests sent to each worker, not answered yet
        context = multiprocessing.get_context("fork")  # inherits the slots, the reader and its indexes
        self._pipes: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        with collector_frozen():
            for _ in range(workers):
                ours, theirs = context.Pipe(duplex=True)
                process = context.Process(
                    target=_serve, args=(job, slots, theirs, os.getpid()), daemon=True,
                    name="fastssl-feeder",
                )  # fmt: skip
                process.start()
                theirs.close()
                self._pipes.append(ours)
                self._processes.append(process)

    @property
    def alive(self) -> bool:
        """Whether every worker still runs (a dead one means: make new feeders)."""
        return all(process.exitcode is None for process in self._processes)

    def start(self, numbers: Sequence[int], setup: Any) -> None:
        """Begin a run: answers still due from the last one are awaited and dropped, every worker
        gets `setup`, and the first batches of `numbers` are requested."""
        for worker in range(len(self._pipes)):
            while self._outstanding[worker]:
                self._receive(worker)
        self._run += 1
        for worker in range(len(self._pipes)):
            self._send(worker, ("setup", self._run, setup))
        self._numbers, self._issued, self._received = list(numbers), 0, 0
        self._free = list(range(len(self.slots)))
        while self._free and self._issued < len(self._numbers):
            self._request(self._free.pop(0))

    def _send(self, worker: int, message: Any) -> None:
        try:
            self._pipes[worker].send(message)
        except OSError as err:  # a worker that died: its end of the pipe is closed
            raise WorkerError(_death(self._processes[worker])) from err

    def _request(self, index: int) -> None:
        worker = self._issued % len(self._pipes)
        self._send(worker, (self._run, self._numbers[self._issued], index))
        self._outstanding[worker] += 1
        self._issued += 1

    def _receive(self, worker: int) -> tuple:
        pipe, process = self._pipes[worker], self._processes[worker]
        while not pipe.poll():
            ready = wait([pipe, process.sentinel])
            if pipe not in ready and process.sentinel in ready and not pipe.poll():
                raise WorkerError(_death(process))
        try:
            reply = pipe.recv()
        except (EOFError, OSError) as err:
            raise WorkerError(_death(process)) from err
        self._outstanding[worker] -= 1
        return reply

    def next(self) -> tuple[int, int, Any]:
        """(number, slot index, the job's result) of the run's next batch in order; StopIteration
        after the last. The slot stays the caller's until `release`."""
        if self._received == len(self._numbers):
            raise StopIteration
        worker = self._received % len(self._pipes)
        status, _, number, index, payload = self._receive(worker)
        self._received += 1
        if status == "error":
            self._free.append(index)
            raise payload
        if status == "crash":
            self._free.append(index)
            err, trace = payload
            pid = self._processes[worker].pid
            where = f"in a feeder process (pid {pid}) building batch {number}:\n{trace}"
            if err is None:
                raise WorkerError(f"failed {where}")
            if isinstance(err, StopIteration):  # raised as itself it would end the caller's epoch
                raise RuntimeError(f"unexpected StopIteration {where}") from err
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

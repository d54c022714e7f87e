"""Feeder processes and shared slots: batches built elsewhere arrive whole, in order, with their
errors, and a feeder that dies is reported at once."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from fastssl.data.faults import clean_shards
from fastssl.data.source import ByteSource
from fastssl.errors import LabelError, WorkerError
from fastssl.host.feeder import Feeders
from fastssl.host.slots import Slot


class _Job:
    """A feeder job for these tests: `setup` says which run it is; each batch reports it."""

    def __init__(self, act=None) -> None:
        self.run, self.act = None, act

    def setup(self, message) -> None:
        if message == "refuse":
            raise ValueError("this run cannot start")
        self.run = message

    def __call__(self, number: int, slot: Slot):
        if self.act is not None:
            self.act(number)
        time.sleep(0.002 * (number % 3))  # answers take different times
        slot.params[:, 0] = number
        return number, os.getpid(), self.run


@pytest.mark.parametrize("workers,slots", [(1, 1), (2, 3), (3, 7)])
def test_batches_arrive_in_order_each_in_the_slot_it_was_built_in(workers, slots) -> None:
    pool = [Slot(4, 64, 0, 2, 0) for _ in range(slots)]
    feeders = Feeders(_Job(), pool, workers)
    try:
        pids = set()
        for run, numbers in enumerate([list(range(5, 25)), list(range(3)), list(range(9, 2, -1))]):
            feeders.start(numbers, run)
            got = []
            for _ in numbers:
                number, index, (echo, pid, told) = feeders.next()
                assert number == echo and pool[index].params[0, 0] == number and told == run
                got.append(number)
                pids.add(pid)
                feeders.release(index)
            with pytest.raises(StopIteration):
                feeders.next()
            assert got == numbers
    finally:
        feeders.close()
    assert len(pids) == workers and os.getpid() not in pids  # the same processes for every run


def test_a_run_abandoned_midway_leaves_nothing_for_the_next() -> None:
    feeders = Feeders(_Job(), [Slot(2, 64, 0, 1, 0) for _ in range(4)], 2)
    try:
        feeders.start(range(100), "first")
        assert feeders.next()[0] == 0  # three more are being built; the consumer walks away
        feeders.start(range(50, 53), "second")
        assert [feeders.next()[2][::2] for _ in range(3)] == [(50, "second"), (51, "second"), (52, "second")]
    finally:
        feeders.close()


def _fail(number: int) -> None:
    if number == 3:
        raise LabelError("label is not an integer", shard="s.tar", key="k3")
    if number == 5:
        raise KeyError("a plain exception")  # raised as itself
    if number == 6:
        raise StopIteration  # raised as itself it would end the consumer's epoch early


def test_a_feeder_s_errors_reach_the_consumer_whole() -> None:
    feeders = Feeders(_Job(_fail), [Slot(2, 64, 0, 1, 0) for _ in range(3)], 2)
    try:
        feeders.start(range(8), None)
        for expected in range(3):
            number, index, _ = feeders.next()
            assert number == expected
            feeders.release(index)
        with pytest.raises(LabelError) as info:
            feeders.next()
        assert info.value.shard == "s.tar" and info.value.key == "k3"
        feeders.start(range(4, 8), None)  # the same feeders go on
        feeders.release(feeders.next()[1])
        with pytest.raises(KeyError) as caught:
            feeders.next()
        assert any("feeder process" in note for note in caught.value.__notes__)
        feeders.start(range(6, 8), None)
        with pytest.raises(RuntimeError, match="unexpected StopIteration"):
            feeders.next()
        feeders.start(range(2), "refuse")
        with pytest.raises(ValueError, match="this run cannot start"):
            feeders.next()
        assert feeders.alive
    finally:
        feeders.close()


def _slow(number: int) -> None:
    time.sleep(30)


@pytest.mark.timeout(60)
def test_a_killed_feeder_is_a_worker_error_at_once() -> None:
    feeders = Feeders(_Job(_slow), [Slot(2, 64, 0, 1, 0)], 1)
    try:
        feeders.start(range(4), None)
        (process,) = feeders._processes
        os.kill(process.pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerError, match=r"killed by signal 9"):
            feeders.next()
        assert time.monotonic() - start < 10
        assert not feeders.alive
    finally:
        feeders.close()


@pytest.mark.timeout(60)
def test_a_feeder_that_died_ahead_of_the_consumer_is_a_worker_error_not_a_broken_pipe() -> None:
    feeders = Feeders(_Job(), [Slot(2, 64, 0, 1, 0) for _ in range(3)], 1)
    try:
        feeders.start(range(10), None)
        _, index, _ = feeders.next()
        time.sleep(0.5)  # the worker answers the other slots' batches, then waits for requests
        (process,) = feeders._processes
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        with pytest.raises(WorkerError, match=r"killed by signal 9"):
            feeders.release(index)  # a request sent to the dead worker
            while True:
                feeders.release(feeders.next()[1])
    finally:
        feeders.close()


def test_a_row_s_outlier_is_given_back_by_whichever_process_fills_the_row_next() -> None:
    import multiprocessing

    slot = Slot(2, 4 << 20, 0, 1, 0)
    child = multiprocessing.get_context("fork").Process(target=_fill_outlier, args=(slot,))
    child.start()
    child.join()
    assert child.exitcode == 0
    slot.layout(np.full((2, 1), 50_000 + 512, np.int64))  # here, after another process wrote 3 MB
    assert slot.released >= 2 * ((3 << 20) - (256 << 10))


def _fill_outlier(slot: Slot) -> None:
    slot.layout(np.full((2, 1), (3 << 20) + 512, np.int64))
    slot.rows[:, : 3 << 20] = 1


def test_a_batch_read_into_a_slot_has_every_member_in_its_row(tmp_path) -> None:
    manifest = clean_shards(tmp_path / "set", shards=2, per_shard=6)
    with ByteSource(manifest) as single, ByteSource(manifest) as batched:
        shards = np.array([1, 0, 1, 0, 0, 1, 1])
        samples = np.array([5, 0, 2, 3, 3, 0, 4])
        slot = Slot(8, batched.largest_member("jpg"), batched.largest_member("cls"), 3)
        slot.rows[:] = 0xAB  # whatever an earlier batch left
        got = batched.read_batch(shards, samples, ("jpg", "cls"), layout=slot.layout)
        assert not got.slow.any() and got.buf is slot.buf
        for i, (shard, sample) in enumerate(zip(shards.tolist(), samples.tolist(), strict=True)):
            one = single.read(shard, sample, ("jpg", "cls"))
            size = len(one.members["jpg"])
            assert got.size[i, 0] == size
            assert slot.rows[i, :size].tobytes() == one.members["jpg"]  # at the row's start
            start, length = got.start[i, 1], got.size[i, 1]
            assert got.buf[start : start + length].tobytes() == one.members["cls"]


def test_a_row_that_held_an_outlier_gives_its_pages_back() -> None:
    slot = Slot(4, 4 << 20, 0, 1, 0)
    big = np.full((4, 1), (3 << 20) + 512, np.int64)
    slot.layout(big)
    slot.rows[:, : 3 << 20] = 7
    assert slot.released == 0
    small = np.full((4, 1), 70_000 + 512, np.int64)
    slot.layout(small)
    assert slot.released >= 4 * ((3 << 20) - (256 << 10))
    assert (slot.rows[:, :70_000] == 7).all()  # what the row holds now is kept
    assert (slot.rows[:, 1 << 20 : (3 << 20) - 8192] == 0).all()  # the outlier's pages are fresh again
    slot.layout(small)
    assert slot.released >= 4 * ((3 << 20) - (256 << 10))  # nothing more to give back


def test_a_jpeg_too_large_for_its_slot_is_refused() -> None:
    slot = Slot(2, 1000, 0, 1, 0)
    with pytest.raises(ValueError, match="larger than the index said"):
        slot.layout(np.array([[2000 + 512], [10]]))
    with pytest.raises(ValueError, match="do not fit"):
        slot.put(0, np.zeros(5000, np.uint8))


def test_dali_decodes_a_row_as_its_jpeg_alone_whatever_follows_it(tmp_path) -> None:
    """The CPU graph hands DALI whole rows: libjpeg-turbo must stop at the end-of-image marker,
    for the full decode and for the crop-box decode alike."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    from fastssl.data.faults import small_jpeg

    jpegs = [np.frombuffer(small_jpeg(40 + 9 * s, 30 + 5 * s, seed=s), np.uint8) for s in range(6)]
    rows = np.random.default_rng(0).integers(0, 256, (6, max(map(len, jpegs)) + 700), dtype=np.uint8)
    rows[1::2, max(map(len, jpegs)) :] = 0
    for i, jpeg in enumerate(jpegs):
        rows[i, : len(jpeg)] = jpeg
    anchors = np.tile(np.float32([3, 2]), (6, 1))
    shapes = np.tile(np.float32([20, 16]), (6, 1))

    @pipeline_def(batch_size=6, num_threads=1, device_id=None)
    def graph():  # noqa: ANN202
        exact, padded = fn.external_source(name="exact"), fn.external_source(name="padded")
        anchor, shape = fn.external_source(name="anchor"), fn.external_source(name="shape")
        cut = {"normalized_anchor": False, "normalized_shape": False}
        return (
            fn.decoders.image(exact, output_type=types.RGB),
            fn.decoders.image(padded, output_type=types.RGB),
            fn.decoders.image_slice(exact, anchor, shape, output_type=types.RGB, **cut),
            fn.decoders.image_slice(padded, anchor, shape, output_type=types.RGB, **cut),
        )

    pipe = graph()
    pipe.build()
    pipe.feed_input("exact", list(jpegs))
    pipe.feed_input("padded", rows)
    pipe.feed_input("anchor", anchors)
    pipe.feed_input("shape", shapes)
    full, full_padded, box, box_padded = pipe.run()
    for i in range(6):
        assert np.array_equal(np.array(full[i]), np.array(full_padded[i]))
        assert np.array_equal(np.array(box[i]), np.array(box_padded[i]))
        assert np.array(box[i]).shape == (16, 20, 3)


def _epoch(loader) -> list[tuple[list[str], list[bool], list]]:
    return [(b["key"], b["valid"].tolist(), [v.clone() for v in b["views"]]) for b in loader]


def test_several_feeders_give_the_batches_one_gives_skips_and_resume_included(tmp_path) -> None:
    pytest.importorskip("nvidia.dali")
    import torch

    from fastssl.data.faults import plant_in_place
    from fastssl.loader import SSLLoader
    from fastssl.recipes import SimCLR

    clean_shards(tmp_path / "set", shards=3, per_shard=12)
    planted = plant_in_place(tmp_path / "set", per_kind=1, seed=3)
    recipe = SimCLR(size=24)

    def loader(workers: int) -> SSLLoader:
        return SSLLoader(
            tmp_path / "set", recipe, 5, backend="dali", device="cpu", num_threads=1, on_error="skip",
            host_workers=workers,
        )  # fmt: skip

    with loader(1) as one, loader(3) as three:
        expected, got = _epoch(one), _epoch(three)
        assert sorted(one.skipped, key=str) == sorted(three.skipped, key=str)
        assert len(one.skipped) == len(planted)
        three.set_epoch(0)
        it = iter(three)
        for _ in range(2):
            next(it)
        state = three.state_dict()
    assert [(k, v) for k, v, _ in got] == [(k, v) for k, v, _ in expected]
    for (_, _, a), (_, _, b) in zip(got, expected, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with loader(2) as resumed:
        resumed.load_state_dict(state)
        rest = _epoch(resumed)
    assert [k for k, _, _ in rest] == [k for k, _, _ in expected[2:]]


def test_host_workers_must_be_positive(tmp_path) -> None:
    from fastssl.loader import SSLLoader

    clean_shards(tmp_path / "set", shards=2, per_shard=4)
    with pytest.raises(ValueError, match="host_workers must be at least 1"):
        SSLLoader(tmp_path / "set", "simclr", 2, backend="kornia", device="cpu", host_workers=0)


def test_gpu_decoder_settings_are_checked() -> None:
    pytest.importorskip("nvidia.dali")
    from fastssl.pipelines.dali_views import GpuDecoder

    assert GpuDecoder().hw_decoder_load == 0.65  # DALI's default, written out
    with pytest.raises(ValueError, match="hw_decoder_load must lie in"):
        GpuDecoder(hw_decoder_load=1.5)
    with pytest.raises(ValueError, match="device_memory_padding must be non-negative"):
        GpuDecoder(device_memory_padding=-1)


def test_an_epoch_abandoned_midway_keeps_the_feeders_and_the_next_one_is_whole(tmp_path) -> None:
    pytest.importorskip("nvidia.dali")
    from fastssl.loader import SSLLoader
    from fastssl.recipes import SimCLR

    clean_shards(tmp_path / "set", shards=3, per_shard=10)
    options = dict(backend="dali", device="cpu", num_threads=1, host_workers=2)
    with SSLLoader(tmp_path / "set", SimCLR(size=24), 4, **options) as fresh:
        expected = _epoch(fresh)
    with SSLLoader(tmp_path / "set", SimCLR(size=24), 4, **options) as loader:
        batches = iter(loader)
        next(batches)
        next(batches)
        pids = [p.pid for p in loader._backend._feeders._processes]
        del batches  # abandoned with batches still being built ahead
        loader.set_epoch(0)
        got = _epoch(loader)
        assert [p.pid for p in loader._backend._feeders._processes] == pids
    assert [(k, v) for k, v, _ in got] == [(k, v) for k, v, _ in expected]

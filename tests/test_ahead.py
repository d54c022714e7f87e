"""RunAhead: a source iterated in its own thread, in order, bounded, stopped early on request."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastssl.host.ahead import RunAhead


def _wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@settings(max_examples=25, deadline=None)
@given(items=st.lists(st.integers(), max_size=40), depth=st.integers(1, 5))
def test_items_come_out_in_order_and_all_of_them(items: list[int], depth: int) -> None:
    assert list(RunAhead(iter(items), depth=depth)) == items


def test_the_source_runs_at_most_depth_items_ahead() -> None:
    made: list[int] = []

    def source():
        for i in range(100):
            made.append(i)
            yield i

    ahead = RunAhead(source(), depth=3)
    try:
        _wait_for(lambda: len(made) == 4)  # three queued, the fourth waiting for room
        time.sleep(0.2)
        assert len(made) == 4
        assert next(ahead) == 0
        _wait_for(lambda: len(made) == 5)
        time.sleep(0.2)
        assert len(made) == 5
    finally:
        ahead.close()


def test_an_error_comes_after_the_items_before_it_and_ends_the_iteration() -> None:
    def source():
        yield 1
        yield 2
        raise KeyError("shard 3")

    ahead = RunAhead(source(), depth=1)
    assert next(ahead) == 1
    assert next(ahead) == 2
    with pytest.raises(KeyError, match="shard 3"):
        next(ahead)
    with pytest.raises(StopIteration):
        next(ahead)


def test_close_stops_a_blocked_source_and_closes_it_in_its_own_thread() -> None:
    closed_in: list[str] = []
    made: list[int] = []

    def source():
        try:
            for i in range(1000):
                made.append(i)
                yield i
        finally:
            closed_in.append(threading.current_thread().name)

    ahead = RunAhead(source(), depth=2, name="ahead-under-test")
    assert next(ahead) == 0
    _wait_for(lambda: len(made) == 4)  # blocked on the full queue
    ahead.close()
    assert closed_in == ["ahead-under-test"]
    assert len(made) == 4  # nothing made after the stop
    with pytest.raises(StopIteration):
        next(ahead)
    assert not any(t.name == "ahead-under-test" for t in threading.enumerate())


def test_leaving_a_for_loop_early_then_closing_leaves_no_thread() -> None:
    with RunAhead(iter(range(50)), depth=2, name="ahead-loop") as ahead:
        for value in ahead:
            if value == 3:
                break
    assert not any(t.name == "ahead-loop" for t in threading.enumerate())


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        RunAhead(iter(()), depth=0)

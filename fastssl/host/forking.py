"""Forking worker processes from a process that holds DALI pipelines and torch threads."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_frozen() -> Iterator[None]:
    """Fork inside this block so that children leave the parent's garbage alone.

    Garbage the parent has not collected yet (a closed loader's DALI pipeline in a reference cycle)
    would be collected in a child, whose copy has none of the pipeline's threads: its destructor
    then waits for them for ever (seen in the fault suite). Frozen objects are never collected, so
    the children leave them be; the parent unfreezes and collects as usual afterwards. A caller
    that froze objects itself keeps them frozen: its garbage is collected here, before the fork.
    """
    ours = gc.get_freeze_count() == 0
    if ours:
        gc.freeze()
    else:
        gc.collect()
    try:
        yield
    finally:
        if ours:
            gc.unfreeze()

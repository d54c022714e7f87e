"""Data layer: shard writing, DALI-compatible indexes, manifests, the epoch plan and byte sources.

Nothing here decodes for training or augments; pipelines do that. Names are imported on first
use, so that a decode worker importing `fastssl.data.images` does not pay for webdataset/torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ShardIndex": "index",
    "build_index": "index",
    "read_index": "index",
    "write_index": "index",
    "Manifest": "manifest",
    "ShardInfo": "manifest",
    "EpochPlan": "plan",
    "PlanBatch": "plan",
    "PlanState": "plan",
    "ReaderPlan": "plan",
    "mixing_ratio": "plan",
    "reader_plan": "plan",
    "ByteSource": "source",
    "SampleBytes": "source",
    "WriteReport": "writer",
    "write_shards": "writer",
}
__all__ = [
    "ByteSource", "EpochPlan", "Manifest", "PlanBatch", "PlanState", "ReaderPlan", "SampleBytes",
    "ShardIndex", "ShardInfo", "WriteReport", "build_index", "mixing_ratio", "read_index",
    "reader_plan", "write_index", "write_shards",
]  # fmt: skip

if TYPE_CHECKING:
    from fastssl.data.index import ShardIndex, build_index, read_index, write_index
    from fastssl.data.manifest import Manifest, ShardInfo
    from fastssl.data.plan import EpochPlan, PlanBatch, PlanState, ReaderPlan, mixing_ratio, reader_plan
    from fastssl.data.source import ByteSource, SampleBytes
    from fastssl.data.writer import WriteReport, write_shards


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastssl.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fastssl.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value

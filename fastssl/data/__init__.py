"""Data layer: shard writing, DALI-compatible indexes, manifests, the epoch plan and byte sources.

Nothing here decodes for training or augments; pipelines do that.
"""

from fastssl.data.index import ShardIndex, build_index, read_index, write_index
from fastssl.data.manifest import Manifest, ShardInfo
from fastssl.data.plan import (
    EpochPlan,
    PlanBatch,
    PlanState,
    ReaderPlan,
    mixing_ratio,
    reader_plan,
)
from fastssl.data.source import ByteSource, SampleBytes
from fastssl.data.writer import WriteReport, write_shards

__all__ = [
    "ByteSource",
    "EpochPlan",
    "Manifest",
    "PlanBatch",
    "PlanState",
    "ReaderPlan",
    "SampleBytes",
    "ShardIndex",
    "ShardInfo",
    "WriteReport",
    "build_index",
    "mixing_ratio",
    "read_index",
    "reader_plan",
    "write_index",
    "write_shards",
]

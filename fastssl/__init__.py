"""fastssl: a data engine for self-supervised image pretraining.

The data layer (`fastssl.data`) writes WebDataset shards with DALI-compatible
indexes and plans exact, resumable epochs across ranks and workers.
"""

from fastssl.errors import DataError, IndexMismatchError, MissingMemberError, ShardError

__version__ = "0.1.0"

__all__ = ["DataError", "IndexMismatchError", "MissingMemberError", "ShardError", "__version__"]

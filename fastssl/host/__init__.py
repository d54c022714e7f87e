"""The host side of the loader: per batch, everything but pixels (bytes, header facts, labels, the
counter-hash parameters of every view, dense inputs for a backend), built ahead of the consumer."""

from fastssl.host.params import sample_params, uniforms
from fastssl.host.reader import BatchReader, HostBatch

__all__ = ["BatchReader", "HostBatch", "sample_params", "uniforms"]

"""DeepCluster's epoch (Caron et al. 2018, `facebookresearch/deepcluster`): features of the whole
set from an un-augmented centre view, PCA-256 whitening and L2 normalisation, k-means (empty
clusters re-split), a pseudo-label per sample, and a draw uniform over the clusters that the
epoch plan reads (`SSLLoader.set_draw`).

That draw repeats and omits samples by design: equal shares per cluster, drawn from
(seed, epoch) alone. fastssl's guarantee in this mode is a balanced, deterministic, resumable
epoch with the same batch count on every rank, and `draw_coverage` counts what was drawn twice
or not at all, for the run's metrics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastssl.train.evaluate import extract_features
from fastssl.train.pseudo_label import cluster_features

_DRAW_STREAM = 0xDC1  # the draw's random stream, apart from every view parameter's


def uniform_draw(assignments: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Global ids of an epoch's draw (sorted), as many as there are clustered samples (label >= 0),
    an equal share from every populated cluster (the remainder to a random few clusters). A
    cluster with at least its share gives distinct members; a smaller one gives every member,
    then the rest of its share drawn with replacement (DeepCluster's `UnifLabelSampler` draws all
    of a small cluster's share with replacement; this omits fewer samples)."""
    assignments = np.asarray(assignments, dtype=np.int64)
    clustered = np.flatnonzero(assignments >= 0)
    if not len(clustered):
        raise ValueError("no sample has a cluster to draw from")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([_DRAW_STREAM, seed, epoch])))
    labels = assignments[clustered]
    order = np.argsort(labels, kind="stable")
    clusters, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    share, extra = divmod(len(clustered), len(clusters))
    shares = np.full(len(clusters), share, dtype=np.int64)
    shares[rng.permutation(len(clusters))[:extra]] += 1
    drawn = []
    for start, count, want in zip(starts.tolist(), counts.tolist(), shares.tolist(), strict=True):
        members = clustered[order[start : start + count]]
        if count >= want:
            drawn.append(members[rng.permutation(count)[:want]])
        else:
            drawn.append(np.concatenate([members, members[rng.integers(0, count, want - count)]]))
    return np.sort(np.concatenate(drawn))


def draw_coverage(draw: np.ndarray, assignments: np.ndarray) -> dict[str, int]:
    """How many clustered samples the draw names more than once (`repeated`: the extra reads) and
    not at all (`omitted`)."""
    clustered = int((np.asarray(assignments) >= 0).sum())
    distinct = len(np.unique(draw))
    return {
        "drawn": len(draw),
        "distinct": distinct,
        "repeated": len(draw) - distinct,
        "omitted": clustered - distinct,
    }


def cluster_epoch(
    backbone: torch.nn.Module,
    data: Any,
    keys: list[str],
    *,
    clusters: int,
    size: int,
    seed: int,
    epoch: int,
    pca_dim: int = 256,
    niter: int = 20,
    backend: str = "auto",
    device: torch.device | str = "cpu",
    num_threads: int | None = None,
    input: str = "rgb",
    loader_backend: str = "auto",
) -> tuple[np.ndarray, dict[str, Any]]:
    """The epoch's pseudo-label of every sample by global id (-1 for a sample skipped as bad), and
    the clustering's facts. `keys` are the shard set's keys in global-id order; k-means gets a
    new seed every epoch, as DeepCluster's."""
    features, truth, found = extract_features(
        backbone, data, size=size, device=device, num_threads=num_threads, input=input, need_labels=False,
        backend=loader_backend,
    )  # fmt: skip
    where = {key: i for i, key in enumerate(keys)}
    ids = np.array([where[k] for k in found], dtype=np.int64)
    labels, facts = cluster_features(
        features, clusters, pca_dim=pca_dim, niter=niter, seed=seed * 100_003 + epoch, backend=backend,
        truth=truth,
    )  # fmt: skip
    assignments = np.full(len(keys), -1, dtype=np.int64)
    assignments[ids] = labels.numpy()
    return assignments, facts

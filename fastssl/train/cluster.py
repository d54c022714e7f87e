"""Clustering features into pseudo-labels, as DeepCluster (Caron et al. 2018) and knowledge
transfer by clustering (Noroozi et al. 2018) do: PCA whitening and L2 normalisation, then k-means
with empty clusters re-split, then each sample's nearest centroid.

k-means runs in faiss where it is installed (`pip install 'fastssl-engine[cluster]'`, faiss-gpu
for CUDA tensors), else in torch on the features' device. The torch implementation is written here
because torch has no k-means; it follows faiss's Lloyd iterations, with DeepCluster's repair of an
empty cluster (a perturbed copy of a populated centroid, which then shares its points).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Backend = Literal["auto", "faiss", "torch"]
_CHUNK_ELEMENTS = 1 << 24  # distances computed per chunk of rows: at most 64 MiB of float32
_SPLIT_EPS = 1e-3  # DeepCluster's (and faiss's) relative perturbation of a split centroid
_REPAIR_ROUNDS = 10  # assignment rounds after the last iteration while a cluster is empty


@dataclass(frozen=True)
class Clusters:
    """A k-means result: centroids (k, d), each point's cluster (N,) int64 and squared distance to
    its centroid, how many empty clusters were re-split along the way (`resplits`), how many stayed
    empty (only when there are fewer distinct points than clusters) and which implementation ran."""

    centroids: torch.Tensor
    assignments: torch.Tensor
    distances: torch.Tensor
    resplits: int
    empty: int
    backend: str

    def sizes(self) -> torch.Tensor:
        """Points per cluster, (k,)."""
        return torch.bincount(self.assignments, minlength=len(self.centroids))


def has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def pca_whitening(
    features: torch.Tensor, dim: int = 256, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (d,), projection (d, dim)) that centre features, project them on their `dim` leading
    principal axes and scale each axis to unit variance: faiss's `PCAMatrix(d, dim,
    eigen_power=-0.5)`, DeepCluster's. `dim` is capped at the feature width and at N - 1."""
    x = features.float()
    n, d = x.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 samples, got {n}")
    dim = min(dim, d, n - 1)
    mean = x.mean(dim=0)
    centred = x - mean
    covariance = (centred.T @ centred).double() / (n - 1)
    values, vectors = torch.linalg.eigh(covariance)  # ascending
    values, vectors = values.flip(0)[:dim], vectors.flip(1)[:, :dim]
    return mean, (vectors / (values.clamp_min(0) + eps).sqrt()).to(x.dtype)


def pca_whiten(features: torch.Tensor, dim: int = 256, eps: float = 1e-5) -> torch.Tensor:
    """Features PCA-whitened to `dim` dimensions (`pca_whitening`), then every row L2-normalised:
    DeepCluster's preprocessing before k-means."""
    mean, projection = pca_whitening(features, dim, eps)
    return F.normalize((features.float() - mean) @ projection, dim=1)


def kmeans(x: torch.Tensor, k: int, *, niter: int = 20, seed: int = 0, backend: Backend = "auto") -> Clusters:
    """k-means of the rows of `x` into `k` clusters, `niter` Lloyd iterations from `k` distinct
    points drawn by `seed`: deterministic for the same input, seed and backend."""
    if x.ndim != 2:
        raise ValueError(f"kmeans takes (N, d) features, got shape {tuple(x.shape)}")
    if not 1 <= k <= len(x):
        raise ValueError(f"k must lie in [1, N = {len(x)}], got {k}")
    if niter < 1:
        raise ValueError(f"niter must be at least 1, got {niter}")
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
    if backend == "faiss" and not has_faiss():
        raise ImportError("backend='faiss' needs faiss: pip install 'fastssl-engine[cluster]' (or faiss-gpu)")
    use_faiss = backend == "faiss" or (backend == "auto" and has_faiss() and x.device.type == "cpu")
    return _faiss_kmeans(x, k, niter, seed) if use_faiss else _torch_kmeans(x, k, niter, seed)


def assign(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's nearest centroid (int64) and its squared distance, computed in chunks of rows."""
    x, centroids = x.float(), centroids.to(x.device).float()
    norms = (centroids * centroids).sum(dim=1)
    rows = max(1, _CHUNK_ELEMENTS // max(1, len(centroids)))
    labels, distances = [], []
    for lo in range(0, len(x), rows):
        chunk = x[lo : lo + rows]
        d2 = (chunk * chunk).sum(dim=1, keepdim=True) - 2 * chunk @ centroids.T + norms
        best, label = d2.min(dim=1)
        labels.append(label)
        distances.append(best.clamp_min(0))
    return torch.cat(labels), torch.cat(distances)


def _torch_kmeans(x: torch.Tensor, k: int, niter: int, seed: int) -> Clusters:
    x = x.float()
    generator = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(len(x), generator=generator)[:k].to(x.device)].clone()
    resplits = 0
    for _ in range(niter):
        resplits += _update(x, centroids, assign(x, centroids)[0], generator)
    for _ in range(_REPAIR_ROUNDS):  # a split in the last iteration may leave a half without points
        labels, _ = assign(x, centroids)
        if (torch.bincount(labels, minlength=k) > 0).all():
            break
        split = _update(x, centroids, labels, generator)
        resplits += split
        if not split:
            break
    labels, distances = assign(x, centroids)
    empty = int((torch.bincount(labels, minlength=k) == 0).sum())
    return Clusters(centroids, labels, distances, resplits, empty, "torch")


def _update(
    x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> int:
    """One Lloyd update in place: each populated centroid to its points' mean, then the empty
    ones re-split (`_split_empty`, whose count it returns)."""
    sums = torch.zeros_like(centroids).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=len(centroids))
    populated = counts > 0
    centroids[populated] = sums[populated] / counts[populated, None].to(x.dtype)
    return _split_empty(centroids, counts, generator)


def _split_empty(centroids: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> int:
    """Give every empty cluster a perturbed copy of a populated centroid, chosen with probability
    growing with its size beyond one point, the source nudged the other way (faiss's
    `split_clusters`, DeepCluster's repair): the two then share the source's points. Returns how
    many were re-split (none when no cluster holds two points)."""
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if not empty:
        return 0
    counts = counts.clone().double().cpu()
    done = 0
    for target in empty:
        weights = (counts - 1).clamp_min(0)
        if weights.sum() == 0:
            break
        source = int(torch.multinomial(weights, 1, generator=generator))
        centre = centroids[source].clone()
        sign = torch.where(torch.arange(centre.numel()) % 2 == 0, 1.0, -1.0).to(centre)
        centroids[target] = centre + _SPLIT_EPS * sign * centre.abs().clamp_min(1e-12)
        centroids[source] = centre - _SPLIT_EPS * sign * centre.abs().clamp_min(1e-12)
        counts[target] = counts[source] = counts[source] / 2
        done += 1
    return done


def _faiss_kmeans(x: torch.Tensor, k: int, niter: int, seed: int) -> Clusters:
    import faiss

    data = np.ascontiguousarray(x.detach().float().cpu().numpy())
    # DeepCluster's settings: no subsampling of the points per centroid
    model = faiss.Kmeans(
        data.shape[1], k, niter=niter, seed=seed, max_points_per_centroid=10_000_000, verbose=False
    )
    model.train(data)
    resplits = sum(int(s.get("nsplit", 0)) for s in getattr(model, "iteration_stats", []) or [])
    centroids = torch.from_numpy(model.centroids.copy())
    labels, distances = assign(torch.from_numpy(data), centroids)
    empty = int((torch.bincount(labels, minlength=k) == 0).sum())
    device = x.device
    return Clusters(centroids.to(device), labels.to(device), distances.to(device), resplits, empty, "faiss")

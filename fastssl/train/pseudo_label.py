"""Knowledge transfer by clustering (Noroozi et al. 2018): a pretrained model's features of a
shard set, PCA-whitened and clustered by k-means, become a pseudo-label per sample, written as a
label sidecar (`fastssl.data.labels`) that `SSLLoader(labels=...)` and `fastssl pretrain --method
supervised --labels` train a new model on. The paper clusters with k = 2000."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastssl.data.labels import write_label_file
from fastssl.train.cluster import Backend, kmeans, pca_whiten
from fastssl.train.evaluate import extract_features, load_method


def cluster_features(
    features: torch.Tensor, clusters: int, *, pca_dim: int = 256, niter: int = 20, seed: int = 0,
    backend: Backend = "auto", truth: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:  # fmt: skip
    """Each row's cluster (int64, N) after PCA whitening to `pca_dim`, L2 normalisation and
    k-means, and what the clustering did (backend, re-split and empty clusters, cluster sizes,
    and `nmi`, the normalised mutual information with `truth` when every row has a label)."""
    if clusters > len(features):
        raise ValueError(f"cannot make {clusters} clusters of {len(features)} samples")
    result = kmeans(pca_whiten(features, pca_dim), clusters, niter=niter, seed=seed, backend=backend)
    sizes = result.sizes().cpu().numpy()
    facts = {
        "backend": result.backend,
        "resplits": result.resplits,
        "empty": result.empty,
        "sizes": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())},
    }
    labels = result.assignments.cpu()
    if truth is not None and len(truth) and bool((truth >= 0).all()):
        try:
            from sklearn.metrics import normalized_mutual_info_score
        except ImportError:  # scikit-learn comes with the dev extras only
            pass
        else:
            facts["nmi"] = float(normalized_mutual_info_score(truth.numpy(), labels.numpy()))
    return labels, facts


def pseudo_label(
    run: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    clusters: int = 2000,
    pca_dim: int = 256,
    niter: int = 20,
    seed: int = 0,
    backend: Backend = "auto",
    device: str = "cpu",
    num_threads: int | None = None,
    subset: Any = None,
) -> dict[str, Any]:
    """Cluster the trained backbone of `run` on the centre views of `data` (the run's input and
    size) into `clusters` pseudo-classes and write them to `out`; returns the facts of it, with
    the normalised mutual information against the shards' own labels when they have them."""
    method, config = load_method(run)
    started = time.perf_counter()
    features, truth, keys = extract_features(
        method.backbone, str(data), size=config["size"], device=device, input=method.probe_input,
        num_threads=num_threads, subset=subset, need_labels=False,
    )  # fmt: skip
    labels, facts = cluster_features(
        features, clusters, pca_dim=pca_dim, niter=niter, seed=seed, backend=backend, truth=truth
    )
    facts.update(
        samples=len(keys), clusters=clusters, pca_dim=min(pca_dim, features.shape[1]), niter=niter, seed=seed,
        run=str(run), data=str(data), seconds=round(time.perf_counter() - started, 2),
    )  # fmt: skip
    path = write_label_file(out, keys, labels.numpy(), classes=clusters, **facts)
    return {**facts, "out": str(Path(path))}

"""Clustering into pseudo-labels: PCA whitening, k-means in faiss and in torch (clusters found,
empty ones re-split, deterministic), and knowledge transfer by clustering end to end: a SimCLR
run's clusters of Fashion-MNIST train a new model that beats random initialisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from fastssl.cli import main
from fastssl.data import fashion_mnist
from fastssl.data.labels import read_label_file
from fastssl.train.cluster import assign, has_faiss, kmeans, pca_whiten, pca_whitening

BACKENDS = [
    pytest.param("faiss", marks=pytest.mark.skipif(not has_faiss(), reason="faiss-cpu not installed")),
    "torch",
]


def _blobs(n: int = 3000, k: int = 4, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`k` Gaussian blobs of unit variance whose centres lie 14 standard deviations apart."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(k, d) * 10
    truth = torch.randint(0, k, (n,), generator=g)
    return centres[truth] + torch.randn(n, d, generator=g), truth


def test_whitening_decorrelates_to_unit_variance() -> None:
    g = torch.Generator().manual_seed(1)
    mixing = torch.randn(6, 6, generator=g) * torch.tensor([100.0, 10, 1, 1, 0.1, 0.01])
    x = torch.randn(4000, 6, generator=g) @ mixing + 5
    mean, projection = pca_whitening(x, dim=4)
    assert projection.shape == (6, 4)
    covariance = torch.cov(((x - mean) @ projection).T)
    assert torch.allclose(covariance, torch.eye(4), atol=2e-2)
    assert torch.allclose(pca_whiten(x, 4).norm(dim=1), torch.ones(len(x)), atol=1e-5)
    assert pca_whitening(x[:3], dim=256)[1].shape == (6, 2)  # capped at N - 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_finds_separated_clusters(backend: str) -> None:
    x, truth = _blobs()
    runs = [kmeans(x, 4, seed=seed, backend=backend, niter=30) for seed in range(8)]
    best = min(runs, key=lambda c: float(c.distances.mean()))  # as faiss's nredo keeps the best
    assert best.backend == backend and best.empty == 0
    assert adjusted_rand_score(truth.numpy(), best.assignments.numpy()) > 0.99
    for run in runs:  # every run ends at a fixed point of Lloyd's iteration
        labels, distances = assign(x, run.centroids)
        assert torch.equal(labels, run.assignments)
        assert torch.allclose(distances, ((x - run.centroids[labels]) ** 2).sum(dim=1), rtol=1e-3, atol=1e-3)
        means = torch.zeros_like(run.centroids).index_add_(0, labels, x) / run.sizes()[:, None]
        assert torch.allclose(run.centroids, means, atol=1e-3)
        assert run.sizes().sum() == len(x)


def test_torch_kmeans_is_deterministic_for_a_seed() -> None:
    x, _ = _blobs(n=800)
    a, b = kmeans(x, 20, seed=3, backend="torch"), kmeans(x, 20, seed=3, backend="torch")
    assert torch.equal(a.assignments, b.assignments) and torch.equal(a.centroids, b.centroids)
    assert not torch.equal(a.assignments, kmeans(x, 20, seed=4, backend="torch").assignments)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_clusters_are_re_split(backend: str) -> None:
    # 12 distinct points repeated: drawing the initial centroids from 240 rows repeats some, and a
    # repeated centroid's twin is left without points until it is split off a populated cluster
    points = torch.randn(12, 5, generator=torch.Generator().manual_seed(2)) * 10
    x = points.repeat(20, 1)
    result = kmeans(x, 12, seed=0, backend=backend, niter=25)
    assert result.resplits > 0
    assert result.empty == 0 and (result.sizes() == 20).all()
    # fewer distinct points than clusters: what cannot be filled is reported, not hidden
    short = kmeans(points.repeat(2, 1), 14, backend=backend)
    assert short.empty >= 2 and short.empty == int((short.sizes() == 0).sum())


def test_bad_arguments_are_refused() -> None:
    x, _ = _blobs(n=50)
    with pytest.raises(ValueError, match="k must lie in"):
        kmeans(x, 51)
    with pytest.raises(ValueError, match="backend must be"):
        kmeans(x, 3, backend="sklearn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        kmeans(x[0], 3)


FASHION = pytest.mark.skipif(
    not fashion_mnist.available(),
    reason="Fashion-MNIST absent: apt-get install dataset-fashion-mnist (.ci/run does it where it can)",
)


@FASHION
def test_a_model_trained_on_pseudo_labels_beats_random_init(tmp_path: Path, capsys) -> None:
    """Noroozi et al.'s chain on 2,000 Fashion-MNIST images: SimCLR, its features clustered into 50
    pseudo-classes by `fastssl pseudo-label`, a fresh small CNN trained on them by `fastssl
    pretrain --method supervised --labels`, both probed on 1,000 test images."""
    from tests.learning import COMMON, baseline_scores, pretrain_variant, scores

    data = fashion_mnist.write_fashion_mnist(tmp_path / "fm", limit={"train": 2000, "test": 1000}, workers=1)
    run = pretrain_variant("simclr", data, tmp_path / "simclr")
    labels = tmp_path / "pseudo.tsv"
    assert (
        main(
            ["pseudo-label", str(run), "--data", str(data["train"]), "--clusters", "50", "--out", str(labels)]
        )
        == 0
    )
    said = capsys.readouterr().out
    assert "2000 samples in 50 clusters" in said and "NMI with the shards' labels" in said
    file = read_label_file(labels)
    assert len(file.keys) == 2000 and file.classes == 50 and len(np.unique(file.labels)) == 50
    assert file.meta["nmi"] > 0.3  # the clusters follow the garment classes, far from chance (~0.03)
    student = tmp_path / "supervised"
    argv = [
        "pretrain", str(data["train"]), "--out", str(student), "--method", "supervised",
        "--labels", str(labels), "--backbone", COMMON["backbone"], "--width", str(COMMON["width"]),
        "--batch-size", str(COMMON["batch_size"]), "--size", str(COMMON["size"]), "--lr", str(COMMON["lr"]),
        "--workers", "2", "--epochs", "6",
        "--recipe-option", "scale=(0.3, 1.0)", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    got, random_init = scores(student, data), baseline_scores(data)
    print(f"pseudo-label chain {got}, random init {random_init}")
    assert got["linear"] > random_init["linear"] + 0.02, (got, random_init)

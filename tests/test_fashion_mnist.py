"""Pretraining learns on real labelled images: SimCLR on Fashion-MNIST (Debian's
dataset-fashion-mnist) beats the same backbone at random initialisation under both probes."""

from __future__ import annotations

import pytest
import torch

from fastssl.data import fashion_mnist
from fastssl.train import PretrainConfig, build_backbone, evaluate, load_backbone, pretrain

pytestmark = pytest.mark.skipif(
    not fashion_mnist.available(),
    reason="Fashion-MNIST absent: apt-get install dataset-fashion-mnist (.ci/run does it where it can)",
)

# Fashion-MNIST is 28 px grayscale: no blur or hue; crops keep at least 30% of the image
RECIPE = {"scale": (0.3, 1.0), "p_blur": 0.0, "jitter": (0.4, 0.4, 0.0, 0.0)}


def test_reader_gives_the_published_shapes_and_classes():
    images, labels = fashion_mnist.load_split("test")
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert sorted(set(labels.tolist())) == list(range(10)) and (labels == 0).sum() == 1000


def test_simclr_beats_random_init_on_fashion_mnist(tmp_path):
    data = fashion_mnist.write_fashion_mnist(tmp_path / "fm", limit={"train": 6000, "test": 2000}, workers=1)
    config = PretrainConfig(
        data=str(data["train"]), out=str(tmp_path / "run"), method="simclr", backbone="small_cnn", width=32,
        epochs=10, batch_size=256, size=28, lr=0.3, num_threads=2, progress=False,
        method_options={"temperature": 0.2}, recipe_options=RECIPE,
    )  # fmt: skip
    pretrain(config)
    trained, _ = load_backbone(tmp_path / "run")
    torch.manual_seed(config.seed)  # the same initial weights the run started from
    untrained, _ = build_backbone("small_cnn", width=32)
    kwargs = dict(size=28, test_data=str(data["test"]))
    learned, baseline = (
        evaluate(trained, str(data["train"]), **kwargs),
        evaluate(untrained, str(data["train"]), **kwargs),
    )
    print(f"Fashion-MNIST 6000/2000: trained {learned}, random init {baseline}")
    assert learned["linear"] > baseline["linear"] + 0.02
    assert learned["knn"] > baseline["knn"] + 0.04

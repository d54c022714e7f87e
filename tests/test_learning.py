"""Pretraining learns on real labelled images: each method's multi-crop variant, two-crop SimCLR,
context prediction and CPC on Fashion-MNIST (Debian's dataset-fashion-mnist) beat the same small
CNN at random initialisation by the margin its variant states (`tests/learning.py`: 4 points kNN
or 2 points linear probe). One data set and one random-init baseline serve every test; the other
two-crop versions and the equal-time comparison come from benchmarks/bench_learning.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastssl.data import fashion_mnist
from tests.learning import (
    TESTED,
    VARIANTS,
    baseline_scores,
    colorization_scores,
    demo_data,
    pretrain_variant,
    scores,
    superres_scores,
)

pytestmark = pytest.mark.skipif(
    not fashion_mnist.available(),
    reason="Fashion-MNIST absent: apt-get install dataset-fashion-mnist (.ci/run does it where it can)",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("learning")
    return fashion_mnist.write_fashion_mnist(root / "fm", limit={"train": 2000, "test": 1000}, workers=1)


@pytest.mark.parametrize("name", TESTED)
def test_pretraining_beats_random_init(data, tmp_path, name) -> None:
    baseline = baseline_scores(data)
    learned = scores(pretrain_variant(name, data, tmp_path / name), data)
    print(f"{name} on Fashion-MNIST 2000/1000: trained {learned}, random init {baseline}")
    for probe, margin in VARIANTS[name]["margin"].items():
        assert learned[probe] > baseline[probe] + margin, f"{probe}: {learned[probe]} vs {baseline[probe]}"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return demo_data(tmp_path_factory.mktemp("demo-photos"))


def test_colorization_predicts_colours_and_learns_lightness_features(photos, tmp_path) -> None:
    run = pretrain_variant("colorization", photos, tmp_path / "colorization")
    result = colorization_scores(run, photos, baseline=True)
    print(f"colorization on held-out demo photos: {result}")
    margin = VARIANTS["colorization"]["margin"]
    assert result["bin_accuracy"] > result["prior_mode_accuracy"] + margin["bin_accuracy"]
    trained, untrained = result["trained"]["linear"], result["random_init"]["linear"]
    assert trained > untrained + margin["linear"], f"linear probe: {trained} vs {untrained}"
    assert (run / "pictures" / "epoch-005.png").exists()


def test_superres_beats_bicubic_on_held_out_photos(photos, tmp_path) -> None:
    result = superres_scores(pretrain_variant("superres", photos, tmp_path / "superres"), photos)
    print(f"super-resolution x4 on held-out demo photos: {result}")
    assert result["psnr"] > result["bicubic_psnr"] + VARIANTS["superres"]["margin"]["psnr_db"]

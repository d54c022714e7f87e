"""The Fashion-MNIST reader (Debian's dataset-fashion-mnist); what pretraining learns on it is
tests/test_learning.py."""

from __future__ import annotations

import pytest

from fastssl.data import fashion_mnist

pytestmark = pytest.mark.skipif(
    not fashion_mnist.available(),
    reason="Fashion-MNIST absent: apt-get install dataset-fashion-mnist (.ci/run does it where it can)",
)


def test_reader_gives_the_published_shapes_and_classes():
    images, labels = fashion_mnist.load_split("test")
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert sorted(set(labels.tolist())) == list(range(10)) and (labels == 0).sum() == 1000

"""Shared fixtures: small image folders and shard sets built with the real writer."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from fastssl.data.faults import small_jpeg
from fastssl.data.writer import write_shards

CLASSES = ("cat", "dog", "fish")

# Property tests must not fail now and then: no wall-clock deadline (a loaded 2-core VM stalls), and
# the same examples on every run (a failure found once is found every time). Tests may still raise
# max_examples with their own @settings.
settings.register_profile("fastssl", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("fastssl")

# (backend, device) pairs every loader conformance test runs on: the CPU ones in CI, CUDA when present
BACKENDS = [
    pytest.param(("dali", "cpu"), id="dali-cpu"),
    pytest.param(("kornia", "cpu"), id="kornia-cpu"),
    pytest.param(("dali", "cuda"), id="dali-gpu", marks=pytest.mark.gpu),
    pytest.param(("kornia", "cuda"), id="kornia-gpu", marks=pytest.mark.gpu),
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `gpu` cleanly when no CUDA device is present."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def make_image_folder(root: Path, per_class: int = 5, classes: tuple[str, ...] = CLASSES) -> Path:
    """An ImageFolder tree of small valid JPEGs with distinct contents."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            data = small_jpeg(64 + 8 * i, 48 + 4 * c, seed=100 * c + i)
            (root / name / f"{name}_{i:03d}.jpg").write_bytes(data)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "src")


@pytest.fixture
def shard_dir(image_folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "shards"
    write_shards(image_folder, out, shard_size=4, workers=1, progress=False)
    return out


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """A (backend, device) pair; DALI ones skip where nvidia-dali does not import."""
    name, device = request.param
    if name == "dali":
        pytest.importorskip("nvidia.dali")
    return name, device

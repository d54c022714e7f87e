"""The demo corpus (real packaged photographs) and the demo job end to end."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from fastssl.data import fashion_mnist
from fastssl.data.demo import build_demo_corpus, source_photos
from fastssl.demo import run_demo


def test_corpus_is_imagenet_like_and_deterministic(tmp_path: Path):
    corpus = build_demo_corpus(tmp_path / "a", num_images=96, seed=5)
    build_demo_corpus(tmp_path / "b", num_images=96, seed=5)
    other = build_demo_corpus(tmp_path / "c", num_images=16, seed=6)
    files = sorted((tmp_path / "a").rglob("*.jpg"))
    assert len(files) == 96 and len(corpus.classes) == len(source_photos()) == 16
    for path in files:
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()
    first = Path("astronaut") / "astronaut_000000.jpg"
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()
    assert other.classes == corpus.classes
    shorter = np.minimum(corpus.widths, corpus.heights)
    assert shorter.min() >= 299 and shorter.max() <= 501
    assert 320 <= shorter.mean() <= 370  # ImageNet-like: mean about 400x350
    assert 370 <= np.mean(corpus.widths) <= 450
    assert 55e3 <= np.mean(corpus.file_bytes) <= 110e3
    per_class = {c: len(list((tmp_path / "a" / c).glob("*.jpg"))) for c in corpus.classes}
    assert set(per_class.values()) == {6}  # balanced labels
    modes = {Image.open(io.BytesIO(p.read_bytes())).mode for p in files}
    assert "RGB" in modes and modes <= {"RGB", "L"}


def test_demo_job_runs_end_to_end(tmp_path: Path, capsys):
    status = run_demo(tmp_path / "demo", num_images=40, workers=1, shard_size=16, progress=False)
    out = capsys.readouterr().out
    assert status == 0, out
    assert "each listed in rejects.jsonl with the expected reason: True" in out
    assert "40/40 samples, each exactly once: True" in out
    assert "colour-distorted query: pretrained" in out
    assert ("fmnist    SimCLR" if fashion_mnist.available() else "fmnist    skipped") in out
    assert sorted(p.name for p in (tmp_path / "demo" / "shards").glob("*.tar")) == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]
    # a second run reuses the corpus and rewrites the shards
    again = run_demo(
        tmp_path / "demo", num_images=40, workers=1, shard_size=16, progress=False, pretrain_epochs=0
    )
    assert again == 0
    assert "reusing" in capsys.readouterr().out

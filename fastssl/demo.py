"""The demo job behind `fastssl demo` and `make demo`: corpus -> shards -> epoch plan -> bytes back."""

from __future__ import annotations

import io
import itertools
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from fastssl.data.demo import build_demo_corpus
from fastssl.data.faults import plant_bad_files
from fastssl.data.manifest import Manifest
from fastssl.data.plan import EpochPlan, mixing_ratio
from fastssl.data.source import ByteSource
from fastssl.data.writer import REJECTS_NAME, write_shards

CORPUS_STAMP = "corpus.json"


def _corpus(out: Path, num_images: int, seed: int) -> Path:
    """Build the corpus, or reuse the one a previous run built with the same parameters."""
    corpus_dir, stamp = out / "corpus", out / CORPUS_STAMP
    params = {"num_images": num_images, "seed": seed, "generator": 1}
    if stamp.exists() and json.loads(stamp.read_text()) == params and corpus_dir.is_dir():
        print(f"corpus    reusing {corpus_dir} ({num_images} images, seed {seed})")
        return corpus_dir
    shutil.rmtree(corpus_dir, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    corpus = build_demo_corpus(corpus_dir, num_images=num_images, seed=seed)
    stamp.write_text(json.dumps(params))
    print(f"corpus    {corpus.summary()}")
    return corpus_dir


def _plan_summary(manifest: Manifest, seed: int, world_size: int, workers: int, batch: int) -> None:
    seen: Counter = Counter()
    padded = 0
    for rank in range(world_size):
        plan = EpochPlan(manifest, epoch=0, seed=seed, batch_size=batch, world_size=world_size, rank=rank)
        for worker in range(workers):
            reader = plan.for_worker(workers, worker)
            seen.update(reader.global_id[reader.valid].tolist())
            padded += int((~reader.valid).sum())
        print(
            f"plan      rank {rank}: {plan.num_batches} batches of <= {batch}, "
            f"{plan.samples_per_rank} samples, shard mixing ratio {mixing_ratio(plan.shard):.2f}"
        )
    once = len(seen) == manifest.num_samples and set(seen.values()) <= {1}
    print(
        f"plan      epoch 0 over {world_size} ranks x {workers} workers: "
        f"{len(seen)}/{manifest.num_samples} samples, each exactly once: {once}; "
        f"{padded} padded entries flagged valid=False"
    )


def _read_back(manifest: Manifest, seed: int, batch: int) -> None:
    plan = EpochPlan(manifest, epoch=0, seed=seed, batch_size=batch)
    first = plan.batch(0)
    sizes, shapes = [], Counter()
    with ByteSource(manifest) as source:
        for shard, sample in zip(first.shard, first.sample, strict=True):
            item = source.read(int(shard), int(sample))
            sizes.append(len(item.members["jpg"]))
            with Image.open(io.BytesIO(item.members["jpg"])) as image:
                shapes[image.mode] += 1
        print(
            f"read      batch 0: {len(first)} samples from {len(set(first.shard.tolist()))} "
            f"shards, e.g. {item.key!r} (class {int(item.members['cls'])}); mean "
            f"{np.mean(sizes) / 1e3:.0f} KB; modes {dict(shapes)}"
        )


def _pretrain(shard_dir: Path, out: Path, seed: int, epochs: int, loader_rate: float, progress: bool) -> bool:
    """SimCLR for a few minutes (small CNN on a CPU, ResNet-18 on a GPU), then kNN on the demo's
    labels (which photo a crop came from) against the same backbone at random initialisation."""
    import json as json_

    import torch

    from fastssl.train import PretrainConfig, build_run_backbone, evaluate, pretrain
    from fastssl.train.evaluate import centre_view, load_backbone

    cuda = torch.cuda.is_available()
    config = PretrainConfig(
        data=str(shard_dir), out=str(out / "run"), method="simclr",
        backbone="resnet18" if cuda else "small_cnn", width=32, epochs=epochs,
        batch_size=256 if cuda else 128, size=96 if cuda else 64, lr=0.3, seed=seed,
        method_options={"temperature": 0.2}, progress=progress,
    )  # fmt: skip
    start = time.perf_counter()
    summary = pretrain(config)
    seconds = time.perf_counter() - start
    records = [json_.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rate = sum(r["images_per_s"] for r in records) / len(records)
    wait = sum(r["loader_wait"] for r in records) / len(records)
    trained, _ = load_backbone(out / "run")
    untrained, _ = build_run_backbone(config)
    device = "cuda" if cuda else "cpu"
    scores = [
        evaluate(b, str(shard_dir), size=config.size, probes=("knn",), device=device)
        for b in (trained, untrained)
    ]
    print(
        f"pretrain  SimCLR, {config.backbone} at {config.size} px, {epochs} epochs = "
        f"{summary['steps']} steps in {seconds:.0f} s: training {train_rate:.0f} images/s "
        f"(the loader alone: {loader_rate:.0f}), "
        f"waiting on the loader {100 * wait:.0f}% of the time; loss {records[0]['loss']:.2f} -> "
        f"{summary['loss']:.2f}, curve {summary['loss_plot']}"
    )
    # queries seen through SimCLR's strong colour distortion (jitter of strength 1 with p 0.8,
    # grayscale with p 0.2), the gallery as it is: colour statistics no longer find the photo
    distorted = centre_view(config.size, jitter=(0.8, 0.8, 0.8, 0.2), p_jitter=0.8, p_gray=0.2)
    retrieval = [
        evaluate(b, str(shard_dir), size=config.size, probes=("knn",), device=device, test_view=distorted)
        for b in (trained, untrained)
    ]
    print(
        f"eval      kNN (k=200, cosine), {scores[0]['test_samples']} held-out crops against the other "
        f"{scores[0]['train_samples']}, labelled by the photo each crop was cut from:"
    )
    print(
        f"          as they are:            pretrained {scores[0]['knn']:.3f} vs random init "
        f"{scores[1]['knn']:.3f}  (colour statistics alone give the photo away)"
    )
    print(
        f"          colour-distorted query: pretrained {retrieval[0]['knn']:.3f} vs random init "
        f"{retrieval[1]['knn']:.3f}  (jitter and grayscale on the query: what SimCLR learned to ignore)"
    )
    return summary["steps"] > 0


def _fashion_mnist(out: Path, seed: int) -> None:
    """Where Debian's Fashion-MNIST is installed: SimCLR on 2,000 of its training images for a few
    seconds, then the linear probe on 1,000 test images against random initialisation (the
    settings of tests/learning.py; benchmarks/RESULTS.md has the longer runs)."""
    from fastssl.data import fashion_mnist

    if not fashion_mnist.available():
        print("fmnist    skipped: apt-get install dataset-fashion-mnist for a probe on real labels")
        return
    from fastssl.train import PretrainConfig, build_run_backbone, evaluate, pretrain
    from fastssl.train.evaluate import load_backbone

    data = fashion_mnist.write_fashion_mnist(
        out / "fashion-mnist", limit={"train": 2000, "test": 1000}, workers=1, progress=False
    )
    config = PretrainConfig(
        data=str(data["train"]), out=str(out / "fashion-mnist-run"), method="simclr", backbone="small_cnn",
        width=16, epochs=4, batch_size=64, size=28, lr=0.1, seed=seed, num_threads=2, progress=False,
        method_options={"temperature": 0.2},
        recipe_options={"scale": (0.3, 1.0), "p_blur": 0.0, "jitter": (0.4, 0.4, 0.0, 0.0)},
    )  # fmt: skip
    pretrain(config)
    probes = [
        evaluate(b, str(data["train"]), size=28, test_data=str(data["test"]), probes=("linear",))
        for b in (load_backbone(config.out)[0], build_run_backbone(config)[0])
    ]
    trained, untrained = probes[0]["linear"], probes[1]["linear"]
    print(
        f"fmnist    SimCLR on 2,000 Fashion-MNIST images, 4 epochs; linear probe on 1,000 test images "
        f"(10 clothing classes): pretrained {trained:.3f} vs random init {untrained:.3f}"
    )


def _views(manifest: Manifest, seed: int, batch: int, batches: int = 6) -> tuple[bool, float]:
    """SimCLR views through SSLLoader (default backend, CPU or GPU): shapes and throughput."""
    from fastssl.loader import SSLLoader
    from fastssl.recipes import SimCLR

    with SSLLoader(manifest, SimCLR(), batch, seed=seed) as loader:
        iterator = iter(loader)
        first = next(iterator)  # includes graph build / worker start-up: not timed
        start, images = time.perf_counter(), 0
        for timed in itertools.islice(iterator, batches):
            images += len(timed["key"])
        rate = images / max(time.perf_counter() - start, 1e-9)
        view = first["views"][0]
        print(
            f"views     SimCLR on {loader.backend_name}/{loader.device}: 2 views {tuple(view.shape)} "
            f"{view.dtype}, {rate:.0f} images/s over {images} images "
            f"(compare: fastssl bench {manifest.root})"
        )
        return bool(first["valid"].all()) and len(first["views"]) == 2, rate


def run_demo(
    out: str | Path = "demo_out",
    *,
    num_images: int = 2000,
    seed: int = 0,
    shard_size: int = 250,
    workers: int | None = None,
    plant_bad: bool = True,
    progress: bool = True,
    pretrain_epochs: int = 5,
) -> int:
    """Run the demo end to end; returns 0 when every step checked out."""
    out = Path(out)
    corpus_dir = _corpus(out, num_images, seed)
    # Bad files go into an existing class folder: they must be rejected, so no label changes.
    planted = plant_bad_files(corpus_dir / "astronaut") if plant_bad else {}
    if not plant_bad:
        for path in (corpus_dir / "astronaut").glob("planted_*"):
            path.unlink()
    shard_dir = out / "shards"
    report = write_shards(
        corpus_dir,
        shard_dir,
        shard_size=shard_size,
        workers=workers,
        shuffle_seed=seed,
        overwrite=True,
        progress=progress,
    )
    print(report.summary())
    rejects = [json.loads(line) for line in (shard_dir / REJECTS_NAME).read_text().splitlines()]
    listed = {Path(r["path"]).name: r["kind"] for r in rejects}
    caught = all(listed.get(name) == kind for name, kind in planted.items())
    if planted:
        print(
            f"faults    {len(planted)} planted bad files, each listed in {REJECTS_NAME} with the "
            f"expected reason: {caught}"
        )
    manifest = Manifest.load(shard_dir)
    _plan_summary(manifest, seed, world_size=2, workers=2, batch=64)
    _read_back(manifest, seed, batch=64)
    views_ok, loader_rate = _views(manifest, seed, batch=64)
    trained = (
        _pretrain(shard_dir, out, seed, pretrain_epochs, loader_rate, progress) if pretrain_epochs else True
    )
    if pretrain_epochs:
        _fashion_mnist(out, seed)
    print(
        f"next      fastssl inspect {shard_dir} --verify   |   fastssl eval {out / 'run'} --data {shard_dir}"
    )
    ok = caught and views_ok and trained and report.written == num_images and report.rejected == len(planted)
    return 0 if ok else 1

"""The learning figure: SimCLR on all 60,000 Fashion-MNIST training images, the linear probe (and
kNN) on the 10,000 test images after every `--probe-every` epochs, against the same backbone at
random initialisation and a linear classifier on the raw pixels, all probed by the same code
(`fastssl.train.evaluate`). Writes OUT/learning-figure.json and OUT/learning-figure.png.

    python benchmarks/bench_learning_figure.py --out /tmp/fmfig --epochs 16 --probe-every 2

Pretraining wall-clock is reported without the probes' time (the monitor records its own
seconds). Needs Debian's dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from fastssl.data import fashion_mnist  # noqa: E402
from fastssl.train import PretrainConfig, build_run_backbone, evaluate, pretrain  # noqa: E402
from fastssl.train.evaluate import extract_features, linear_probe_accuracy  # noqa: E402

SIZE = 28


def raw_pixels(data: dict[str, Path], threads: int) -> float:
    """The linear probe on the centre views' pixels themselves (28 x 28 x 3, standardised)."""
    flat = nn.Flatten()
    train, train_labels, _ = extract_features(flat, str(data["train"]), size=SIZE, num_threads=threads)
    test, test_labels, _ = extract_features(flat, str(data["test"]), size=SIZE, num_threads=threads)
    return linear_probe_accuracy(train, train_labels, test, test_labels)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    epochs = [p["epoch"] + 1 for p in result["probes"]]
    ax.plot(epochs, [p["linear"] for p in result["probes"]], "o-", label="SimCLR, linear probe")
    ax.plot(epochs, [p["knn"] for p in result["probes"]], "s--", label="SimCLR, kNN (k=200)")
    ax.axhline(result["random_init"]["linear"], color="gray", ls=":", label="random init, linear probe")
    ax.axhline(result["raw_pixels"], color="black", ls="-.", label="raw pixels, linear")
    ax.set_xlabel("pretraining epoch (60,000 images each)")
    ax.set_ylabel("test accuracy (10,000 images)")
    ax.set_title(
        f"Fashion-MNIST, {result['config']['backbone']} width {result['config']['width']}, 2 CPU cores"
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--probe-every", type=int, default=2)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--train", type=int, default=None, help="first N training images (all 60,000)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not fashion_mnist.available():
        print("Fashion-MNIST absent: apt-get install dataset-fashion-mnist", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    limit = {"train": args.train} if args.train else None
    data = fashion_mnist.write_fashion_mnist(
        args.out / "fm", limit=limit, workers=args.threads, progress=False
    )
    config = PretrainConfig(
        data=str(data["train"]), out=str(args.out / "simclr"), method="simclr", backbone="small_cnn",
        width=args.width, epochs=args.epochs, batch_size=args.batch_size, size=SIZE, lr=args.lr,
        num_threads=args.threads, progress=False, method_options={"temperature": args.temperature},
        recipe_options={"scale": (0.3, 1.0), "p_blur": 0.0, "jitter": (0.4, 0.4, 0.0, 0.0)},
        knn_every=args.probe_every, knn_data=str(data["train"]), knn_test_data=str(data["test"]),
        monitor_linear=True,
    )  # fmt: skip
    started = time.perf_counter()
    untrained = evaluate(
        build_run_backbone(config)[0], str(data["train"]), size=SIZE, test_data=str(data["test"])
    )
    pixels = raw_pixels(data, args.threads)
    baselines_s = time.perf_counter() - started
    print(
        f"random init: linear {untrained['linear']:.4f}, kNN {untrained['knn']:.4f}; raw pixels {pixels:.4f}"
    )
    started = time.perf_counter()
    torch.manual_seed(0)
    summary = pretrain(config)
    total_s = time.perf_counter() - started
    records = [json.loads(line) for line in (Path(config.out) / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in records if r.get("event") == "knn"]
    pretrain_s = total_s - sum(p["seconds"] for p in probes)
    # pretraining seconds when each probe's backbone was ready (steps spread evenly over the time)
    at = [round(pretrain_s * p["step"] / summary["steps"], 1) for p in probes]
    result = {
        "config": {
            k: getattr(config, k) for k in ("backbone", "width", "epochs", "batch_size", "lr", "size")
        },
        "train_images": fashion_mnist_count(data["train"]),
        "random_init": {"linear": untrained["linear"], "knn": untrained["knn"]},
        "raw_pixels": pixels,
        "probes": [
            {
                "epoch": p["epoch"],
                "linear": p["linear"],
                "knn": p["knn"],
                "pretrain_s": t,
                "probe_s": p["seconds"],
            }
            for p, t in zip(probes, at, strict=True)
        ],
        "pretrain_s": round(pretrain_s, 1),
        "probes_s": round(sum(p["seconds"] for p in probes), 1),
        "baselines_s": round(baselines_s, 1),
        "images_per_s": round(summary["steps"] * args.batch_size / pretrain_s, 1),
    }
    (args.out / "learning-figure.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "learning-figure.png")
    for p in result["probes"]:
        print(
            f"epoch {p['epoch'] + 1:3d} at {p['pretrain_s']:7.1f} s of pretraining: "
            f"linear {p['linear']:.4f}, kNN {p['knn']:.4f}"
        )
    print(
        f"pretraining {pretrain_s:.0f} s ({result['images_per_s']:.0f} images/s, "
        f"probes {result['probes_s']:.0f} s besides); random init linear {untrained['linear']:.4f}; "
        f"raw pixels {pixels:.4f}; wrote {args.out}"
    )
    return 0


def fashion_mnist_count(shards: Path) -> int:
    from fastssl.data.manifest import Manifest

    return Manifest.load(shards).num_samples


if __name__ == "__main__":
    sys.exit(main())

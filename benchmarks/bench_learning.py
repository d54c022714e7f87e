"""What each method learns on Fashion-MNIST, and in how long: kNN and linear-probe accuracy of the
pretrained small CNN against the same network at random initialisation, with the pretraining
time, for the settings `tests/test_learning.py` uses (`--preset test`) or longer ones.

    python benchmarks/bench_learning.py --train 4000 --test 1000 --epochs 6 \
        --variants simclr simclr-mc mocov2-mc mocov3-mc byol-mc dino-mc --json out.json

Colorization and super-resolution train on the demo corpus's photos (`tests/learning.demo_data`)
and report their own figures (ab-bin accuracy against the prior's most common bin and L-input
probes; PSNR against bicubic); `--prior` gives colorization the class rebalancing of a colour
prior measured on the training photos, which the test leaves out.

`--equal-time SECONDS` instead trains every variant for that long (its epochs found from a
one-epoch timing), the comparison of a multi-crop variant against its two-crop version at equal
training time that RESULTS.md reports.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastssl.data import fashion_mnist  # noqa: E402
from tests.learning import (  # noqa: E402
    VARIANTS,
    baseline_scores,
    colorization_scores,
    demo_data,
    pretrain_variant,
    scores,
    superres_scores,
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=None, help="override each variant's test epochs")
    parser.add_argument("--equal-time", type=float, default=None, help="seconds of pretraining per variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="change a PretrainConfig field of every variant (a Python literal; method_options.X and "
        "recipe_options.X change one option), e.g. --set lr=0.1 --set method_options.momentum=0.99",
    )  # fmt: skip
    parser.add_argument("--prior", action="store_true", help="colorization with class rebalancing")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not fashion_mnist.available():
        print("Fashion-MNIST absent: apt-get install dataset-fashion-mnist", file=sys.stderr)
        return 2
    changes = dict(_field_value(item) for item in args.set)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = fashion_mnist.write_fashion_mnist(
            Path(tmp) / "fm", limit={"train": args.train, "test": args.test}, workers=1
        )
        base = baseline_scores(data)
        print(f"random init: knn {base['knn']:.4f} linear {base['linear']:.4f}")
        photos = None
        for name in args.variants:
            if VARIANTS[name].get("data") == "demo":
                photos = photos or demo_data(Path(tmp) / "demo")
                results.append(_photo_variant(name, photos, Path(tmp), args, changes))
                continue
            epochs = args.epochs
            if args.equal_time is not None:
                start = time.perf_counter()
                pretrain_variant(name, data, Path(tmp) / f"{name}-timing", epochs=1, changes=changes)
                epochs = max(1, round(args.equal_time / (time.perf_counter() - start)))
            start = time.perf_counter()
            run = pretrain_variant(name, data, Path(tmp) / name, epochs=epochs, changes=changes)
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            result = scores(run, data)
            evaluation = time.perf_counter() - start
            row = {
                "variant": name, "epochs": epochs or VARIANTS[name]["epochs"],
                "pretrain_s": round(seconds, 1),
                "eval_s": round(evaluation, 1), "knn": result["knn"], "linear": result["linear"],
                "knn_gain": result["knn"] - base["knn"], "linear_gain": result["linear"] - base["linear"],
            }  # fmt: skip
            results.append(row)
            print(
                f"{name:12s} {row['epochs']:3d} epochs {seconds:6.1f} s (eval {evaluation:.1f} s): "
                f"knn {row['knn']:.4f} ({row['knn_gain']:+.4f}), "
                f"linear {row['linear']:.4f} ({row['linear_gain']:+.4f})",
                flush=True,
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"baseline": base, "results": results, "args": vars(args)}, default=str, indent=2)
        )
    return 0


def _photo_variant(name: str, photos: dict, tmp: Path, args: argparse.Namespace, changes: dict) -> dict:
    """Train and score a demo-photo variant (colorization, super-resolution)."""
    changes = dict(changes)
    if name == "colorization" and args.prior:
        from fastssl.recipes import Colorization
        from fastssl.train.colour_prior import colour_prior, write_prior

        recipe = Colorization().resized(VARIANTS[name]["size"])
        prior, _ = colour_prior(str(photos["train"]), recipe=recipe, device="cpu", num_threads=2)
        changes["method_options.prior"] = str(write_prior(prior, tmp / "prior.npy"))
    start = time.perf_counter()
    run = pretrain_variant(name, photos, tmp / name, epochs=args.epochs, changes=changes)
    seconds = time.perf_counter() - start
    row: dict = {
        "variant": name,
        "epochs": args.epochs or VARIANTS[name]["epochs"],
        "pretrain_s": round(seconds, 1),
    }
    if name == "colorization":
        result = colorization_scores(run, photos, baseline=True)
        row.update(prior=args.prior, **{k: result[k] for k in ("bin_accuracy", "prior_mode_accuracy")})
        for probe in ("knn", "linear"):
            row[probe], row[f"{probe}_random_init"] = result["trained"][probe], result["random_init"][probe]
        print(
            f"{name:12s} {row['epochs']:3d} epochs {seconds:6.1f} s{' (prior)' if args.prior else ''}: "
            f"bin accuracy {row['bin_accuracy']:.4f} (prior's mode {row['prior_mode_accuracy']:.4f}), "
            f"L-input linear {row['linear']:.4f} (random init {row['linear_random_init']:.4f}), "
            f"knn {row['knn']:.4f} ({row['knn_random_init']:.4f})",
            flush=True,
        )
    else:
        row.update(superres_scores(run, photos))
        print(
            f"{name:12s} {row['epochs']:3d} epochs {seconds:6.1f} s: PSNR-Y {row['psnr']:.2f} dB, "
            f"bicubic {row['bicubic_psnr']:.2f} dB ({row['psnr'] - row['bicubic_psnr']:+.2f})",
            flush=True,
        )
    return row


def _field_value(item: str) -> tuple[str, object]:
    field, _, text = item.partition("=")
    try:
        return field, ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return field, text


if __name__ == "__main__":
    raise SystemExit(main())
